"""The exact layer's contract, run against both implementations (in-process LRU and a real Redis),
plus what only the LRU does (bounded size)."""

from __future__ import annotations

import time

import pytest
from llmesh.kit.testing import assert_eventually, unique
from llmesh.services.cache.entries import Answer, CacheEntry
from llmesh.services.cache.lru import LruStore
from llmesh.services.cache.redis_store import RedisStore

pytestmark = pytest.mark.timeout(30)


def entry(
    tenant: str, entry_id: str, *, created: float, ttl: float = 3600, use_case="support", versions=None, pinned=False
):
    return CacheEntry(
        entry_id=entry_id,
        tenant_id=tenant,
        use_case=use_case,
        answer=Answer(content=f"answer {entry_id}", tier=2, prompt_tokens=3, completion_tokens=4, cost_usd=0.01),
        created_at=created,
        expires_at=created + ttl,
        content_versions=dict(versions or {}),
        pinned=pinned,
    )


@pytest.fixture(params=["lru", "redis"])
async def store(request):
    if request.param == "lru":
        layer = LruStore(max_entries=1000)
    else:
        layer = await RedisStore.connect(request.getfixturevalue("redis_url"), prefix=f"{unique('t')}:")
    yield layer
    await layer.close()


async def test_get_put_and_tenant_isolation(store):
    now = time.time()
    await store.put(entry("t1", "a", created=now))
    got = await store.get("t1", "a", now)
    assert got is not None and got.answer.content == "answer a" and got.answer.tokens == 7
    assert await store.get("t2", "a", now) is None
    assert await store.get("t1", "b", now) is None
    assert await store.count() == 1


async def test_expired_entries_are_not_served_unless_pinned(store):
    now = time.time()
    await store.put(entry("t1", "a", created=now, ttl=60))
    await store.put(entry("t1", "p", created=now, ttl=60, pinned=True))
    assert await store.get("t1", "a", now + 59) is not None
    assert await store.get("t1", "a", now + 61) is None
    assert await store.get("t1", "a", now) is None, "an expired entry is removed when met"
    assert await store.get("t1", "p", now + 10_000) is not None


async def test_purge_removes_expired_entries(store):
    now = time.time()
    await store.put(entry("t1", "short", created=now - 10, ttl=5))
    await store.put(entry("t1", "long", created=now, ttl=3600))
    if isinstance(store, RedisStore):
        # Redis expired it on its own clock already; the purge cleans the indexes.
        assert await store.get("t1", "short", now - 6) is None
    assert await store.purge_expired(now) == 1
    assert await store.count() == 1
    assert await store.get("t1", "long", now) is not None


async def test_delete_matching_by_scope_and_only_before_the_event(store):
    now = time.time()
    await store.put(entry("t1", "old-support", created=now - 10))
    await store.put(entry("t1", "old-sales", created=now - 10, use_case="sales"))
    await store.put(entry("t1", "new-support", created=now + 10))
    await store.put(entry("t2", "other-tenant", created=now - 10))

    assert await store.delete_matching("t1", use_case="support", created_before=now) == 1
    assert await store.get("t1", "old-support", now) is None
    assert await store.get("t1", "new-support", now) is not None, "newer than the event"
    assert await store.get("t1", "old-sales", now) is not None

    assert await store.delete_matching("t1", created_before=now) == 1
    assert await store.get("t1", "old-sales", now) is None
    assert await store.get("t1", "new-support", now) is not None
    assert await store.get("t2", "other-tenant", now) is not None
    assert await store.delete_matching("t1") == 1
    assert await store.get("t1", "new-support", now) is None


async def test_delete_matching_by_document_version(store):
    now = time.time()
    await store.put(entry("t1", "v1", created=now - 10, versions={"handbook": 1, "faq": 9}))
    await store.put(entry("t1", "v2", created=now - 10, versions={"handbook": 2}))
    await store.put(entry("t1", "none", created=now - 10, versions={"faq": 1}))
    assert await store.delete_matching("t1", document_id="handbook", older_than_version=2, created_before=now) == 1
    assert await store.get("t1", "v1", now) is None
    assert await store.get("t1", "v2", now) is not None
    assert await store.get("t1", "none", now) is not None


async def test_delete_by_id(store):
    now = time.time()
    await store.put(entry("t1", "a", created=now))
    assert await store.delete("t2", ["a"]) == 0
    assert await store.delete("t1", ["a", "missing"]) == 1
    assert await store.get("t1", "a", now) is None


async def test_document_versions_keep_the_newest(store):
    await store.note_document_version("t1", "handbook", 3)
    await store.note_document_version("t1", "handbook", 2)  # an older event applied late
    assert await store.document_versions("t1", ["handbook", "unknown"]) == {"handbook": 3}
    assert await store.document_versions("t2", ["handbook"]) == {}


async def test_redis_expires_entries_itself(redis_url):
    store = await RedisStore.connect(redis_url, prefix=f"{unique('t')}:")
    try:
        now = time.time()
        await store.put(entry("t1", "a", created=now - 1, ttl=1.3))
        assert await store._r.get(store._entry_key("t1", "a")) is not None

        async def gone():
            assert await store._r.get(store._entry_key("t1", "a")) is None

        await assert_eventually(gone, timeout_s=5)
        assert await store.purge_expired(time.time()) == 1
        assert await store._r.zcard(store._tenant_index("t1")) == 0
    finally:
        await store.close()


async def test_lru_evicts_the_least_recently_used_but_keeps_pinned():
    store = LruStore(max_entries=3)
    now = time.time()
    await store.put(entry("t", "pinned", created=now, pinned=True))
    for name in ("a", "b"):
        await store.put(entry("t", name, created=now))
    assert await store.get("t", "a", now) is not None  # "a" is now more recent than "b"
    await store.put(entry("t", "c", created=now))
    assert len(store) == 3
    assert await store.get("t", "b", now) is None
    assert await store.get("t", "pinned", now) is not None
    assert await store.get("t", "a", now) is not None
    assert await store.get("t", "c", now) is not None


async def test_lru_rejects_a_zero_bound():
    with pytest.raises(ValueError):
        LruStore(max_entries=0)


async def test_redis_out_of_reach_is_unavailable_and_the_store_reconnects_when_it_is_back(tmp_path):
    from llmesh.kit import errors
    from llmesh.kit.testing import redis_server

    now = time.time()
    with redis_server(str(tmp_path)) as url:
        store = await RedisStore.connect(url, prefix=f"{unique('t')}:")
        await store.put(entry("acme", "e1", created=now))
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        # The server is gone: every call is UNAVAILABLE, not an unexpected error.
        with pytest.raises(errors.Unavailable, match="exact layer's Redis is unreachable"):
            await store.get("acme", "e1", now)
        with pytest.raises(errors.Unavailable):
            await store.put(entry("acme", "e2", created=now))
        with pytest.raises(errors.Unavailable):
            await store.delete_matching("acme", created_before=now + 1)
        # A server on the same address again: the same client works without reconnecting by hand.
        import shutil
        import subprocess

        server = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            async def answers() -> None:
                try:
                    found = await store.get("acme", "e1", now)
                except errors.Unavailable as exc:
                    raise AssertionError(str(exc)) from None
                assert found is None  # no persistence: a new, empty server

            await assert_eventually(answers, timeout_s=10, message="the store answers again")
            await store.put(entry("acme", "e3", created=now))
            assert (await store.get("acme", "e3", now)) is not None
        finally:
            server.terminate()
            server.wait(10)
    finally:
        await store.close()
