"""The router's L1 of exact answers (exact_l1.py, upstreams.L1Cache, docs/adr/0033): what it keeps,
everything that drops a copy, and, through the router in front of two real cache replicas on a
real nats-server, hits answered without the cache hop and counted once by the cache's analytics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from llmesh.cache.v1 import cache_pb2
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.chat import Message, Sampling
from llmesh.kit.client import open_channel
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.streams import CACHE_APPLIED_SUBJECT_PREFIX
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.router.v1 import router_pb2
from llmesh.services.router import convert, metrics
from llmesh.services.router.app import RouterApp
from llmesh.services.router.domain import CachedAnswer, CacheKey, Usage
from llmesh.services.router.exact_l1 import ExactL1, HitReports, L1Key, Removal
from llmesh.services.router.memo import content_digest
from llmesh.services.router.upstreams import L1Cache

from services.cache.tests.hosting import ADMIN, cache_service
from services.router.tests.conftest import RouterClient, router_settings

pytestmark = pytest.mark.timeout(60)

ENTRY = "a" * 64
NOW = 1_000_000.0


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def answer(**fields) -> CachedAnswer:
    values = dict(
        content="Paris",
        model="tiny-1",
        backend="llama_cpp",
        tier=1,
        usage=Usage(3, 1),
        cost_usd=0.001,
        entry_id=ENTRY,
        expires_at=NOW + 600,
        created_at=NOW - 10,
    )
    values.update(fields)
    return CachedAnswer(**values)


def cache_key(tenant: str = "t1", text: str = "what is a mesh?", use_case: str = "default") -> CacheKey:
    return CacheKey(tenant, use_case, (Message("user", text),), "", Sampling(), 50)


def l1_key(tenant: str = "t1", text: str = "what is a mesh?", use_case: str = "default", revision: int = 1) -> L1Key:
    return L1Key(tenant, use_case, revision, content_digest(tenant, cache_key(tenant, text, use_case)))


def l1(clock: Clock | None = None, size: int = 100, ttl_s: float = 5.0) -> ExactL1:
    return ExactL1(max_entries=size, ttl_s=ttl_s, clock=clock or Clock())


# --- the L1 itself -----------------------------------------------------------------------------


def test_keeps_an_exact_hit_until_the_earlier_of_its_expiry_and_the_ttl():
    clock = Clock()
    store = l1(clock, ttl_s=5.0)
    assert store.put(l1_key(), answer(), store.token())
    clock.now += 4.9
    assert store.get(l1_key()) == (answer(), False)
    clock.now += 0.2
    assert store.get(l1_key()) == (None, True), "past the L1 TTL: stale, dropped"
    assert store.get(l1_key()) == (None, False)

    # the cache's own expiry comes first
    clock.now = NOW
    assert store.put(l1_key(), answer(expires_at=NOW + 1.0), store.token())
    clock.now += 1.0
    assert store.get(l1_key()) == (None, True)
    assert not store.put(l1_key(), answer(expires_at=NOW), store.token()), "already expired"
    # pinned: no expiry of its own, the TTL holds
    clock.now = NOW
    assert store.put(l1_key(), answer(expires_at=None, pinned=True), store.token())
    clock.now += 5.1
    assert store.get(l1_key()) == (None, True)


def test_keeps_only_exact_hits_with_an_entry_and_an_expiry():
    store = l1()
    assert not store.put(l1_key(), answer(semantic=True), store.token())
    assert not store.put(l1_key(), answer(entry_id=""), store.token())
    assert not store.put(l1_key(), answer(expires_at=None), store.token()), "the cache did not say when it expires"
    assert len(store) == 0


def test_is_bounded_least_recently_used_first_and_off_at_zero():
    store = l1(size=2)
    a, b, c = (l1_key(text=t) for t in "abc")
    for k in (a, b):
        store.put(k, answer(), store.token())
    store.get(a)
    store.put(c, answer(), store.token())
    assert store.get(b)[0] is None and store.get(a)[0] is not None and store.get(c)[0] is not None
    for size, ttl in ((0, 5.0), (10, 0.0)):
        off = l1(size=size, ttl_s=ttl)
        assert not off.enabled and not off.put(l1_key(), answer(), off.token())


def test_invalidations_drop_the_matching_entries_of_their_tenant_only():
    store = l1()
    kept = {
        "plain": (l1_key(text="plain"), answer(entry_id="1" * 64)),
        "legal": (l1_key(text="legal", use_case="legal"), answer(entry_id="2" * 64)),
        "doc-v1": (l1_key(text="doc-v1"), answer(entry_id="3" * 64, content_versions=(("handbook", 1),))),
        "doc-v2": (l1_key(text="doc-v2"), answer(entry_id="4" * 64, content_versions=(("handbook", 2),))),
        "other": (l1_key("t2", text="plain"), answer(entry_id="1" * 64)),
    }
    for k, a in kept.values():
        assert store.put(k, a, store.token())

    def present() -> set[str]:
        return {name for name, (k, _) in kept.items() if store.get(k)[0] is not None}

    assert store.remove(Removal("t1", NOW, document_id="handbook", version=2)) == 1
    assert present() == {"plain", "legal", "doc-v2", "other"}, "built from an older version only"
    assert store.remove(Removal("t1", NOW, use_case="legal")) == 1
    assert present() == {"plain", "doc-v2", "other"}
    assert store.remove(Removal("t1", NOW)) == 2
    assert present() == {"other"}, "another tenant's copies stay"


def test_a_removed_entry_drops_every_copy_of_it():
    store = l1()
    store.put(l1_key(revision=1), answer(), store.token())
    store.put(l1_key(text="other"), answer(entry_id="b" * 64), store.token())
    assert store.remove(Removal("t1", NOW, entry_id=ENTRY)) == 1
    assert store.get(l1_key())[0] is None and store.get(l1_key(text="other"))[0] is not None


def test_an_answer_looked_up_before_an_event_heard_meanwhile_is_not_kept():
    store = l1()
    token = store.token()
    store.remove(Removal("t1", NOW - 5))  # issued after the entry was created (NOW - 10)
    assert not store.put(l1_key(), answer(), token)
    assert store.put(l1_key(), answer(created_at=NOW - 4), token), "created after the event: the cache keeps it"
    store.remove(Removal("t1", NOW - 1, entry_id="c" * 64))
    assert not store.put(l1_key(text="c"), answer(entry_id="c" * 64, created_at=NOW - 2), store.token())
    assert store.put(l1_key("t2"), answer(), store.token()), "events of another tenant do not count"


def test_a_flush_or_a_disconnect_drops_everything_and_what_was_on_its_way():
    store = l1()
    store.put(l1_key(), answer(), store.token())
    token = store.token()
    store.clear()
    assert len(store) == 0
    assert not store.put(l1_key(), answer(), token), "looked up before the flush"
    store.suspend()
    assert not store.live and not store.put(l1_key(), answer(), store.token())
    store.resume()
    assert store.live and store.put(l1_key(), answer(), store.token())


def test_a_newer_policy_revision_drops_the_older_entries():
    store = l1()
    store.put(l1_key(revision=1), answer(), store.token())
    assert store.put(l1_key(text="x", revision=2), answer(), store.token())
    assert store.get(l1_key(revision=1))[0] is None and len(store) == 1
    assert not store.put(l1_key(revision=1), answer(), store.token()), "looked up under an older revision"


def test_hit_reports_count_by_entry_and_scope_and_stay_bounded():
    reports = HitReports(max_rows=2)
    assert reports.record("t1", "bu", "default", answer(), NOW) == 1
    assert reports.record("t1", "bu", "default", answer(), NOW + 1) == 2
    assert reports.record("t1", "other-bu", "default", answer(), NOW) == 3
    assert reports.record("t2", "bu", "default", answer(), NOW) == 3 and reports.dropped == 1
    rows = sorted(reports.take(), key=lambda r: r.business_unit)
    assert [(r.business_unit, r.hits, r.tokens, r.last_hit_at) for r in rows] == [
        ("bu", 2, 4, NOW + 1),
        ("other-bu", 1, 4, NOW),
    ]
    assert reports.pending == 0 and reports.take() == []
    event = convert.hits_report_to_proto(rows, replica="router-x")
    assert [(h.tenant_id, h.entry_id, h.hits, h.cost_usd) for h in event.hits][0] == ("t1", ENTRY, 2, 0.001)


def test_the_caches_events_read_as_removals_and_bad_ones_are_refused():
    event = events_pb2.CacheInvalidated(event_id="e", tenant_id="t1", use_case="legal")
    event.issued_at.FromSeconds(int(NOW))
    assert convert.l1_removal_from_invalidation(event.SerializeToString()) == Removal("t1", NOW, use_case="legal")
    event.content_version.CopyFrom(common_pb2.ContentVersion(document_id="handbook", version=3))
    assert convert.l1_removal_from_invalidation(event.SerializeToString()) == Removal(
        "t1", NOW, document_id="handbook", version=3
    )
    event.all = True
    assert convert.l1_removal_from_invalidation(event.SerializeToString()) == Removal("t1", NOW)
    removed = events_pb2.CacheEntryRemoved(event_id="e", tenant_id="t1", entry_id=ENTRY, reason="admin")
    removed.removed_at.FromSeconds(int(NOW))
    assert convert.l1_removal_from_entry_removed(removed.SerializeToString()) == Removal("t1", NOW, entry_id=ENTRY)
    for bad in (
        events_pb2.CacheInvalidated(tenant_id="t1", all=True),  # no issued_at
        events_pb2.CacheInvalidated(issued_at=event.issued_at, all=True),  # no tenant
        events_pb2.CacheInvalidated(tenant_id="t1", issued_at=event.issued_at),  # no scope
    ):
        with pytest.raises(ValueError):
            convert.l1_removal_from_invalidation(bad.SerializeToString())
    with pytest.raises(ValueError):
        convert.l1_removal_from_entry_removed(events_pb2.CacheEntryRemoved(tenant_id="t1").SerializeToString())


# --- the adapter -------------------------------------------------------------------------------


class StubCache:
    def __init__(self):
        self.lookups = 0
        self.semantic_only: list[bool] = []
        self.answers: dict[CacheKey, CachedAnswer] = {}

    async def lookup(self, key, *, business_unit, timeout_s, exact_only=False, semantic_only=False):
        self.lookups += 1
        self.semantic_only.append(semantic_only)
        await asyncio.sleep(0)
        return self.answers.get(key)

    async def store(self, key, answer, *, business_unit, sensitivity, timeout_s):
        return None


@dataclasses.dataclass
class Adapter:
    cache: StubCache
    l1: ExactL1
    reports: HitReports
    adapter: L1Cache
    due: list[int]

    async def lookup(self, key: CacheKey) -> CachedAnswer | None:
        return await self.adapter.lookup(key, business_unit="bu", timeout_s=1.0, exact_only=True)


@pytest.fixture
def adapter() -> Adapter:
    cache, store, reports, due = StubCache(), ExactL1(max_entries=100, ttl_s=60.0), HitReports(), []
    l1_cache = L1Cache(cache, store, reports, policy_revision=lambda: 1, report_due=lambda: due.append(1), batch_hits=3)
    return Adapter(cache, store, reports, l1_cache, due)


async def test_a_repeated_exact_hit_is_answered_without_the_cache(adapter):
    hits = metrics.L1_HIT._value.get()
    adapter.cache.answers[cache_key()] = answer(expires_at=time.time() + 600)
    first = await adapter.lookup(cache_key())
    assert adapter.cache.lookups == 1
    for _ in range(3):
        assert await adapter.lookup(cache_key()) == first
    assert adapter.cache.lookups == 1 and metrics.L1_HIT._value.get() == hits + 3
    assert adapter.due == [1], "a full batch is reported at once"
    assert sum(r.hits for r in adapter.reports.take()) == 3

    # another tenant's lookup of the same content is its own
    adapter.cache.answers[cache_key("t2")] = answer(expires_at=time.time() + 600, content="Lyon")
    assert (await adapter.lookup(cache_key("t2"))).content == "Lyon" and adapter.cache.lookups == 2


async def test_semantic_hits_are_never_kept_and_a_store_drops_the_copy(adapter):
    adapter.cache.answers[cache_key()] = answer(expires_at=time.time() + 600, semantic=True)
    await adapter.lookup(cache_key())
    await adapter.lookup(cache_key())
    assert adapter.cache.lookups == 2
    adapter.cache.answers[cache_key()] = answer(expires_at=time.time() + 600)
    await adapter.lookup(cache_key())
    assert len(adapter.l1) == 1
    await adapter.adapter.store(
        cache_key(), None, business_unit="bu", sensitivity=common_pb2.SENSITIVITY_INTERNAL, timeout_s=1.0
    )
    assert len(adapter.l1) == 0, "a new answer for the content (a refresh): the old copy goes"


async def test_a_semantic_only_lookup_goes_to_the_cache_and_keeps_nothing(adapter):
    """The lookup after an exact miss (docs/adr/0039): the L1 holds exact answers only."""
    adapter.cache.answers[cache_key()] = answer(expires_at=time.time() + 600)
    kept = await adapter.lookup(cache_key())
    assert len(adapter.l1) == 1 and adapter.cache.semantic_only == [False]
    semantic = answer(expires_at=time.time() + 600, semantic=True, content="Paris, by meaning")
    adapter.cache.answers[cache_key()] = semantic
    found = await adapter.adapter.lookup(cache_key(), business_unit="bu", timeout_s=1.0, semantic_only=True)
    assert found == semantic and found != kept, "asked of the cache, not answered from the L1"
    assert adapter.cache.semantic_only == [False, True] and len(adapter.l1) == 1


async def test_while_events_may_be_missed_every_lookup_asks_the_cache(adapter):
    adapter.cache.answers[cache_key()] = answer(expires_at=time.time() + 600)
    await adapter.lookup(cache_key())
    adapter.l1.suspend()
    off = metrics.L1_OFF._value.get()
    await adapter.lookup(cache_key())
    await adapter.lookup(cache_key())
    assert adapter.cache.lookups == 3 and metrics.L1_OFF._value.get() == off + 2
    adapter.l1.resume()
    await adapter.lookup(cache_key())
    await adapter.lookup(cache_key())
    assert adapter.cache.lookups == 4


# --- through the router, in front of two real cache replicas -----------------------------------


@pytest.fixture(scope="module")
async def caches(nats_url):
    """Two cache replicas (their own stores, one queue group for reported hits); the router uses
    the first."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(cache_service(nats_url)) for _ in range(2)]


