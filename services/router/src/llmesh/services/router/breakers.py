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

Peers' ejections are hints (docs/adr/0030-peer-breaker-hints.md): when another replica reports
that it ejected an endpoint this replica still trusts, `peer_ejected` puts the endpoint on
probation for the ejection's duration, measured from receipt (the event's own ejected_until minus
its observed_at, both on the sender's clock, so clock skew between replicas does not matter). On
probation the endpoint keeps its place in at most `hint_probe_share` of the candidate lists it is
on, one such probe at a time (`demoted`); in the others it goes to the end, tried only when every
other candidate failed, so a hint alone never fails a request that full trust would have served.
A failed request there is this replica's own evidence and ejects it as usual (subject to
max_ejection_percent), `hint_successes` successes in a row end the probation, and so does a
peer's "recovered" event (`peer_recovered`). Hints never take more endpoints out of full trust
than max_ejection_percent allows (own ejections and probations counted together), this replica's
own events and stale ones are ignored, and a hint is not republished (no echo between replicas).
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
    # Peers' ejections as hints: the share of candidate lists in which an endpoint on probation
    # keeps its place (0: hints off; elsewhere it goes last), the successes in a row that end it, and how old (by this replica's wall clock,
    # so it allows for skew) a peer's event may be on arrival.
    hint_probe_share: float = 0.1
    hint_successes: int = 3
    hint_max_age_s: float = 10.0


class HintDecision(enum.Enum):
    """What `peer_ejected` did with a peer's ejection event."""

    HINTED = "hinted"  # the endpoint is on probation until the ejection's end
    EXTENDED = "extended"  # already on probation: it lasts until the later end
    OWN_EVENT = "own_event"  # this replica's own event, back from the bus
    STALE = "stale"  # the ejection is over, the event is too old, or a newer one of that replica was seen
    NOT_TRUSTED = "not_trusted"  # this replica has ejected or is probing the endpoint itself already
    MAX_EJECTED = "max_ejected"  # probation would put more endpoints out of full trust than allowed
    DISABLED = "disabled"  # hint_probe_share is 0


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
    # Probation after a peer's ejection (only while CLOSED here): until when (monotonic), who
    # said so, the requests that considered it and those it got, its probe, successes in a row.
    hinted_until: float = 0.0
    hinted_by: str = ""
    hint_seen: int = 0
    hint_sent: int = 0
    hint_inflight: int = 0
    hint_successes: int = 0


