"""Budgets, global rate limits and usage records of the Generate pipeline (docs/adr/0014).

- `admit`: the request-per-minute limits, for every request (cache hits too).
- `reserve`: before generation, the tokens-per-minute limits and a hold of the request's worst
  case (prompt tokens, bounded from above by its UTF-8 bytes, plus max_tokens, at the chosen
  model's price) on every hard budget; RESOURCE_EXHAUSTED naming the budget, before any token.
- `settle` / `abandon`: the actual cost replaces the hold (an error before any token releases it);
  crossings of 50/80/100 % go out as BudgetAlert; a UsageRecorded goes out for every request.
Counters live in a kit QuotaStore (Redis shared by replicas, or in-process); events leave through
the kit's Outbox, off the response path (usage records in batches per tenant, docs/adr/0035).

While the quota store is unreachable (docs/adr/0014, "Store down"): a request under a hard budget
is refused with UNAVAILABLE (fail closed), unless LLMESH_ROUTER_BUDGETS_FAIL_OPEN admits it
unheld; a rate limit admits (`fail_open`, the default) or refuses, per limit; a settle is retried
briefly, then its spend is lost (counted in llmesh_router_quota_store_errors_total).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import aclosing
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.errors import LlmeshError, ResourceExhausted, Unavailable
from llmesh.kit.logging import get_logger
from llmesh.kit.outbox import Outbox
from llmesh.kit.policy import CachedPolicy
from llmesh.kit.quota import (
    Budget,
    Charge,
    Counter,
    Crossing,
    QuotaStore,
    QuotaStoreUnavailable,
    RateCharge,
    RateLimit,
    Scope,
    Unit,
    counter_for,
    parse_budgets,
    parse_rate_limits,
    rate_key,
)
from llmesh.kit.streams import budget_alert_subject, usage_subject
from llmesh.kit.vocabulary import Principal
from llmesh.services.router.domain import CacheOutcome, Completion, Delta, GenerateCommand, Summary, Usage
from llmesh.services.router.routing import Price
from prometheus_client import Counter as MetricCounter

log = get_logger("llmesh.router.accounting")

# Tokens a message costs beyond its text (role and separators), an upper bound for chat templates.
MESSAGE_OVERHEAD_TOKENS = 8

BUDGET_REJECTED = MetricCounter(
    "llmesh_router_budget_rejected_total", "requests refused by a hard budget", ["tenant", "budget"]
)
BUDGET_ALERTS = MetricCounter(
    "llmesh_router_budget_alerts_total", "budget threshold crossings (50/80/100 %) reported", ["tenant", "threshold"]
)
RATE_LIMITED = MetricCounter(
    "llmesh_router_rate_limited_total", "requests refused by a rate limit", ["tenant", "limit", "what"]
)
QUOTA_STORE_ERRORS = MetricCounter(
    "llmesh_router_quota_store_errors_total",
    "quota store calls that failed, by operation and what the router did (refused, admitted, lost)",
    ["operation", "outcome"],
)


@dataclasses.dataclass(frozen=True)
class QuotaPolicy:
    budgets: tuple[Budget, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()


def quota_policy_from_document(doc: Mapping[str, Any]) -> QuotaPolicy:
    return QuotaPolicy(parse_budgets(doc), parse_rate_limits(doc))


def prompt_tokens_bound(command: GenerateCommand) -> int:
    """An upper bound of the prompt's tokens: a token holds at least one UTF-8 byte."""
    return sum(len(m.content.encode("utf-8")) + MESSAGE_OVERHEAD_TOKENS for m in command.messages)


def scope_value(scope: Scope, principal: Principal, command: GenerateCommand) -> str:
    if scope is Scope.TENANT:
        return principal.tenant_id
    if scope is Scope.BUSINESS_UNIT:
        return principal.business_unit or "-"
    if scope is Scope.USE_CASE:
        return command.use_case or "default"
    return principal.key_id or "-"


@dataclasses.dataclass
class Hold:
    """One request's reservation: what it held, and what the usage record needs."""

    request_id: str
    principal: Principal
    command: GenerateCommand
    tier: int
    model: str
    backend: str
    region: str
    price: Price
    prompt_tokens: int
    counters: list[Counter]  # every budget of the request (hard ones hold an amount)
    token_charges: list[RateCharge] = dataclasses.field(default_factory=list)  # worst case, per minute
    held: bool = False
    done: bool = False


