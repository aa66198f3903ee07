"""Multi-region failover (ADR 0017): what this router saw of its own region's models, every
region's health as heard on llmesh.region.health.<region>, and the failover decision.

Pure domain code: no gRPC, no NATS; every clock is injected, so the decisions are tested on a
fake clock. The router publishes `RegionHealthReport`s built by `OutcomeWindow.report` once a
second and feeds what it hears into `RegionBoard`; `Failover.choose` picks the region per tier."""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterable

from llmesh.kit.errors import PermissionDenied

UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class ModelHealth:
    model: str
    tier: int
    error_rate: float  # failed share of the requests in the window, 0..1
    ttft_p95_ms: float  # NaN: no answered request in the window
    utilization: float  # NaN: unknown (no fresh load snapshot)
    requests: int
    breaker_open: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RegionHealthReport:
    region: str
    replica: str
    models: tuple[ModelHealth, ...]
    observed_at: float  # publisher's wall clock


@dataclasses.dataclass(frozen=True)
class HealthRules:
    """When a model counts as down (any of): its breaker is open; at least `min_requests` in the
    window and an error rate >= `max_error_rate`; at least `min_requests` and a p95 TTFT over
    `ttft_sla_ms`; its load is unknown (inference silent) while it answered nothing in the window."""

    max_error_rate: float = 0.5
    min_requests: int = 3
    ttft_sla_ms: float = 5_000.0

    def healthy(self, m: ModelHealth) -> bool:
        if m.breaker_open:
            return False
        if m.requests >= self.min_requests:
            if m.error_rate >= self.max_error_rate:
                return False
            if not math.isnan(m.ttft_p95_ms) and m.ttft_p95_ms > self.ttft_sla_ms:
                return False
        if math.isnan(m.utilization) and (m.requests == 0 or m.error_rate >= self.max_error_rate):
            return False
        return True


class _Outcomes:
    """One (model, tier)'s requests in the window, in arrival order, with the running counts a
    health check reads: how many failed, and the answered ones' TTFTs kept sorted. A check then
    costs the requests that expired since the last one, not the whole window (it runs on every
    routed request)."""

    __slots__ = ("events", "failed", "ttfts")

    def __init__(self):
        self.events: deque[tuple[float, bool, float]] = deque()
        self.failed = 0
        self.ttfts: list[float] = []

    def add(self, at: float, ok: bool, ttft_ms: float) -> None:
        self.events.append((at, ok, ttft_ms))
        if not ok:
            self.failed += 1
        elif not math.isnan(ttft_ms):
            bisect.insort(self.ttfts, ttft_ms)

    def expire(self, cutoff: float) -> None:
        events = self.events
        while events and events[0][0] < cutoff:
            _, ok, ttft_ms = events.popleft()
            if not ok:
                self.failed -= 1
            elif not math.isnan(ttft_ms):
                del self.ttfts[bisect.bisect_left(self.ttfts, ttft_ms)]