@pytest.fixture(scope="module")
async def l1_router(nats_url, upstreams, caches):
    app = RouterApp(
        router_settings(
            nats_url,
            upstreams.address,
            cache_addr=caches[0][2],
            exact_l1_ttl_s=60.0,
            exact_l1_report_s=0.1,
        )
    )
    async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
        yield app, RouterClient(channel, upstreams)


@pytest.fixture
def lookups(caches, monkeypatch) -> list[str]:
    """The contents the first replica was asked to look up."""
    cache = caches[0][0].cache
    asked: list[str] = []
    real = cache.lookup

    async def lookup(query):
        asked.append(query.key.messages[-1].content)
        return await real(query)

    monkeypatch.setattr(cache, "lookup", lookup)
    return asked


async def warm(stub, tenant: str, text: str, content: str, *, tier: int = 1, use_case: str = "", versions=()) -> None:
    """Stores an answer under the key the router builds for `text` from this tenant."""
    command = convert.command_from_proto(RouterClient.request(text, max_tokens=50, use_case=use_case))
    key = CacheKey(tenant, command.use_case, command.messages, "", command.sampling, command.max_tokens)
    entry = cache_pb2.StoreRequest(
        key=convert.cache_key_to_proto(key),
        content=content,
        model="tiny-1",
        backend="llama_cpp",
        tier=tier,
        usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=2),
        cost_usd=0.002,
        content_versions=[common_pb2.ContentVersion(document_id=d, version=v) for d, v in versions],
    )

    async def requests():
        yield cache_pb2.WarmRequest(entry=entry)

    async for progress in stub.Warm(requests(), metadata=ADMIN):
        if progress.done:
            assert progress.stored == 1, progress


