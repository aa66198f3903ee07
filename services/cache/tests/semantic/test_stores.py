"""Both vector stores against the same behaviour: the embedded qdrant-edge store and the Qdrant
server store, which runs here on qdrant-client's local mode (same client API; no server here)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from llmesh.kit import errors
from llmesh.kit.testing import unique
from llmesh.services.cache.semantic.edge_store import EdgeStore
from llmesh.services.cache.semantic.scope import TenantScope, deletion_scope, lookup_scope
from llmesh.services.cache.semantic.server_store import QdrantServerStore

from .fakes import entry, query

DIM = 8

pytestmark = pytest.mark.timeout(30)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(params=["edge", "server-local"])
async def store(request, tmp_path):
    if request.param == "edge":
        opened = await EdgeStore.open(tmp_path / "edge", DIM)
    else:
        opened = await QdrantServerStore.open("llmesh_semantic_test", DIM, location=":memory:")
    yield opened
    await opened.close()


async def test_nearest_is_scoped_to_the_tenant(store):
    a, b = unique("tenant-a"), unique("tenant-b")
    v = unit(1)
    await store.upsert([entry(a, "e1", "same text"), entry(b, "e1", "same text")], np.stack([v, v]))
    found = await store.nearest(lookup_scope(query(a, "same text")), v)
    assert [c.entry.tenant_id for c in found] == [a]
    assert found[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert found[0].entry.payload == b"answer to same text"
    assert await store.nearest(lookup_scope(query(unique("tenant-c"), "same text")), v) == []


async def test_every_context_field_must_match(store):
    t = unique("tenant")
    v = unit(2)
    await store.upsert([entry(t, "e1", "q")], v[None])
    scope_of = lambda **kw: lookup_scope(query(t, "q", **kw))  # noqa: E731
    assert len(await store.nearest(scope_of(), v)) == 1
    for mismatch in ({"use_case": "sales"}, {"context_hash": "other"}, {"params_hash": "other"}):
        assert await store.nearest(scope_of(**mismatch), v) == [], mismatch


async def test_a_stronger_tier_answers_a_weaker_one_never_the_reverse(store):
    t = unique("tenant")
    v = unit(3)
    await store.upsert([entry(t, "made-on-2", "q", tier=2)], v[None])
    for asked, served in ((1, True), (2, True), (3, False), (0, True)):
        found = await store.nearest(lookup_scope(query(t, "q", tier=asked)), v)
        assert bool(found) is served, f"asked tier {asked}"


async def test_expired_entries_are_never_found_and_are_purged(store):
    t = unique("tenant")
    now = time.time()
    v = unit(4)
    await store.upsert(
        [entry(t, "old", "q", created_at=now - 100, expires_at=now - 1), entry(t, "new", "q", expires_at=now + 100)],
        np.stack([v, unit(5)]),
    )
    found = await store.nearest(lookup_scope(query(t, "q", now=now)), v, limit=5)
    assert [c.entry.entry_id for c in found] == ["new"]
    assert await store.purge_expired(now) == 1
    assert await store.count(TenantScope(t)) == 1
    assert await store.purge_expired(now) == 0


async def test_holds_any_says_whether_a_lookup_could_find_anything(store):
    """The index asks it before waiting for the embedding (docs/adr/0039): it must agree with
    `nearest` on every condition of a lookup scope."""
    t, other = unique("tenant"), unique("tenant")
    now = time.time()
    v = unit(6)
    await store.upsert(
        [
            entry(t, "live", "q", tier=2),
            entry(t, "old", "q", context_hash="gone", created_at=now - 9, expires_at=now - 1),
        ],
        np.stack([v, v]),
    )
    scopes = [{}, {"use_case": "sales"}, {"context_hash": "other"}, {"params_hash": "other"}, {"context_hash": "gone"}]
    scopes += [{"tier": 3}, {"tier": 1}]
    for fields in scopes:
        scope = lookup_scope(query(t, "q", now=now, **fields))
        assert await store.holds_any(scope) is bool(await store.nearest(scope, v)), fields
    assert await store.holds_any(lookup_scope(query(t, "q", now=now)))
    assert not await store.holds_any(lookup_scope(query(t, "q", now=now, context_hash="gone")))
    assert not await store.holds_any(lookup_scope(query(other, "q", now=now)))


async def test_delete_by_ids_stays_inside_the_tenant(store):
    a, b = unique("tenant-a"), unique("tenant-b")
    await store.upsert(
        [entry(a, "e1", "q"), entry(b, "e1", "q"), entry(a, "e2", "r")], np.stack([unit(6), unit(6), unit(7)])
    )
    assert await store.delete_ids(a, ["e1", "missing"]) == 1
    assert await store.count(TenantScope(a)) == 1
    assert await store.count(TenantScope(b)) == 1
    assert await store.delete_ids(a, []) == 0


async def test_delete_matching_use_case_document_version_and_age(store):
    t, other = unique("tenant"), unique("tenant")
    now = time.time()
    entries = [
        entry(t, "doc-v1", "a", content_versions={"handbook": 1, "faq": 7}),
        entry(t, "doc-v2", "b", content_versions={"handbook": 2}),
        entry(t, "doc-v3", "c", content_versions={"handbook": 3}),
        entry(t, "no-doc", "d", use_case="sales", created_at=now - 500),
        entry(other, "doc-v1", "a", content_versions={"handbook": 1}),
    ]
    await store.upsert(entries, np.stack([unit(10 + i) for i in range(len(entries))]))
    # "handbook is now at version 3": entries built from versions 1 and 2 go, in this tenant only.
    assert await store.delete_scope(deletion_scope(t, document_id="handbook", older_than_version=3)) == 2
    assert await store.count(TenantScope(other)) == 1
    assert await store.delete_scope(deletion_scope(t, created_before=now - 100)) == 1
    assert await store.delete_scope(deletion_scope(t, use_case="support")) == 1
    assert await store.count(TenantScope(t)) == 0


async def test_entries_round_trip_through_the_store(store):
    t = unique("tenant")
    original = entry(
        t,
        "e1",
        "Wie kündige ich? 🙂",
        content_versions={"d": 4},
        pinned=True,
        content_class="faq",
        payload=bytes(range(256)),
        context_hash="",
    )
    await store.upsert([original], unit(20)[None])
    found = await store.nearest(lookup_scope(query(t, "x", context_hash="")), unit(20))
    assert found[0].entry == original


async def test_times_come_back_exactly(store):
    # qdrant-edge returned about one float payload in eight off in its last binary digit.
    t = unique("tenant")
    rng = np.random.default_rng(7)
    now = time.time()
    written = [
        entry(t, f"e{i}", f"q{i}", created_at=now + s, expires_at=now + s + 60) for i, s in enumerate(rng.random(64))
    ]
    await store.upsert(written, np.stack([unit(100 + i) for i in range(len(written))]))
    for i, original in enumerate(written):
        found = await store.nearest(lookup_scope(query(t, f"q{i}", now=now)), unit(100 + i))
        assert (found[0].entry.created_at, found[0].entry.expires_at) == (original.created_at, original.expires_at)


async def test_upserting_the_same_entry_replaces_it(store):
    t = unique("tenant")
    await store.upsert([entry(t, "e1", "first")], unit(30)[None])
    await store.upsert([entry(t, "e1", "second")], unit(31)[None])
    assert await store.count(TenantScope(t)) == 1
    found = await store.nearest(lookup_scope(query(t, "x")), unit(31))
    assert found[0].entry.text == "second"


def test_a_scope_needs_a_tenant():
    for bad in ("", None):
        with pytest.raises(errors.InvalidArgument):
            TenantScope(bad)
    with pytest.raises(errors.InvalidArgument):
        deletion_scope("t", document_id="d")
    with pytest.raises(errors.InvalidArgument):
        deletion_scope("t", older_than_version=3)


async def test_edge_store_persists_across_reopen(tmp_path):
    t = unique("tenant")
    store = await EdgeStore.open(tmp_path / "s", DIM)
    await store.upsert([entry(t, "kept", "q")], unit(40)[None])
    await store.close()
    reopened = await EdgeStore.open(tmp_path / "s", DIM)
    try:
        found = await reopened.nearest(lookup_scope(query(t, "q")), unit(40))
        assert [c.entry.entry_id for c in found] == ["kept"]
    finally:
        await reopened.close()


async def test_edge_store_open_twice_names_the_replica_setting(tmp_path):
    store = await EdgeStore.open(tmp_path / "s", DIM)
    try:
        with pytest.raises(errors.FailedPrecondition, match="already open.*LLMESH_CACHE_REPLICA_ID"):
            await EdgeStore.open(tmp_path / "s", DIM)
    finally:
        await store.close()
    reopened = await EdgeStore.open(tmp_path / "s", DIM)
    await reopened.close()


async def test_edge_store_refuses_vectors_of_another_size(tmp_path):
    store = await EdgeStore.open(tmp_path / "s", DIM)
    await store.upsert([entry("t", "e", "q")], unit(1)[None])
    await store.close()
    with pytest.raises(errors.FailedPrecondition, match="vector size"):
        await EdgeStore.open(tmp_path / "s", DIM * 2)


async def test_server_store_refuses_a_collection_of_another_size(tmp_path):
    store = await QdrantServerStore.open("c", DIM, path=str(tmp_path / "local"))
    await store.close()
    with pytest.raises(errors.LlmeshError, match="dimensional"):
        await QdrantServerStore.open("c", DIM * 2, path=str(tmp_path / "local"))


async def test_edge_store_finds_an_eligible_entry_behind_many_closer_ineligible_ones(tmp_path):
    store = await EdgeStore.open(tmp_path / "s", DIM)
    try:
        t = unique("tenant")
        target = unit(50)
        close = [target + 0.01 * unit(100 + i) for i in range(40)]
        entries = [entry(t, f"other-context-{i}", "q", context_hash="other") for i in range(40)]
        entries.append(entry(t, "wanted", "q", context_hash="ctx"))
        far = unit(51)
        await store.upsert(entries, np.stack(close + [far]))
        found = await store.nearest(lookup_scope(query(t, "q", context_hash="ctx")), target)
        assert [c.entry.entry_id for c in found] == ["wanted"]
        assert store.full_filter_queries == 1
        # Among the first look: answered without the full filter.
        found = await store.nearest(lookup_scope(query(t, "q", context_hash="other")), target)
        assert found[0].entry.context_hash == "other" and store.full_filter_queries == 1
    finally:
        await store.close()


async def test_edge_store_answers_from_the_first_look_when_its_nearest_are_ineligible(tmp_path):
    store = await EdgeStore.open(tmp_path / "s", DIM)
    try:
        t = unique("tenant")
        target = unit(60)
        # The three nearest belong to another context, the fourth is the answer, more follow.
        vectors = []
        for i in range(12):  # ever farther from the target
            away = unit(200 + i) - (unit(200 + i) @ target) * target
            vectors.append(target + 0.05 * (i + 1) * away / np.linalg.norm(away))
        entries = [entry(t, f"other-{i}", "q", context_hash="other") for i in range(3)]
        entries += [entry(t, f"ctx-{i}", "q", context_hash="ctx") for i in range(3, 12)]
        await store.upsert(entries, np.stack(vectors))
        found = await store.nearest(lookup_scope(query(t, "q", context_hash="ctx")), target, limit=2)
        assert [c.entry.entry_id for c in found] == ["ctx-3", "ctx-4"]
        assert found[0].similarity >= found[1].similarity
        found = await store.nearest(lookup_scope(query(t, "q", context_hash="other")), target, limit=2)
        assert [c.entry.entry_id for c in found] == ["other-0", "other-1"]
        assert store.full_filter_queries == 0
    finally:
        await store.close()


async def test_edge_store_search_does_not_overtake_a_write_submitted_before_it(tmp_path):
    import asyncio

    store = await EdgeStore.open(tmp_path / "s", DIM)
    try:
        t = unique("tenant")
        write = asyncio.ensure_future(store.upsert([entry(t, "e", "q")], unit(70)[None]))
        await asyncio.sleep(0)  # the write is on the worker (or queued for it)
        found = await store.nearest(lookup_scope(query(t, "q")), unit(70))
        assert [c.entry.entry_id for c in found] == ["e"]
        await write
    finally:
        await store.close()