class OutcomeWindow:
    """What this router saw of each model over the last `window_s` seconds: successes, failures,
    time to first token."""

    def __init__(self, window_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        # (model, tier) → the outcome of each request: a model serving two tiers is reported once
        # per tier, so each tier's health is its own.
        self._seen: dict[tuple[str, int], _Outcomes] = {}

    def record(self, model: str, tier: int, *, ok: bool, ttft_ms: float = math.nan) -> None:
        """One request's outcome; it counts for every tier the model serves (a model that is
        down is down for all of them)."""
        if (model, tier) not in self._seen:
            self._seen[(model, tier)] = _Outcomes()
        now = self._clock()
        for key, seen in self._seen.items():
            if key[0] == model:
                seen.add(now, ok, ttft_ms)

    def know(self, model: str, tier: int) -> None:
        """A model of the catalog: reported even before any request reached it."""
        if (model, tier) not in self._seen:
            self._seen[(model, tier)] = _Outcomes()

    def health(
        self, model: str, tier: int, *, utilization: float = math.nan, breaker_open: bool = False
    ) -> ModelHealth:
        self.know(model, tier)
        seen = self._seen[(model, tier)]
        seen.expire(self._clock() - self.window_s)
        requests = len(seen.events)
        return ModelHealth(
            model=model,
            tier=tier,
            error_rate=seen.failed / requests if requests else 0.0,
            ttft_p95_ms=percentile(seen.ttfts, 0.95),
            utilization=utilization,
            requests=requests,
            breaker_open=breaker_open,
        )

    def report(
        self,
        region: str,
        replica: str,
        *,
        utilization: Callable[[str], float] = lambda model: math.nan,
        now: float | None = None,
    ) -> RegionHealthReport:
        models = tuple(self.health(m, t, utilization=utilization(m)) for m, t in sorted(self._seen))
        return RegionHealthReport(region, replica, models, time.time() if now is None else now)


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class RegionBoard:
    """The latest report of every region (by receipt on this router's clock); a report older than
    `max_age_s` means the region's health is unknown, and an unknown region takes no traffic."""

    def __init__(self, max_age_s: float = 3.0, *, clock: Callable[[], float] = time.monotonic):
        self.max_age_s = max_age_s
        self._clock = clock
        self._latest: dict[str, tuple[float, RegionHealthReport]] = {}

    def record(self, report: RegionHealthReport) -> None:
        self._latest[report.region] = (self._clock(), report)

    def current(self, region: str) -> RegionHealthReport | None:
        found = self._latest.get(region)
        if found is None or self._clock() - found[0] > self.max_age_s:
            return None
        return found[1]

    def regions(self) -> list[str]:
        return sorted(self._latest)

    def status(self, region: str, tier: int, rules: HealthRules) -> str:
        """'healthy', 'down' or 'unknown' for one tier of one region."""
        report = self.current(region)
        if report is None:
            return UNKNOWN
        models = [m for m in report.models if m.tier == tier]
        if not models:
            return UNKNOWN
        return "healthy" if any(rules.healthy(m) for m in models) else "down"


class RouterCensus:
    """How many router replicas share this region's models: every router publishes its region's
    health report once a second (each replica its own id), so the replicas heard from within
    `max_age_s` (this one always among them) are the routers running now. None heard, this one's
    own report included (NATS down, or the first second): `fallback` (LLMESH_ROUTER_REPLICAS).
    A replica cut off from NATS while it still serves is not counted by the others until it is
    heard again (docs/adr/0037)."""

    def __init__(self, me: str, max_age_s: float, fallback: int = 1, *, clock: Callable[[], float] = time.monotonic):
        self.me = me
        self.max_age_s = max_age_s
        self.fallback = max(1, fallback)
        self._clock = clock
        self._heard: dict[str, float] = {}  # replica -> receipt time of its latest report

    def heard(self, replica: str) -> None:
        self._heard[replica] = self._clock()

    def count(self) -> int:
        now = self._clock()
        for replica, received in list(self._heard.items()):
            if now - received > self.max_age_s:
                del self._heard[replica]
        if not self._heard:
            return self.fallback
        return len(self._heard.keys() | {self.me})


@dataclasses.dataclass
class _TierState:
    region: str  # where this tier's traffic goes now
    failed_over_at: float = 0.0
    healthy_since: float | None = None  # local region continuously healthy since


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    region: str
    failed_over: bool
    reason: str


class Failover:
    """Per tier: stay in the local region while one of its models for the tier is healthy; when
    none is, go to the first healthy other region (in `peers` order) the tenant's data may go to;
    come back only after the local region was healthy for `failback_after_s` (hysteresis)."""

    def __init__(
        self,
        local_region: str,
        peers: Iterable[str],
        board: RegionBoard,
        local_health: Callable[[int], list[ModelHealth]],
        *,
        rules: HealthRules | None = None,
        failback_after_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.local_region = local_region
        self.peers = [p for p in peers if p != local_region]
        self.board = board
        self.local_health = local_health
        self.rules = rules or HealthRules()
        self.failback_after_s = failback_after_s
        self._clock = clock
        self._tiers: dict[int, _TierState] = {}

    def local_healthy(self, tier: int) -> bool:
        models = self.local_health(tier)
        # No model known for the tier yet: no evidence of a fault.
        return not models or any(self.rules.healthy(m) for m in models)

    def observe(self, tiers: Iterable[int]) -> None:
        """Notes the local region's health of `tiers` now (the router calls it every second, so
        the hysteresis does not depend on how often requests come)."""
        now = self._clock()
        for tier in tiers:
            self._observe(tier, now)

    def _observe(self, tier: int, now: float) -> tuple[_TierState, bool]:
        state = self._tiers.setdefault(tier, _TierState(self.local_region))
        local_ok = self.local_healthy(tier)
        if not local_ok:
            state.healthy_since = None
        elif state.healthy_since is None:
            state.healthy_since = now
        return state, local_ok

    def choose(self, tier: int, *, allowed_regions: frozenset[str] | None = None) -> Decision:
        """The region for a request of `tier`. `allowed_regions` is the tenant's residency rule
        (policy `data_access.regions`; None: any region). Raises PermissionDenied when the local
        region cannot serve the tier and the rule forbids every region that could."""
        now = self._clock()
        state, local_ok = self._observe(tier, now)

        if state.region != self.local_region:
            recovered = state.healthy_since is not None and now - state.healthy_since >= self.failback_after_s
            if recovered or self.board.status(state.region, tier, self.rules) != "healthy":
                state.region = self.local_region  # fail back, or the peer went bad too: re-decide below
        if state.region == self.local_region and not local_ok:
            peer = next((p for p in self.peers if self.board.status(p, tier, self.rules) == "healthy"), None)
            if peer is not None:
                state.region, state.failed_over_at = peer, now
        region = state.region
        if region == self.local_region:
            reason = "local region healthy" if local_ok else "no healthy region: local best effort"
            return Decision(region, False, reason)
        if allowed_regions is not None and region not in allowed_regions:
            raise PermissionDenied(
                f"region {self.local_region} cannot serve tier {tier} now (failed over to region {region}), and "
                f"the tenant's data may not leave {sorted(allowed_regions)} (policy data_access.regions)"
            )
        return Decision(region, True, f"tier {tier} down in region {self.local_region}")
