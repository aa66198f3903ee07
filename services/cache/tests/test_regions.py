"""Two regions (ADR 0017): one nats-server each, own JetStream domain, joined by a leaf node link;
each region's invalidation stream sources the other's. Caches stay regional, invalidations reach
every region, also one whose NATS was down when the invalidation was issued."""

from __future__ import annotations

import contextlib

import pytest
from llmesh.cache.v1 import cache_pb2
from llmesh.common.v1 import common_pb2
from llmesh.kit.nats_server import NatsServerProcess, region_config
from llmesh.kit.streams import parse_domains
from llmesh.kit.testing import assert_eventually, free_port, unique

from services.cache.tests.builders import lookup, store
from services.cache.tests.hosting import cache_service

pytestmark = pytest.mark.timeout(60)

HANDBOOK_V1 = [common_pb2.ContentVersion(document_id="handbook", version=1)]
HANDBOOK_V2 = common_pb2.ContentVersion(document_id="handbook", version=2)
MISS = cache_pb2.LOOKUP_OUTCOME_MISS
HIT = cache_pb2.LOOKUP_OUTCOME_EXACT_HIT


@contextlib.contextmanager
def two_regions(tmp_path):
    leaf_port = free_port()
    servers = {}
    for region, kwargs in (
        ("a", {"leaf_listen_port": leaf_port}),
        ("b", {"hub_leaf_urls": (f"nats-leaf://127.0.0.1:{leaf_port}",)}),
    ):
        config = tmp_path / f"nats-{region}.conf"
        config.write_text(region_config(region, **kwargs))
        servers[region] = NatsServerProcess(str(tmp_path / region), port=free_port(), config_file=str(config))
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_peer_domains_are_checked():
    assert parse_domains(" b, c ") == ("b", "c")
    assert parse_domains("") == ()
    with pytest.raises(ValueError, match="not a valid subject token"):
        parse_domains("b.c")


async def test_an_invalidation_issued_in_one_region_reaches_the_other_also_after_an_outage(tmp_path):
    tenant = unique("acme")
    with two_regions(tmp_path) as nats:
        async with (
            cache_service(nats["a"].url, peer_domains="b") as (_, cache_a, _),
            cache_service(nats["b"].url, peer_domains="a") as (_, cache_b, _),
        ):
            await cache_a.Store(store(tenant, "old", "built on v1", content_versions=HANDBOOK_V1))
            await cache_a.Store(store(tenant, "unrelated", "kept"))
            # Answers are not copied across regions.
            assert (await cache_b.Lookup(lookup(tenant, "old"))).outcome == MISS

            await cache_b.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, content_version=HANDBOOK_V2))

            async def stale_gone_in_a():
                assert (await cache_a.Lookup(lookup(tenant, "old"))).outcome == MISS

            await assert_eventually(stale_gone_in_a, timeout_s=15, message="region B's invalidation reached A")
            assert (await cache_a.Lookup(lookup(tenant, "unrelated"))).outcome == HIT

            # Region A's NATS is down while B issues an invalidation; A catches up when it returns.
            await cache_a.Store(store(tenant, "faq", "answer of the support use case"))
            await cache_a.Store(store(tenant, "kept", "other use case", key_kw={"use_case": "sales"}))
            nats["a"].stop()
            await cache_b.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, use_case="support"), timeout=5)
            nats["a"].start()

            async def support_gone_in_a():
                assert (await cache_a.Lookup(lookup(tenant, "faq"))).outcome == MISS

            await assert_eventually(support_gone_in_a, timeout_s=30, message="A caught up after its outage")
            kept = await cache_a.Lookup(lookup(tenant, "kept", key_kw={"use_case": "sales"}))
            assert kept.outcome == HIT

            # And the other way round: A's invalidations reach B.
            await cache_b.Store(store(tenant, "b-only", "regional answer", key_kw={"use_case": "sales"}))
            await cache_a.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, use_case="sales"))

            async def sales_gone_in_b():
                assert (await cache_b.Lookup(lookup(tenant, "b-only", key_kw={"use_case": "sales"}))).outcome == MISS

            await assert_eventually(sales_gone_in_b, timeout_s=15, message="region A's invalidation reached B")
