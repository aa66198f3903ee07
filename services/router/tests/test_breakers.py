"""The breaker state machine on a fake clock."""

from __future__ import annotations

from llmesh.services.router.breakers import BreakerConfig, Breakers, BreakerState, HintDecision
from prometheus_client import REGISTRY

CONFIG = BreakerConfig(
    consecutive_failures=3,
    error_rate=0.5,
    min_requests=6,
    window_s=10.0,
    base_ejection_s=5.0,
    max_ejection_s=12.0,
    max_ejection_percent=50.0,
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def board(**overrides):
    clock, changes = Clock(), []
    config = BreakerConfig(**{**CONFIG.__dict__, **overrides})
    breakers = Breakers(config, clock=clock, wall_clock=lambda: 5e8 + clock.now, on_change=changes.append)
    breakers.endpoint_count = 4
    return breakers, clock, changes


def fail(breakers, model, times=1, region="r"):
    for _ in range(times):
        assert breakers.acquire(region, model)
        breakers.record(region, model, ok=False)


def test_consecutive_failures_eject_and_the_ejection_grows_with_repeats():
    breakers, clock, changes = board()
    fail(breakers, "m", 2)
    assert breakers.acquire("r", "m")
    breakers.record("r", "m", ok=True)  # a success resets the run
    fail(breakers, "m", 2)
    assert breakers.state("r", "m") is BreakerState.CLOSED
    fail(breakers, "m")
    assert breakers.state("r", "m") is BreakerState.OPEN and not breakers.acquire("r", "m")
    assert changes[-1].reason == "3 consecutive failures" and changes[-1].ejections == 1
    assert changes[-1].ejected_until == clock.now + 5.0
    labels = {"region": "r", "model": "m"}
    assert REGISTRY.get_sample_value("llmesh_router_breaker_state", labels) == 2.0

    clock.now += 5.0
    assert breakers.state("r", "m") is BreakerState.HALF_OPEN
    assert breakers.acquire("r", "m"), "the next real request is the probe"
    assert not breakers.acquire("r", "m") and not breakers.available("r", "m"), "one probe at a time"
    breakers.record("r", "m", ok=False)
    assert breakers.state("r", "m") is BreakerState.OPEN and changes[-1].reason == "probe failed"
    assert changes[-1].ejections == 2 and changes[-1].ejected_until == clock.now + 10.0
    clock.now += 10.0
    assert breakers.acquire("r", "m")
    breakers.record("r", "m", ok=False)
    assert changes[-1].ejected_until == clock.now + 12.0, "capped at max_ejection_s"
    clock.now += 12.0
    assert breakers.acquire("r", "m")
    breakers.record("r", "m", ok=True)
    assert breakers.state("r", "m") is BreakerState.CLOSED and changes[-1].reason == "probe succeeded"
    assert [c.state for c in changes] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_a_probe_without_a_verdict_frees_the_probe_slot():
    breakers, clock, _ = board()
    fail(breakers, "m", 3)
    clock.now += 5.0
    assert breakers.acquire("r", "m")
    breakers.release("r", "m")
    assert breakers.acquire("r", "m")


def test_error_rate_ejects_with_enough_requests_in_the_window():
    breakers, clock, changes = board(consecutive_failures=100)
    for ok in (True, False, True, False, True):
        assert breakers.acquire("r", "m")
        breakers.record("r", "m", ok=ok)
    assert breakers.state("r", "m") is BreakerState.CLOSED, "5 results: under min_requests"
    fail(breakers, "m")
    assert breakers.state("r", "m") is BreakerState.OPEN
    assert changes[-1].reason == "error rate 0.50 >= 0.50 over 6 requests"


def test_old_results_leave_the_window():
    breakers, clock, _ = board(consecutive_failures=100)
    fail(breakers, "m", 2)
    clock.now += 11.0
    for _ in range(4):
        breakers.acquire("r", "m")
        breakers.record("r", "m", ok=True)
    fail(breakers, "m", 1)
    assert breakers.state("r", "m") is BreakerState.CLOSED, "1 failure of 5 in the window"


def test_no_more_than_max_ejection_percent_are_out_but_one_always_may_be():
    breakers, clock, changes = board(max_ejection_percent=25.0)
    fail(breakers, "a", 3)
    assert breakers.state("r", "a") is BreakerState.OPEN, "the first ejection is always allowed"
    fail(breakers, "b", 3)
    assert breakers.state("r", "b") is BreakerState.CLOSED, "2 of 4 would be 50 % > 25 %"
    clock.now += 5.0
    breakers.acquire("r", "a")
    breakers.record("r", "a", ok=True)
    fail(breakers, "b")
    assert breakers.state("r", "b") is BreakerState.OPEN


def test_a_healthy_spell_resets_the_ejection_count():
    breakers, clock, changes = board()
    fail(breakers, "m", 3)
    clock.now += 5.0
    breakers.acquire("r", "m")
    breakers.record("r", "m", ok=True)
    clock.now += 13.0  # closed for longer than max_ejection_s
    breakers.acquire("r", "m")
    breakers.record("r", "m", ok=True)
    fail(breakers, "m", 3)
    assert changes[-1].ejections == 1 and changes[-1].ejected_until == clock.now + 5.0


def test_a_failing_publisher_does_not_break_the_breaker():
    def boom(change):
        raise RuntimeError("bus down")

    breakers = Breakers(CONFIG, on_change=boom)
    fail(breakers, "m", 3)
    assert breakers.state("r", "m") is BreakerState.OPEN


# Peers' ejections as hints (docs/adr/0030) ---------------------------------------------------


def peer_ejects(breakers, clock, model="m", *, replica="peer-1", for_s=5.0, age_s=0.0, region="r"):
    return breakers.peer_ejected(
        region, model, replica=replica, ejected_for_s=for_s, observed_at_wall=5e8 + clock.now - age_s, reason="test"
    )


def probe(breakers, model="m", ok=True, region="r") -> bool:
    """One request whose candidate list holds the endpoint: True when the endpoint kept its place
    (and was sent the request, with result `ok`)."""
    if breakers.demoted(region, model):
        return False
    assert breakers.acquire(region, model)
    breakers.record(region, model, ok=ok)
    return True


def test_a_peers_ejection_puts_a_trusted_endpoint_on_probation_with_a_bounded_share():
    breakers, clock, changes = board(hint_probe_share=0.25, hint_successes=100)
    assert peer_ejects(breakers, clock, for_s=5.0) is HintDecision.HINTED
    assert breakers.hinted("r", "m") and breakers.state("r", "m") is BreakerState.HALF_OPEN
    assert REGISTRY.get_sample_value("llmesh_router_breaker_state", {"region": "r", "model": "m"}) == 1.0
    assert changes == [], "a hint is not republished as this replica's change"
    assert breakers.available("r", "m"), "never off the list on a hint alone"
    sent = [probe(breakers) for _ in range(20)]
    assert sent[0], "the first request after the hint is a probe"
    assert sum(sent) == 5, "a quarter of the lists keep it in its place"
    assert breakers.state("r", "m") is BreakerState.HALF_OPEN
    clock.now += 5.0
    assert not breakers.hinted("r", "m") and breakers.state("r", "m") is BreakerState.CLOSED
    assert all(probe(breakers) for _ in range(5)), "full trust again once the ejection time is over"


def test_one_probe_at_a_time_while_on_probation():
    breakers, clock, _ = board(hint_probe_share=1.0)
    peer_ejects(breakers, clock)
    assert not breakers.demoted("r", "m") and breakers.acquire("r", "m")
    assert breakers.demoted("r", "m"), "its probe is out: last on the next list"
    assert breakers.acquire("r", "m"), "still sent when every candidate before it failed"
    breakers.release("r", "m")
    breakers.release("r", "m")
    assert not breakers.demoted("r", "m")


def test_a_failure_on_probation_ejects_it_here():
    breakers, clock, changes = board(consecutive_failures=5)
    peer_ejects(breakers, clock, replica="router-a")
    assert probe(breakers, ok=False)
    assert breakers.state("r", "m") is BreakerState.OPEN and not breakers.hinted("r", "m")
    assert changes[-1].reason == "failed here too after router-a ejected it", "one failure, not five"
    assert changes[-1].ejected_until == clock.now + 5.0
    assert not breakers.available("r", "m"), "ejected: off the list"


def test_successes_end_the_probation_early():
    breakers, clock, _ = board(hint_probe_share=1.0, hint_successes=3)
    peer_ejects(breakers, clock, for_s=60.0)
    for _ in range(2):
        assert probe(breakers, ok=True)
    assert breakers.hinted("r", "m")
    assert probe(breakers, ok=True)
    assert not breakers.hinted("r", "m") and breakers.state("r", "m") is BreakerState.CLOSED


def test_a_peers_recovery_ends_the_hint_but_not_an_own_ejection():
    breakers, clock, _ = board()
    peer_ejects(breakers, clock, replica="router-a")
    assert breakers.peer_recovered("r", "m", replica="router-b", observed_at_wall=5e8 + clock.now)
    assert not breakers.hinted("r", "m") and not breakers.demoted("r", "m")
    fail(breakers, "x", 3)
    assert not breakers.peer_recovered("r", "x", replica="router-a", observed_at_wall=5e8 + clock.now)
    assert breakers.state("r", "x") is BreakerState.OPEN, "its own ejection ends on its own probe"


def test_own_stale_and_out_of_order_events_are_ignored():
    breakers, clock, _ = board()
    breakers.replica = "me"
    assert peer_ejects(breakers, clock, replica="me") is HintDecision.OWN_EVENT
    assert peer_ejects(breakers, clock, for_s=0.0) is HintDecision.STALE, "an ejection already over"
    assert peer_ejects(breakers, clock, replica="q", age_s=11.0) is HintDecision.STALE, "older than hint_max_age_s"
    assert not breakers.hinted("r", "m")
    assert peer_ejects(breakers, clock, replica="p", age_s=1.0) is HintDecision.HINTED
    # A recovery observed before that ejection (the same replica's clock) arrives late: ignored.
    assert not breakers.peer_recovered("r", "m", replica="p", observed_at_wall=5e8 + clock.now - 2.0)
    assert breakers.hinted("r", "m")


def test_the_hint_lasts_the_ejections_duration_from_receipt_whatever_the_peers_clock():
    breakers, clock, _ = board()
    # The peer's clock runs 4 s behind: its event looks 4 s old, its ejection 5 s long.
    assert peer_ejects(breakers, clock, for_s=5.0, age_s=4.0) is HintDecision.HINTED
    clock.now += 4.9
    assert breakers.hinted("r", "m")
    clock.now += 0.2
    assert not breakers.hinted("r", "m")
    assert peer_ejects(breakers, clock, for_s=600.0) is HintDecision.HINTED
    clock.now += 12.0
    assert not breakers.hinted("r", "m"), "never longer than max_ejection_s"


def test_hints_respect_max_ejection_percent_together_with_own_ejections():
    breakers, clock, _ = board(max_ejection_percent=50.0)  # 4 endpoints: 2 may be out
    fail(breakers, "a", 3)
    assert peer_ejects(breakers, clock, "b") is HintDecision.HINTED
    assert peer_ejects(breakers, clock, "c") is HintDecision.MAX_EJECTED
    assert not breakers.hinted("r", "c") and all(probe(breakers, "c") for _ in range(3))
    assert peer_ejects(breakers, clock, "b", replica="peer-2", for_s=8.0) is HintDecision.EXTENDED
    assert peer_ejects(breakers, clock, "a") is HintDecision.NOT_TRUSTED, "already ejected here"
    lone, lone_clock, _ = board(max_ejection_percent=10.0)
    assert peer_ejects(lone, lone_clock, "a") is HintDecision.HINTED, "one may always be out"


def test_hints_can_be_turned_off():
    breakers, clock, _ = board(hint_probe_share=0.0)
    assert peer_ejects(breakers, clock) is HintDecision.DISABLED
    assert all(probe(breakers) for _ in range(3))
