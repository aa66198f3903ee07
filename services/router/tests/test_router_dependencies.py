"""The router when its dependencies are down or come and go: a router per case, since the
addresses and the NATS connection are fixed at start."""

from __future__ import annotations

import grpc
import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.server import ServiceHost
from llmesh.kit.testing import assert_eventually, hosted
from llmesh.router.v1 import router_pb2
from llmesh.services.router.app import RouterApp

from services.router.tests.conftest import RouterClient, dead_address, router_settings

pytestmark = pytest.mark.timeout(30)


async def test_classifier_and_cache_down_still_answers_on_the_fallback_tier(nats_url, upstreams):
    dead = dead_address()
    app = RouterApp(router_settings(nats_url, upstreams.address, classifier_addr=dead, cache_addr=dead))
    async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
        client = RouterClient(channel, upstreams)
        api_key, _, _ = client.new_key()
        deltas, summary = await client.generate(api_key, "anyone there? [tier:3]")
        assert "".join(deltas) == "answer to the question"
        assert summary.tier == common_pb2.TIER_2
        # Unclassified means possibly restricted: kept out of the cache.
        assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_BYPASSED


async def test_tenancy_down_is_unavailable(nats_url, upstreams):
    app = RouterApp(router_settings(nats_url, upstreams.address, tenancy_addr=dead_address()))
    async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
        client = RouterClient(channel, upstreams)
        api_key, _, _ = client.new_key()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await client.generate(api_key, "hello")
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "tenancy is unavailable" in exc.value.details()


async def test_a_key_seen_lately_is_served_while_tenancy_is_unavailable_but_not_a_new_one(nats_url, upstreams):
    app = RouterApp(router_settings(nats_url, upstreams.address, principal_ttl_s=0.05, principal_stale_s=60.0))
    async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
        client = RouterClient(channel, upstreams)
        known, _, _ = client.new_key()
        new, _, _ = client.new_key()
        await client.generate(known, "hello")
        await assert_eventually(lambda: app.principals.get(known) is None, message="past its TTL")
        upstreams.tenancy.unavailable = True
        try:
            deltas, _ = await client.generate(known, "hello again")
            assert "".join(deltas) == "answer to the question"
            assert upstreams.tenancy.calls[known] > 1, "tenancy was asked first (its channel retries UNAVAILABLE)"
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await client.generate(new, "hello")
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "tenancy is unavailable" in exc.value.details()
        finally:
            upstreams.tenancy.unavailable = False


async def test_start_fails_clearly_when_inference_never_answers(nats_url, upstreams):
    settings = router_settings(nats_url, upstreams.address, inference_addr=dead_address(), start_timeout_s=0.5)
    host = ServiceHost(RouterApp(settings), settings, serve_metrics=False)
    with pytest.raises(Exception, match="inference at .* not ready"):
        await host.start()
    await host.stop(0)


async def test_a_nats_reconnect_drops_every_cached_principal(tmp_path, upstreams):
    nats = NatsServerProcess(str(tmp_path / "nats")).start()
    port = nats.port
    app = RouterApp(router_settings(nats.url, upstreams.address))
    try:
        async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
            client = RouterClient(channel, upstreams)
            api_key, _, _ = client.new_key()
            await client.generate(api_key, "hello")
            assert len(app.principals) == 1

            nats.stop()
            nats = NatsServerProcess(str(tmp_path / "nats"), port=port).start()
            await assert_eventually(
                lambda: len(app.principals) == 0, timeout_s=15, message="flushed after the reconnect"
            )
            await client.generate(api_key, "hello again")
            assert upstreams.tenancy.calls[api_key] == 2
    finally:
        nats.stop()
