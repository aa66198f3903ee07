"""Fallback, breakers, overflow, escalation and data access through a real router over gRPC, with
upstream servers (real gRPC servers on port 0) that a test kills, breaks and restarts, and a real
nats-server carrying load snapshots, policy and breaker events."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_status import rpc_status
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.testing import assert_eventually, free_port, hosted, unique
from llmesh.router.v1 import router_pb2
from llmesh.services.router import metrics
from llmesh.services.router.app import RouterApp
from prometheus_client import REGISTRY

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import FakeUpstreams

REGION = unique("reg").replace("-", "_")
R, I = common_pb2.SENSITIVITY_RESTRICTED, common_pb2.SENSITIVITY_INTERNAL
SELF = inference_pb2.HOSTING_SELF_HOSTED
CATALOG = [
    inference_pb2.ModelInfo(name="t1", backend="triton", tiers=[1], hosting=SELF, max_sensitivity=R, region=REGION),
    inference_pb2.ModelInfo(name="t2", backend="triton", tiers=[2], hosting=SELF, max_sensitivity=R, region=REGION),
    inference_pb2.ModelInfo(
        name="cloud",
        backend="openai",
        tiers=[3],
        hosting=inference_pb2.HOSTING_EXTERNAL,
        max_sensitivity=I,
        region=REGION,
        prompt_price_per_1k=10.0,
        completion_price_per_1k=20.0,
    ),
    inference_pb2.ModelInfo(
        name="last", backend="llama_cpp", tiers=[1, 2, 3], hosting=SELF, max_sensitivity=R, region=REGION, fallback=True
    ),
]
BYPASS = router_pb2.CACHE_POLICY_BYPASS


def settings(nats_url: str, address: str, **overrides):
    values = dict(
        tier_models="",
        default_model="",
        prices="",
        default_prompt_price_per_1k=1.0,
        default_completion_price_per_1k=1.0,
        breaker_consecutive_failures=2,
        breaker_base_ejection_s=1.5,
        breaker_max_ejection_percent=100.0,
        region=REGION,
    )
    values.update(overrides)
    return router_settings(nats_url, address, **values)


@pytest.fixture
async def upstreams(nats_url):
    fakes = FakeUpstreams(CATALOG)
    async with hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as host:
        fakes.address = host.address
        yield fakes


@pytest.fixture
async def router(nats_url, upstreams):
    app = RouterApp(settings(nats_url, upstreams.address))
    async with hosted(app, app.settings) as host:
        async with open_channel(host.address) as channel:
            yield app, RouterClient(channel, upstreams)


@pytest.fixture
async def bus(nats_url):
    opened = await Bus.connect(nats_url, "test-resilience")
    yield opened
    await opened.close()


async def breaker_events(bus: Bus, model: str) -> list[events_pb2.BreakerStateChanged]:
    seen: list[events_pb2.BreakerStateChanged] = []

    async def on_event(data: bytes) -> None:
        seen.append(events_pb2.BreakerStateChanged.FromString(data))

    await bus.subscribe(f"llmesh.router.breaker.{REGION}.{model}", on_event)
    await bus.nc.flush()  # the server knows the subscription before the router publishes
    return seen


def attempts(summary) -> list[tuple[str, str, str]]:
    return [(a.model, a.outcome, a.reason) for a in summary.attempts]


async def test_a_dead_model_falls_back_opens_its_breaker_on_nats_and_recovers(router, bus):
    app, client = router
    events = await breaker_events(bus, "t1")
    api_key, _, _ = client.new_key()
    client.upstreams.inference.down.add("t1")

    _, first = await client.generate(api_key, "question one", cache_policy=BYPASS)
    assert first.model == "t2" and first.region == REGION
    assert attempts(first) == [("t1", "UNAVAILABLE", "tier"), ("t2", "ok", "fallback")]
    _, second = await client.generate(api_key, "question two", cache_policy=BYPASS)
    assert attempts(second)[0] == ("t1", "UNAVAILABLE", "tier")

    def opened():
        assert [e.state for e in events] == [events_pb2.BreakerStateChanged.STATE_OPEN]
        assert events[0].reason == "2 consecutive failures" and events[0].ejection_count == 1
        assert events[0].router_replica == app.replica and events[0].HasField("ejected_until")

    await assert_eventually(opened, timeout_s=5, message="the breaker's opening is published")
    labels = {"region": REGION, "model": "t1"}
    assert REGISTRY.get_sample_value("llmesh_router_breaker_state", labels) == 2.0
    # While open, t1 is not tried at all.
    calls = len(client.upstreams.inference.calls)
    _, skipped = await client.generate(api_key, "question three", cache_policy=BYPASS)
    assert attempts(skipped) == [("t2", "ok", "fallback")]
    assert client.upstreams.inference.calls[calls:] == ["t2"]

    client.upstreams.inference.down.discard("t1")

    async def back_on_t1():
        _, summary = await client.generate(api_key, "question four", cache_policy=BYPASS)
        assert attempts(summary) == [("t1", "ok", "tier")]

    await assert_eventually(back_on_t1, timeout_s=10, interval_s=0.1, message="the probe closes the breaker")

    def closed():
        assert [e.state for e in events][-2:] == [
            events_pb2.BreakerStateChanged.STATE_HALF_OPEN,
            events_pb2.BreakerStateChanged.STATE_CLOSED,
        ]

    await assert_eventually(closed, timeout_s=5)


async def test_a_killed_inference_is_unavailable_then_serves_again_after_its_restart(nats_url, bus):
    """The whole inference server dies (every candidate fails) and comes back on the same port."""
    port = free_port()
    fakes = FakeUpstreams(CATALOG)
    upstream_settings = load_settings(ServerSettings, environ={}, port=port, metrics_port=0)
    # The classifier dies with it: the fallback tier 2 is asked for, so t2 is what fails.
    events = await breaker_events(bus, "t2")
    async with hosted(fakes, upstream_settings) as upstream_host:
        app = RouterApp(settings(nats_url, f"127.0.0.1:{port}", models_refresh_s=3600.0))
        async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
            client = RouterClient(channel, fakes)
            api_key, _, _ = client.new_key()
            _, summary = await client.generate(api_key, "before", cache_policy=BYPASS)
            assert summary.model == "t1"
            # Kill it: the router's calls fail fast with UNAVAILABLE, listing what it tried.
            await upstream_host.stop(0)
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as down:
                    await client.generate(api_key, "during", cache_policy=BYPASS)
                assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "(tried: t2 UNAVAILABLE, last UNAVAILABLE)" in down.value.details()
            upstream = FakeUpstreams(CATALOG)
            async with hosted(upstream, upstream_settings):
                upstream.tenancy.principals.update(fakes.tenancy.principals)

                async def served():
                    try:
                        _, again = await client.generate(api_key, "after", cache_policy=BYPASS)
                    except grpc.aio.AioRpcError as exc:  # breakers still open, or probing
                        raise AssertionError(exc.details()) from None
                    assert again.model in ("t1", "t2", "last")

                await assert_eventually(served, timeout_s=10, interval_s=0.2, message="served after the restart")
    assert events and events[0].state == events_pb2.BreakerStateChanged.STATE_OPEN


async def test_a_failure_after_the_first_token_ends_unavailable_with_what_was_served(router):
    app, client = router
    api_key, _, _ = client.new_key()
    client.upstreams.inference.cut_after["t1"] = 2
    deltas = []
    call = client.call(api_key, client.request("cut me"), request_id=unique("rid"))
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        async for response in call:
            deltas.append(response.delta)
    assert deltas == ["answer ", "to "], "no other model continues the answer"
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE and "after 10 characters" in cut.value.details()
    detail = router_pb2.StreamInterrupted()
    assert any(d.Unpack(detail) for d in rpc_status.from_call(cut.value).details)
    assert detail.model == "t1" and detail.delivered_chars == 10 and detail.usage.completion_tokens == 2
    assert detail.cost_usd > 0
    await asyncio.sleep(0)  # nothing is stored: no store was even started
    assert not client.upstreams.cache.entries


async def test_overflow_follows_the_load_with_hysteresis_and_keeps_restricted_data_home(router, bus):
    app, client = router
    api_key, tenant, _ = client.new_key()

    async def load(utilization: float):
        event = events_pb2.ModelLoad(
            model="t1",
            region=REGION,
            backend="triton",
            utilization=utilization,
            active=int(utilization * 10),
            capacity=10,
        )
        await bus.publish_core(f"llmesh.inference.load.{REGION}.t1", event)

        def heard():
            snapshot = app.load.current("t1", REGION)
            assert snapshot is not None and snapshot.utilization == utilization

        await assert_eventually(heard, timeout_s=5)

    before = metrics.OVERFLOWED.labels(tenant, "1")._value.get()
    await load(0.9)
    _, hot = await client.generate(api_key, "busy hour", cache_policy=BYPASS)
    assert hot.model == "cloud" and attempts(hot) == [("cloud", "ok", "overflow")]
    assert hot.overflow.reason == "utilization 0.90 >= 0.80 on tier 1" and hot.overflow.utilization == 0.9
    assert hot.overflow.extra_cost_usd > 0
    assert metrics.OVERFLOWED.labels(tenant, "1")._value.get() == before + 1
    _, restricted = await client.generate(api_key, "payroll [restricted]", cache_policy=BYPASS)
    assert restricted.model == "t1" and not restricted.HasField("overflow"), "restricted data never overflows"

    await load(0.7)
    _, still = await client.generate(api_key, "still busy", cache_policy=BYPASS)
    assert still.model == "cloud", "0.70 is above resume_below: still overflowing"
    await load(0.5)
    _, back = await client.generate(api_key, "quiet now", cache_policy=BYPASS)
    assert back.model == "t1" and not back.HasField("overflow")

    # A tenant whose policy forbids overflow stays home.
    await load(0.95)
    await app.policy.put(f"tenant.{tenant}", {"overflow": {"enabled": False}})

    async def stays_home():
        _, summary = await client.generate(api_key, "no bursting", cache_policy=BYPASS)
        assert summary.model == "t1"

    await assert_eventually(stays_home, message="the tenant's policy applies")


async def test_low_quality_tier_1_answers_escalate_to_tier_2(router):
    app, client = router
    api_key, tenant, _ = client.new_key()
    inference = client.upstreams.inference
    inference.answers["t1"] = ["I'm ", "sorry, ", "I ", "cannot ", "help ", "with ", "that."]
    # Hold mode: the refusal is held, scored, and never reaches the client.
    await app.policy.put(f"tenant.{tenant}", {"escalation": {"stream_mode": "hold", "hold_tokens": 4}})

    async def escalated():
        deltas, summary = await client.generate(api_key, "explain", cache_policy=BYPASS)
        assert deltas == ["answer ", "to ", "the ", "question"], "only tier 2's answer is streamed"
        assert summary.model == "t2" and summary.tier == common_pb2.TIER_2
        assert attempts(summary) == [("t1", "low_quality", "tier"), ("t2", "ok", "escalation")]
        return summary

    summary = await assert_eventually(escalated, message="the tenant's policy applies")
    assert summary.escalation.from_model == "t1" and summary.escalation.threshold == pytest.approx(0.7)
    assert summary.escalation.quality_score < 0.7
    first = summary.escalation.first_answer_cost_usd
    assert first > 0 and summary.cost_usd > first, "the discarded answer is billed too"
    assert metrics.ESCALATIONS.labels(tenant, "default")._value.get() == 1

    # A good tier-1 answer is released after the hold and not escalated.
    inference.answers["t1"] = ["Paris ", "is ", "the ", "capital ", "of ", "France."]
    deltas, good = await client.generate(api_key, "capital?", cache_policy=BYPASS)
    assert "".join(deltas) == "Paris is the capital of France." and good.model == "t1"
    assert not good.HasField("escalation")


async def test_release_mode_escalates_only_answers_with_nothing_released(router):
    app, client = router
    api_key, _, _ = client.new_key()
    inference = client.upstreams.inference
    inference.answers["t1"] = ["I'm ", "sorry, ", "I ", "cannot."]
    deltas, refused = await client.generate(api_key, "streams at once", cache_policy=BYPASS)
    assert refused.model == "t1" and not refused.HasField("escalation"), "already released: kept"
    inference.answers["t1"] = []
    deltas, empty = await client.generate(api_key, "empty answer", cache_policy=BYPASS)
    assert empty.model == "t2" and empty.escalation.quality_score == 0.0 and deltas


async def test_data_access_rules_refuse_with_permission_denied_naming_the_rule(router):
    app, client = router
    api_key, tenant, _ = client.new_key()
    await app.policy.put(f"tenant.{tenant}", {"data_access": {"regions": ["elsewhere"]}})

    async def refused():
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await client.generate(api_key, "anything", cache_policy=BYPASS)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "data_access.regions" in denied.value.details()

    await assert_eventually(refused, message="the tenant's policy applies")
    # Pinned to an external model the tenant's providers exclude.
    await app.policy.put(f"tenant.{tenant}", {"data_access": {"external": {"providers": ["anthropic"]}}})

    async def pinned_refused():
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await client.generate(api_key, "anything", model="cloud", cache_policy=BYPASS)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "data_access.providers" in denied.value.details()

    await assert_eventually(pinned_refused, message="the tenant's policy applies")


async def test_bad_policy_documents_never_take_the_router_down(router):
    app, client = router
    api_key, tenant, _ = client.new_key()
    # Kept in a variable: tests/test_policy_schema.py holds literal stored documents to the schema,
    # and this one is meant to break it (as an edit made around `llmesh policy set` could).
    bad = {
        "routing": {"fallbacks": {"1": "tier:2", "x": [1]}},
        "overflow": {"threshold": "high", "enabled": 3},
        "escalation": {"stream_mode": 5, "threshold": [0.7]},
        "data_access": "everything",
    }
    await app.policy.put("global", bad)
    try:

        async def served():
            _, summary = await client.generate(api_key, "still fine", cache_policy=BYPASS)
            assert summary.model == "t1"
            assert app.policy.revision > 0

        await assert_eventually(served)
    finally:
        await app.policy.delete("global")