def error_code(error: BaseException) -> str:
    """The gRPC status name a request ended with, e.g. UNAVAILABLE; CANCELLED when the client left."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    if isinstance(error, LlmeshError):
        name = type(error).__name__
        return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()
    return "INTERNAL"


def _timestamp(now: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(now * 1e9))
    return stamp


class Accounting:
    def __init__(
        self,
        store: QuotaStore,
        policies: CachedPolicy[QuotaPolicy],
        outbox: Outbox,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task],
        *,
        reservation_ttl_s: float,
        budgets_fail_open: bool = False,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self._policies = policies
        self._outbox = outbox
        self._spawn = spawn
        self._ttl_s = reservation_ttl_s
        self._budgets_fail_open = budgets_fail_open
        self._clock = clock

    def policy(self, tenant_id: str, use_case: str) -> QuotaPolicy:
        """The budgets and rate limits that apply to a tenant's use case now."""
        return self._policies.get(tenant_id, use_case)

    # --- rate limits ---------------------------------------------------------------------

    async def _acquire(self, principal: Principal, charges: list[RateCharge]) -> None:
        if not charges:
            return
        try:
            refusal = await self.store.acquire(charges)
        except QuotaStoreUnavailable as exc:
            if all(c.rate_limit.fail_open for c in charges):
                QUOTA_STORE_ERRORS.labels("rate_limit", "admitted").inc()
                log.warning("rate_limit_store_down_admitted", error=str(exc))
                return
            QUOTA_STORE_ERRORS.labels("rate_limit", "refused").inc()
            closed = next(c.rate_limit.name for c in charges if not c.rate_limit.fail_open)
            raise Unavailable(
                f"the rate-limit store is unreachable and rate limit {closed!r} fails closed; try again later"
            ) from None
        if refusal is None:
            return
        charge = refusal.charge
        RATE_LIMITED.labels(principal.tenant_id, charge.rate_limit.name, charge.what).inc()
        scope = charge.rate_limit.scope.value
        if refusal.retry_after_s is None:
            raise ResourceExhausted(
                f"rate limit {charge.rate_limit.name!r} ({charge.limit} {charge.what} per minute per {scope}) "
                f"can never admit this request: it needs {charge.cost} {charge.what}"
            )
        raise ResourceExhausted(
            f"rate limit {charge.rate_limit.name!r} reached: {charge.limit} {charge.what} per minute per {scope}; "
            f"retry in {refusal.retry_after_s:.2f} s",
            retry_after_s=refusal.retry_after_s,
        )

    def _rate_charges(self, principal: Principal, command: GenerateCommand, what: str, cost: int) -> list[RateCharge]:
        policy = self._policies.get(principal.tenant_id, command.use_case)
        charges = []
        for limit in policy.rate_limits:
            per_minute = limit.requests_per_minute if what == "requests" else limit.tokens_per_minute
            if per_minute is None:
                continue
            value = scope_value(limit.scope, principal, command)
            charges.append(RateCharge(rate_key(principal.tenant_id, limit, value, what), per_minute, cost, limit, what))
        return charges

    async def admit(self, principal: Principal, command: GenerateCommand) -> None:
        """Requests per minute: every request counts, cache hits included."""
        await self._acquire(principal, self._rate_charges(principal, command, "requests", 1))

    # --- budgets ---------------------------------------------------------------------------

    async def reserve(
        self,
        principal: Principal,
        command: GenerateCommand,
        *,
        request_id: str,
        tier: int,
        model: str,
        backend: str,
        region: str,
        price: Price,
    ) -> Hold:
        """Tokens per minute, then a hold of the worst case on every hard budget (all or none)."""
        prompt_tokens = prompt_tokens_bound(command)
        worst = Usage(prompt_tokens, command.max_tokens)
        token_charges = self._rate_charges(principal, command, "tokens", worst.prompt_tokens + worst.completion_tokens)
        await self._acquire(principal, token_charges)
        policy = self._policies.get(principal.tenant_id, command.use_case)
        now = self._clock()
        counters = [
            counter_for(principal.tenant_id, b, scope_value(b.scope, principal, command), now) for b in policy.budgets
        ]
        hold = Hold(
            request_id, principal, command, tier, model, backend, region, price, prompt_tokens, counters, token_charges
        )
        charges = [self._charge(c, worst, price.cost(worst)) for c in counters if c.budget.hard]
        if not charges:
            return hold
        try:
            refusal = await self.store.reserve(request_id, charges, self._ttl_s)
        except QuotaStoreUnavailable as exc:
            if self._budgets_fail_open:
                QUOTA_STORE_ERRORS.labels("reserve", "admitted").inc()
                log.warning("budget_store_down_admitted", request_id=request_id, error=str(exc))
                return hold
            QUOTA_STORE_ERRORS.labels("reserve", "refused").inc()
            raise Unavailable(
                "the budget store is unreachable: requests under a hard budget are refused until it is back"
            ) from None
        if refusal is not None:
            self._spawn(self._refund(hold, Usage()))  # the tokens per minute it took, unused
            budget = refusal.counter.budget
            BUDGET_REJECTED.labels(principal.tenant_id, budget.name).inc()
            unit = budget.unit
            raise ResourceExhausted(
                f"budget {budget.name!r} ({budget.scope.value} {refusal.counter.scope_value}, per {budget.period.value}) "
                f"would be exceeded: limit {unit.from_int(refusal.counter.limit):g} {unit.value}, spent "
                f"{unit.from_int(refusal.spent):g}, held by requests in flight {unit.from_int(refusal.reserved):g}, "
                f"this request needs up to {unit.from_int(refusal.amount):g}",
                reason="BUDGET_EXHAUSTED",
            )
        hold.held = True
        return hold

    async def rehold(self, hold: Hold, *, model: str, backend: str, region: str, price: Price) -> bool:
        """For a fallback or an overflow to another model (the router's hook: may this request go
        there given its cost?): holds the worst case at `price` instead, under the same
        reservation. False (and the hold unchanged) when a hard budget cannot take it."""
        worst = Usage(hold.prompt_tokens, hold.command.max_tokens)
        charges = [self._charge(c, worst, price.cost(worst)) for c in hold.counters if c.budget.hard]
        if charges:
            try:
                refusal = await self.store.reserve(hold.request_id, charges, self._ttl_s)
            except QuotaStoreUnavailable:
                if not self._budgets_fail_open:
                    QUOTA_STORE_ERRORS.labels("reserve", "refused").inc()
                    return False
                QUOTA_STORE_ERRORS.labels("reserve", "admitted").inc()  # the earlier hold, if any, stays
            else:
                if refusal is not None:
                    return False
                hold.held = True
        hold.model, hold.backend, hold.region, hold.price = model, backend, region, price
        return True

    @staticmethod
    def _charge(counter: Counter, usage: Usage, cost: float) -> Charge:
        if counter.budget.unit is Unit.TOKENS:
            return Charge(counter, usage.prompt_tokens + usage.completion_tokens)
        return Charge(counter, Unit.USD.to_int(cost, up=True))

    def settle(
        self, hold: Hold, usage: Usage, cost_usd: float, *, model: str, backend: str, outcome: CacheOutcome
    ) -> asyncio.Task:
        """The request completed: settle its budgets and record its usage (in the background)."""
        hold.done = True
        self._record(hold, usage, cost_usd, model=model, backend=backend, outcome=outcome)
        return self._spawn(self._settle(hold, usage, cost_usd))

    async def watch(
        self, hold: Hold, stream: AsyncIterator[Delta | Completion], outcome: CacheOutcome
    ) -> AsyncIterator[Delta | Completion]:
        """Passes the inference stream through; abandons the hold when it fails, ends without a
        completion, or is closed early (the client left)."""
        deltas = 0
        completed = False
        try:
            async with aclosing(stream):
                async for event in stream:
                    if isinstance(event, Completion):
                        completed = True
                    elif event.text:
                        deltas += 1
                    yield event
        except BaseException as exc:
            self.abandon(hold, deltas=deltas, error=exc, outcome=outcome)
            raise
        if not completed:
            self.abandon(hold, deltas=deltas, error=Unavailable("no completion"), outcome=outcome)

    def abandon(self, hold: Hold, *, deltas: int, error: BaseException, outcome: CacheOutcome) -> None:
        """The request failed or the client left. Before any token the hold is released; after
        some, what was streamed is billed (the prompt's bound and one token per delta)."""
        if hold.done:
            return
        hold.done = True
        usage = Usage(hold.prompt_tokens if deltas else 0, deltas)
        cost = hold.price.cost(usage)
        if deltas:
            self._record(
                hold, usage, cost, model=hold.model, backend=hold.backend, outcome=outcome, error=error_code(error)
            )
        self._spawn(self._settle(hold, usage, cost))

    async def _refund(self, hold: Hold, usage: Usage) -> None:
        """Gives back the tokens per minute the worst case took and the request did not use."""
        unused = hold.prompt_tokens + hold.command.max_tokens - usage.prompt_tokens - usage.completion_tokens
        if not hold.token_charges or unused <= 0:
            return
        try:
            await self.store.refund([dataclasses.replace(c, cost=unused) for c in hold.token_charges])
        except QuotaStoreUnavailable as exc:
            QUOTA_STORE_ERRORS.labels("refund", "lost").inc()
            log.warning("rate_limit_refund_failed", request_id=hold.request_id, error=str(exc))

    async def _settle(self, hold: Hold, usage: Usage, cost_usd: float) -> None:
        await self._refund(hold, usage)
        if not hold.counters:
            return
        actuals = [self._charge(c, usage, cost_usd) for c in hold.counters]
        crossings: list[Crossing] = []
        for attempt in range(3):
            try:
                crossings = await self.store.settle(hold.request_id, actuals)
                break
            except QuotaStoreUnavailable as exc:
                if attempt == 2:
                    # The hold expires after its TTL; this request's spend is not counted.
                    QUOTA_STORE_ERRORS.labels("settle", "lost").inc()
                    log.error("budget_settle_failed", request_id=hold.request_id, error=str(exc))
                    return
                await asyncio.sleep(0.2 * 2**attempt)
        for crossing in crossings:
            self._alert(hold.principal, crossing)

    def _alert(self, principal: Principal, crossing: Crossing) -> None:
        counter, budget = crossing.counter, crossing.counter.budget
        BUDGET_ALERTS.labels(principal.tenant_id, str(crossing.threshold_percent)).inc()
        log.warning(
            "budget_threshold_crossed",
            budget=budget.name,
            scope=budget.scope.value,
            scope_value=counter.scope_value,
            threshold_percent=crossing.threshold_percent,
            hard=budget.hard,
        )
        event_id = f"budget-{counter.key}-{crossing.threshold_percent}"
        now = self._clock()
        self._outbox.put(
            budget_alert_subject(principal.tenant_id),
            events_pb2.BudgetAlert(
                event_id=event_id,
                tenant_id=principal.tenant_id,
                budget=budget.name,
                scope=budget.scope.value,
                scope_value=counter.scope_value,
                period=budget.period.value,
                period_start=_timestamp(counter.period_start.timestamp()),
                unit=budget.unit.value,
                limit=budget.limit,
                spent=budget.unit.from_int(crossing.spent),
                threshold_percent=crossing.threshold_percent,
                hard=budget.hard,
                observed_at=_timestamp(now),
            ),
            msg_id=event_id,
        )

    # --- usage records ---------------------------------------------------------------------

    def _record(
        self,
        hold: Hold,
        usage: Usage,
        cost_usd: float,
        *,
        model: str,
        backend: str,
        outcome: CacheOutcome,
        error: str = "",
    ) -> None:
        self.record_usage(
            hold.principal,
            hold.command,
            request_id=hold.request_id,
            tier=hold.tier,
            model=model,
            backend=backend,
            region=hold.region,
            outcome=outcome,
            usage=usage,
            cost_usd=cost_usd,
            error=error,
        )

    def record_hit(
        self, principal: Principal, command: GenerateCommand, summary: Summary, *, cost_avoided_usd: float
    ) -> None:
        """A cache hit's usage record: it costs nothing; it saved what the answer cost once."""
        self.record_usage(
            principal,
            command,
            request_id=summary.request_id,
            tier=summary.tier,
            model=summary.model,
            backend=summary.backend,
            outcome=summary.cache_outcome,
            usage=summary.usage,
            cost_usd=0.0,
            cost_avoided_usd=cost_avoided_usd,
        )

    def record_usage(
        self,
        principal: Principal,
        command: GenerateCommand,
        *,
        request_id: str,
        tier: int,
        model: str,
        backend: str,
        outcome: CacheOutcome,
        usage: Usage,
        cost_usd: float,
        cost_avoided_usd: float = 0.0,
        region: str = "",
        error: str = "",
    ) -> None:
        """Queues the request's UsageRecorded (Nats-Msg-Id: the request id; in a batch of its
        tenant's records when the outbox batches, docs/adr/0035). Never blocks."""
        event = events_pb2.UsageRecorded(
            request_id=request_id or uuid.uuid4().hex,
            tenant_id=principal.tenant_id,
            business_unit=principal.business_unit,
            use_case=command.use_case or "default",
            key_id=principal.key_id,
            model=model,
            tier=tier if tier in (1, 2, 3) else common_pb2.TIER_UNSPECIFIED,
            backend=backend,
            region=region,
            cache_outcome=outcome.value,
            usage=common_pb2.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens),
            cost_usd=cost_usd,
            cost_avoided_usd=cost_avoided_usd,
            occurred_at=_timestamp(self._clock()),
            priority=command.priority.value,
            error_code=error,
        )
        self._outbox.put(usage_subject(principal.tenant_id), event, msg_id=event.request_id, batched=True)
