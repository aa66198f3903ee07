"""Circuit breakers per model endpoint, in the style of Envoy's outlier detection.

An endpoint (a model in a region) is ejected (OPEN) after `consecutive_failures` failures in a
row, or when its error rate over the last `window_s` reaches `error_rate` with at least
`min_requests` results in the window. It stays out for `base_ejection_s` × the number of times it
has been ejected in a row (capped at `max_ejection_s`), then turns HALF_OPEN: the next real
request is its probe, one at a time. The probe's success closes it, its failure ejects it again
for longer. An endpoint that stays healthy for `max_ejection_s` after closing starts its count
from zero again. At most `max_ejection_percent` of the known endpoints are ejected at once (but
one always may be), so a mesh-wide outage does not eject everything and leave nothing to try.

What counts as a failure is the caller's call: the pipeline reports UNAVAILABLE, DEADLINE_EXCEEDED
and streams cut after the first token; RESOURCE_EXHAUSTED is a full (healthy) model, which is the
overflow's business, and neither trips nor heals a breaker. State is per router replica; every
change is handed to `on_change` (the app publishes it on NATS and the metrics show it).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import time
from collections.abc import Callable

from llmesh.kit.logging import get_logger
from llmesh.services.router import metrics

log = get_logger("llmesh.router.breakers")


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


@dataclasses.dataclass(frozen=True)
class BreakerConfig:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_requests: int = 10
    window_s: float = 10.0
    base_ejection_s: float = 5.0
    max_ejection_s: float = 120.0
    max_ejection_percent: float = 50.0


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerChange:
    region: str
    model: str
    state: BreakerState
    previous: BreakerState
    reason: str
    ejections: int
    # Monotonic seconds until which the endpoint is ejected (OPEN only), and the same as wall time.
    ejected_until: float | None
    ejected_until_wall: float | None


@dataclasses.dataclass
class _Endpoint:
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    results: collections.deque = dataclasses.field(default_factory=collections.deque)  # (time, ok)
    ejections: int = 0
    ejected_until: float = 0.0
    closed_at: float = 0.0
    probing: bool = False


class Breakers:
    def __init__(
        self,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[BreakerChange], None] = lambda change: None,
    ):
        self.config = config
        self._clock = clock
        self._wall = wall_clock
        self._on_change = on_change
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        # How many endpoints exist (the catalog's size): the base of max_ejection_percent.
        self.endpoint_count = 0

    def state(self, region: str, model: str) -> BreakerState:
        """The state as a request would see it now (an OPEN endpoint past its ejection is HALF_OPEN)."""
        ep = self._endpoints.get((region, model))
        if ep is None:
            return BreakerState.CLOSED
        if ep.state is BreakerState.OPEN and self._clock() >= ep.ejected_until:
            return BreakerState.HALF_OPEN
        return ep.state

    def available(self, region: str, model: str) -> bool:
        """Whether a request may be sent there now (without taking the probe): closed, or half-open
        with no probe running."""
        ep = self._endpoints.get((region, model))
        if ep is None or ep.state is BreakerState.CLOSED:
            return True
        if ep.state is BreakerState.OPEN:
            return self._clock() >= ep.ejected_until
        return not ep.probing

    def acquire(self, region: str, model: str) -> bool:
        """Claims the right to send one request; False when the endpoint is ejected or its one
        probe is already out. Every True must be followed by exactly one `record`/`release`."""
        ep = self._endpoints.get((region, model))
        if ep is None or ep.state is BreakerState.CLOSED:
            return True
        if ep.state is BreakerState.OPEN:
            if self._clock() < ep.ejected_until:
                return False
            self._move(region, model, ep, BreakerState.HALF_OPEN, "ejection time over: probing")
        if ep.probing:
            return False
        ep.probing = True
        return True

    def release(self, region: str, model: str) -> None:
        """The claimed request ended with no verdict (client gone, RESOURCE_EXHAUSTED)."""
        ep = self._endpoints.get((region, model))
        if ep is not None:
            ep.probing = False

    def record(self, region: str, model: str, ok: bool) -> None:
        key = (region, model)
        ep = self._endpoints.get(key)
        if ep is None:
            ep = self._endpoints[key] = _Endpoint(closed_at=self._clock())
        now = self._clock()
        if ep.state is BreakerState.HALF_OPEN and ep.probing:
            ep.probing = False
            if ok:
                ep.consecutive = 0
                ep.results.clear()
                ep.closed_at = now
                self._move(region, model, ep, BreakerState.CLOSED, "probe succeeded")
            else:
                self._eject(region, model, ep, "probe failed", force=True)
            return
        if ep.state is not BreakerState.CLOSED:
            return  # a request sent before the ejection finishing late: no new verdict
        ep.results.append((now, ok))
        while ep.results and ep.results[0][0] < now - self.config.window_s:
            ep.results.popleft()
        if ok:
            ep.consecutive = 0
            if ep.ejections and now - ep.closed_at >= self.config.max_ejection_s:
                ep.ejections = 0
            return
        ep.consecutive += 1
        if ep.consecutive >= self.config.consecutive_failures:
            self._eject(region, model, ep, f"{ep.consecutive} consecutive failures")
            return
        total = len(ep.results)
        if total >= self.config.min_requests:
            failed = sum(1 for _, good in ep.results if not good)
            rate = failed / total
            if rate >= self.config.error_rate:
                self._eject(
                    region,
                    model,
                    ep,
                    f"error rate {rate:.2f} >= {self.config.error_rate:.2f} over {total} requests",
                )

    def _ejected_now(self) -> int:
        now = self._clock()
        return sum(
            1
            for ep in self._endpoints.values()
            if ep.state is BreakerState.HALF_OPEN or (ep.state is BreakerState.OPEN and now < ep.ejected_until)
        )

    def _eject(self, region: str, model: str, ep: _Endpoint, reason: str, *, force: bool = False) -> None:
        if not force:
            ejected = self._ejected_now()
            total = max(self.endpoint_count, len(self._endpoints), 1)
            if ejected > 0 and (ejected + 1) * 100.0 / total > self.config.max_ejection_percent:
                metrics.BREAKER_EJECTIONS_SKIPPED.labels(region, model).inc()
                log.warning("breaker_ejection_skipped", region=region, model=model, reason=reason, ejected=ejected)
                return
        now = self._clock()
        if ep.ejections and now - ep.closed_at >= self.config.max_ejection_s and ep.state is BreakerState.CLOSED:
            ep.ejections = 0
        ep.ejections += 1
        ep.ejected_until = now + min(self.config.base_ejection_s * ep.ejections, self.config.max_ejection_s)
        ep.consecutive = 0
        ep.results.clear()
        metrics.BREAKER_EJECTIONS.labels(region, model).inc()
        self._move(region, model, ep, BreakerState.OPEN, reason)

    def _move(self, region: str, model: str, ep: _Endpoint, state: BreakerState, reason: str) -> None:
        previous, ep.state = ep.state, state
        metrics.BREAKER_STATE.labels(region, model).set(STATE_VALUE[state])
        until = ep.ejected_until if state is BreakerState.OPEN else None
        change = BreakerChange(
            region=region,
            model=model,
            state=state,
            previous=previous,
            reason=reason,
            ejections=ep.ejections,
            ejected_until=until,
            ejected_until_wall=None if until is None else self._wall() + (until - self._clock()),
        )
        log.info("breaker_state_changed", region=region, model=model, state=state.value, reason=reason)
        try:
            self._on_change(change)
        except Exception as exc:  # a publisher's failure must not fail the request that tripped it
            log.warning("breaker_change_not_published", error=repr(exc))
