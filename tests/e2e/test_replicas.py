"""A router whose cache address resolves to two real cache replicas (round robin in the kit's
channel): killing one, the router's calls keep succeeding and none of its cache calls degrades."""

from __future__ import annotations

import contextlib

import pytest
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.testing import hosted
from llmesh.services.cache.app import CacheApp
from llmesh.services.cache.settings import CacheSettings
from llmesh.services.router.app import RouterApp
from llmesh.services.router.metrics import DEGRADED

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import FakeUpstreams

pytestmark = pytest.mark.timeout(90)


def degraded_cache_calls() -> float:
    return sum(DEGRADED.labels("cache", op)._value.get() for op in ("lookup", "store"))


async def test_router_calls_survive_one_of_two_cache_replicas_dying(nats_url, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    async with contextlib.AsyncExitStack() as stack:
        fakes = FakeUpstreams()
        upstream = await stack.enter_async_context(
            hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0), serve_metrics=False)
        )
        fakes.address = upstream.address
        caches = []
        for replica in ("a", "b"):
            settings = load_settings(
                CacheSettings, environ={}, port=0, metrics_port=0, nats_url=nats_url, replica_id=f"cache-{replica}"
            )
            caches.append(await stack.enter_async_context(hosted(CacheApp(settings), settings, serve_metrics=False)))
        cache_target = "ipv4:" + ",".join(f"127.0.0.1:{c.port}" for c in caches)
        router = RouterApp(router_settings(nats_url, upstream.address, cache_addr=cache_target))
        router_host = await stack.enter_async_context(hosted(router, router.settings, serve_metrics=False))
        channel = await stack.enter_async_context(open_channel(router_host.address))
        client = RouterClient(channel, fakes)
        api_key, _, _ = client.new_key()

        before = degraded_cache_calls()
        for i in range(6):
            await client.generate(api_key, f"question {i}")
        assert degraded_cache_calls() == before

        await caches[0].stop(0)  # the first address: what pick-first would have used
        for i in range(12):
            _, summary = await client.generate(api_key, f"after {i}")
            assert summary.model
        assert degraded_cache_calls() == before, "no cache call failed after a replica died"
