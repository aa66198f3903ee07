"""The Generate pipeline: authenticate → (classify ‖ cache lookup ‖ early dispatch) → route → stream → settle."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from typing import Any

from llmesh.kit.auth import bearer_token
from llmesh.kit.errors import DeadlineExceeded, LlmeshError, ResourceExhausted, Unauthenticated, Unavailable
from llmesh.kit.experiments import VariantPolicies
from llmesh.kit.identity import act_for
from llmesh.kit.logging import bind_contextvars, get_logger
from llmesh.kit.metrics import TENANT, USE_CASE
from llmesh.kit.policy import CachedPolicy
from llmesh.kit.tracing import annotate, traced
from llmesh.kit.vocabulary import FinishReason, Principal, Sensitivity
from llmesh.services.router import metrics, quality
from llmesh.services.router.accounting import Accounting, prompt_tokens_bound
from llmesh.services.router.breakers import Breakers
from llmesh.services.router.candidates import Candidate, filter_candidates
from llmesh.services.router.domain import (
    TIERS,
    AnswerToStore,
    CachedAnswer,
    CacheKey,
    CacheOutcome,
    Classification,
    Completion,
    Delta,
    EscalationInfo,
    GenerateCommand,
    ModelInfo,
    OverflowInfo,
    Priority,
    RouteAttempt,
    StreamInterruptedError,
    Summary,
    Usage,
)
from llmesh.services.router.outcomes import OutcomeReporter
from llmesh.services.router.overflow import ExtraCostAllowed, OverflowGate, allow_any_cost
from llmesh.services.router.ports import Cache, Classifier, Inference, Tenancy
from llmesh.services.router.principals import PrincipalCache
from llmesh.services.router.quality import QualityScore, StreamMode
from llmesh.services.router.queueing import FairQueues
from llmesh.services.router.routing import ModelCatalog, Router, RoutingPolicy
from llmesh.services.router.speculation import EarlyDispatch, FirstChoices, Pumped, Speculation

log = get_logger("llmesh.router")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    upstream_timeout_s: float
    generate_timeout_s: float
    fallback_tier: int
    hit_chunk_chars: int
    # the level of the one log line per answered request ("debug": off at the default level)
    request_log_level: str = "debug"


def _remaining(limit_s: float, deadline: float | None) -> float:
    """`limit_s`, shortened to what is left of the caller's deadline (monotonic seconds)."""
    if deadline is None:
        return limit_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the request's deadline passed before the router could finish")
    return min(limit_s, left)


_CODES = {Unavailable: "UNAVAILABLE", ResourceExhausted: "RESOURCE_EXHAUSTED", DeadlineExceeded: "DEADLINE_EXCEEDED"}


def _prompt_tokens_estimate(command: GenerateCommand) -> int:
    """About four characters a token: for estimates only (overflow's extra cost, cut answers)."""
    return sum(len(m.content) for m in command.messages) // 4 + 1


def _partial_usage(command: GenerateCommand, pieces: list[str]) -> Usage:
    """A cut answer has no usage from inference: the prompt estimate and one token per delta
    (inference streams a delta per token)."""
    return Usage(prompt_tokens=_prompt_tokens_estimate(command), completion_tokens=len(pieces))


def _attempt(candidate: Candidate, outcome: str, tried_at: float, *, after_first_token: bool = False) -> RouteAttempt:
    model = candidate.model
    return RouteAttempt(
        model=model.name,
        backend=model.backend,
        region=model.region,
        outcome=outcome,
        reason=candidate.reason,
        elapsed_ms=(time.perf_counter() - tried_at) * 1000.0,
        after_first_token=after_first_token,
    )


@dataclasses.dataclass
class _Progress:
    """What reached the client so far."""

    started: float
    outcome: CacheOutcome
    tier: int
    parts: list[str] = dataclasses.field(default_factory=list)
    released_chars: int = 0
    first_delta_at: float | None = None
    # Time spent in the router's fair queues, over every attempt.
    queue_wait_ms: float = 0.0
    # The region whose inference served the last attempt ("" single-region).
    region: str = ""

    def release(self, text: str) -> Delta:
        if self.first_delta_at is None:
            self.first_delta_at = time.perf_counter()
            metrics.time_to_first_token(self.tier, self.outcome.value).observe(self.first_delta_at - self.started)
        self.parts.append(text)
        self.released_chars += len(text)
        return Delta(text)


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    candidate: Candidate
    completion: Completion
    # The quality check's score of a judged tier-1 answer (None: not judged).
    quality: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Rejected:
    model: ModelInfo
    score: QualityScore
    usage: Usage


@dataclasses.dataclass(frozen=True, slots=True)
class _Trying:
    """What every attempt of one request shares (the first answer's and an escalation's)."""

    command: GenerateCommand
    policy: RoutingPolicy
    request_id: str
    deadline: float | None
    attempts: list[RouteAttempt]
    progress: _Progress
    tenant_id: str
    # a hard budget's say on a model's worst case (None: no budgets)
    affordable: Callable[[ModelInfo], Awaitable[bool]] | None
    threshold: float


