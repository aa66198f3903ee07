"""Two router replicas on one nats-server: a replica that ejects an endpoint publishes it, and the
other, which still trusts the endpoint, takes the event as a hint (docs/adr/0030): its next
request probes the endpoint, most of the ones after it try it last."""

from __future__ import annotations

import contextlib

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.router.v1 import router_pb2
from llmesh.services.router.app import RouterApp
from llmesh.services.router.breakers import BreakerState

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import FakeUpstreams

SELF, R = inference_pb2.HOSTING_SELF_HOSTED, common_pb2.SENSITIVITY_RESTRICTED
BYPASS = router_pb2.CACHE_POLICY_BYPASS


def attempts(summary) -> list[tuple[str, str]]:
    return [(a.model, a.outcome) for a in summary.attempts]


@contextlib.asynccontextmanager
async def two_routers(nats_url: str):
    region = unique("peers").replace("-", "_")
    catalog = [
        inference_pb2.ModelInfo(name="t1", backend="triton", tiers=[1], hosting=SELF, max_sensitivity=R, region=region),
        inference_pb2.ModelInfo(name="t2", backend="triton", tiers=[2], hosting=SELF, max_sensitivity=R, region=region),
    ]
    fakes = FakeUpstreams(catalog)
    async with hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as upstream:

        def settings(**overrides):
            return router_settings(
                nats_url, upstream.address, tier_models="", default_model="", prices="", region=region, **overrides
            )

        # A ejects after 2 failures in a row; B would need 5 of its own.
        a = RouterApp(settings(breaker_consecutive_failures=2, breaker_base_ejection_s=30.0))
        b = RouterApp(settings(breaker_consecutive_failures=5, breaker_hint_probe_share=0.1))
        async with (
            hosted(a, a.settings) as a_host,
            hosted(b, b.settings) as b_host,
            open_channel(a_host.address) as a_channel,
            open_channel(b_host.address) as b_channel,
        ):
            yield region, fakes, a, b, RouterClient(a_channel, fakes), RouterClient(b_channel, fakes)


@pytest.mark.timeout(60)
async def test_a_peers_ejection_makes_the_other_replica_probe_once_then_eject_on_its_own_failure(nats_url):
    async with two_routers(nats_url) as (region, fakes, a, b, client_a, client_b):
        key_a, _, _ = client_a.new_key()
        key_b, _, _ = client_b.new_key()
        fakes.inference.down.add("t1")
        for n in range(2):
            _, summary = await client_a.generate(key_a, f"a {n}", cache_policy=BYPASS)
            assert attempts(summary) == [("t1", "UNAVAILABLE"), ("t2", "ok")]
        assert a.breakers.state(region, "t1") is BreakerState.OPEN

        def hinted():
            assert b.breakers.hinted(region, "t1"), "B heard A's ejection"

        await assert_eventually(hinted, timeout_s=5, message="A's ejection reaches B as a hint")
        assert not a.breakers.hinted(region, "t1"), "A ignores its own event"

        _, first = await client_b.generate(key_b, "b 0", cache_policy=BYPASS)
        assert attempts(first) == [("t1", "UNAVAILABLE"), ("t2", "ok")], "B's next request is the probe"
        assert b.breakers.state(region, "t1") is BreakerState.OPEN, "one failed probe ejects it at B"
        for n in range(1, 4):
            _, summary = await client_b.generate(key_b, f"b {n}", cache_policy=BYPASS)
            assert attempts(summary) == [("t2", "ok")], "B avoids it now"


@pytest.mark.timeout(60)
async def test_a_healthy_endpoint_a_peer_ejected_gets_a_bounded_share_of_the_other_replicas_requests(nats_url):
    async with two_routers(nats_url) as (region, fakes, a, b, client_a, client_b):
        key_a, _, _ = client_a.new_key()
        key_b, _, _ = client_b.new_key()
        fakes.inference.down.add("t1")  # only while A sends: B never saw it fail
        for n in range(2):
            await client_a.generate(key_a, f"a {n}", cache_policy=BYPASS)
        fakes.inference.down.discard("t1")

        def hinted():
            assert b.breakers.hinted(region, "t1")

        await assert_eventually(hinted, timeout_s=5, message="A's ejection reaches B as a hint")
        served = []
        for n in range(5):
            _, summary = await client_b.generate(key_b, f"b {n}", cache_policy=BYPASS)
            assert summary.attempts[-1].outcome == "ok"
            served.append(summary.model)
        # The first request after the hint probes it (and it answers); the next ones try it last
        # (the share is 0.1: the next probe is the 11th).
        assert served == ["t1", "t2", "t2", "t2", "t2"], served
        assert b.breakers.state(region, "t1") is BreakerState.HALF_OPEN, "still on probation, not ejected"

        # With the fallback down too, the endpoint on probation is still tried (last): a hint
        # alone never fails a request.
        fakes.inference.down.add("t2")
        _, summary = await client_b.generate(key_b, "b last resort", cache_policy=BYPASS)
        assert attempts(summary) == [("t2", "UNAVAILABLE"), ("t1", "ok")]
