"""What the cache does for the routers' L1 of exact answers (docs/adr/0033): it counts the hits
they report (one replica of the queue group per report) like its own, and tells them of every
entry it removes on its own (a thumbs-down eviction, DeleteEntry)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from llmesh.cache.v1 import cache_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.streams import CACHE_HITS_SUBJECT, CACHE_REMOVED_SUBJECT_PREFIX
from llmesh.kit.testing import assert_eventually, unique

from services.cache.tests.builders import lookup, store
from services.cache.tests.hosting import ADMIN, cache_service

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
async def replicas(nats_url):
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(cache_service(nats_url)) for _ in range(2)]


@pytest.fixture
async def bus(nats_url):
    opened = await Bus.connect(nats_url, "test-router")
    yield opened
    await opened.close()


def report(tenant: str, entry_id: str, hits: int, **fields) -> events_pb2.CacheHitsReported:
    event = events_pb2.CacheHitsReported(event_id=unique("report"), router_replica="router-test")
    row = event.hits.add(
        tenant_id=tenant, business_unit="bu", use_case="support", entry_id=entry_id, hits=hits, tokens=42, cost_usd=0.5
    )
    row.last_hit_at.GetCurrentTime()
    for name, value in fields.items():
        setattr(row, name, value)
    return event


async def totals(replicas, tenant: str) -> list[cache_pb2.CacheStats]:
    return [(await stub.Stats(cache_pb2.StatsRequest(tenant_id=tenant))).total for _, stub, _ in replicas]


async def test_reported_hits_are_counted_once_by_one_replica_like_its_own(replicas, bus):
    tenant = unique("t")
    stored = await replicas[0][1].Store(store(tenant, "what is a mesh?", "a net"))
    await replicas[0][1].Lookup(lookup(tenant, "what is a mesh?", business_unit="bu"))  # one hit of its own
    for _ in range(4):
        await bus.publish_core(CACHE_HITS_SUBJECT, report(tenant, stored.entry_id, 3))

    async def counted():
        rows = await totals(replicas, tenant)
        assert sum(r.exact_hits for r in rows) == 1 + 12 and sum(r.lookups for r in rows) == 13, rows
        assert sum(r.tokens_saved for r in rows) == 42 + 12 * 42
        return rows

    await assert_eventually(counted, message="reported hits counted")
    hot = [row.hits for app, _, _ in replicas for row in app.cache.hits.often_hit(tenant, "support", 1)]
    assert sum(hot) == 13, "the hit history (cache refresh) counts them too"


async def test_a_bad_row_is_skipped_and_the_rest_counted(replicas, bus):
    tenant = unique("t")
    event = report(tenant, "e" * 64, 2)
    bad = event.hits.add(tenant_id="no such tenant!", entry_id="e" * 64, hits=5)
    bad.last_hit_at.GetCurrentTime()
    event.hits.add(tenant_id=tenant, entry_id="not an id", hits=5)
    event.hits.add(tenant_id=tenant, entry_id="e" * 64, hits=0)
    await bus.publish_core(CACHE_HITS_SUBJECT, event)
    await bus.nc.publish(CACHE_HITS_SUBJECT, b"\xff not a message")

    async def counted():
        rows = await totals(replicas, tenant)
        assert sum(r.exact_hits for r in rows) == 2, rows

    await assert_eventually(counted, message="the good row counted")


async def test_an_entry_removed_on_its_own_is_announced(replicas, bus):
    tenant = unique("t")
    heard: asyncio.Queue[events_pb2.CacheEntryRemoved] = asyncio.Queue()

    async def on_removed(data: bytes) -> None:
        heard.put_nowait(events_pb2.CacheEntryRemoved.FromString(data))

    await bus.subscribe(f"{CACHE_REMOVED_SUBJECT_PREFIX}.{tenant}", on_removed)
    await bus.nc.flush()
    stub = replicas[0][1]
    disliked = await stub.Store(store(tenant, "q1", "wrong"))
    deleted = await stub.Store(store(tenant, "q2", "old"))
    await stub.Feedback(
        cache_pb2.FeedbackRequest(tenant_id=tenant, entry_id=disliked.entry_id, rating=cache_pb2.RATING_THUMBS_DOWN)
    )
    await stub.DeleteEntry(cache_pb2.DeleteEntryRequest(tenant_id=tenant, entry_id=deleted.entry_id), metadata=ADMIN)
    events = [await asyncio.wait_for(heard.get(), 5) for _ in range(2)]
    assert [(e.tenant_id, e.entry_id, e.reason) for e in events] == [
        (tenant, disliked.entry_id, "feedback"),
        (tenant, deleted.entry_id, "admin"),
    ]
    assert all(e.HasField("removed_at") for e in events)
    # nothing removed, nothing announced (a thumbs-up, an unknown entry)
    await stub.Feedback(
        cache_pb2.FeedbackRequest(tenant_id=tenant, entry_id=disliked.entry_id, rating=cache_pb2.RATING_THUMBS_DOWN)
    )
    await bus.nc.flush()
    assert heard.empty()
