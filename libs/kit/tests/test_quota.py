"""The quota stores (llmesh.kit.quota): the same tests against the in-process store and a real
redis-server; the concurrency proofs use two Redis stores as two router replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest
from llmesh.kit.quota import (
    Budget,
    Charge,
    MemoryQuotaStore,
    Period,
    QuotaStoreUnavailable,
    RateCharge,
    RateLimit,
    RedisQuotaStore,
    Scope,
    Unit,
    counter_for,
    parse_budgets,
    parse_rate_limits,
    rate_key,
)
from llmesh.kit.testing import assert_eventually, free_port, unique
from structlog.testing import capture_logs


class Clock:
    def __init__(self, now: float = 1_780_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryQuotaStore()
        return
    opened = RedisQuotaStore(request.getfixturevalue("redis_url"), timeout_s=5.0)
    yield opened
    await opened.close()


def budget(limit: float, *, unit: Unit = Unit.USD, hard: bool = True, name: str = "monthly") -> Budget:
    return Budget(name, Scope.TENANT, Period.MONTH, unit, limit, hard)


def counter(limit: float, **kw):
    tenant = unique("tenant")
    return counter_for(tenant, budget(limit, **kw), tenant, 1_780_000_000.0)


def usd(amount: float) -> int:
    return Unit.USD.to_int(amount, up=True)


async def test_reserve_refuses_what_would_pass_the_limit_and_names_the_counter(store):
    c = counter(1.0)
    assert await store.reserve("r1", [Charge(c, usd(0.6))], ttl_s=60) is None
    refusal = await store.reserve("r2", [Charge(c, usd(0.5))], ttl_s=60)
    assert refusal is not None and refusal.counter == c
    assert (refusal.spent, refusal.reserved, refusal.amount) == (0, usd(0.6), usd(0.5))
    assert await store.reserve("r3", [Charge(c, usd(0.4))], ttl_s=60) is None  # exactly the limit fits
    balance = await store.balance(c)
    assert (balance.spent, balance.reserved) == (0, usd(1.0))


async def test_settle_counts_the_actual_and_releases_the_rest(store):
    c = counter(1.0)
    assert await store.reserve("r1", [Charge(c, usd(0.9))], ttl_s=60) is None
    assert await store.settle("r1", [Charge(c, usd(0.2))]) == []
    balance = await store.balance(c)
    assert (balance.spent, balance.reserved) == (usd(0.2), 0)
    assert await store.reserve("r2", [Charge(c, usd(0.8))], ttl_s=60) is None
    assert await store.reserve("r3", [Charge(c, 1)], ttl_s=60) is not None


async def test_a_second_reserve_of_one_request_replaces_its_hold(store):
    c = counter(1.0)
    assert await store.reserve("r1", [Charge(c, usd(0.5))], ttl_s=60) is None
    assert await store.reserve("r1", [Charge(c, usd(0.9))], ttl_s=60) is None  # 0.9 in all, not 1.4
    assert (await store.balance(c)).reserved == usd(0.9)
    refusal = await store.reserve("r1", [Charge(c, usd(1.1))], ttl_s=60)
    assert refusal is not None and refusal.reserved == 0  # its own hold does not count against it
    assert (await store.balance(c)).reserved == usd(0.9), "a refused re-reserve keeps the hold it had"


async def test_a_reserve_over_several_budgets_holds_all_or_none(store):
    roomy, tight = counter(10.0, name="roomy"), counter(1.0, name="tight")
    refusal = await store.reserve("r1", [Charge(roomy, usd(2)), Charge(tight, usd(2))], ttl_s=60)
    assert refusal is not None and refusal.counter == tight
    assert (await store.balance(roomy)).reserved == 0


async def test_an_unsettled_hold_expires_and_frees_its_room(store):
    c = counter(1.0)
    assert await store.reserve("crashed", [Charge(c, usd(1.0))], ttl_s=0.2) is None
    assert await store.reserve("next", [Charge(c, usd(0.5))], ttl_s=60) is not None

    async def fits():
        return await store.reserve("next", [Charge(c, usd(0.5))], ttl_s=60) is None

    await assert_eventually(fits, timeout_s=5, message="the crashed request's hold expired")
    assert (await store.balance(c)).reserved == usd(0.5)


async def test_thresholds_are_reported_once_per_crossing(store):
    c = counter(100, unit=Unit.TOKENS, hard=False)
    assert await store.settle("a", [Charge(c, 40)]) == []
    assert [x.threshold_percent for x in await store.settle("b", [Charge(c, 15)])] == [50]
    assert await store.settle("c", [Charge(c, 10)]) == []
    # One settle may cross two thresholds: each is reported, once.
    crossings = await store.settle("d", [Charge(c, 40)])
    assert [(x.threshold_percent, x.spent) for x in crossings] == [(80, 105), (100, 105)]
    assert await store.settle("e", [Charge(c, 10)]) == []
    assert (await store.balance(c)).alerted_percent == 100


async def test_two_stores_report_each_crossing_once_between_them(redis_url):
    c = counter(1000, unit=Unit.TOKENS, hard=False)
    a, b = RedisQuotaStore(redis_url, timeout_s=5), RedisQuotaStore(redis_url, timeout_s=5)
    try:
        results = await asyncio.gather(*((a, b)[i % 2].settle(f"r{i}", [Charge(c, 10)]) for i in range(100)))
    finally:
        await a.close()
        await b.close()
    assert sorted(x.threshold_percent for r in results for x in r) == [50, 80, 100]


def rate(limit: int, cost: int = 1, what: str = "requests", **kw) -> RateCharge:
    spec = RateLimit("rpm", Scope.TENANT, requests_per_minute=limit, **kw)
    return RateCharge(rate_key(unique("tenant"), spec, "x", what), limit, cost, spec, what)


async def test_a_rate_limit_admits_a_burst_of_its_limit_then_says_when_to_retry(store):
    charge = rate(6)
    for _ in range(6):
        assert await store.acquire([charge]) is None
    refusal = await store.acquire([charge])
    assert refusal is not None and refusal.charge == charge
    assert 9.0 < refusal.retry_after_s <= 10.0  # one request every 10 s
    too_big = rate(10, cost=11, what="tokens")
    refusal = await store.acquire([too_big])
    assert refusal is not None and refusal.retry_after_s is None


async def test_rate_limits_are_taken_all_or_none(store):
    loose, tight = rate(100), rate(1)
    assert await store.acquire([loose, tight]) is None
    assert (await store.acquire([loose, tight])).charge == tight
    # The refused call took nothing from the loose limit: 99 more fit, then no more.
    for _ in range(99):
        assert await store.acquire([loose]) is None
    assert await store.acquire([loose]) is not None


async def test_a_refund_gives_back_what_a_request_did_not_use(store):
    spec = RateLimit("tpm", Scope.TENANT, tokens_per_minute=1000)
    key = rate_key(unique("tenant"), spec, "x", "tokens")
    worst = RateCharge(key, 1000, 600, spec, "tokens")
    assert await store.acquire([worst]) is None
    assert await store.acquire([worst]) is not None  # 600 + 600 > 1000
    await store.refund([dataclasses.replace(worst, cost=500)])  # the first one used 100
    assert await store.acquire([worst]) is None
    # A refund never gives back more than was taken: the bucket is full again, not fuller.
    await store.refund([dataclasses.replace(worst, cost=5000)])
    assert await store.acquire([worst]) is None
    assert await store.acquire([worst]) is not None


async def test_the_memory_store_expires_holds_by_its_clock():
    clock = Clock()
    store = MemoryQuotaStore(clock=clock)
    c = counter(1.0)
    assert await store.reserve("r", [Charge(c, usd(1.0))], ttl_s=30) is None
    clock.now += 29
    assert await store.reserve("s", [Charge(c, 1)], ttl_s=30) is not None
    clock.now += 2
    assert await store.reserve("s", [Charge(c, 1)], ttl_s=30) is None


async def test_an_unreachable_redis_raises_quota_store_unavailable():
    store = RedisQuotaStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        with pytest.raises(QuotaStoreUnavailable, match="unreachable"):
            await store.reserve("r", [Charge(counter(1.0), 1)], ttl_s=10)
        with pytest.raises(QuotaStoreUnavailable):
            await store.acquire([rate(5)])
    finally:
        await store.close()


async def spend_concurrently(stores, c, *, requests: int, worst: int, actual) -> tuple[int, int]:
    """`requests` concurrent reserve → settle, spread over `stores`: (admitted, refused)."""
    admitted = refused = 0

    async def one(i: int) -> None:
        nonlocal admitted, refused
        store = stores[i % len(stores)]
        if await store.reserve(f"req-{i}", [Charge(c, worst)], ttl_s=60) is not None:
            refused += 1
            return
        admitted += 1
        await asyncio.sleep(random.random() * 0.01)  # generating
        await store.settle(f"req-{i}", [Charge(c, actual())])

    await asyncio.gather(*(one(i) for i in range(requests)))
    return admitted, refused


@pytest.mark.timeout(300)
async def test_two_replicas_and_1000_concurrent_requests_never_spend_past_the_budget(redis_url):
    """A budget that fits 100 worst cases; two stores (two router replicas) share one Redis."""
    worst = usd(0.013)
    replicas = [RedisQuotaStore(redis_url, timeout_s=10), RedisQuotaStore(redis_url, timeout_s=10)]
    try:
        for _ in range(3):
            # Every request costs its worst case: exactly 100 are admitted, the budget is spent exactly.
            c = counter(0.013 * 100)
            admitted, refused = await spend_concurrently(replicas, c, requests=1000, worst=worst, actual=lambda: worst)
            balance = await replicas[0].balance(c)
            assert (admitted, refused) == (100, 900)
            assert (balance.spent, balance.reserved) == (c.limit, 0)
        for _ in range(2):
            # Requests cost less than their worst case: the released rest admits more, still within.
            c = counter(0.013 * 100)
            admitted, _ = await spend_concurrently(
                replicas, c, requests=1000, worst=worst, actual=lambda: random.randint(worst // 4, worst)
            )
            balance = await replicas[1].balance(c)
            assert admitted >= 100
            assert balance.reserved == 0
            assert balance.spent <= c.limit
    finally:
        for replica in replicas:
            await replica.close()


async def test_two_replicas_together_admit_no_more_than_the_rate_limit(redis_url):
    charge = rate(50)
    replicas = [RedisQuotaStore(redis_url, timeout_s=10), RedisQuotaStore(redis_url, timeout_s=10)]
    try:
        results = await asyncio.gather(*(replicas[i % 2].acquire([charge]) for i in range(400)))
    finally:
        for replica in replicas:
            await replica.close()
    assert sum(r is None for r in results) == 50
    assert all(r.retry_after_s > 0 for r in results if r is not None)


def test_policy_sections_parse_and_skip_malformed_entries():
    doc = {
        "budgets": [
            {"name": "m", "limit": 10},
            {"name": "d", "scope": "api_key", "period": "day", "unit": "tokens", "limit": 5000, "hard": False},
            {"name": "bad scope", "limit": 1},
            {"name": "neg", "limit": -1},
            {"name": "x", "scope": "planet", "limit": 1},
        ],
        "rate_limits": [
            {"name": "rpm", "requests_per_minute": 60},
            {"name": "tpm", "scope": "use_case", "tokens_per_minute": 1000, "fail_open": False},
            {"name": "none"},
            {"name": "zero", "requests_per_minute": 0},
        ],
    }
    with capture_logs() as logs:
        budgets, limits = parse_budgets(doc), parse_rate_limits(doc)
    assert budgets == (
        Budget("m", Scope.TENANT, Period.MONTH, Unit.USD, 10.0, True),
        Budget("d", Scope.API_KEY, Period.DAY, Unit.TOKENS, 5000.0, False),
    )
    assert limits == (
        RateLimit("rpm", Scope.TENANT, requests_per_minute=60),
        RateLimit("tpm", Scope.USE_CASE, tokens_per_minute=1000, fail_open=False),
    )
    assert len([e for e in logs if e["event"] == "policy_entry_ignored"]) == 5


def test_periods_are_utc_days_and_calendar_months():
    start, end = Period.MONTH.window(1_798_761_600.0 - 1)  # 2026-12-31T23:59:59Z
    assert (start.isoformat(), end.isoformat()) == ("2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00")
    start, end = Period.DAY.window(1_798_761_600.0)
    assert (start.isoformat(), end.isoformat()) == ("2027-01-01T00:00:00+00:00", "2027-01-02T00:00:00+00:00")