def kept(app: RouterApp, tenant: str) -> dict[str, str]:
    """The router's copies for the tenant: content -> entry id."""
    return {e.answer.content: e.answer.entry_id for k, e in app.exact_l1._entries.items() if k.tenant_id == tenant}


async def ask(client: RouterClient, api_key: str, text: str, **fields) -> tuple[str, router_pb2.GenerateSummary]:
    deltas, summary = await client.generate(api_key, text, max_tokens=50, **fields)
    return "".join(deltas), summary


EXACT = router_pb2.CACHE_OUTCOME_EXACT_HIT


async def test_repeated_hits_skip_the_cache_and_are_counted_once_by_its_replicas(l1_router, caches, lookups):
    app, client = l1_router
    api_key, tenant, _ = client.new_key()
    text = unique("Name two oceans")
    await warm(caches[0][1], tenant, text, "Atlantic and Pacific.")
    for _ in range(5):
        content, summary = await ask(client, api_key, text)
        assert (content, summary.cache_outcome) == ("Atlantic and Pacific.", EXACT)
    assert lookups.count(text) == 1, "the first hit filled the router's copy; four more without the cache"
    assert list(kept(app, tenant)) == ["Atlantic and Pacific."]

    async def counted():
        rows = [
            (await stub.Stats(cache_pb2.StatsRequest(tenant_id=tenant))).total
            for _, stub, _ in caches  # the operator's view of each replica
        ]
        assert sum(r.exact_hits for r in rows) == 5 and sum(r.lookups for r in rows) == 5, rows
        assert sum(r.tokens_saved for r in rows) == 5 * 5
        assert sum(r.cost_saved_usd for r in rows) == pytest.approx(5 * 0.002)
        return rows

    await assert_eventually(counted, message="the router's hits in the cache's analytics")
    # the hit history (cache refresh) too, each hit once over both replicas
    history = [row.hits for app_, _, _ in caches for row in app_.cache.hits.often_hit(tenant, "", 1)]
    assert sum(history) == 5
    await asyncio.sleep(0)  # (no further report arrives: nothing pending)
    assert app.l1_hits.pending == 0


