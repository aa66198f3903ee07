"""Cache refresh as a built-in batch job (ADR 0026): answers hit often that expire before the next
predicted peak are generated again in the quietest hours before it, so the peak starts warm.

- A tenant turns it on for a use case (BatchService.SetCacheRefresh with its own key): the policy
  and the principal it runs as are kept in KV `llmesh-batch-refresh` (`policy.<tenant>.<use case>`),
  as a submitted job keeps its submitter's principal (ADR 0018).
- Every `interval` the planner asks the cache for the use case's entries hit at least `min_hits`
  times that expire soon, and the hour-of-day histogram of its hits. The peak is the hour with
  the most hits; the window is the quietest hour between now and the next peak (the latest of
  equally quiet ones: the freshest answers at the peak). Entries that would expire before the
  peak ends become one batch job (`kind` cache_refresh, display name "cache refresh <use case>")
  that starts at the window and must end by the peak.
- Its items run like any batch item: the batch priority class, the tenant's budgets (the first
  item a budget refuses stops the job, `stopped_reason` budget_exhausted) and cache policy
  REFRESH (no lookup; the new answer is stored with a new expiry).
- One job per use case and window across replicas: a KV `create` of `planned.<tenant>.<use case>.<hour>`
  in `llmesh-batch-refresh-plans` (keys kept two days) decides which replica submits it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable

import nats.js.errors
from llmesh.kit.bus import Bus
from llmesh.kit.chat import messages_to_proto, sampling_to_proto
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.logging import get_logger
from llmesh.kit.vocabulary import Principal
from llmesh.router.v1 import router_pb2
from llmesh.services.router.batch import MIN_WINDOW_S, BatchItem, Job, from_stored_json, stored_json
from llmesh.services.router.batch_runner import KIND_CACHE_REFRESH, BatchRunner
from llmesh.services.router.domain import HotEntries
from nats.js.errors import KeyWrongLastSequenceError

log = get_logger("llmesh.router.batch_refresh")

POLICY_BUCKET = "llmesh-batch-refresh"
PLANS_BUCKET = "llmesh-batch-refresh-plans"
PLANS_TTL_S = 2 * 24 * 3600
HOUR_S = 3600
DEFAULT_MIN_HITS = 3
MAX_MIN_HITS = 1_000_000
# The most entries one job refreshes.
MAX_ITEMS = 1000


# (tenant_id, use_case, min_hits, expiring_within_s, limit) -> HotEntries
ListHot = Callable[[Principal, str, int, float, int], Awaitable[HotEntries]]


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    start: float  # when the refresh may start (now, or the start of the quiet hour)
    peak_start: float
    peak_end: float


def off_peak_window(hits_by_hour: list[int], now: float) -> Window | None:
    """The quietest hour before the next peak hour of the histogram; None without any hit."""
    if len(hits_by_hour) != 24 or not any(hits_by_hour):
        return None
    peak = max(range(24), key=lambda hour: (hits_by_hour[hour], -hour))  # the earliest of equal peaks
    hour_start = now - now % HOUR_S
    current = int(now // HOUR_S) % 24
    ahead = (peak - current) % 24 or 24  # in the peak hour now: the next one is tomorrow's
    peak_start = hour_start + ahead * HOUR_S
    # The hours from this one up to the peak; the quietest, the latest of equally quiet ones.
    quiet = min(range(ahead), key=lambda i: (hits_by_hour[(current + i) % 24], -i))
    return Window(start=max(now, hour_start + quiet * HOUR_S), peak_start=peak_start, peak_end=peak_start + HOUR_S)


@dataclasses.dataclass
class RefreshPolicy:
    principal: Principal
    use_case: str
    min_hits: int = DEFAULT_MIN_HITS

    def to_json(self) -> bytes:
        return stored_json(self)

    @classmethod
    def from_json(cls, data: bytes) -> RefreshPolicy:
        return from_stored_json(cls, data)


def min_hits_from(value: int) -> int:
    if value == 0:
        return DEFAULT_MIN_HITS
    if not 1 <= value <= MAX_MIN_HITS:
        raise InvalidArgument(f"min_hits must be in 1..{MAX_MIN_HITS}, or 0 for {DEFAULT_MIN_HITS}", field="min_hits")
    return value


class RefreshPlanner:
    def __init__(self, bus: Bus, runner: BatchRunner, list_hot: ListHot, *, clock: Callable[[], float] = time.time):
        self._bus = bus
        self._runner = runner
        self._list_hot = list_hot
        self._clock = clock
        self._policies = None
        self._plans = None

    async def start(self) -> None:
        js = self._bus.js
        try:
            self._policies = await js.key_value(POLICY_BUCKET)
        except Exception:
            self._policies = await js.create_key_value(bucket=POLICY_BUCKET, history=1)
        try:
            self._plans = await js.key_value(PLANS_BUCKET)
        except Exception:
            self._plans = await js.create_key_value(bucket=PLANS_BUCKET, history=1, ttl=PLANS_TTL_S)

    async def set_policy(self, principal: Principal, use_case: str, *, enabled: bool, min_hits: int) -> None:
        if "" in use_case.split("."):
            # The policy's key is a NATS subject: "a..b", ".a" or "a." has an empty token, which the
            # server drops without an answer (the call crashed with INTERNAL; found by make fuzz).
            raise InvalidArgument(
                f"use_case {use_case[:80]!r} cannot have a cache-refresh policy: dots must separate non-empty parts",
                field="use_case",
            )
        key = f"policy.{principal.tenant_id}.{use_case}"
        if enabled:
            await self._policies.put(key, RefreshPolicy(principal, use_case, min_hits).to_json())
        else:
            await self._policies.delete(key)
        log.info("cache_refresh_set", tenant=principal.tenant_id, use_case=use_case, enabled=enabled)

    async def policies(self) -> list[RefreshPolicy]:
        try:
            keys = await self._policies.keys()
        except nats.js.errors.NoKeysError:
            return []
        found = []
        for key in keys:
            try:
                found.append(RefreshPolicy.from_json((await self._policies.get(key)).value))
            except nats.js.errors.KeyNotFoundError:
                continue  # turned off meanwhile
        return found

    async def plan(self) -> list[Job]:
        """One pass over every policy; the jobs this replica submitted."""
        jobs = []
        for policy in await self.policies():
            try:
                job = await self.plan_one(policy)
            except Exception as exc:  # one tenant's failure (the cache away) does not stop the others
                log.warning(
                    "cache_refresh_plan_failed",
                    tenant=policy.principal.tenant_id,
                    use_case=policy.use_case,
                    error=repr(exc),
                )
                continue
            if job is not None:
                jobs.append(job)
        return jobs

    async def plan_one(self, policy: RefreshPolicy) -> Job | None:
        now = self._clock()
        tenant = policy.principal.tenant_id
        # A day ahead covers the next peak whatever hour it is.
        hot = await self._list_hot(policy.principal, policy.use_case, policy.min_hits, 25 * HOUR_S, MAX_ITEMS)
        window = off_peak_window(hot.hits_by_hour, now)
        if window is None:
            return None
        due = [entry for entry in hot.entries if entry.expires_at < window.peak_end]
        if not due:
            return None
        marker = f"planned.{tenant}.{policy.use_case}.{int(window.start // HOUR_S)}"
        try:
            await self._plans.create(marker, b"1")
        except KeyWrongLastSequenceError:
            return None  # this window's job exists (another replica, an earlier pass)
        items = []
        for index, entry in enumerate(due):
            request = router_pb2.GenerateRequest(
                messages=messages_to_proto(entry.messages),
                model=entry.model,
                sampling=sampling_to_proto(entry.sampling),
                max_tokens=entry.max_tokens,
                use_case=policy.use_case,
                priority=router_pb2.PRIORITY_BATCH,
                cache_policy=router_pb2.CACHE_POLICY_REFRESH,
            )
            items.append(BatchItem(index, f"refresh-{index}", request))
        job = await self._runner.submit(
            policy.principal,
            items,
            use_case=policy.use_case,
            window_s=max(MIN_WINDOW_S, int(window.peak_start - window.start)),
            start_after=window.start,
            display_name=f"cache refresh {policy.use_case}",
            kind=KIND_CACHE_REFRESH,
        )
        log.info(
            "cache_refresh_planned",
            job_id=job.job_id,
            tenant=tenant,
            use_case=policy.use_case,
            items=len(items),
            start=window.start,
            peak=window.peak_start,
        )
        return job
