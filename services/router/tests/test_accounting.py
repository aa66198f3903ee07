"""Budgets, global rate limits and usage records through the router: two router replicas share
one real redis-server and one policy bucket, against the fake upstreams and a real nats-server."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.chat import Message, Sampling
from llmesh.kit.client import open_channel
from llmesh.kit.outbox import batch_msg_id
from llmesh.kit.quota import counter_for
from llmesh.kit.streams import TENANCY, USAGE, budget_alert_subject, usage_subject
from llmesh.kit.testing import RedisServer, assert_eventually, free_port, hosted, unique
from llmesh.kit.usage import pack_usage, usage_records
from llmesh.kit.vocabulary import Principal, Sensitivity
from llmesh.router.v1 import router_pb2
from llmesh.services.router.app import RouterApp
from llmesh.services.router.domain import CacheOutcome, GenerateCommand, Priority
from llmesh.services.router.routing import Price
from nats.js import api as js_api
from prometheus_client import REGISTRY

from services.router.tests.conftest import RouterClient, router_settings

pytestmark = pytest.mark.timeout(60)

BYPASS = dict(cache_policy=router_pb2.CACHE_POLICY_BYPASS)
# "hi" is bounded by 2 bytes + 8 tokens of overhead; with max_tokens 10 at tiny-1's price
# (1.0 / 2.0 USD per 1k) the worst case is (10 + 20) / 1000 = 0.03 USD. The fake inference reports
# 10 prompt and 4 completion tokens: (10 + 8) / 1000 = 0.018 USD.
WORST, ACTUAL = 0.03, 0.018


@pytest.fixture(scope="module")
async def replicas(nats_url, upstreams, redis_url):
    """Two routers sharing a Redis and a policy bucket."""
    bucket = unique("policy")
    apps = [
        RouterApp(router_settings(nats_url, upstreams.address, policy_bucket=bucket, quota_redis_url=redis_url))
        for _ in range(2)
    ]
    async with hosted(apps[0], apps[0].settings) as a, hosted(apps[1], apps[1].settings) as b:
        async with open_channel(a.address) as ca, open_channel(b.address) as cb:
            yield [RouterClient(ca, upstreams), RouterClient(cb, upstreams)], apps


async def applied(apps, tenant: str, check) -> None:
    """Waits until every replica applies the tenant's policy just written."""
    for app in apps:
        await assert_eventually(
            lambda app=app: check(app.accounting.policy(tenant, "default")), message="policy applied"
        )


async def collect(nats_url: str, stream, subject: str, decode, *, count: int, settle_s: float = 0.5) -> list:
    """Every item on `subject` of `stream` (from the start; `decode(data, headers)` gives the items
    of one message): waits for `count`, then a little longer to see that no more arrive."""
    bus = await Bus.connect(nats_url, unique("reader"))
    try:
        sub = await bus.js.subscribe(
            subject,
            stream=stream.name,
            ordered_consumer=True,
            config=js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.ALL),
        )
        got = []

        async def enough():
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.2)
                except Exception:
                    break
                got.extend(decode(msg.data, msg.headers))
            return len(got) >= count

        await assert_eventually(enough, timeout_s=10, message=f"{count} messages on {subject}")
        await asyncio.sleep(settle_s)  # anything extra would arrive now
        await enough()
        await sub.unsubscribe()
        return got
    finally:
        await bus.close()


async def test_a_hard_budget_refuses_before_any_token_and_names_the_budget(replicas, redis_url):
    clients, apps = replicas
    api_key, tenant, _ = clients[0].new_key()
    await apps[0].policy.put(f"tenant.{tenant}", {"budgets": [{"name": "monthly-usd", "limit": 0.05}]})
    await applied(apps, tenant, lambda p: p.budgets)
    # 0.03 held, 0.018 spent; then 0.018 + 0.03 <= 0.05 again; then 0.036 + 0.03 > 0.05.
    for client in clients:
        _, summary = await client.generate(api_key, "hi", max_tokens=10, **BYPASS)
        assert summary.cost_usd == pytest.approx(ACTUAL)
    rid = unique("req")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients[1].generate(api_key, "hi", max_tokens=10, request_id=rid, **BYPASS)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget 'monthly-usd'" in refused.value.details()
    assert rid not in clients[1].upstreams.inference.requests, "refused before inference was asked"
    budget = apps[0].accounting.policy(tenant, "default").budgets[0]
    balance = await apps[1].quota_store.balance(counter_for(tenant, budget, tenant, time.time()))
    assert balance.reserved == 0
    assert balance.spent == pytest.approx(2 * ACTUAL * 1e9, abs=2)


