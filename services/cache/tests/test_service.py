"""The cache service hosted in-process on a real nats-server: the exact layer, invalidation over
JetStream, admin RPCs, warming, stats, and bad input on every RPC."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmesh.cache.v1 import cache_pb2
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.testing import assert_eventually, unique

from services.cache.tests.builders import key, lookup, store
from services.cache.tests.hosting import ADMIN, cache_service

pytestmark = pytest.mark.timeout(60)

HIT = cache_pb2.LOOKUP_OUTCOME_EXACT_HIT
MISS = cache_pb2.LOOKUP_OUTCOME_MISS


@pytest.fixture
async def service(nats_url):
    async with cache_service(nats_url) as (_, stub, _):
        yield stub


async def outcome(stub, request) -> int:
    return (await stub.Lookup(request)).outcome


async def test_store_then_exact_hit_and_other_tenant_misses(service):
    stub = service
    tenant, other = unique("acme"), unique("globex")
    stored = await stub.Store(store(tenant, "How do I reset my password?", "Use the reset link.", ttl_seconds=120))
    assert stored.stored and len(stored.entry_id) == 64 and not stored.semantic_indexed
    assert stored.expires_at.seconds > 0

    hit = await stub.Lookup(lookup(tenant, "  How do I   reset my password?\n"))
    assert hit.outcome == HIT
    a = hit.answer
    assert (a.entry_id, a.content, a.model, a.backend, a.tier) == (
        stored.entry_id,
        "Use the reset link.",
        "llama-3-8b",
        "local",
        common_pb2.TIER_2,
    )
    assert (a.usage.prompt_tokens, a.usage.completion_tokens, a.cost_usd) == (12, 30, 0.002)
    assert a.expires_at.seconds - a.created_at.seconds == 120
    assert hit.semantic_decision == cache_pb2.SEMANTIC_DECISION_UNSPECIFIED

    assert await outcome(stub, lookup(other, "How do I reset my password?")) == MISS
    assert await outcome(stub, lookup(tenant, "How do I reset my PASSWORD?")) == MISS
    assert await outcome(stub, lookup(tenant, "How do I reset my password?", key_kw={"max_tokens": 64})) == MISS
    assert await outcome(stub, lookup(tenant, "How do I reset my password?", key_kw={"use_case": "sales"})) == MISS
    # The router asks for tier 3: a tier-2 answer does not do.
    assert await outcome(stub, lookup(tenant, "How do I reset my password?", tier=common_pb2.TIER_3)) == MISS


async def test_invalidate_flushes_a_tenant_through_the_stream(service):
    stub = service
    tenant, other = unique("acme"), unique("globex")
    for t in (tenant, other):
        await stub.Store(store(t, "q1", "a1"))
        await stub.Store(store(t, "q2", "a2", key_kw={"use_case": "sales"}))
    response = await stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, all=True))
    assert len(response.event_id) == 32

    async def flushed():
        assert await outcome(stub, lookup(tenant, "q1")) == MISS
        assert await outcome(stub, lookup(tenant, "q2", key_kw={"use_case": "sales"})) == MISS

    await assert_eventually(flushed, message="the replica applies its own event from the stream")
    assert await outcome(stub, lookup(other, "q1")) == HIT
    # Answers stored after the event are not touched by it.
    await stub.Store(store(tenant, "q1", "a1 again"))
    assert (await stub.Lookup(lookup(tenant, "q1"))).answer.content == "a1 again"


async def test_invalidate_one_use_case(service):
    stub = service
    tenant = unique("acme")
    await stub.Store(store(tenant, "q", "support answer"))
    await stub.Store(store(tenant, "q", "sales answer", key_kw={"use_case": "sales"}))
    await stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, use_case="sales"))
    await assert_eventually(lambda: _miss(stub, lookup(tenant, "q", key_kw={"use_case": "sales"})))
    assert (await stub.Lookup(lookup(tenant, "q"))).answer.content == "support answer"


async def _miss(stub, request) -> bool:
    return await outcome(stub, request) == MISS


async def test_invalidate_a_document_version(service):
    stub = service
    tenant = unique("acme")

    def cv(doc, v):
        return [common_pb2.ContentVersion(document_id=doc, version=v)]

    await stub.Store(store(tenant, "old handbook", "a", content_versions=cv("handbook", 1)))
    await stub.Store(store(tenant, "new handbook", "b", content_versions=cv("handbook", 2)))
    await stub.Store(store(tenant, "pricing", "c", content_versions=cv("pricing", 1)))
    await stub.Invalidate(
        cache_pb2.InvalidateRequest(
            tenant_id=tenant, content_version=common_pb2.ContentVersion(document_id="handbook", version=2)
        )
    )
    await assert_eventually(lambda: _miss(stub, lookup(tenant, "old handbook")))
    assert await outcome(stub, lookup(tenant, "new handbook")) == HIT
    assert await outcome(stub, lookup(tenant, "pricing")) == HIT
    late = await stub.Store(store(tenant, "late", "built on v1", content_versions=cv("handbook", 1)))
    assert not late.stored and not late.entry_id and "version 2 is current" in late.reason


def _rpc_calls(stub):
    t = unique("acme")
    good_key = key(t, "q")
    return [
        ("Lookup", stub.Lookup(cache_pb2.LookupRequest()), grpc.StatusCode.INVALID_ARGUMENT, "key.tenant_id"),
        ("Lookup", stub.Lookup(lookup("bad.tenant", "q")), grpc.StatusCode.INVALID_ARGUMENT, "key.tenant_id"),
        (
            "Lookup",
            stub.Lookup(lookup(t, "q", key_kw={"use_case": "has space"})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "use_case",
        ),
        (
            "Lookup",
            stub.Lookup(cache_pb2.LookupRequest(key=cache_pb2.CacheKey(tenant_id=t))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages is empty",
        ),
        (
            "Lookup",
            stub.Lookup(lookup(t, "q", key_kw={"max_tokens": -1})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_tokens",
        ),
        (
            "Lookup",
            stub.Lookup(lookup(t, "q", key_kw={"sampling": common_pb2.SamplingParams(temperature=5)})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "temperature",
        ),
        ("Lookup", stub.Lookup(lookup(t, "q", tier=9)), grpc.StatusCode.INVALID_ARGUMENT, "tier"),
        (
            "Lookup",
            stub.Lookup(lookup(t, "q", key_kw={"sensitivity": 42})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sensitivity",
        ),
        ("Lookup", stub.Lookup(lookup(t, "x" * 70_000)), grpc.StatusCode.INVALID_ARGUMENT, "limit"),
        ("Store", stub.Store(store(t, "q", "")), grpc.StatusCode.INVALID_ARGUMENT, "content is empty"),
        ("Store", stub.Store(store(t, "q", "   ")), grpc.StatusCode.INVALID_ARGUMENT, "content is empty"),
        (
            "Store",
            stub.Store(store(t, "q", "x" * (256 * 1024 + 1))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit is 262144",
        ),
        ("Store", stub.Store(store(t, "q", "a", ttl_seconds=-1)), grpc.StatusCode.INVALID_ARGUMENT, "ttl_seconds"),
        ("Store", stub.Store(store(t, "q", "a", ttl_seconds=31 * 86400)), grpc.StatusCode.INVALID_ARGUMENT, "30 days"),
        ("Store", stub.Store(store(t, "q", "a", cost_usd=-1)), grpc.StatusCode.INVALID_ARGUMENT, "cost_usd"),
        ("Store", stub.Store(store(t, "q", "a", cost_usd=1e30)), grpc.StatusCode.INVALID_ARGUMENT, "cost_usd"),
        (
            "Store",
            stub.Store(store(t, "q", "a", usage=common_pb2.Usage(prompt_tokens=2**63 - 1))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "usage.prompt_tokens",
        ),
        (
            "Store",
            stub.Store(store(t, "q", "a", key_kw={"max_tokens": 2**31 - 1})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_tokens",
        ),
        (
            "Store",
            stub.Store(store(t, "q", "a", content_class="no/slash")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "content_class",
        ),
        (
            "Store",
            stub.Store(store(t, "q", "a", content_versions=[common_pb2.ContentVersion(document_id="")])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "document_id is empty",
        ),
        (
            "Store",
            stub.Store(
                store(t, "q", "a", content_versions=[common_pb2.ContentVersion(document_id="d", version=1)] * 2)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "twice",
        ),
        (
            "Store",
            stub.Store(cache_pb2.StoreRequest(key=good_key, content="a", tier=7)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tier",
        ),
        (
            "Invalidate",
            stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=t)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "scope is required",
        ),
        (
            "Invalidate",
            stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id="", all=True)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tenant_id",
        ),
        (
            "Invalidate",
            stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=t, all=False)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "all must be true",
        ),
        (
            "Invalidate",
            stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=t, use_case="a b")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "use_case",
        ),
        (
            "Invalidate",
            stub.Invalidate(
                cache_pb2.InvalidateRequest(tenant_id=t, content_version=common_pb2.ContentVersion(version=2))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "document_id is empty",
        ),
        (
            "Invalidate",
            stub.Invalidate(
                cache_pb2.InvalidateRequest(
                    tenant_id=t, content_version=common_pb2.ContentVersion(document_id="d", version=-1)
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "version must be >= 0",
        ),
        (
            "Feedback",
            stub.Feedback(cache_pb2.FeedbackRequest(tenant_id=t, entry_id="nope", rating=cache_pb2.RATING_THUMBS_DOWN)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "entry_id",
        ),
        (
            "Feedback",
            stub.Feedback(cache_pb2.FeedbackRequest(tenant_id=t, entry_id="a" * 64)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "rating",
        ),
        (
            "PinEntry",
            stub.PinEntry(cache_pb2.PinEntryRequest(tenant_id=t, entry_id="a" * 64, pinned=True)),
            grpc.StatusCode.UNAUTHENTICATED,
            "missing admin token",
        ),
        (
            "PinEntry",
            stub.PinEntry(
                cache_pb2.PinEntryRequest(tenant_id=t, entry_id="a" * 64),
                metadata=(("authorization", "Bearer wrong-token-000000000"),),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "not valid",
        ),
        (
            "PinEntry",
            stub.PinEntry(cache_pb2.PinEntryRequest(tenant_id=t, entry_id="a" * 64, pinned=True), metadata=ADMIN),
            grpc.StatusCode.NOT_FOUND,
            "no cached answer",
        ),
        (
            "PinEntry",
            stub.PinEntry(cache_pb2.PinEntryRequest(tenant_id=t, entry_id="xyz"), metadata=ADMIN),
            grpc.StatusCode.INVALID_ARGUMENT,
            "entry_id",
        ),
        (
            "DeleteEntry",
            stub.DeleteEntry(cache_pb2.DeleteEntryRequest(tenant_id=t, entry_id="a" * 64)),
            grpc.StatusCode.UNAUTHENTICATED,
            "admin token",
        ),
        (
            "DeleteEntry",
            stub.DeleteEntry(cache_pb2.DeleteEntryRequest(tenant_id="", entry_id="a" * 64), metadata=ADMIN),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tenant_id",
        ),
        ("Stats", stub.Stats(cache_pb2.StatsRequest(tenant_id="a.b")), grpc.StatusCode.INVALID_ARGUMENT, "tenant_id"),
    ]


async def test_bad_input_on_every_rpc_gets_a_clear_status_and_the_service_keeps_serving(service):
    stub = service
    for name, call, code, needle in _rpc_calls(stub):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call
        assert failure.value.code() == code, (name, needle, failure.value.details())
        assert needle in failure.value.details(), (name, failure.value.details())

    warm = stub.Warm(iter([cache_pb2.WarmRequest()]))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        [m async for m in warm]
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED

    tenant = unique("acme")
    assert (await stub.Store(store(tenant, "still here?", "yes"))).stored
    assert await outcome(stub, lookup(tenant, "still here?")) == HIT


async def test_admin_pin_and_delete(service):
    stub = service
    tenant = unique("acme")
    entry_id = (await stub.Store(store(tenant, "q", "a", ttl_seconds=60))).entry_id
    pinned = await stub.PinEntry(
        cache_pb2.PinEntryRequest(tenant_id=tenant, entry_id=entry_id, pinned=True), metadata=ADMIN
    )
    assert pinned.answer.pinned and not pinned.answer.HasField("expires_at")
    assert (await stub.Lookup(lookup(tenant, "q"))).answer.pinned
    unpinned = await stub.PinEntry(cache_pb2.PinEntryRequest(tenant_id=tenant, entry_id=entry_id), metadata=ADMIN)
    assert not unpinned.answer.pinned and unpinned.answer.HasField("expires_at")
    assert (
        await stub.DeleteEntry(cache_pb2.DeleteEntryRequest(tenant_id=tenant, entry_id=entry_id), metadata=ADMIN)
    ).deleted
    assert await outcome(stub, lookup(tenant, "q")) == MISS
    assert not (
        await stub.DeleteEntry(cache_pb2.DeleteEntryRequest(tenant_id=tenant, entry_id=entry_id), metadata=ADMIN)
    ).deleted


async def test_feedback_thumbs_down_evicts(service):
    stub = service
    tenant = unique("acme")
    entry_id = (await stub.Store(store(tenant, "q", "a"))).entry_id
    up = await stub.Feedback(
        cache_pb2.FeedbackRequest(tenant_id=tenant, entry_id=entry_id, rating=cache_pb2.RATING_THUMBS_UP)
    )
    assert not up.evicted
    down = await stub.Feedback(
        cache_pb2.FeedbackRequest(
            tenant_id=tenant, entry_id=entry_id, rating=cache_pb2.RATING_THUMBS_DOWN, served_as=HIT
        )
    )
    assert down.evicted and not down.tightened
    assert await outcome(stub, lookup(tenant, "q")) == MISS


async def test_warm_streams_progress_and_reports_bad_pairs(service):
    stub = service
    tenant = unique("acme")
    pairs = [cache_pb2.WarmRequest(entry=store(tenant, f"question {i}", f"answer {i}")) for i in range(70)]
    pairs.insert(10, cache_pb2.WarmRequest(entry=store(tenant, "empty answer", "")))
    progress = [p async for p in stub.Warm(iter(pairs), metadata=ADMIN, timeout=30)]
    # A batch of 32 valid pairs is stored (and reported) at once; the invalid one does not count.
    assert [p.received for p in progress[:-1]] == [33, 65]
    last = progress[-1]
    assert last.done and (last.received, last.stored, last.failed, last.skipped) == (71, 70, 1, 0)
    assert last.last_error == "pair 11: content is empty: only complete answers are cached"
    assert (await stub.Lookup(lookup(tenant, "question 69"))).answer.content == "answer 69"


async def test_stats_count_hits_and_savings_by_tenant_and_use_case(service):
    stub = service
    tenant = unique("acme")
    await stub.Store(store(tenant, "q", "a"))
    await stub.Lookup(lookup(tenant, "q", business_unit="retail"))
    await stub.Lookup(lookup(tenant, "q", business_unit="retail"))
    await stub.Lookup(lookup(tenant, "other", business_unit="retail"))
    await stub.Lookup(lookup(tenant, "q", key_kw={"sensitivity": common_pb2.SENSITIVITY_RESTRICTED}))
    stats = await stub.Stats(cache_pb2.StatsRequest(tenant_id=tenant))
    by_bu = {(r.business_unit, r.use_case): r for r in stats.rows}
    retail = by_bu[("retail", "support")]
    assert (retail.lookups, retail.exact_hits, retail.misses, retail.tokens_saved) == (3, 2, 1, 84)
    assert retail.hit_rate == pytest.approx(2 / 3) and retail.cost_saved_usd == pytest.approx(0.004)
    assert by_bu[("", "support")].uncacheable == 1
    assert stats.total.lookups == 3 and stats.total.uncacheable == 1


async def test_the_service_is_discoverable_by_reflection(nats_url):
    async with cache_service(nats_url) as (_, _, address), open_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for response in stub.ServerReflectionInfo(requests()):
            names = {s.name for s in response.list_services_response.service}
            assert "llmesh.cache.v1.CacheService" in names
            break


async def test_expired_entries_are_purged_in_the_background(nats_url):
    clock = ManualClock()
    async with cache_service(nats_url, clock=clock, purge_interval_s=0.05) as (app, stub, _):
        tenant = unique("acme")
        await stub.Store(store(tenant, "short", "a", ttl_seconds=60))
        await stub.Store(store(tenant, "long", "b", ttl_seconds=600))
        assert await app.cache.exact.count() == 2
        clock.now += 61
        await assert_eventually(lambda: _count_is(app, 1), message="the purge loop removed the expired entry")
        assert await outcome(stub, lookup(tenant, "long")) == HIT


class ManualClock:
    def __init__(self):
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def _count_is(app, expected: int) -> bool:
    return await app.cache.exact.count() == expected
