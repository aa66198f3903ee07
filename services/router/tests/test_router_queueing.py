"""The fair queues through the router's gRPC API: inference lists tiny-1 with one slot, so a
parked generation makes the next requests queue (or be refused) in front of it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.router.v1 import router_pb2
from llmesh.services.router.app import RouterApp
from prometheus_client import REGISTRY

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import MODELS, FakeInference, FakeUpstreams


class OneSlotInference(FakeInference):
    async def ListModels(self, request, context):
        models = [inference_pb2.ModelInfo.FromString(m.SerializeToString()) for m in MODELS]
        for model in models:
            if model.name == "tiny-1":
                model.max_concurrency = 1
        return inference_pb2.ListModelsResponse(models=models)


@pytest.fixture(scope="module")
async def one_slot_upstreams(nats_url):
    fakes = FakeUpstreams()
    fakes.inference = OneSlotInference()
    async with hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as host:
        fakes.address = host.address
        yield fakes


@pytest.fixture
async def client(nats_url, one_slot_upstreams):
    # A router per test: its pools start without measured service times, so the first wait
    # estimate is LLMESH_ROUTER_QUEUE_INITIAL_SERVICE_S per generation.
    app = RouterApp(router_settings(nats_url, one_slot_upstreams.address, queue_initial_service_s=5.0))
    async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
        routed = RouterClient(channel, one_slot_upstreams)
        routed.app = app
        yield routed


def depth(priority: str) -> float:
    return REGISTRY.get_sample_value("llmesh_router_queue_depth", {"model": "tiny-1", "priority": priority}) or 0.0


def admissions(priority: str, outcome: str) -> float:
    labels = {"priority": priority, "outcome": outcome}
    return REGISTRY.get_sample_value("llmesh_router_queue_admissions_total", labels) or 0.0


async def hold_the_slot(client: RouterClient, api_key: str):
    """Starts a generation that parks after its first delta: tiny-1's only slot is taken."""
    rid = unique("req")
    release = client.upstreams.inference.releases[rid] = asyncio.Event()
    call = client.call(api_key, client.request(f"hold {rid} [gated]"), request_id=rid)
    assert (await call.read()).delta == "answer "
    return call, release


async def finish(call) -> router_pb2.GenerateSummary:
    while (response := await call.read()) is not grpc.aio.EOF:
        if response.HasField("summary"):
            return response.summary
    raise AssertionError("no summary")


async def test_the_summary_names_the_class_and_the_queue_wait(client):
    api_key, _, _ = client.new_key()
    _, summary = await client.generate(api_key, unique("quick"), priority=router_pb2.PRIORITY_INTERACTIVE)
    assert summary.priority == router_pb2.PRIORITY_INTERACTIVE and summary.queue_wait_ms >= 0
    _, unlabelled = await client.generate(api_key, unique("quick"))
    assert unlabelled.priority == router_pb2.PRIORITY_STANDARD


async def test_a_waiting_request_runs_when_the_slot_frees_and_reports_its_wait(client):
    api_key, _, _ = client.new_key()
    held, release = await hold_the_slot(client, api_key)
    waiting = asyncio.ensure_future(client.generate(api_key, unique("later"), priority=router_pb2.PRIORITY_BATCH))
    await assert_eventually(lambda: depth("batch") == 1, message="the batch request waits")
    await asyncio.sleep(0.05)  # a measurable wait: the summary must show it
    release.set()
    await finish(held)
    _, summary = await waiting
    assert summary.priority == router_pb2.PRIORITY_BATCH and summary.queue_wait_ms >= 50
    assert depth("batch") == 0


async def test_an_interactive_request_that_would_miss_its_slo_is_refused_at_once(client):
    api_key, _, _ = client.new_key()
    held, release = await hold_the_slot(client, api_key)
    before = admissions("interactive", "rejected_deadline")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.generate(api_key, unique("now"), priority=router_pb2.PRIORITY_INTERACTIVE)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "would miss TTFT SLO 300 ms" in refused.value.details()
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rpc_status.from_call(refused.value).details)
    # The running generation is expected to take 5 s: the wait is over the SLO by about 4.7 s.
    assert 3.0 < retry.retry_delay.ToNanoseconds() / 1e9 <= 4.7
    assert admissions("interactive", "rejected_deadline") == before + 1
    release.set()
    await finish(held)


async def test_a_tenant_policy_can_close_a_class_queue(client):
    api_key, tenant, _ = client.new_key()
    await client.app.policy.put(f"tenant.{tenant}", {"queues": {"batch": {"max_queue": 0}}})
    held, release = await hold_the_slot(client, api_key)

    async def refused() -> bool:
        try:
            await client.generate(api_key, unique("bulk"), priority=router_pb2.PRIORITY_BATCH)
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "is full (0 waiting)" in exc.details()
        return False

    await assert_eventually(refused, message="the policy applies")
    release.set()
    await finish(held)


async def test_a_caller_leaving_the_queue_frees_its_place(client):
    api_key, _, _ = client.new_key()
    held, release = await hold_the_slot(client, api_key)
    before = admissions("batch", "cancelled")
    request = client.request(unique("leave"), priority=router_pb2.PRIORITY_BATCH)
    leaving = client.call(api_key, request, request_id=unique("req"))
    leaving_read = asyncio.ensure_future(leaving.read())
    await assert_eventually(lambda: depth("batch") == 1, message="the request waits")
    leaving.cancel()
    await assert_eventually(lambda: depth("batch") == 0, message="its place is freed")
    await assert_eventually(lambda: admissions("batch", "cancelled") == before + 1)
    with pytest.raises(asyncio.CancelledError):
        await leaving_read
    release.set()
    await finish(held)
    # The slot is free for the next one: nothing is left holding it.
    _, summary = await client.generate(api_key, unique("next"), priority=router_pb2.PRIORITY_BATCH)
    assert summary.queue_wait_ms < 1000