async def test_with_the_classification_memo_on_copies_are_served_at_once_and_classified_from_it(
    l1_router, caches, upstreams
):
    """A copy answers without an await: the memo's classify call must already be waiting for the
    lookup's outcome (it was not, once: each such hit then waited out the upstream timeout and was
    served as a degraded, restricted request, past the cache)."""
    app, client = l1_router
    classifier = upstreams.classifier
    classifier.model_version = "v1"
    try:
        api_key, tenant, _ = client.new_key()
        text = unique("Name two seas")
        await warm(caches[0][1], tenant, text, "Baltic and North.")
        await ask(client, api_key, text)  # the cache's hit, kept; classified and memoised
        asked = classifier.classified[tenant]
        for _ in range(3):
            content, summary = await ask(client, api_key, text)
            assert (content, summary.cache_outcome) == ("Baltic and North.", EXACT), "served as a hit"
            assert summary.total_time_ms < 1000 * app.settings.upstream_timeout_s, "no wait on the memo"
        assert classifier.classified[tenant] == asked, "classified from the memo"
    finally:
        classifier.model_version = ""


async def test_each_invalidation_scope_drops_the_routers_copies(l1_router, caches, lookups):
    app, client = l1_router
    stub = caches[0][1]
    api_key, tenant, _ = client.new_key()
    other_key, other_tenant, _ = client.new_key()
    texts = {name: unique(name) for name in ("plain", "legal", "handbook")}
    await warm(stub, tenant, texts["plain"], "plain answer")
    await warm(stub, tenant, texts["legal"], "legal answer", use_case="legal")
    await warm(stub, tenant, texts["handbook"], "handbook answer", versions=[("handbook", 1)])
    await warm(stub, other_tenant, texts["plain"], "other tenant's answer")
    for name, text in texts.items():
        _, summary = await ask(client, api_key, text, use_case="legal" if name == "legal" else "")
        assert summary.cache_outcome == EXACT
    for _ in range(2):  # the second from its own copy, never the first tenant's
        assert (await ask(client, other_key, texts["plain"]))[0] == "other tenant's answer"
    assert set(kept(app, tenant)) == {"plain answer", "legal answer", "handbook answer"}

    async def gone(*contents: str):
        await assert_eventually(
            lambda: not set(contents) & set(kept(app, tenant)), message=f"{contents} dropped by the router"
        )

    await stub.Invalidate(
        cache_pb2.InvalidateRequest(
            tenant_id=tenant, content_version=common_pb2.ContentVersion(document_id="handbook", version=2)
        ),
        metadata=ADMIN,
    )
    await gone("handbook answer")
    assert set(kept(app, tenant)) == {"plain answer", "legal answer"}
    await stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, use_case="legal"), metadata=ADMIN)
    await gone("legal answer")
    assert set(kept(app, tenant)) == {"plain answer"}
    await stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, all=True), metadata=ADMIN)
    await gone("plain answer")
    assert list(kept(app, other_tenant)) == ["other tenant's answer"], "another tenant's copy stays"

    # the cache applied it too (its own consumer): the next request is a miss and is generated
    asked = len(lookups)
    _, summary = await ask(client, api_key, texts["plain"])
    assert summary.cache_outcome != EXACT and len(lookups) > asked