async def test_a_hold_moves_to_a_pricier_model_only_when_the_budget_takes_it(replicas):
    """The hook a fallback or overflow asks before it switches models (Accounting.rehold)."""
    clients, apps = replicas
    _, tenant, key_id = clients[0].new_key()
    await apps[0].policy.put(f"tenant.{tenant}", {"budgets": [{"name": "m", "unit": "usd", "limit": 0.5}]})
    await applied(apps, tenant, lambda p: p.budgets)
    principal = Principal(tenant, tenant, "bu", Sensitivity.INTERNAL, key_id)
    command = GenerateCommand(
        messages=(Message("user", "hi"),),
        max_tokens=10,
        sampling=Sampling(),
        use_case="default",
        priority=Priority.STANDARD,
        use_cache=False,
        pinned_model="",
    )
    accounting = apps[0].accounting
    hold = await accounting.reserve(
        principal,
        command,
        request_id=unique("req"),
        tier=1,
        model="tiny-1",
        backend="llama_cpp",
        region="",
        price=Price(1.0, 2.0),
    )  # 0.03 held
    counter = hold.counters[0]
    assert await accounting.rehold(hold, model="cloud-x", backend="openai", region="", price=Price(10.0, 20.0))
    assert (await apps[1].quota_store.balance(counter)).reserved == 300_000_000  # 0.3, not 0.33
    assert not await accounting.rehold(hold, model="gold", backend="openai", region="", price=Price(20.0, 40.0))
    assert hold.model == "cloud-x" and (await apps[1].quota_store.balance(counter)).reserved == 300_000_000
    accounting.abandon(hold, deltas=0, error=RuntimeError("test"), outcome=CacheOutcome.BYPASSED)
    await assert_eventually(lambda: _reserved(apps[1], counter, 0), message="released")


async def _reserved(app, counter, amount: int) -> bool:
    return (await app.quota_store.balance(counter)).reserved == amount


