"""The router's failover hook with real servers (ADR 0017): region a's inference fails, its tier
moves to region b's inference within 5 s (the summary names the region), and comes back after the
hysteresis once region a recovers."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.streams import MODEL_LOAD_SUBJECT_PREFIX, region_health_subject
from llmesh.kit.testing import hosted, unique
from llmesh.services.router.app import RouterApp

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import FakeUpstreams

pytestmark = pytest.mark.timeout(60)


async def _announce(bus: Bus, region_a: str, region_b: str) -> None:
    """What region b's router and region a's inference would publish: b is healthy, a's model
    is loaded."""
    while True:
        report = events_pb2.RegionHealth(region=region_b, router_replica="rb")
        for tier, model in ((1, "tiny-1"), (2, "tiny-1"), (3, "big-3")):
            report.models.add(model=model, tier=tier, utilization=0.2, requests_in_window=10)
        await bus.publish_core(region_health_subject(region_b), report)
        load = events_pb2.ModelLoad(model="tiny-1", region=region_a, utilization=0.1)
        await bus.publish_core(f"{MODEL_LOAD_SUBJECT_PREFIX}.{region_a}.tiny-1", load)
        await asyncio.sleep(0.3)


async def test_a_down_region_fails_over_within_5_s_and_back_after_recovery(nats_url, upstreams):
    region_a, region_b = unique("ra"), unique("rb")
    fakes_b = FakeUpstreams()
    bus = await Bus.connect(nats_url, "test-regions")
    announcer = asyncio.create_task(_announce(bus, region_a, region_b))
    try:
        async with hosted(fakes_b, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as host_b:
            settings = router_settings(
                nats_url,
                upstreams.address,
                region=region_a,
                region_inference=f"{region_b}={host_b.address}",
                failback_after_s=2.0,
                region_health_max_age_s=2.0,
            )
            app = RouterApp(settings)
            async with hosted(app, settings) as router, open_channel(router.address) as channel:
                client = RouterClient(channel, upstreams)
                api_key, _, _ = client.new_key()
                _, summary = await client.generate(api_key, unique("hello"))
                assert summary.region == region_a

                upstreams.inference.region_down = True
                fault = time.monotonic()
                while True:
                    try:
                        _, summary = await client.generate(api_key, unique("hello"))
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE
                        assert time.monotonic() - fault < 5, "still failing 5 s after the fault"
                        await asyncio.sleep(0.2)
                        continue
                    break
                assert summary.region == region_b
                assert time.monotonic() - fault < 5
                assert any(r.model == summary.model for r in fakes_b.inference.requests.values())

                upstreams.inference.region_down = False
                recovered = time.monotonic()
                while summary.region != region_a:
                    assert time.monotonic() - recovered < 15, "never failed back"
                    await asyncio.sleep(0.2)
                    _, summary = await client.generate(api_key, unique("hello"))
                assert time.monotonic() - recovered >= 2.0, "failed back before the hysteresis"
    finally:
        upstreams.inference.region_down = False
        announcer.cancel()
        await bus.close()