async def test_invalidations_the_cache_replicas_applied_reach_the_routers_too(l1_router, caches):
    """Another region's invalidation is copied into this region's stream, where the cache replicas
    apply it, but no core subscriber here hears it: the replicas announce what they applied."""
    app, client = l1_router
    api_key, tenant, _ = client.new_key()
    text = unique("Which region")
    await warm(caches[0][1], tenant, text, "copied answer")
    assert (await ask(client, api_key, text))[1].cache_outcome == EXACT
    assert list(kept(app, tenant)) == ["copied answer"]

    # each replica announces the events it applies from the stream
    announced: list[events_pb2.CacheInvalidated] = []

    async def heard(data: bytes) -> None:
        announced.append(events_pb2.CacheInvalidated.FromString(data))

    await app.bus.subscribe(f"{CACHE_APPLIED_SUBJECT_PREFIX}.{tenant}", heard)
    await caches[0][1].Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, use_case="elsewhere"), metadata=ADMIN)
    await assert_eventually(
        lambda: [e.use_case for e in announced] == ["elsewhere", "elsewhere"], message="both replicas announce it"
    )
    assert list(kept(app, tenant)) == ["copied answer"], "another use case's invalidation keeps the copy"

    # an announcement alone (the event the router never heard directly) drops the copy
    issued = Timestamp()
    issued.GetCurrentTime()
    event = events_pb2.CacheInvalidated(event_id=unique("ev"), tenant_id=tenant, issued_at=issued, all=True)
    await app.bus.publish_core(f"{CACHE_APPLIED_SUBJECT_PREFIX}.{tenant}", event)
    await assert_eventually(lambda: not kept(app, tenant), message="the copy dropped on the announcement")


