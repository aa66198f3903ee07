"""The router against fake upstream services (real gRPC servers) and a real nats-server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.client import open_channel
from llmesh.kit.streams import KEY_REVOKED_SUBJECT, TENANCY
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.router.v1 import router_pb2
from llmesh.services.router import metrics
from llmesh.services.router.app import RouterApp

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import CLOUD_PRICE

pytestmark = pytest.mark.timeout(30)

ANSWER = ["answer ", "to ", "the ", "question"]


async def test_streams_each_delta_as_inference_sends_it_then_a_summary(client):
    api_key, tenant, _ = client.new_key()
    rid = unique("req")
    release = client.upstreams.inference.releases[rid] = asyncio.Event()
    call = client.call(api_key, client.request("explain [gated]", max_tokens=100), request_id=rid)

    first = await call.read()
    assert first.delta == "answer "
    # Inference is parked after its first delta: the router relayed it without waiting for more.
    # (The fake counts a delta once its write returns, which may come after the client read it.)
    await assert_eventually(lambda: client.upstreams.inference.sent[rid] == 1, message="parked after one delta")
    release.set()
    rest = []
    while (response := await call.read()) is not grpc.aio.EOF:
        rest.append(response)
    assert [r.delta for r in rest[:-1]] == ANSWER[1:]

    summary = rest[-1].summary
    assert summary.request_id == rid
    assert summary.tier == common_pb2.TIER_1 and summary.model == "tiny-1" and summary.backend == "llama_cpp"
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_MISS
    assert summary.finish_reason == common_pb2.FINISH_REASON_STOP
    assert (summary.usage.prompt_tokens, summary.usage.completion_tokens) == (10, 4)
    assert summary.cost_usd == pytest.approx((10 * 1.0 + 4 * 2.0) / 1000)
    assert 0 < summary.time_to_first_token_ms <= summary.total_time_ms
    sent = client.upstreams.inference.requests[rid]
    assert sent.max_tokens == 100 and sent.model == "tiny-1"
    assert client.upstreams.cache.stores[rid].key.tenant_id == tenant


async def test_classify_and_cache_lookup_run_concurrently(client):
    api_key, _, _ = client.new_key()
    rid = unique("req")
    await client.generate(api_key, "think hard [slow]", request_id=rid)
    classify = client.upstreams.classifier.spans[rid]
    lookup = client.upstreams.cache.lookups[rid]
    # Each takes 200 ms; run one after the other, one would start only after the other ended.
    assert classify.started < lookup.ended and lookup.started < classify.ended


async def test_a_repeated_request_is_an_exact_hit_that_never_reaches_inference(client):
    api_key, _, _ = client.new_key()
    first_deltas, first = await client.generate(api_key, "what is a mesh?", max_tokens=50)
    assert first.cache_outcome == router_pb2.CACHE_OUTCOME_MISS

    rid = unique("req")
    deltas, summary = await client.generate(api_key, "what is a mesh?", max_tokens=50, request_id=rid)
    assert rid not in client.upstreams.inference.requests
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT
    assert "".join(deltas) == "".join(first_deltas)
    assert len(deltas) > 1, "a cached answer streams like a live one (5-character deltas here)"
    assert summary.cost_usd == 0.0
    assert summary.usage == first.usage and summary.model == first.model and summary.tier == first.tier

    # Same text, other parameters: another cache key.
    rid = unique("req")
    _, other = await client.generate(api_key, "what is a mesh?", max_tokens=51, request_id=rid)
    assert other.cache_outcome == router_pb2.CACHE_OUTCOME_MISS and rid in client.upstreams.inference.requests


async def test_an_answer_serves_its_own_tier_and_lower_ones_only(client):
    api_key, _, _ = client.new_key()
    text = "summarise the contract"
    client.upstreams.classifier.tier_overrides[text] = 1
    _, low = await client.generate(api_key, text)
    assert low.tier == common_pb2.TIER_1 and low.cache_outcome == router_pb2.CACHE_OUTCOME_MISS

    client.upstreams.classifier.tier_overrides[text] = 3
    rid = unique("req")
    _, high = await client.generate(api_key, text, request_id=rid)
    assert high.cache_outcome == router_pb2.CACHE_OUTCOME_MISS, "a tier-1 answer must not serve a tier-3 request"
    assert high.tier == common_pb2.TIER_3 and high.model == "big-3"
    assert rid in client.upstreams.inference.requests

    # The tier-3 answer replaced it and now serves tier 3 and tier 1 alike.
    for tier in (3, 1):
        client.upstreams.classifier.tier_overrides[text] = tier
        _, again = await client.generate(api_key, text)
        assert again.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT and again.model == "big-3"


async def test_bypass_neither_reads_nor_writes_the_cache(client):
    api_key, _, _ = client.new_key()
    await client.generate(api_key, "fresh please")
    rid = unique("req")
    _, summary = await client.generate(
        api_key, "fresh please", cache_policy=router_pb2.CACHE_POLICY_BYPASS, request_id=rid
    )
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_BYPASSED
    assert rid in client.upstreams.inference.requests
    assert rid not in client.upstreams.cache.lookups and rid not in client.upstreams.cache.stores


async def test_restricted_requests_stay_out_of_the_cache_unless_the_tenant_allows_it(client, router_host):
    api_key, tenant, _ = client.new_key()
    text = "patient record"
    _, first = await client.generate(api_key, text)
    assert first.cache_outcome == router_pb2.CACHE_OUTCOME_MISS

    # Now classified restricted: the entry found by the concurrent lookup is not served.
    client.upstreams.classifier.restricted_texts.add(text)
    rid = unique("req")
    _, summary = await client.generate(api_key, text, request_id=rid)
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_BYPASSED
    assert rid in client.upstreams.inference.requests and rid not in client.upstreams.cache.stores

    await router_host.app.policy.put(f"tenant.{tenant}", {"cache": {"allow_restricted": True}})

    async def served_from_cache():
        _, summary = await client.generate(api_key, text)
        assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT

    await assert_eventually(served_from_cache, message="the tenant's cache policy applies")
    rid = unique("req")
    await client.generate(api_key, "another record [restricted]", request_id=rid)
    assert client.upstreams.cache.stores[rid].key.sensitivity == common_pb2.SENSITIVITY_RESTRICTED, (
        "the cache gets the sensitivity so it can apply its own rule"
    )


async def test_incomplete_answers_are_not_stored_but_length_limited_ones_are(client):
    api_key, _, _ = client.new_key()
    rid = unique("req")
    _, summary = await client.generate(api_key, "long story [length]", request_id=rid)
    assert summary.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert rid in client.upstreams.cache.stores

    rid = unique("req")
    call = client.call(api_key, client.request("never ends [hang]"), request_id=rid)
    assert (await call.read()).delta == "answer "
    call.cancel()
    await assert_eventually(lambda: rid in client.upstreams.inference.cancelled)
    assert rid not in client.upstreams.cache.stores


async def test_pinned_models_and_the_restricted_data_rule(client):
    api_key, _, _ = client.new_key()
    _, summary = await client.generate(api_key, "hello", model="cloud-x")
    assert summary.model == "cloud-x" and summary.backend == "openai"
    # No price for cloud-x in the settings' table: the catalog's applies.
    assert summary.cost_usd == pytest.approx((10 * CLOUD_PRICE[0] + 4 * CLOUD_PRICE[1]) / 1000)

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await client.generate(api_key, "hello", model="gpt-99")
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown model 'gpt-99'" in unknown.value.details() and "tiny-1" in unknown.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await client.generate(api_key, "card 4111 [restricted]", model="cloud-x")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "restricted data" in denied.value.details() and "up to internal" in denied.value.details()
    assert not any("card 4111" in r.messages[-1].content for r in client.upstreams.inference.requests.values())


async def test_routing_policy_from_nats_kv_maps_tiers_and_prices(client, router_host):
    api_key, tenant, _ = client.new_key()
    policy = router_host.app.policy
    await policy.put(
        f"tenant.{tenant}",
        {
            "tiers": {"2": "cloud-x", "3": "cloud-x"},
            "prices": {"cloud-x": {"prompt_per_1k": 3.0, "completion_per_1k": 5.0}},
        },
    )

    async def routed_to_cloud():
        _, summary = await client.generate(api_key, "route me [tier:2]", cache_policy=router_pb2.CACHE_POLICY_BYPASS)
        assert summary.model == "cloud-x"
        return summary

    summary = await assert_eventually(routed_to_cloud, message="the tenant's policy applies")
    assert summary.cost_usd == pytest.approx((10 * 3.0 + 4 * 5.0) / 1000)
    # Restricted data never leaves self-hosted models, whatever the policy says.
    _, restricted = await client.generate(api_key, "salary list [tier:3] [restricted]")
    assert restricted.model == "tiny-1" and restricted.backend == "llama_cpp"
    # Other tenants keep the global mapping.
    other_key, _, _ = client.new_key()
    _, other = await client.generate(other_key, "route me [tier:3]")
    assert other.model == "big-3"


async def test_principal_is_cached_until_its_key_is_revoked(client, nats_url):
    api_key, tenant, key_id = client.new_key()
    await client.generate(api_key, "first")
    await client.generate(api_key, "second")
    assert client.upstreams.tenancy.calls[api_key] == 1, "the second call used the cached principal"

    client.upstreams.tenancy.principals.pop(api_key)
    await client.generate(api_key, "still cached")

    bus = await Bus.connect(nats_url, "test-tenancy")
    try:
        await bus.ensure_stream(TENANCY)
        await bus.publish(
            KEY_REVOKED_SUBJECT, events_pb2.ApiKeyRevoked(event_id=unique("ev"), key_id=key_id, tenant_id=tenant)
        )
    finally:
        await bus.close()

    async def rejected():
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await client.generate(api_key, "after revocation")
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "API key rejected" in exc.value.details()

    await assert_eventually(rejected)
    assert client.upstreams.tenancy.calls[api_key] == 2


@pytest.mark.parametrize("mode", ["cancel", "deadline"])
async def test_a_client_leaving_cancels_the_upstream_generation(client, mode):
    api_key, _, _ = client.new_key()
    rid = unique("req")
    call = client.call(
        api_key,
        client.request("tell me everything [hang]"),
        request_id=rid,
        timeout=1.0 if mode == "deadline" else 10.0,
    )
    assert (await call.read()).delta == "answer "
    if mode == "cancel":
        call.cancel()
    else:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call.read()
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await assert_eventually(lambda: rid in client.upstreams.inference.cancelled, message="inference saw the cancel")


async def test_inference_failures_keep_their_status(client):
    api_key, _, _ = client.new_key()
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await client.generate(api_key, "now [exhausted]")
    assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "inference is at capacity" in busy.value.details() and "slots" in busy.value.details()
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rpc_status.from_call(busy.value).details)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000

    with pytest.raises(grpc.aio.AioRpcError) as down:
        await client.generate(api_key, "now [unavailable]")
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "inference is unavailable: the backend is down" in down.value.details()


async def test_a_failing_classifier_or_cache_degrades_without_failing_the_request(client):
    api_key, _, _ = client.new_key()
    before = metrics.DEGRADED.labels("classifier", "classify")._value.get()
    _, summary = await client.generate(api_key, "hello [classifier:fail] [tier:3]")
    assert summary.tier == common_pb2.TIER_2, "the fallback tier"
    assert metrics.DEGRADED.labels("classifier", "classify")._value.get() == before + 1

    before = metrics.DEGRADED.labels("cache", "lookup")._value.get()
    _, first = await client.generate(api_key, "hello [cache:fail]")
    _, second = await client.generate(api_key, "hello [cache:fail]")
    assert first.cache_outcome == second.cache_outcome == router_pb2.CACHE_OUTCOME_MISS
    assert metrics.DEGRADED.labels("cache", "lookup")._value.get() == before + 2


async def test_credentials_are_checked(client):
    api_key, _, _ = client.new_key()
    cases = [
        ([], "missing credentials"),
        ([("authorization", "Basic abc")], "malformed authorization"),
        ([("authorization", "Bearer ")], "malformed authorization"),
        ([("authorization", "Bearer a b")], "malformed API key"),
        ([("authorization", "Bearer " + "k" * 600)], "malformed API key"),
        ([("authorization", "Bearer sk-never-issued")], "API key rejected: unknown or revoked API key"),
    ]
    for metadata, needle in cases:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await anext(aiter(client.call(None, client.request("hi"), metadata=metadata)))
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert needle in exc.value.details()
    _, summary = await client.generate(api_key, "hi")
    assert summary.model


BAD_REQUESTS = [
    (dict(messages=[]), "messages is empty"),
    (dict(messages=[common_pb2.ChatMessage(role=9, content="x")]), "messages[0].role"),
    (dict(messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="  ")]), "content is empty"),
    (dict(messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="x" * 70_000)]), "the limit"),
    (dict(max_tokens=-1), "max_tokens must be in 1..4096"),
    (dict(max_tokens=4097), "max_tokens must be in 1..4096"),
    (dict(priority=7), "priority must be"),
    (dict(cache_policy=9), "cache_policy must be"),
    (dict(sampling=common_pb2.SamplingParams(temperature=2.5)), "sampling.temperature"),
    (dict(sampling=common_pb2.SamplingParams(top_p=0)), "sampling.top_p"),
    (dict(sampling=common_pb2.SamplingParams(stop=["a"] * 5)), "sampling.stop"),
    (dict(use_case="support bot"), "use_case must be"),
    (dict(use_case="u" * 65), "use_case must be"),
    (dict(model="m" * 129), "model must be"),
    (dict(model=" tiny-1"), "model must be"),
]


@pytest.mark.parametrize(("fields", "needle"), BAD_REQUESTS, ids=[n for _, n in BAD_REQUESTS])
async def test_bad_input_is_invalid_argument_and_the_router_keeps_serving(client, fields, needle):
    api_key, _, _ = client.new_key()
    fields = {"messages": [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")], **fields}
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in client.call(api_key, router_pb2.GenerateRequest(**fields)):
            pass
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in exc.value.details()
    _, summary = await client.generate(api_key, "still there?")
    assert summary.cache_outcome in (router_pb2.CACHE_OUTCOME_MISS, router_pb2.CACHE_OUTCOME_EXACT_HIT)


async def test_without_settings_the_catalog_maps_tiers_and_prices_and_keeps_restricted_data_home(nats_url, upstreams):
    app = RouterApp(router_settings(nats_url, upstreams.address, tier_models="", default_model="", prices=""))
    async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
        client = RouterClient(channel, upstreams)
        api_key, _, _ = client.new_key(clearance=common_pb2.SENSITIVITY_RESTRICTED)
        _, low = await client.generate(api_key, "easy one [tier:1]", cache_policy=router_pb2.CACHE_POLICY_BYPASS)
        assert (low.model, low.backend) == ("tiny-1", "llama_cpp")
        _, high = await client.generate(api_key, "hard one [tier:3]", cache_policy=router_pb2.CACHE_POLICY_BYPASS)
        assert (high.model, high.backend) == ("cloud-x", "openai")
        assert high.cost_usd == pytest.approx((10 * CLOUD_PRICE[0] + 4 * CLOUD_PRICE[1]) / 1000)
        # Restricted data never reaches the external model the catalog gives tier 3.
        rid = unique("rid")
        _, restricted = await client.generate(api_key, "payroll [tier:3] [restricted]", request_id=rid)
        assert (restricted.model, restricted.backend) == ("tiny-1", "llama_cpp")
        assert upstreams.inference.requests[rid].model == "tiny-1"


async def test_load_snapshots_are_kept_per_model_and_go_stale(nats_url, upstreams):
    app = RouterApp(router_settings(nats_url, upstreams.address, load_max_age_s=0.5))
    region, model = unique("region"), "tiny-1"
    bus = await Bus.connect(nats_url, "test-load")
    async with hosted(app, app.settings):
        event = events_pb2.ModelLoad(model=model, region=region, backend="llama_cpp", utilization=0.75, capacity=4)
        await bus.publish_core(f"llmesh.inference.load.{region}.{model}", event)

        def fresh():
            snapshot = app.load.current(model, region)
            assert snapshot is not None and snapshot.utilization == 0.75 and snapshot.capacity == 4

        await assert_eventually(fresh, timeout_s=5, message="the router keeps the snapshot")

        def stale():
            assert app.load.current(model, region) is None

        await assert_eventually(stale, timeout_s=5, message="an old snapshot is unknown load")
    await bus.close()
