"""The router's fallback and breakers against the real inference service: two models behind
inference's OpenAI-compatible backend, each served by its own small OpenAI-compatible HTTP server
on a free port. The test kills the tier-1 model's server, watches the router fall back and publish
its breaker on NATS, restarts the server on the same port and sees tier 1 answer again.
(Tenancy, classifier and cache are the router tests' in-process fakes over real gRPC.)"""

from __future__ import annotations

import contextlib
import json

import pytest
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.testing import assert_eventually, free_port, hosted, unique
from llmesh.router.v1 import router_pb2
from llmesh.services.inference.app import InferenceApp
from llmesh.services.inference.settings import InferenceSettings
from llmesh.services.router.app import RouterApp

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import FakeUpstreams
from tests.openai_standin import OpenAIStandIn

REGION = unique("fo").replace("-", "_")


def catalog(t1: OpenAIStandIn, t2: OpenAIStandIn) -> str:
    def entry(name: str, server: OpenAIStandIn, tier: int) -> dict:
        return {
            "name": name,
            "backend": "openai",
            "endpoint": server.base_url,
            "remote_model": name,
            "tiers": [tier],
            "hosting": "self_hosted",
            "region": REGION,
            "max_sensitivity": "restricted",
            "context_length": 2048,
        }

    return json.dumps({"models": [entry("t1", t1, 1), entry("t2", t2, 2)]})


@pytest.fixture
async def stand_ins():
    t1 = await OpenAIStandIn(["one ", "two ", "three"], free_port()).start()
    t2 = await OpenAIStandIn(["uno ", "dos ", "tres"], free_port()).start()
    yield t1, t2
    for server in (t1, t2):
        with contextlib.suppress(Exception):
            await server.stop()


async def test_a_killed_tier_1_backend_falls_back_opens_its_breaker_and_returns(nats_url, stand_ins):
    t1, t2 = stand_ins
    bus = await Bus.connect(nats_url, "test-failover")
    events: list[events_pb2.BreakerStateChanged] = []

    async def on_event(data: bytes) -> None:
        events.append(events_pb2.BreakerStateChanged.FromString(data))

    await bus.subscribe(f"llmesh.router.breaker.{REGION}.t1", on_event)
    await bus.nc.flush()  # the server knows the subscription before the router publishes
    inference_settings = load_settings(
        InferenceSettings,
        environ={},
        port=0,
        metrics_port=0,
        nats_url=nats_url,
        region=REGION,
        catalog=catalog(t1, t2),
        openai_api_key="stand-in-key",
    )
    fakes = FakeUpstreams()
    inference = InferenceApp(inference_settings)
    async with (
        hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as upstream,
        hosted(inference, inference_settings) as inference_host,
    ):
        settings = router_settings(
            nats_url,
            upstream.address,
            inference_addr=inference_host.address,
            tier_models="",
            default_model="",
            prices="",
            region=REGION,
            breaker_consecutive_failures=2,
            breaker_base_ejection_s=1.5,
            breaker_max_ejection_percent=100.0,
        )
        router = RouterApp(settings)
        async with hosted(router, settings) as router_host, open_channel(router_host.address) as channel:
            client = RouterClient(channel, fakes)
            api_key, _, _ = client.new_key()
            bypass = router_pb2.CACHE_POLICY_BYPASS

            deltas, summary = await client.generate(api_key, "first", cache_policy=bypass)
            assert "".join(deltas) == "one two three" and summary.model == "t1"

            await t1.stop()
            for n in range(2):
                deltas, summary = await client.generate(api_key, f"while down {n}", cache_policy=bypass)
                assert "".join(deltas) == "uno dos tres" and summary.model == "t2"
                assert [(a.model, a.outcome, a.reason) for a in summary.attempts] == [
                    ("t1", "UNAVAILABLE", "tier"),
                    ("t2", "ok", "fallback"),
                ]

            def opened():
                assert events and events[0].state == events_pb2.BreakerStateChanged.STATE_OPEN

            await assert_eventually(opened, timeout_s=5, message="the breaker's opening is published")
            _, skipped = await client.generate(api_key, "breaker open", cache_policy=bypass)
            assert [a.model for a in skipped.attempts] == ["t2"], "an ejected model is not tried"

            await t1.start()  # the same port

            async def back():
                _, summary = await client.generate(api_key, "after the restart", cache_policy=bypass)
                assert summary.model == "t1"

            await assert_eventually(back, timeout_s=10, interval_s=0.2, message="tier 1 answers again")

            def closed():
                assert events[-1].state == events_pb2.BreakerStateChanged.STATE_CLOSED

            await assert_eventually(closed, timeout_s=5, message="the probe's success is published")
    await bus.close()