async def test_a_thumbs_down_or_a_deleted_entry_drops_the_routers_copy(l1_router, caches):
    app, client = l1_router
    stub = caches[0][1]
    api_key, tenant, _ = client.new_key()
    disliked, deleted = unique("disliked"), unique("deleted")
    await warm(stub, tenant, disliked, "a wrong answer")
    await warm(stub, tenant, deleted, "an outdated answer")
    for text in (disliked, deleted):
        assert (await ask(client, api_key, text))[1].cache_outcome == EXACT
    ids = kept(app, tenant)

    response = await stub.Feedback(
        cache_pb2.FeedbackRequest(
            tenant_id=tenant,
            entry_id=ids["a wrong answer"],
            rating=cache_pb2.RATING_THUMBS_DOWN,
            served_as=cache_pb2.LOOKUP_OUTCOME_EXACT_HIT,
        )
    )
    assert response.evicted
    await assert_eventually(lambda: "a wrong answer" not in kept(app, tenant), message="evicted copy dropped")
    assert "an outdated answer" in kept(app, tenant)
    response = await stub.DeleteEntry(
        cache_pb2.DeleteEntryRequest(tenant_id=tenant, entry_id=ids["an outdated answer"]), metadata=ADMIN
    )
    assert response.deleted
    await assert_eventually(lambda: not kept(app, tenant), message="deleted copy dropped")
    assert (await ask(client, api_key, disliked))[1].cache_outcome != EXACT