async def test_a_cache_hit_holds_nothing_and_is_served_past_an_exhausted_budget(replicas):
    clients, apps = replicas
    api_key, tenant, _ = clients[0].new_key()
    await clients[0].generate(api_key, "cache me", max_tokens=10)
    await apps[0].policy.put(f"tenant.{tenant}", {"budgets": [{"name": "zero", "limit": 0}]})
    await applied(apps, tenant, lambda p: p.budgets)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients[0].generate(api_key, "something new", max_tokens=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _, hit = await clients[1].generate(api_key, "cache me", max_tokens=10)
    assert hit.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT and hit.cost_usd == 0.0


async def test_budget_alerts_go_out_once_per_crossing(replicas, nats_url):
    clients, apps = replicas
    api_key, tenant, _ = clients[0].new_key()
    await apps[0].policy.put(
        f"tenant.{tenant}",
        {"budgets": [{"name": "daily-tokens", "unit": "tokens", "period": "day", "limit": 30, "hard": False}]},
    )
    await applied(apps, tenant, lambda p: p.budgets)
    # 14 tokens each: 14 (47 %), 28 (93 %: 50 and 80), 42 (140 %: 100), 56 (nothing new).
    for i in range(4):
        await clients[i % 2].generate(api_key, "hi", max_tokens=10, **BYPASS)
    alerts = await collect(
        nats_url,
        TENANCY,
        budget_alert_subject(tenant),
        lambda data, _: [events_pb2.BudgetAlert.FromString(data)],
        count=3,
    )
    alerts.sort(key=lambda a: a.threshold_percent)  # 50 and 80 go out together, in either order
    assert [a.threshold_percent for a in alerts] == [50, 80, 100]
    assert {(a.budget, a.scope, a.scope_value, a.unit, a.period, a.hard) for a in alerts} == {
        ("daily-tokens", "tenant", tenant, "tokens", "day", False)
    }
    assert [a.spent for a in alerts] == [28, 28, 42]


async def test_every_request_publishes_one_usage_record(replicas, nats_url):
    clients, apps = replicas
    api_key, tenant, key_id = clients[0].new_key()
    miss_id, hit_id, error_id = unique("req"), unique("req"), unique("req")
    _, miss = await clients[0].generate(api_key, "record me", max_tokens=10, request_id=miss_id)
    _, hit = await clients[1].generate(api_key, "record me", max_tokens=10, request_id=hit_id)
    with pytest.raises(grpc.aio.AioRpcError):
        await clients[0].generate(api_key, "fail [unavailable]", request_id=error_id)
    records = await collect(nats_url, USAGE, usage_subject(tenant), usage_records, count=2)
    by_id = {r.request_id: r for r in records}
    assert set(by_id) == {miss_id, hit_id}, "one record per answered request; none for a failure before tokens"
    m, h = by_id[miss_id], by_id[hit_id]
    assert (m.tenant_id, m.key_id, m.business_unit, m.use_case) == (tenant, key_id, "bu", "default")
    assert (m.cache_outcome, m.model, m.backend) == ("miss", "tiny-1", "llama_cpp")
    assert (m.usage.prompt_tokens, m.usage.completion_tokens) == (10, 4)
    assert m.cost_usd == pytest.approx(miss.cost_usd) and m.cost_avoided_usd == 0
    assert (h.cache_outcome, h.cost_usd) == ("exact_hit", 0.0)
    assert h.cost_avoided_usd == pytest.approx(miss.cost_usd)
    # Replica 0's batch held the miss's record alone (the failure has none): its message id derives
    # from the request id, so a republished batch is dropped by the stream.
    bus = await Bus.connect(nats_url, unique("dup"))
    try:
        ack = await bus.publish(usage_subject(tenant), pack_usage([m]), msg_id=batch_msg_id([m.request_id]))
    finally:
        await bus.close()
    assert ack.duplicate


async def test_a_client_leaving_mid_stream_releases_the_hold_and_bills_what_streamed(replicas, nats_url):
    clients, apps = replicas
    api_key, tenant, _ = clients[0].new_key()
    rid = unique("req")
    await apps[0].policy.put(f"tenant.{tenant}", {"budgets": [{"name": "tokens", "unit": "tokens", "limit": 1000}]})
    await applied(apps, tenant, lambda p: p.budgets)
    call = clients[0].call(api_key, clients[0].request("go on [hang]", max_tokens=50, **BYPASS), request_id=rid)
    assert (await call.read()).delta == "answer "
    budget = apps[0].accounting.policy(tenant, "default").budgets[0]
    counter = counter_for(tenant, budget, tenant, time.time())
    prompt_bound = len(b"go on [hang]") + 8
    assert (await apps[0].quota_store.balance(counter)).reserved == prompt_bound + 50
    call.cancel()

    async def settled():
        balance = await apps[1].quota_store.balance(counter)
        return balance.reserved == 0 and balance.spent == prompt_bound + 1  # the prompt's bound and one delta

    await assert_eventually(settled, message="the hold was released and the streamed part billed")
    [record] = await collect(nats_url, USAGE, usage_subject(tenant), usage_records, count=1)
    assert (record.request_id, record.error_code) == (rid, "CANCELLED")
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (prompt_bound, 1)
    assert record.cost_usd == pytest.approx((prompt_bound * 1.0 + 1 * 2.0) / 1000)


async def test_two_replicas_together_admit_no_more_than_the_rate_limit(replicas):
    clients, apps = replicas
    api_key, tenant, _ = clients[0].new_key()
    await apps[0].policy.put(f"tenant.{tenant}", {"rate_limits": [{"name": "tenant-rpm", "requests_per_minute": 5}]})
    await applied(apps, tenant, lambda p: p.rate_limits)
    results = await asyncio.gather(
        *(clients[i % 2].generate(api_key, "limit me", max_tokens=5) for i in range(16)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(results) - len(refused) == 5
    assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    status = rpc_status.from_call(refused[0])
    assert "rate limit 'tenant-rpm'" in status.message
    info = error_details_pb2.RetryInfo()
    assert any(d.Unpack(info) for d in status.details)
    assert 0 < info.retry_delay.ToNanoseconds() / 1e9 <= 12


async def test_tokens_per_minute_take_the_worst_case_and_give_back_the_unused_part(replicas):
    clients, apps = replicas
    api_key, tenant, _ = clients[0].new_key()
    await apps[0].policy.put(
        f"tenant.{tenant}", {"rate_limits": [{"name": "tpm", "scope": "api_key", "tokens_per_minute": 100}]}
    )
    await applied(apps, tenant, lambda p: p.rate_limits)
    # Each request takes 10 + 60 = 70 tokens and uses 14: 70, then 14 + 70, then 28 + 70 fit;
    # without the refund the second would not. Then 42 + 70 > 100.
    for i in range(3):
        await clients[i % 2].generate(api_key, "hi", max_tokens=60, **BYPASS)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients[1].generate(api_key, "hi", max_tokens=60, **BYPASS)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit 'tpm' reached: 100 tokens per minute per api_key" in refused.value.details()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("requests", [300, pytest.param(1000, marks=pytest.mark.slow)])
async def test_concurrent_requests_on_two_replicas_spend_no_more_than_the_budget(replicas, requests):
    """A budget that fits a tenth of the requests' worst cases; the actual costs are lower, so the
    released rest admits more, but the spend never passes the limit. Twice, with a fresh tenant
    each time. The 1,000-request run is `slow` (`make bench` runs it)."""
    clients, apps = replicas
    for _ in range(2):
        api_key, tenant, _ = clients[0].new_key()
        limit = round(requests // 10 * WORST, 6)
        burst = {"budgets": [{"name": "burst", "limit": limit}]}
        await apps[0].policy.put(f"tenant.{tenant}", burst)
        await applied(apps, tenant, lambda p: p.budgets)
        results = await asyncio.gather(
            *(clients[i % 2].generate(api_key, "hi", max_tokens=10, **BYPASS) for i in range(requests)),
            return_exceptions=True,
        )
        served = [r[1] for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused), {str(r) for r in refused}
        assert len(served) >= requests // 10
        budget = apps[0].accounting.policy(tenant, "default").budgets[0]
        balance = await apps[0].quota_store.balance(counter_for(tenant, budget, tenant, time.time()))
        assert balance.reserved == 0
        assert balance.spent <= round(limit * 1e9)
        assert sum(s.cost_usd for s in served) <= limit + 1e-9


async def test_with_redis_down_budgets_fail_closed_and_rate_limits_follow_their_policy(nats_url, upstreams):
    settings = router_settings(nats_url, upstreams.address, quota_redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app = RouterApp(settings)
    async with hosted(app, settings) as host, open_channel(host.address) as channel:
        client = RouterClient(channel, upstreams)
        budgeted, b_tenant, _ = client.new_key()
        open_key, o_tenant, _ = client.new_key()
        closed_key, c_tenant, _ = client.new_key()
        for tenant, doc, check in [
            (b_tenant, {"budgets": [{"name": "m", "limit": 10}]}, lambda p: p.budgets),
            (o_tenant, {"rate_limits": [{"name": "rpm", "requests_per_minute": 100}]}, lambda p: p.rate_limits),
            (
                c_tenant,
                {"rate_limits": [{"name": "strict", "requests_per_minute": 100, "fail_open": False}]},
                lambda p: p.rate_limits,
            ),
        ]:
            await app.policy.put(f"tenant.{tenant}", doc)
            await applied([app], tenant, check)
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await client.generate(budgeted, "hi", **BYPASS)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "budget store is unreachable" in down.value.details()
        _, summary = await client.generate(open_key, "hi", **BYPASS)
        assert summary.cost_usd > 0
        with pytest.raises(grpc.aio.AioRpcError) as strict:
            await client.generate(closed_key, "hi", **BYPASS)
        assert strict.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "'strict' fails closed" in strict.value.details()


def _store_errors(operation: str, outcome: str) -> float:
    labels = {"operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("llmesh_router_quota_store_errors_total", labels) or 0.0


async def test_a_redis_stopped_mid_run_refuses_hard_budgets_until_it_is_back_unless_set_to_fail_open(
    nats_url, upstreams, tmp_path
):
    """Two routers on one real redis-server, one with the default policy (hard budgets fail closed)
    and one with LLMESH_ROUTER_BUDGETS_FAIL_OPEN; the test stops Redis, then starts it again."""
    redis = RedisServer(str(tmp_path))
    redis.start()
    bucket = unique("policy")
    common = dict(policy_bucket=bucket, quota_redis_url=redis.url, quota_timeout_s=0.3)
    closed_app = RouterApp(router_settings(nats_url, upstreams.address, **common))
    open_app = RouterApp(router_settings(nats_url, upstreams.address, budgets_fail_open=True, **common))
    try:
        async with (
            hosted(closed_app, closed_app.settings) as a,
            hosted(open_app, open_app.settings) as b,
            open_channel(a.address) as ca,
            open_channel(b.address) as cb,
        ):
            closed, fail_open = RouterClient(ca, upstreams), RouterClient(cb, upstreams)
            api_key, tenant, _ = closed.new_key()
            await closed_app.policy.put(f"tenant.{tenant}", {"budgets": [{"name": "monthly", "limit": 10}]})
            await applied([closed_app, open_app], tenant, lambda p: p.budgets)
            budget = closed_app.accounting.policy(tenant, "default").budgets[0]
            counter = counter_for(tenant, budget, tenant, time.time())
            for client in (closed, fail_open):
                _, summary = await client.generate(api_key, "hi", max_tokens=10, **BYPASS)
                assert summary.cost_usd == pytest.approx(ACTUAL)

            async def spent(expected: float) -> None:
                balance = await closed_app.quota_store.balance(counter)
                assert (balance.spent, balance.reserved) == (pytest.approx(expected * 1e9, abs=2), 0)

            await assert_eventually(lambda: spent(2 * ACTUAL), message="both requests settled")

            redis.stop()
            refused_before = _store_errors("reserve", "refused")
            rid = unique("req")
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await closed.generate(api_key, "hi", max_tokens=10, request_id=rid, **BYPASS)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "budget store is unreachable" in down.value.details()
            assert rid not in upstreams.inference.requests, "refused before inference was asked"
            assert _store_errors("reserve", "refused") == refused_before + 1

            admitted_before, lost_before = _store_errors("reserve", "admitted"), _store_errors("settle", "lost")
            _, summary = await fail_open.generate(api_key, "hi", max_tokens=10, **BYPASS)
            assert summary.cost_usd == pytest.approx(ACTUAL)
            assert _store_errors("reserve", "admitted") == admitted_before + 1
            # Its settle is retried, then given up: that spend is not in the counter.
            await assert_eventually(lambda: _store_errors("settle", "lost") == lost_before + 1, timeout_s=15)

            redis.start()  # same port, empty (no persistence): the period's spend starts again

            async def served_again() -> None:
                _, summary = await closed.generate(api_key, "hi", max_tokens=10, **BYPASS)
                assert summary.cost_usd == pytest.approx(ACTUAL)

            await assert_eventually(served_again, timeout_s=20, interval_s=0.2, message="budgets answer again")
            await assert_eventually(lambda: spent(ACTUAL), message="the request after the restart settled")
    finally:
        redis.stop()