@dataclasses.dataclass(slots=True)
class _Ended:
    """How a pass over the candidates ended, beside the deltas it released."""

    answer: _Answer | None = None
    rejected: _Rejected | None = None
    cache_hit: _CacheHit | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _CacheHit:
    """The semantic lookup answered in time: the speculative attempt was cancelled."""

    cached: CachedAnswer


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class GeneratePipeline:
    def __init__(
        self,
        *,
        tenancy: Tenancy,
        classifier: Classifier,
        cache: Cache,
        inference: Inference,
        principals: PrincipalCache,
        catalog: ModelCatalog,
        router: Router,
        policies: CachedPolicy[VariantPolicies],
        config: PipelineConfig,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task],
        breakers: Breakers,
        overflow: OverflowGate,
        extra_cost_allowed: ExtraCostAllowed = allow_any_cost,
        queues: FairQueues,
        accounting: Accounting | None = None,
        regions: Any = None,  # RegionRouting (multi-region failover, ADR 0017)
        outcomes: OutcomeReporter | None = None,
    ):
        self._tenancy = tenancy
        self._classifier = classifier
        self._cache = cache
        self._inference = inference
        self._principals = principals
        self._catalog = catalog
        self._router = router
        self._policies = policies
        self._config = config
        # Starts work that outlives the response (cache stores); the app awaits it on shutdown.
        self._spawn = spawn
        self._breakers = breakers
        self._overflow = overflow
        # The budget's say on an overflow's extra cost (the quota work plugs in here).
        self._extra_cost_allowed = extra_cost_allowed
        self._queues = queues
        # budgets, global rate limits and usage records (None: none of them).
        self._accounting = accounting
        self._regions = regions
        # quality-check verdicts on tier-1 answers, labels for the classifier (ADR 0027).
        self._outcomes = outcomes
        # where each tenant's use case went first lately: the model of an early dispatch (ADR 0038)
        self._first_choices = FirstChoices()

    @traced("router.auth")
    async def authenticate(self, authorization: str | None, *, deadline: float | None = None) -> Principal:
        api_key = bearer_token(authorization)
        principal = self._principals.get(api_key)
        if principal is not None:
            metrics.PRINCIPAL_CACHE_HIT.inc()
            return principal
        metrics.PRINCIPAL_CACHE_MISS.inc()
        epoch = self._principals.epoch
        try:
            principal = await self._tenancy.authenticate(
                api_key, timeout_s=_remaining(self._config.upstream_timeout_s, deadline)
            )
        except Unauthenticated as exc:
            raise Unauthenticated(f"API key rejected: {exc.message}") from None
        except (Unavailable, DeadlineExceeded) as exc:
            # Tenancy cannot say (e.g. its database is down): a key it accepted a little while ago
            # and that no revocation dropped still answers, for the cache's stale window.
            stale = self._principals.stale_get(api_key)
            if stale is not None:
                metrics.PRINCIPAL_STALE_SERVED.inc()
                log.warning("principal_served_stale", tenant=stale.tenant_id, error=type(exc).__name__)
                return stale
            if isinstance(exc, DeadlineExceeded):
                raise Unavailable("tenancy did not answer in time; try again") from None
            raise
        self._principals.put(api_key, principal, epoch=epoch)
        return principal

    async def run(
        self,
        principal: Principal,
        command: GenerateCommand,
        *,
        request_id: str,
        started: float,
        deadline: float | None = None,
    ) -> AsyncIterator[Delta | Summary]:
        """Streams the answer's deltas, then one Summary. `started` is the request's arrival
        (time.perf_counter) so the reported times cover authentication too."""
        bind_contextvars(tenant=principal.tenant_id)
        # The upstream calls made for this request carry the tenant's token (docs/adr/0023).
        act_for(principal.tenant_token)
        annotate(tenant=principal.tenant_id, business_unit=principal.business_unit, use_case=command.use_case)
        if self._accounting is not None:  # requests per minute, cache hits included
            await self._accounting.admit(principal, command)
        pinned = await self._catalog.require(command.pinned_model) if command.pinned_model else None
        key = CacheKey(
            tenant_id=principal.tenant_id,
            use_case=command.use_case,
            messages=command.messages,
            pinned_model=command.pinned_model,
            sampling=command.sampling,
            max_tokens=command.max_tokens,
        )
        # Policy experiments (llmesh.kit.experiments): the request's variant, by tenant and request id.
        policy, variant = self._policies.get(principal.tenant_id, command.use_case).pick(
            principal.tenant_id, request_id
        )
        if variant:
            metrics.POLICY_VARIANT.labels(variant).inc()
        # Speculation (ADR 0029): the exact layer alone beside the classifier; on its miss the
        # semantic layer's lookup starts at once, and runs on beside the dispatch.
        speculate = policy.speculation.enabled and command.use_cache and not command.refresh_cache
        # Dispatch before the classification (ADR 0038): after an exact miss, on the model this use
        # case went to first lately, adopted below if the classification's plan starts there too.
        early_allowed = policy.speculation.enabled and policy.speculation.early
        classification, cached, semantic_lookup, early = await self._classify_and_lookup(
            command,
            key,
            principal,
            request_id,
            deadline,
            exact_only=speculate,
            early=(
                (lambda: self._dispatch_early(principal, command, policy, pinned, request_id, deadline, started))
                if early_allowed
                else None
            ),
        )
        try:
            async for event in self._run_classified(
                principal,
                command,
                key,
                policy,
                variant,
                pinned,
                classification,
                cached,
                semantic_lookup,
                early,
                request_id=request_id,
                started=started,
                deadline=deadline,
            ):
                yield event
        finally:
            if early is not None:
                early.discard()  # not adopted: the call is cancelled (a no-op once adopted)

    async def _run_classified(
        self,
        principal: Principal,
        command: GenerateCommand,
        key: CacheKey,
        policy: RoutingPolicy,
        variant: str,
        pinned: ModelInfo | None,
        classification: Classification,
        cached: CachedAnswer | None,
        semantic_lookup: asyncio.Task[CachedAnswer | None] | None,
        early: EarlyDispatch | None,
        *,
        request_id: str,
        started: float,
        deadline: float | None,
    ) -> AsyncIterator[Delta | Summary]:
        # The cache's rule, applied here because the lookup ran before the sensitivity was known:
        # restricted requests stay out of the cache unless the tenant's policy lets them in.
        use_cache = command.use_cache and (
            classification.sensitivity < Sensitivity.RESTRICTED or policy.cache_restricted
        )
        if cached is not None and not use_cache:
            log.info("cache_hit_not_served", reason="restricted")
            cached = None

        if cached is not None and cached.tier >= classification.tier:
            async for event in self._serve_hit(cached, principal, command, request_id, started, variant):
                yield event
            return
        if cached is not None:
            metrics.CACHE_TIER_REJECTED.inc()
            log.info("cache_hit_tier_too_low", cached_tier=cached.tier, needed_tier=classification.tier)
        # An exact miss while speculating: the semantic layer's answer is still to come (none when
        # the cache failed the exact lookup: then the request goes on as a miss).
        semantic_due = semantic_lookup is not None and use_cache
        if semantic_lookup is not None and not use_cache:
            semantic_lookup.cancel()  # restricted: its answer could not be served

        await self._catalog.refresh_if_stale()
        available = self._catalog.models
        self._breakers.endpoint_count = len(available)
        usable = self._usable
        tier, sensitivity = classification.tier, classification.sensitivity
        try:
            plan = self._router.candidates(
                tier=tier,
                sensitivity=sensitivity,
                pinned=pinned,
                policy=policy,
                available=available,
                clearance=principal.clearance,
                usable=usable,
            )
            plan.raise_if_empty(tier, sensitivity)
        except LlmeshError:
            # No model may take it, but a hit may still answer it (as without speculation).
            late = await Speculation(semantic_lookup, hold_s=0.0, needed_tier=tier).wait() if semantic_due else None
            if late is None:
                raise
            async for event in self._serve_hit(late, principal, command, request_id, started, variant):
                yield event
            return
        candidates = plan.candidates
        overflow = None
        if pinned is None:
            candidates, overflow = self._with_overflow(
                candidates, tier, sensitivity, principal, command, policy, available, deadline
            )
        if not classification.degraded:
            self._first_choices.record(
                principal.tenant_id, command.use_case, candidates[0].model.name, candidates[0].tier
            )
        if early is not None and not self._adoptable(early, candidates[0], policy):
            early.discard()
        # Escalation targets are known before the first try: without one, nothing is held or judged.
        escalation_to: list[Candidate] = []
        escalation = policy.escalation
        if pinned is None and tier == 1 and escalation.enabled:
            stronger = self._router.candidates(
                tier=2,
                sensitivity=sensitivity,
                pinned=None,
                policy=policy,
                available=available,
                clearance=principal.clearance,
                usable=usable,
            ).candidates
            # A model that serves tier 1 itself is no stronger (tiers 1 and 2 on one model).
            tier_one = {c.model.name for c in candidates if c.reason == "tier"}
            escalation_to = [
                dataclasses.replace(c, reason="escalation")
                for c in stronger
                if c.tier >= 2 and c.model.name not in tier_one and 1 not in c.model.tiers
            ]
        outcome = CacheOutcome.MISS if use_cache else CacheOutcome.BYPASSED
        bind_contextvars(tier=tier)

        speculation = None
        if semantic_due:
            hold_s = policy.speculation.hold_ms / 1000.0
            speculation = Speculation(semantic_lookup, hold_s=hold_s, needed_tier=tier)
            if not policy.speculation.allows(candidates[0].model):
                # e.g. an external API, which bills the prompt even when cancelled: look up first.
                late = await speculation.wait()
                if late is not None:
                    async for event in self._serve_hit(late, principal, command, request_id, started, variant):
                        yield event
                    return

        progress = _Progress(started=started, outcome=outcome, tier=tier)
        attempts: list[RouteAttempt] = []
        judge = None
        if escalation_to:
            hold = escalation.hold_tokens if escalation.stream_mode is StreamMode.HOLD else 0

            def judge(text: str, finish: FinishReason | None) -> QualityScore:
                return quality.score(text, finish_reason=finish, classifier_confidence=classification.confidence)

        else:
            hold = 0
        budget_hold = None
        affordable = None
        if self._accounting is not None:
            # tokens per minute, and the worst case held on every hard budget before any
            # token, at the first candidate's price; a dearer fallback, overflow or escalation
            # target holds more first (rehold) or is skipped, so none can overspend.
            worst = Usage(prompt_tokens_bound(command), command.max_tokens)
            first = candidates[0].model
            try:
                budget_hold = await self._accounting.reserve(
                    principal,
                    command,
                    request_id=request_id,
                    tier=tier,
                    model=first.name,
                    backend=first.backend,
                    region=first.region,
                    price=self._router.price(first.name, policy, first),
                )
            except LlmeshError:
                # a hit costs nothing: a budget that cannot take the worst case does not refuse it.
                late = await speculation.wait() if speculation is not None and speculation.pending else None
                if late is None:
                    raise
                async for event in self._serve_hit(late, principal, command, request_id, started, variant):
                    yield event
                return
            hold_ = budget_hold

            async def affordable(m: ModelInfo) -> bool:
                price = self._router.price(m.name, policy, m)
                if price.cost(worst) <= hold_.price.cost(worst):
                    return True
                return await self._accounting.rehold(
                    hold_, model=m.name, backend=m.backend, region=m.region, price=price
                )

        trying = _Trying(
            command,
            policy,
            request_id,
            deadline,
            attempts,
            progress,
            principal.tenant_id,
            affordable,
            escalation.threshold,
        )
        ended = _Ended()
        try:
            async for delta in self._relay(
                ended, candidates, trying, judge=judge, hold=hold, speculation=speculation, early=early
            ):
                yield delta
            answer, rejected, cache_hit = ended.answer, ended.rejected, ended.cache_hit
            if cache_hit is not None and budget_hold is not None:
                # Nothing reached the client: the hold is released; the hit is recorded as a hit.
                self._accounting.abandon(budget_hold, deltas=0, error=asyncio.CancelledError(), outcome=outcome)
            escalated = None
            first_cost = 0.0
            if rejected is not None:
                first_cost = self._router.price(rejected.model.name, policy, rejected.model).cost(rejected.usage)
                escalated = EscalationInfo(
                    from_tier=tier,
                    from_model=rejected.model.name,
                    quality_score=rejected.score.score,
                    threshold=escalation.threshold,
                    first_answer_cost_usd=first_cost,
                )
                log.info(
                    "escalating",
                    from_model=rejected.model.name,
                    score=round(rejected.score.score, 3),
                    signals=list(rejected.score.signals),
                )
                escalation_to = [c for c in escalation_to if c.model.name != rejected.model.name]
                async for delta in self._relay(ended, escalation_to, trying):
                    yield delta
                answer = ended.answer
        except BaseException as exc:
            if speculation is not None and speculation.pending:
                speculation.lookup.cancel()  # failed or left while held: nobody waits for the lookup now
            if budget_hold is not None:
                # Failed, interrupted or left by the client: the hold is released, or what streamed is billed.
                self._accounting.abandon(budget_hold, deltas=len(progress.parts), error=exc, outcome=outcome)
            raise
        if cache_hit is not None:
            async for event in self._serve_hit(
                cache_hit.cached,
                principal,
                command,
                request_id,
                started,
                variant,
                attempts=tuple(attempts),
                queue_wait_ms=progress.queue_wait_ms,
            ):
                yield event
            return
        assert answer is not None  # _try_candidates raises when no candidate answered
        completion, model = answer.completion, answer.candidate.model
        bind_contextvars(model=model.name)

        served_model = completion.model or model.name
        served_info = self._catalog.get(served_model) or model
        cost = self._router.price(served_model, policy, served_info).cost(completion.usage)
        if overflow is not None:
            home = next((c.model for c in plan.candidates if c.model.self_hosted), None)
            home_cost = self._router.price(home.name, policy, home).cost(completion.usage) if home else 0.0
            overflow = dataclasses.replace(overflow, extra_cost_usd=max(0.0, cost - home_cost))
            if answer.candidate.reason == "overflow":
                metrics.OVERFLOWED.labels(TENANT(principal.tenant_id), str(tier)).inc()
                metrics.OVERFLOW_EXTRA_COST.labels(TENANT(principal.tenant_id)).inc(overflow.extra_cost_usd)
            else:
                overflow = None  # the external models failed: the answer came from home after all
        if escalated is not None:
            metrics.ESCALATIONS.labels(TENANT(principal.tenant_id), USE_CASE(command.use_case)).inc()
            metrics.ESCALATION_COST.labels(TENANT(principal.tenant_id), USE_CASE(command.use_case), "first").inc(
                first_cost
            )
            metrics.ESCALATION_COST.labels(TENANT(principal.tenant_id), USE_CASE(command.use_case), "escalated").inc(
                cost
            )
        answered_tier = max(tier, answer.candidate.tier) if escalated is not None else tier
        judged_score = rejected.score.score if rejected is not None else answer.quality
        if self._outcomes is not None and judged_score is not None and not classification.degraded:
            self._outcomes.report(
                request_id=request_id,
                tenant_id=principal.tenant_id,
                use_case=command.use_case,
                classified_tier=tier,
                first_model=rejected.model.name if rejected is not None else model.name,
                answered_tier=answered_tier,
                answered_model=served_model,
                quality_score=judged_score,
                threshold=escalation.threshold,
                escalated=escalated is not None,
            )
        store = None
        if use_cache and completion.finish_reason.complete:
            stored = AnswerToStore(
                content="".join(progress.parts),
                model=served_model,
                backend=completion.backend or model.backend,
                tier=answered_tier,
                usage=completion.usage,
                cost_usd=cost,
            )
            store = self._spawn(self._store(key, stored, principal, sensitivity))
        settled = None
        if budget_hold is not None:  # the actual cost replaces the hold; the usage record goes out
            settled = self._accounting.settle(
                budget_hold,
                completion.usage,
                cost + first_cost,
                model=served_model,
                backend=completion.backend or model.backend,
                outcome=outcome,
            )
        finished = time.perf_counter()
        total_cost = cost + first_cost
        metrics.requests(tier, served_model, outcome.value).inc()
        metrics.request_duration(tier, outcome.value).observe(finished - started)
        metrics.COST.labels(TENANT(principal.tenant_id), served_model).inc(total_cost)
        annotate(
            tier=tier,
            model=served_model,
            cache_outcome=outcome.value,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            cost_usd=total_cost,
        )
        summary = Summary(
            request_id=request_id,
            tier=answered_tier,
            model=served_model,
            backend=completion.backend or model.backend,
            cache_outcome=outcome,
            usage=completion.usage,
            cost_usd=total_cost,
            time_to_first_token_ms=((progress.first_delta_at or finished) - started) * 1000.0,
            total_time_ms=(finished - started) * 1000.0,
            finish_reason=completion.finish_reason,
            policy_variant=variant,
            attempts=tuple(attempts),
            overflow=overflow,
            escalation=escalated,
            region=progress.region or model.region,
            queue_wait_ms=progress.queue_wait_ms,
            priority=command.priority,
        )
        getattr(log, self._config.request_log_level)(
            "generated",
            cache_outcome=outcome.value,
            finish_reason=completion.finish_reason.value,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            attempts=len(attempts),
            ttft_ms=round(summary.time_to_first_token_ms, 2),
            total_ms=round(summary.total_time_ms, 2),
        )
        yield summary
        if settled is not None:
            await asyncio.shield(settled)  # the call ends once its budgets are settled
        if store is not None:
            # The summary is already on its way; the call ends once the answer is stored, so a
            # client that repeats the request after this call completed finds it in the cache.
            # shield: a client leaving now must not cancel the store (the task is tracked).
            await asyncio.shield(store)

    def _usable(self, model: ModelInfo) -> bool:
        return self._breakers.available(model.region, model.name)

    def _with_overflow(
        self,
        candidates: list[Candidate],
        tier: int,
        sensitivity: Sensitivity,
        principal: Principal,
        command: GenerateCommand,
        policy: RoutingPolicy,
        available: list[ModelInfo],
        deadline: float | None,
    ) -> tuple[list[Candidate], OverflowInfo | None]:
        """Puts the external models first when the tier's self-hosted pool is full and the request
        may go there (overflow.py)."""
        pool = [c.model for c in candidates if c.reason == "tier" and c.model.self_hosted]
        decision = self._overflow.check(
            tier=tier,
            pool=pool,
            policy=policy.overflow,
            max_tokens=command.max_tokens,
            deadline_left_s=None if deadline is None else deadline - time.monotonic(),
        )
        if decision is None:
            return candidates, None
        if not policy.overflow.enabled:
            metrics.OVERFLOW_REFUSED.labels("policy").inc()
            return candidates, None
        external = sorted(
            (m for m in available if not m.self_hosted and any(t >= tier for t in m.tiers)),
            key=lambda m: (min(t for t in m.tiers if t >= tier), m.fallback),
        )
        eligible = filter_candidates(
            [Candidate(m, "overflow", tier) for m in external],
            sensitivity=sensitivity,
            clearance=principal.clearance,
            rules=policy.data_access,
            usable=self._usable,
        )
        if not eligible.candidates:
            reason = "no_external_model" if not eligible.refused else sorted(set(eligible.refused.values()))[0]
            metrics.OVERFLOW_REFUSED.labels(reason).inc()
            log.info("overflow_not_eligible", reason=reason, pool_reason=decision.reason)
            return candidates, None
        target = eligible.candidates[0].model
        estimate = Usage(prompt_tokens=_prompt_tokens_estimate(command), completion_tokens=command.max_tokens)
        extra = self._router.price(target.name, policy, target).cost(estimate) - (
            self._router.price(pool[0].name, policy, pool[0]).cost(estimate) if pool else 0.0
        )
        if not self._extra_cost_allowed(principal.tenant_id, command.use_case, target.name, max(0.0, extra)):
            metrics.OVERFLOW_REFUSED.labels("budget").inc()
            return candidates, None
        log.info("overflowing", reason=decision.reason, to=target.name)
        names = {c.model.name for c in eligible.candidates}
        rest = [c for c in candidates if c.model.name not in names]
        return eligible.candidates + rest, OverflowInfo(decision.reason, decision.utilization)

    async def _relay(
        self,
        ended: _Ended,
        candidates: list[Candidate],
        trying: _Trying,
        *,
        judge: Callable[[str, FinishReason | None], QualityScore] | None = None,
        hold: int = 0,
        speculation: Speculation | None = None,
        early: EarlyDispatch | None = None,
    ) -> AsyncIterator[Delta]:
        """The deltas of one pass over `candidates` (_try_candidates); how it ended goes to `ended`."""
        async for event in self._try_candidates(candidates, trying, judge, hold, speculation, early):
            if isinstance(event, _Answer):
                ended.answer = event
            elif isinstance(event, _Rejected):
                ended.rejected = event
            elif isinstance(event, _CacheHit):
                ended.cache_hit = event
            else:
                yield event

    async def _try_candidates(
        self,
        candidates: list[Candidate],
        trying: _Trying,
        judge: Callable[[str, FinishReason | None], QualityScore] | None,
        hold: int,
        speculation: Speculation | None = None,
        early: EarlyDispatch | None = None,
    ) -> AsyncIterator[Delta | _Answer | _Rejected | _CacheHit]:
        """Tries the candidates in order until one answers: yields the deltas to release, then one
        _Answer (or a _Rejected tier-1 answer to escalate). A failure before any delta reached
        the client moves on to the next candidate; one after ends the request (interrupted).
        With a pending `speculation`, each attempt's events are held until the semantic lookup
        answered or its hold budget ran out; a hit in time ends with a _CacheHit instead. An
        `early` dispatch to the first candidate's model is adopted as its attempt (ADR 0038)."""
        command, policy, request_id, deadline = trying.command, trying.policy, trying.request_id, trying.deadline
        attempts, progress, affordable, threshold = (
            trying.attempts,
            trying.progress,
            trying.affordable,
            trying.threshold,
        )
        tenant_id = trying.tenant_id
        last_error: LlmeshError | None = None
        # (candidate, whether this is its retry on another replica, docs/adr/0034)
        pending = collections.deque((c, False) for c in candidates)
        while pending:
            candidate, retrying = pending.popleft()
            model = candidate.model
            # what the attempts list says of this try ("retry": the same model again, another replica)
            tried = dataclasses.replace(candidate, reason="retry") if retrying else candidate
            adopted = early is not None and not retrying and self._adoptable(early, candidate, policy)
            if early is not None and not adopted:
                early.discard()
            early = None if not adopted else early
            if speculation is not None and speculation.pending:
                if speculation.lookup.done() or not policy.speculation.allows(model):
                    late = await speculation.wait()
                    if late is not None:
                        yield _CacheHit(late)
                        return
            # Raises DeadlineExceeded once the request's deadline has passed: no further tries.
            timeout_s = _remaining(self._config.generate_timeout_s, deadline)
            if affordable is not None and not await affordable(model):
                # a hard budget cannot take this model's worst case.
                if early is not None:
                    early.discard()
                    early = None
                attempts.append(_attempt(tried, "BUDGET_EXHAUSTED", time.perf_counter()))
                last_error = ResourceExhausted(
                    f"a hard budget cannot take the worst case of {model.name}", reason="BUDGET_EXHAUSTED"
                )
                continue
            if early is None and not self._breakers.acquire(model.region, model.name):
                continue
            judged = judge is not None and candidate.tier == 1
            holding = judged and hold > 0
            held: list[str] = []
            completion: Completion | None = None
            tried_at = early.started_at if early is not None else time.perf_counter()
            verdict = None
            cache_hit: _CacheHit | None = None
            inference = None
            # whether inference sent anything for this attempt (a token, or its completion)
            received = False
            # Each attempt waits its turn in its own model's fair queue (queueing.py); a refusal
            # there is a RESOURCE_EXHAUSTED before the first token: the next candidate is tried.
            ticket = (
                early.ticket
                if early is not None
                else self._queues.ticket_for(
                    model, tenant_id, command, deadline, time.perf_counter() - progress.started
                )
            )
            try:
                if early is not None:  # started before the classification answered: its events so far too
                    stream, inference, progress.region = early.adopt(), early.inference, early.region
                    early = None
                else:
                    stream, inference, progress.region = self._open(
                        model, candidate.tier, command, request_id, timeout_s, ticket, policy
                    )
                if self._regions:  # what the region's inference did feeds its health
                    stream = self._regions.observed(
                        stream, progress.region, model.name, candidate.tier, progress.started
                    )
                if speculation is not None and speculation.pending:
                    speculation.dispatched = True
                    stream = self._gated(stream, speculation, model.name)
                async with aclosing(stream):
                    async for event in stream:
                        if isinstance(event, _CacheHit):
                            cache_hit = event
                            break  # closing the stream cancels the attempt at inference
                        if isinstance(event, Completion):
                            completion, received = event, True
                            continue
                        if not event.text:
                            continue
                        received = True
                        if holding:
                            held.append(event.text)
                            if len(held) < hold:
                                continue
                            verdict = judge("".join(held), None)
                            if verdict.score < threshold:
                                break
                            holding, verdict = False, None
                            for piece in held:
                                yield progress.release(piece)
                            held = []
                            continue
                        yield progress.release(event.text)
                if cache_hit is None and verdict is None and completion is None:
                    raise Unavailable(f"inference ended the stream for {model.name} without a completion")
            except (Unavailable, ResourceExhausted, DeadlineExceeded) as exc:
                code = _CODES[type(exc)] if type(exc) in _CODES else "UNAVAILABLE"
                if (
                    isinstance(exc, Unavailable)
                    and not retrying
                    and not received
                    and not progress.released_chars
                    and getattr(inference, "replicated", False)
                ):
                    # Nothing was generated: the same model once more, which round robin sends to
                    # another replica. One replica's failure is no verdict on the model's breaker;
                    # the retry's outcome is.
                    self._breakers.release(model.region, model.name)
                    attempts.append(_attempt(tried, code, tried_at))
                    metrics.REPLICA_RETRIES.labels(model.name).inc()
                    log.info("attempt_retried_on_another_replica", model=model.name, error=exc.message)
                    pending.appendleft((candidate, True))
                    last_error = exc
                    continue
                # A full model, or the caller's own deadline running out, says nothing of its health.
                caller_deadline = isinstance(exc, DeadlineExceeded) and timeout_s < self._config.generate_timeout_s
                if isinstance(exc, ResourceExhausted) or caller_deadline:
                    self._breakers.release(model.region, model.name)
                else:
                    self._breakers.record(model.region, model.name, ok=False)
                attempts.append(_attempt(tried, code, tried_at, after_first_token=progress.released_chars > 0))
                if progress.released_chars:
                    raise self._interrupted(model, command, policy, request_id, progress, exc) from None
                metrics.ATTEMPT_FAILURES.labels(model.name, code).inc()
                log.info("attempt_failed", model=model.name, code=code, error=exc.message)
                last_error = exc
                continue
            except BaseException:
                self._breakers.release(model.region, model.name)
                raise
            finally:
                progress.queue_wait_ms += ticket.wait_ms
            if cache_hit is not None:
                # Cancelled by the router, not failed: no word on the model's health.
                self._breakers.release(model.region, model.name)
                attempts.append(_attempt(tried, "CANCELLED", tried_at))
                log.info("speculation_lost", model=model.name)
                yield cache_hit
                return
            self._breakers.record(model.region, model.name, ok=True)
            quality_score = None
            if judged and verdict is None:
                # The whole answer is here: scored for the metrics always, escalated only when none
                # of it reached the client yet (held, or an empty answer).
                scored = judge("".join(progress.parts) + "".join(held), completion.finish_reason)
                quality_score = scored.score
                metrics.QUALITY_SCORE.observe(scored.score)
                if not progress.released_chars and scored.score < threshold:
                    verdict = scored
            elif verdict is not None:
                metrics.QUALITY_SCORE.observe(verdict.score)
            if verdict is not None:
                usage = completion.usage if completion is not None else _partial_usage(command, held)
                attempts.append(_attempt(tried, "low_quality", tried_at))
                yield _Rejected(model, verdict, usage)
                return
            for piece in held:
                yield progress.release(piece)
            attempts.append(_attempt(tried, "ok", tried_at))
            yield _Answer(candidate, completion, quality_score)
            return
        if speculation is not None and speculation.pending:
            # every candidate failed before its first token: a hit still answers (as without speculation)
            late = await speculation.wait()
            if late is not None:
                yield _CacheHit(late)
                return
        tried = ", ".join(f"{a.model} {a.outcome}" for a in attempts) or "none: every breaker is open"
        if last_error is None:
            raise Unavailable(f"no model could take the request (tried: {tried})")
        raise type(last_error)(
            f"{last_error.message} (tried: {tried})", retry_after_s=last_error.retry_after_s
        ) from None

    def _interrupted(
        self,
        model: ModelInfo,
        command: GenerateCommand,
        policy: RoutingPolicy,
        request_id: str,
        progress: _Progress,
        exc: LlmeshError,
    ) -> StreamInterruptedError:
        usage = _partial_usage(command, progress.parts)
        cost = self._router.price(model.name, policy, model).cost(usage)
        metrics.STREAMS_INTERRUPTED.labels(model.name).inc()
        log.warning("stream_interrupted", model=model.name, delivered_chars=progress.released_chars, error=exc.message)
        return StreamInterruptedError(
            f"{model.name} failed after {progress.released_chars} characters of the answer were sent "
            f"({exc.message}); the partial answer is billed as {usage.completion_tokens} tokens and not cached",
            request_id=request_id,
            model=model.name,
            usage=usage,
            cost_usd=cost,
            delivered_chars=progress.released_chars,
        )

    def _open(
        self,
        model: ModelInfo,
        tier: int,
        command: GenerateCommand,
        request_id: str,
        timeout_s: float,
        ticket: Any,
        policy: RoutingPolicy,
    ) -> tuple[AsyncIterator[Delta | Completion], Inference, str]:
        """One attempt's stream (through the model's fair queue), the inference that serves it and
        its region ("" single-region)."""
        inference, region = self._route(model, tier, policy)
        stream = ticket.stream(
            lambda: inference.generate(model.name, command, request_id=request_id, timeout_s=timeout_s)
        )
        return stream, inference, region

    def _route(self, model: ModelInfo, tier: int, policy: RoutingPolicy) -> tuple[Inference, str]:
        """The inference that serves `model` for `tier` now, and its region: a tier this region
        cannot serve goes to another region's inference."""
        if not self._regions:
            return self._inference, ""
        return self._regions.route(tier, model.name, allowed_regions=policy.data_access.regions)

    def _adoptable(self, early: EarlyDispatch, candidate: Candidate, policy: RoutingPolicy) -> bool:
        """Is the early dispatch the attempt `candidate` would make (the same model, from the region
        its own tier is routed to now)?"""
        return early.matches(candidate.model, self._route(candidate.model, candidate.tier, policy)[1])

    def _dispatch_early(
        self,
        principal: Principal,
        command: GenerateCommand,
        policy: RoutingPolicy,
        pinned: ModelInfo | None,
        request_id: str,
        deadline: float | None,
        started: float,
    ) -> EarlyDispatch | None:
        """Starts the attempt this tenant's use case most likely gets before its classification is
        known (ADR 0038): on the model its plans started with lately, when that model is self-hosted
        and may receive the most sensitive data from this principal. None when there is no such model."""
        predicted = self._first_choices.predict(principal.tenant_id, command.use_case)
        if predicted is None:
            return None
        name, tier = predicted
        model = self._catalog.get(name)
        if model is None or not model.self_hosted or (pinned is not None and pinned.name != name):
            return None
        allowed = filter_candidates(
            [Candidate(model, "tier", tier)],
            sensitivity=Sensitivity.RESTRICTED,
            clearance=principal.clearance,
            rules=policy.data_access,
            usable=self._usable,
        )
        if not allowed.candidates or not self._breakers.acquire(model.region, model.name):
            return None
        try:
            timeout_s = _remaining(self._config.generate_timeout_s, deadline)
            ticket = self._queues.ticket_for(
                model, principal.tenant_id, command, deadline, time.perf_counter() - started
            )
            stream, inference, region = self._open(model, tier, command, request_id, timeout_s, ticket, policy)
        except LlmeshError:
            self._breakers.release(model.region, model.name)
            return None
        return EarlyDispatch(
            model=model,
            stream=stream,
            inference=inference,
            region=region,
            ticket=ticket,
            release_breaker=lambda: self._breakers.release(model.region, model.name),
        )

    async def _classify_and_lookup(
        self,
        command: GenerateCommand,
        key: CacheKey,
        principal: Principal,
        request_id: str,
        deadline: float | None,
        *,
        exact_only: bool = False,
        early: Callable[[], EarlyDispatch | None] | None = None,
    ) -> tuple[Classification, CachedAnswer | None, asyncio.Task[CachedAnswer | None] | None, EarlyDispatch | None]:
        """The classification and the cache's answer. `exact_only`: the exact layer alone, and on
        its miss the semantic layer's lookup (the cache already started embedding for it) is
        started at once and returned as a task (None after a hit, or when the cache failed: the
        request is then a degraded miss). `early` starts a dispatch when the classification is
        still due after the exact layer missed (or at once, when the cache is not asked);
        returned for the pipeline to adopt or discard (ADR 0038)."""

        @traced("router.classify")
        async def classify() -> Classification:
            try:
                result = await self._classifier.classify(
                    command,
                    tenant_id=principal.tenant_id,
                    request_id=request_id,
                    timeout_s=_remaining(self._config.upstream_timeout_s, deadline),
                )
                if result.tier not in TIERS:
                    raise ValueError(f"classifier returned tier {result.tier}")
                return result
            except Exception as exc:
                metrics.DEGRADED.labels("classifier", "classify").inc()
                log.warning("classifier_degraded", error=repr(exc), fallback_tier=self._config.fallback_tier)
                # Unknown sensitivity is treated as the most sensitive: it stays on self-hosted models.
                return Classification(self._config.fallback_tier, Sensitivity.RESTRICTED, 0.0, degraded=True)

        async def exact_then_semantic() -> tuple[CachedAnswer | None, asyncio.Task[CachedAnswer | None] | None]:
            cached, answered = await self._answered_lookup(key, principal, deadline, exact_only=True)
            if cached is not None or not answered:
                return cached, None
            return None, self._spawn(self._lookup(key, principal, deadline, semantic_only=True))

        if not exact_only and command.use_cache and not command.refresh_cache:
            classification, cached = await asyncio.gather(classify(), self._lookup(key, principal, deadline))
            return classification, cached, None, None
        # The classification's task starts first: the memo's classify call is then waiting for the
        # lookup's outcome before an L1 copy can answer the lookup without an await.
        classified = False
        dispatched: EarlyDispatch | None = None

        async def classify_then_mark() -> Classification:
            nonlocal classified
            try:
                return await classify()
            finally:
                classified = True

        async def lookup_then_dispatch() -> tuple[CachedAnswer | None, asyncio.Task[CachedAnswer | None] | None]:
            nonlocal dispatched
            cached, semantic = None, None
            if command.use_cache and not command.refresh_cache:
                cached, semantic = await exact_then_semantic()
            if early is not None and cached is None and not classified:
                try:
                    dispatched = early()
                except Exception as exc:  # an optimisation: the request goes on without it
                    log.warning("early_dispatch_failed", error=repr(exc))
            return cached, semantic

        try:
            classification, (cached, semantic) = await asyncio.gather(classify_then_mark(), lookup_then_dispatch())
        except BaseException:
            if dispatched is not None:
                dispatched.discard()
            raise
        return classification, cached, semantic, dispatched

    @traced("router.cache_lookup")
    async def _answered_lookup(
        self,
        key: CacheKey,
        principal: Principal,
        deadline: float | None,
        *,
        exact_only: bool = False,
        semantic_only: bool = False,
    ) -> tuple[CachedAnswer | None, bool]:
        """The cache's answer (None: a miss), and False when the cache failed (a degraded miss)."""
        try:
            cached = await self._cache.lookup(
                key,
                business_unit=principal.business_unit,
                timeout_s=_remaining(self._config.upstream_timeout_s, deadline),
                exact_only=exact_only,
                semantic_only=semantic_only,
            )
        except Exception as exc:
            metrics.DEGRADED.labels("cache", "lookup").inc()
            log.warning("cache_degraded", operation="lookup", error=repr(exc))
            return None, False
        return cached, True

    async def _lookup(
        self, key: CacheKey, principal: Principal, deadline: float | None, *, semantic_only: bool = False
    ) -> CachedAnswer | None:
        cached, _ = await self._answered_lookup(key, principal, deadline, semantic_only=semantic_only)
        return cached

    @staticmethod
    async def _gated(
        stream: AsyncIterator[Delta | Completion], speculation: Speculation, model: str
    ) -> AsyncIterator[Delta | Completion | _CacheHit]:
        """`stream`, held while the semantic lookup is pending (for at most its hold budget after
        the first event): a usable hit in that time yields one _CacheHit and cancels the stream
        (inference's call with it); a miss, or the budget running out, releases what was held.
        A failure while held is raised as it is (nothing reached the client: the next candidate)."""
        # One task drives the whole stream, so the wait below can race it against the lookup.
        pumped = Pumped(stream)
        events = pumped.queue
        loop = asyncio.get_running_loop()
        held: collections.deque[Any] = collections.deque()
        hold_until: float | None = None
        getter: asyncio.Future[Any] | None = None
        ended = False
        try:
            while speculation.pending:
                waits: set[asyncio.Future[Any]] = {speculation.lookup}
                if not ended:
                    if getter is None:
                        getter = asyncio.ensure_future(events.get())
                    waits.add(getter)
                timeout = None if hold_until is None else max(0.0, hold_until - loop.time())
                done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if speculation.lookup in done:
                    cached = speculation.settle()
                    if cached is not None:
                        generated = sum(1 for e in held if isinstance(e, Delta) and e.text)
                        if getter is not None and getter.done() and isinstance(getter.result(), Delta):
                            generated += 1
                        metrics.SPECULATION_CANCELLED_TOKENS.labels(model).inc(generated)
                        yield _CacheHit(cached)
                        return
                    break
                if getter is not None and getter in done:
                    item, getter = getter.result(), None
                    if (failure := Pumped.failure(item)) is not None:
                        raise failure
                    held.append(item)
                    ended = item is Pumped.END
                    if hold_until is None:
                        hold_until = loop.time() + speculation.hold_s
                    continue
                if not done:  # the hold budget ran out: the model's answer goes ahead
                    speculation.ignore()
            while True:
                if held:
                    item = held.popleft()
                elif getter is not None:
                    item, getter = await getter, None
                else:
                    item = await events.get()
                if item is Pumped.END:
                    return
                if (failure := Pumped.failure(item)) is not None:
                    raise failure
                yield item
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            await pumped.close()

    async def _serve_hit(
        self,
        cached: CachedAnswer,
        principal: Principal,
        command: GenerateCommand,
        request_id: str,
        started: float,
        variant: str,
        *,
        attempts: tuple[RouteAttempt, ...] = (),
        queue_wait_ms: float = 0.0,
    ) -> AsyncIterator[Delta | Summary]:
        async for event in self._serve_cached(
            cached, principal, request_id, started, command.priority, attempts=attempts, queue_wait_ms=queue_wait_ms
        ):
            if isinstance(event, Summary):
                event = dataclasses.replace(event, policy_variant=variant)
                if self._accounting is not None:
                    # a hit costs nothing and holds no budget; its record says what it saved.
                    self._accounting.record_hit(principal, command, event, cost_avoided_usd=cached.cost_usd)
            yield event

    async def _serve_cached(
        self,
        cached: CachedAnswer,
        principal: Principal,
        request_id: str,
        started: float,
        priority: Priority,
        *,
        attempts: tuple[RouteAttempt, ...] = (),
        queue_wait_ms: float = 0.0,
    ) -> AsyncIterator[Delta | Summary]:
        outcome = CacheOutcome.SEMANTIC_HIT if cached.semantic else CacheOutcome.EXACT_HIT
        first_delta_at: float | None = None
        for piece in chunks(cached.content, self._config.hit_chunk_chars):
            if first_delta_at is None:
                first_delta_at = time.perf_counter()
                metrics.time_to_first_token(cached.tier, outcome.value).observe(first_delta_at - started)
            yield Delta(piece)
        finished = time.perf_counter()
        metrics.requests(cached.tier, cached.model, outcome.value).inc()
        metrics.request_duration(cached.tier, outcome.value).observe(finished - started)
        getattr(log, self._config.request_log_level)(
            "served_from_cache", cache_outcome=outcome.value, tier=cached.tier, model=cached.model
        )
        annotate(tier=cached.tier, model=cached.model, cache_outcome=outcome.value)
        yield Summary(
            request_id=request_id,
            tier=cached.tier,
            model=cached.model,
            backend=cached.backend,
            cache_outcome=outcome,
            usage=cached.usage,
            cost_usd=0.0,
            time_to_first_token_ms=((first_delta_at or finished) - started) * 1000.0,
            total_time_ms=(finished - started) * 1000.0,
            # The cache does not record why the original generation stopped.
            finish_reason=FinishReason.UNSPECIFIED,
            priority=priority,
            # a speculative attempt the hit cancelled (ADR 0029)
            attempts=attempts,
            queue_wait_ms=queue_wait_ms,
        )

    @traced("router.store")
    async def _store(
        self, key: CacheKey, answer: AnswerToStore, principal: Principal, sensitivity: Sensitivity
    ) -> None:
        try:
            declined = await self._cache.store(
                key,
                answer,
                business_unit=principal.business_unit,
                sensitivity=sensitivity,
                timeout_s=self._config.upstream_timeout_s,
            )
        except Exception as exc:
            metrics.DEGRADED.labels("cache", "store").inc()
            log.warning("cache_degraded", operation="store", error=repr(exc))
            return
        if declined:
            log.info("cache_store_declined", reason=declined)