async def test_a_copy_is_served_only_under_the_pipelines_tier_and_restricted_rules(l1_router, caches, upstreams):
    app, client = l1_router
    stub = caches[0][1]
    api_key, tenant, _ = client.new_key()
    text, restricted = unique("how tall is it"), unique("[restricted] the payroll")
    await warm(stub, tenant, text, "a tier-1 answer", tier=1)
    await warm(stub, tenant, restricted, "a restricted answer", tier=3)
    assert (await ask(client, api_key, text))[1].cache_outcome == EXACT
    assert "a tier-1 answer" in kept(app, tenant)

    upstreams.classifier.tier_overrides[text] = 2  # the same content now needs tier 2
    hits = metrics.L1_HIT._value.get()
    content, summary = await ask(client, api_key, text)
    assert metrics.L1_HIT._value.get() == hits + 1, "the router's copy answered the lookup"
    assert summary.cache_outcome != EXACT and summary.tier == 2 and content != "a tier-1 answer"

    # restricted: the cache's answer fills the copy, the pipeline serves neither (no cache_restricted)
    for _ in range(2):
        content, summary = await ask(client, api_key, restricted)
        assert summary.cache_outcome != EXACT and content != "a restricted answer"
    assert "a restricted answer" in kept(app, tenant)


async def test_nothing_is_served_from_the_copies_while_nats_is_away(tmp_path, upstreams):
    """Invalidations published meanwhile would be missed: every lookup asks the cache until NATS
    is back, and the copies kept before are gone."""
    nats = NatsServerProcess(str(tmp_path / "nats")).start()
    port = nats.port
    try:
        async with cache_service(nats.url) as (cache_app, stub, address):
            app = RouterApp(router_settings(nats.url, upstreams.address, cache_addr=address, exact_l1_ttl_s=60.0))
            async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
                client = RouterClient(channel, upstreams)
                api_key, tenant, _ = client.new_key()
                text = unique("Name two oceans")
                await warm(stub, tenant, text, "Atlantic and Pacific.")
                await ask(client, api_key, text)
                assert kept(app, tenant)
                hits = cache_app.cache.analytics.report(tenant_id=tenant)[1].exact_hits

                nats.stop()
                await assert_eventually(lambda: not app.exact_l1.live, timeout_s=15, message="disconnect seen")
                assert not kept(app, tenant)
                for _ in range(2):
                    assert (await ask(client, api_key, text))[1].cache_outcome == EXACT
                assert not kept(app, tenant), "nothing kept while events may be missed"
                assert cache_app.cache.analytics.report(tenant_id=tenant)[1].exact_hits == hits + 2, (
                    "the cache answered"
                )

                nats = NatsServerProcess(str(tmp_path / "nats"), port=port).start()
                await assert_eventually(lambda: app.exact_l1.live, timeout_s=15, message="reconnect seen")
                await ask(client, api_key, text)
                assert kept(app, tenant), "kept again once NATS is back"
    finally:
        nats.stop()
