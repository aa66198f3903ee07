"""The breaker state machine on a fake clock."""

from __future__ import annotations

from llmesh.services.router.breakers import BreakerConfig, Breakers, BreakerState
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
