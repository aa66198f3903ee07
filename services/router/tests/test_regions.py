"""Failover decisions on a fake clock (ADR 0017): within 5 s of a fault, back with hysteresis,
residency kept."""

from __future__ import annotations

import math

import pytest
from llmesh.kit.bus import Bus
from llmesh.kit.errors import PermissionDenied
from llmesh.kit.testing import assert_eventually, unique
from llmesh.services.router.region_health import (
    RegionHealthLink,
    parse_region_addrs,
    report_from_proto,
    report_to_proto,
)
from llmesh.services.router.regions import (
    Failover,
    HealthRules,
    ModelHealth,
    OutcomeWindow,
    RegionBoard,
    RegionHealthReport,
    RouterCensus,
    percentile,
)

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def healthy(model: str, tier: int = 1, **kw) -> ModelHealth:
    values = dict(model=model, tier=tier, error_rate=0.0, ttft_p95_ms=80.0, utilization=0.3, requests=10)
    values.update(kw)
    return ModelHealth(**values)


class World:
    """Region a (local, its own window) and region b (heard over NATS once a second)."""

    def __init__(self, **kw):
        self.clock = Clock()
        self.window = OutcomeWindow(window_s=5.0, clock=self.clock)
        self.window.know("small-a", 1)
        self.load = {"small-a": 0.2}
        self.board = RegionBoard(max_age_s=3.0, clock=self.clock)
        self.b_models = (healthy("small-b"),)
        self.failover = Failover(
            "a",
            ["b"],
            self.board,
            lambda tier: [
                m
                for m in self.window.report("a", "r1", utilization=lambda m: self.load.get(m, math.nan)).models
                if m.tier == tier
            ],
            failback_after_s=10.0,
            clock=self.clock,
            **kw,
        )

    def tick(self, seconds: float = 1.0, *, a_ok: bool | None = True, ttft_ms: float = 90.0) -> None:
        """`seconds` pass; each second region a's router serves two requests (ok or failed; None:
        none reach it) and region b's health report arrives."""
        for _ in range(int(seconds)):
            self.clock.now += 1.0
            if a_ok is not None:
                for _ in range(2):
                    self.window.record("small-a", 1, ok=a_ok, ttft_ms=ttft_ms if a_ok else math.nan)
            self.board.record(RegionHealthReport("b", "rb", self.b_models, self.clock.now))
            self.failover.observe([1, 2])


def test_a_failing_tier_moves_to_the_healthy_region_within_5_s_and_back_after_hysteresis():
    world = World()
    world.tick(3)
    assert world.failover.choose(1).region == "a"

    fault = world.clock.now
    moved_at = None
    for _ in range(5):
        world.tick(1, a_ok=False)
        if world.failover.choose(1).region == "b":
            moved_at = world.clock.now
            break
    assert moved_at is not None and moved_at - fault <= 5
    decision = world.failover.choose(1)
    assert decision.failed_over and "down in region a" in decision.reason

    # Recovered, but not for long enough: stays in b (no flapping).
    world.tick(6, a_ok=True)
    assert world.failover.choose(1).region == "b"
    world.tick(1, a_ok=False)  # a relapse restarts the hysteresis
    world.tick(6, a_ok=True)
    assert world.failover.choose(1).region == "b"
    world.tick(5, a_ok=True)
    assert world.failover.choose(1).region == "a"


def test_a_failing_model_fails_every_tier_it_serves():
    world = World()
    world.window.know("small-a", 2)
    world.tick(5, a_ok=False)
    assert world.failover.choose(1).region == "b"
    assert world.window.health("small-a", 2).error_rate == 1.0


def test_other_tiers_stay_local():
    world = World()
    world.window.know("big-a", 2)
    world.tick(2)
    for _ in range(5):
        world.tick(1, a_ok=False)
        world.window.record("big-a", 2, ok=True, ttft_ms=100)
    assert world.failover.choose(1).region == "b"
    assert world.failover.choose(2).region == "a"


def test_latency_over_the_sla_and_silent_inference_count_as_down():
    world = World(rules=HealthRules(ttft_sla_ms=1000))
    world.tick(3, ttft_ms=2500)
    assert world.failover.choose(1).region == "b"

    world = World()
    del world.load["small-a"]  # no fresh load snapshot: inference is gone
    world.tick(6, a_ok=None)
    assert world.failover.choose(1).region == "b"


def test_no_failover_to_a_region_that_is_down_or_unheard():
    world = World()
    world.b_models = (healthy("small-b", error_rate=0.9),)
    world.tick(5, a_ok=False)
    decision = world.failover.choose(1)
    assert decision.region == "a" and not decision.failed_over

    world = World()
    world.tick(2)
    world.clock.now += 4  # region b's reports stopped: unknown, never assumed healthy
    for _ in range(3):
        world.clock.now += 1
        world.window.record("small-a", 1, ok=False)
        world.window.record("small-a", 1, ok=False)
    assert world.board.current("b") is None
    assert world.failover.choose(1).region == "a"


def test_a_failed_over_tier_comes_back_when_the_peer_fails_too():
    world = World()
    world.tick(5, a_ok=False)
    assert world.failover.choose(1).region == "b"
    world.b_models = (healthy("small-b", breaker_open=True),)
    world.tick(1, a_ok=False)
    assert world.failover.choose(1).region == "a"


def test_residency_refuses_a_foreign_region_naming_the_rule():
    world = World()
    world.tick(5, a_ok=False)
    with pytest.raises(PermissionDenied, match=r"failed over to region b.*data_access\.regions"):
        world.failover.choose(1, allowed_regions=frozenset({"a"}))
    assert world.failover.choose(1, allowed_regions=frozenset({"a", "b"})).region == "b"
    world.tick(15, a_ok=True)
    assert world.failover.choose(1, allowed_regions=frozenset({"a"})).region == "a"