class Breakers:
    def __init__(
        self,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[BreakerChange], None] = lambda change: None,
        replica: str = "",
    ):
        self.config = config
        #: this replica's name in the events it publishes (its own events are no hints)
        self.replica = replica
        self._clock = clock
        self._wall = wall_clock
        self._on_change = on_change
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        # How many endpoints exist (the catalog's size): the base of max_ejection_percent.
        self.endpoint_count = 0
        # (region, model, replica) -> observed_at of the newest event of that replica (its clock)
        self._peer_seen: dict[tuple[str, str, str], float] = {}

    def state(self, region: str, model: str) -> BreakerState:
        """The state as a request would see it now (an OPEN endpoint past its ejection is HALF_OPEN)."""
        ep = self._endpoints.get((region, model))
        if ep is None:
            return BreakerState.CLOSED
        if ep.state is BreakerState.OPEN and self._clock() >= ep.ejected_until:
            return BreakerState.HALF_OPEN
        if self._hinted(region, model, ep):
            return BreakerState.HALF_OPEN
        return ep.state

    def hinted(self, region: str, model: str) -> bool:
        """Whether the endpoint is on probation after a peer's ejection."""
        ep = self._endpoints.get((region, model))
        return ep is not None and self._hinted(region, model, ep)

    def available(self, region: str, model: str) -> bool:
        """Whether a request may be sent there now (without taking the probe): closed, or half-open
        with no probe running."""
        ep = self._endpoints.get((region, model))
        if ep is None:
            return True
        if ep.state is BreakerState.CLOSED:
            return True  # on probation too: `demoted` decides its place
        if ep.state is BreakerState.OPEN:
            return self._clock() >= ep.ejected_until
        return not ep.probing

    def acquire(self, region: str, model: str) -> bool:
        """Claims the right to send one request; False when the endpoint is ejected or its one
        probe is already out. Every True must be followed by exactly one `record`/`release`."""
        ep = self._endpoints.get((region, model))
        if ep is None:
            return True
        if ep.state is BreakerState.CLOSED:
            if self._hinted(region, model, ep):
                ep.hint_inflight += 1  # its result is evidence of this replica's own
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
            ep.hint_inflight = max(0, ep.hint_inflight - 1)

    def demoted(self, region: str, model: str) -> bool:
        """Whether a candidate list being built now puts the endpoint last: on probation after a
        peer's ejection, except for a bounded share of the lists (`hint_probe_share`, the first
        list after the hint included), and only while no request of its is out."""
        ep = self._endpoints.get((region, model))
        if ep is None or ep.state is not BreakerState.CLOSED or not self._hinted(region, model, ep):
            return False
        ep.hint_seen += 1
        if ep.hint_inflight or ep.hint_sent >= max(1.0, self.config.hint_probe_share * ep.hint_seen):
            return True
        ep.hint_sent += 1
        return False

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
        if ep.state is BreakerState.CLOSED and ep.hint_inflight and self._hinted(region, model, ep):
            ep.hint_inflight -= 1
            if not ok:
                # This replica's own evidence now: ejected like any failure that trips it.
                self._eject(region, model, ep, f"failed here too after {ep.hinted_by} ejected it")
                return
            ep.hint_successes += 1
            if ep.hint_successes >= self.config.hint_successes:
                self._end_hint(region, model, ep, f"{ep.hint_successes} probes succeeded")
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
        if ep.hinted_until:
            self._clear_hint(ep)
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

    # Peers' events -------------------------------------------------------------------------

    def peer_ejected(
        self,
        region: str,
        model: str,
        *,
        replica: str,
        ejected_for_s: float,
        observed_at_wall: float,
        reason: str = "",
    ) -> HintDecision:
        """A peer replica ejected (region, model) for `ejected_for_s` seconds (its ejected_until
        minus its observed_at) at `observed_at_wall` (its clock). Puts the endpoint on probation
        for that long from now when this replica still trusts it; says what it did."""
        decision = self._peer_ejected(region, model, replica, ejected_for_s, observed_at_wall)
        metrics.BREAKER_PEER_HINTS.labels(region, model, decision.value).inc()
        log.info(
            "breaker_peer_ejection",
            region=region,
            model=model,
            replica=replica,
            ejected_for_s=round(ejected_for_s, 3),
            reason=reason,
            decision=decision.value,
        )
        return decision

    def _peer_ejected(
        self, region: str, model: str, replica: str, ejected_for_s: float, observed_at_wall: float
    ) -> HintDecision:
        config = self.config
        if replica == self.replica:
            return HintDecision.OWN_EVENT
        if config.hint_probe_share <= 0:
            return HintDecision.DISABLED
        if not self._newest_from(region, model, replica, observed_at_wall):
            return HintDecision.STALE
        age = self._wall() - observed_at_wall
        if ejected_for_s <= 0 or age > config.hint_max_age_s:
            return HintDecision.STALE
        key = (region, model)
        ep = self._endpoints.get(key)
        if ep is None:
            ep = self._endpoints[key] = _Endpoint(closed_at=self._clock())
        if ep.state is not BreakerState.CLOSED:
            return HintDecision.NOT_TRUSTED
        until = self._clock() + min(ejected_for_s, config.max_ejection_s)
        if self._hinted(region, model, ep):
            ep.hinted_until = max(ep.hinted_until, until)
            return HintDecision.EXTENDED
        # Own ejections and probations together stay within max_ejection_percent (one may always be).
        out = self._ejected_now() + sum(
            1
            for (r, m), other in self._endpoints.items()
            if other.state is BreakerState.CLOSED and self._hinted(r, m, other)
        )
        total = max(self.endpoint_count, len(self._endpoints), 1)
        if out > 0 and (out + 1) * 100.0 / total > config.max_ejection_percent:
            return HintDecision.MAX_EJECTED
        ep.hinted_until, ep.hinted_by = until, replica
        ep.hint_seen = ep.hint_sent = ep.hint_successes = ep.hint_inflight = 0
        metrics.BREAKER_STATE.labels(region, model).set(STATE_VALUE[BreakerState.HALF_OPEN])
        return HintDecision.HINTED

    def peer_recovered(self, region: str, model: str, *, replica: str, observed_at_wall: float) -> bool:
        """A peer's breaker for (region, model) closed again: a probation here ends (this
        replica's own ejection does not: it ends on its own probe). True when a hint ended."""
        if replica == self.replica or not self._newest_from(region, model, replica, observed_at_wall):
            return False
        ep = self._endpoints.get((region, model))
        if ep is None or not self._hinted(region, model, ep):
            return False
        self._end_hint(region, model, ep, f"{replica} recovered it")
        return True

    def _newest_from(self, region: str, model: str, replica: str, observed_at_wall: float) -> bool:
        """Records the event's time; False when a newer event of the same replica was seen (events
        of one replica are ordered by its own clock)."""
        key = (region, model, replica)
        if observed_at_wall < self._peer_seen.get(key, float("-inf")):
            return False
        self._peer_seen[key] = observed_at_wall
        return True

    def _hinted(self, region: str, model: str, ep: _Endpoint) -> bool:
        if not ep.hinted_until:
            return False
        if self._clock() < ep.hinted_until:
            return True
        self._end_hint(region, model, ep, "ejection time over")
        return False

    def _end_hint(self, region: str, model: str, ep: _Endpoint, reason: str) -> None:
        hinted_by = ep.hinted_by
        self._clear_hint(ep)
        if ep.state is BreakerState.CLOSED:
            metrics.BREAKER_STATE.labels(region, model).set(STATE_VALUE[BreakerState.CLOSED])
        log.info("breaker_peer_hint_ended", region=region, model=model, hinted_by=hinted_by, reason=reason)

    @staticmethod
    def _clear_hint(ep: _Endpoint) -> None:
        ep.hinted_until = 0.0
        ep.hinted_by = ""
        ep.hint_seen = ep.hint_sent = ep.hint_successes = ep.hint_inflight = 0