def test_region_addresses_are_checked():
    assert parse_region_addrs("b=127.0.0.1:1, c = h:2") == {"b": "127.0.0.1:1", "c": "h:2"}
    with pytest.raises(ValueError, match="region=host:port"):
        parse_region_addrs("127.0.0.1:1")


def test_window_statistics():
    clock = Clock()
    window = OutcomeWindow(window_s=5.0, clock=clock)
    for ttft in range(1, 21):
        window.record("m", 1, ok=True, ttft_ms=float(ttft))
    window.record("m", 1, ok=False)
    health = window.health("m", 1, utilization=0.5)
    assert health.requests == 21 and health.error_rate == pytest.approx(1 / 21)
    assert health.ttft_p95_ms == 19.0
    clock.now += 6
    assert window.health("m", 1).requests == 0
    assert math.isnan(percentile([], 0.95))


async def test_routers_hear_every_region_over_nats(nats_url):
    report = RegionHealthReport("a", "r1", (healthy("m", utilization=math.nan),), 1_700_000_000.25)
    back = report_from_proto(report_to_proto(report))
    assert back.models[0].model == "m" and math.isnan(back.models[0].utilization)
    assert back.observed_at == report.observed_at

    regions = [unique("ra"), unique("rb")]
    links, buses = [], []
    try:
        for region in regions:
            bus = await Bus.connect(nats_url, f"test-{region}")
            buses.append(bus)
            window = OutcomeWindow()
            window.record("small", 1, ok=False)
            board = RegionBoard()
            failover = Failover(region, [r for r in regions if r != region], board, lambda tier: [])
            link = RegionHealthLink(bus, region, "r", window, board, failover, lambda m: 0.5)
            await link.start()
            links.append(link)

        async def both_heard():
            for link in links:
                await link.tick()
            other = links[0].board.current(regions[1])
            assert other is not None and other.models[0].error_rate == 1.0
            assert links[1].board.current(regions[0]) is not None
            assert links[0].board.current(regions[0]) is None  # its own health is what it saw itself

        await assert_eventually(both_heard, timeout_s=10)
    finally:
        for bus in buses:
            await bus.close()


def test_the_router_count_is_the_replicas_heard_lately_else_the_setting():
    clock = Clock()
    census = RouterCensus("me", max_age_s=3.0, fallback=2, clock=clock)
    assert census.count() == 2, "nothing heard yet (the first second, or NATS down): the setting"
    census.heard("me")
    assert census.count() == 1
    census.heard("peer-1")
    clock.now += 1.0
    census.heard("peer-2")
    census.heard("me")
    assert census.count() == 3
    clock.now += 2.5  # peer-1 silent for 3.5 s: gone
    assert census.count() == 2
    clock.now += 1.0  # its own report too (NATS down): the setting again
    assert census.count() == 2 and RouterCensus("me", 3.0, clock=clock).count() == 1
    census.heard("peer-2")
    assert census.count() == 2, "a peer heard counts this replica with it, own report or not"


async def test_routers_count_the_replicas_of_their_own_region_over_nats(nats_url):
    regions = [unique("ca"), unique("cb")]
    links, buses = [], []
    try:
        for region, replica in ((regions[0], "r1"), (regions[0], "r2"), (regions[1], "r3")):
            bus = await Bus.connect(nats_url, f"test-{replica}")
            buses.append(bus)
            board = RegionBoard()
            failover = Failover(region, [], board, lambda tier: [])
            census = RouterCensus(replica, 3.0, fallback=5)
            link = RegionHealthLink(bus, region, replica, OutcomeWindow(), board, failover, lambda m: 0.5, census)
            await link.start()
            links.append(link)
        assert [link.census.count() for link in links] == [5, 5, 5], "nothing heard yet"

        async def counted():
            for link in links:
                await link.tick()
            assert [link.census.count() for link in links] == [2, 2, 1]

        await assert_eventually(counted, timeout_s=10)
    finally:
        for bus in buses:
            await bus.close()


def test_window_health_matches_a_recount_of_the_window_as_requests_come_and_expire():
    """The window keeps running counts (failures, sorted TTFTs) so a check does not rescan it: they
    must agree with counting the requests still in the window, however they arrive and expire."""
    import random

    rng = random.Random(7)
    clock = Clock()
    window = OutcomeWindow(window_s=10.0, clock=clock)
    seen: list[tuple[float, bool, float]] = []
    for _ in range(3000):
        clock.now += rng.choice((0.0, 0.001, 0.01, 0.5))
        ok = rng.random() > 0.2
        ttft = math.nan if rng.random() < 0.1 else float(rng.choice((5, 7, 7, 20, 300, 2500)))
        window.record("m", 1, ok=ok, ttft_ms=ttft)
        seen.append((clock.now, ok, ttft))
        if rng.random() < 0.3:
            live = [s for s in seen if s[0] >= clock.now - 10.0]
            ttfts = sorted(t for _, good, t in live if good and not math.isnan(t))
            health = window.health("m", 1)
            assert health.requests == len(live)
            assert health.error_rate == pytest.approx(sum(1 for s in live if not s[1]) / len(live))
            expected = ttfts[min(len(ttfts) - 1, math.ceil(0.95 * len(ttfts)) - 1)] if ttfts else math.nan
            assert health.ttft_p95_ms == expected or (math.isnan(expected) and math.isnan(health.ttft_p95_ms))
    clock.now += 11.0
    empty = window.health("m", 1)
    assert (empty.requests, empty.error_rate, math.isnan(empty.ttft_p95_ms)) == (0, 0.0, True)
