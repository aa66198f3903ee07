"""The embedded store's free-space guard (semantic/disk.py) over the real qdrant-edge store, with
the file system's free space played by a fake statvfs. tests/semantic/test_disk_full.py fills a
real (tmpfs) file system."""

from __future__ import annotations

import os

import numpy as np
import pytest
from llmesh.kit import errors
from llmesh.kit.testing import unique
from llmesh.services.cache.semantic.disk import MIB, DiskFull, DiskGuard, GuardedStore
from llmesh.services.cache.semantic.edge_store import EdgeStore
from llmesh.services.cache.semantic.scope import TenantScope, deletion_scope, lookup_scope

from .fakes import entry, query

DIM = 8

pytestmark = pytest.mark.timeout(30)


class FakeDisk:
    """statvfs of a file system whose free space the test sets."""

    def __init__(self, free_mib: int):
        self.free_mib = free_mib
        self.calls = 0

    def __call__(self, path: str) -> os.statvfs_result:
        self.calls += 1
        real = os.statvfs(path)
        blocks = self.free_mib * MIB // real.f_frsize
        return os.statvfs_result((real.f_bsize, real.f_frsize, real.f_blocks, blocks, blocks, *tuple(real)[5:]))


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


async def guarded(tmp_path, disk: FakeDisk) -> GuardedStore:
    path = tmp_path / "edge"
    # check_interval_s=0: no periodic task, the test calls check() where the timer would.
    return await GuardedStore.open(lambda: EdgeStore.open(path, DIM), DiskGuard(path, 100 * MIB, disk), 0)


async def test_below_the_margin_stores_are_refused_lookups_go_on_and_writes_resume_with_room(tmp_path):
    disk = FakeDisk(free_mib=500)
    store = await guarded(tmp_path, disk)
    t = unique("tenant")
    try:
        await store.upsert([entry(t, "e1", "kept")], unit(1)[None])
        disk.free_mib = 99
        with pytest.raises(DiskFull) as refused:
            await store.upsert([entry(t, "e2", "refused")], unit(2)[None])
        assert isinstance(refused.value, errors.ResourceExhausted)
        assert refused.value.reason == "SEMANTIC_STORE_DISK_FULL"
        assert "99 MiB free" in refused.value.message and "100 MiB margin" in refused.value.message
        assert store.suspended
        # Reads write nothing: the entries already there still answer.
        found = await store.nearest(lookup_scope(query(t, "kept")), unit(1))
        assert [c.entry.entry_id for c in found] == ["e1"]
        assert await store.purge_expired(now=1e12) == 0, "purges wait for room"
        assert not await store.check()

        disk.free_mib = 101
        assert await store.check() and not store.suspended
        await store.upsert([entry(t, "e2", "stored")], unit(2)[None])
        assert await store.count(TenantScope(t)) == 2
    finally:
        await store.close()


async def test_a_refused_delete_makes_lookups_miss_until_it_is_applied(tmp_path):
    disk = FakeDisk(free_mib=500)
    store = await guarded(tmp_path, disk)
    t = unique("tenant")
    try:
        await store.upsert(
            [entry(t, "e1", "doc answer", content_versions={"D": 1}), entry(t, "e2", "other")],
            np.stack([unit(1), unit(2)]),
        )
        disk.free_mib = 10
        # An invalidation ("D is now at version 2") refused: it raises, so its stream redelivers it.
        with pytest.raises(DiskFull):
            await store.delete_scope(deletion_scope(t, document_id="D", older_than_version=2))
        with pytest.raises(DiskFull):
            await store.delete_ids(t, ["e2"])
        assert store.pending_deletes == 2
        # The store still holds the outdated entry: no lookup may find it.
        assert await store.nearest(lookup_scope(query(t, "doc answer")), unit(1)) == []
        assert await store.nearest(lookup_scope(query(t, "other")), unit(2)) == []

        disk.free_mib = 500
        assert await store.check()
        assert store.pending_deletes == 0
        assert await store.count(TenantScope(t)) == 0
        assert await store.nearest(lookup_scope(query(t, "doc answer")), unit(1)) == []
        await store.upsert([entry(t, "e3", "fresh")], unit(3)[None])
        assert [c.entry.entry_id for c in await store.nearest(lookup_scope(query(t, "fresh")), unit(3))] == ["e3"]
    finally:
        await store.close()


async def test_a_full_disk_at_start_leaves_the_store_closed_until_there_is_room(tmp_path):
    disk = FakeDisk(free_mib=5)
    store = await guarded(tmp_path, disk)
    t = unique("tenant")
    try:
        assert not store.opened and store.suspended
        assert not (tmp_path / "edge").exists(), "nothing written on a full disk"
        assert await store.nearest(lookup_scope(query(t, "q")), unit(1)) == []
        with pytest.raises(DiskFull):
            await store.upsert([entry(t, "e1", "q")], unit(1)[None])
        with pytest.raises(errors.Unavailable):
            await store.count(TenantScope(t))

        disk.free_mib = 200
        assert await store.check()
        assert store.opened and not store.suspended
        await store.upsert([entry(t, "e1", "q")], unit(1)[None])
        assert len(await store.nearest(lookup_scope(query(t, "q")), unit(1))) == 1
    finally:
        await store.close()


async def test_every_write_looks_at_the_disk_itself(tmp_path):
    disk = FakeDisk(free_mib=500)
    store = await guarded(tmp_path, disk)
    try:
        before = disk.calls
        await store.upsert([entry(unique("t"), "e1", "q")], unit(1)[None])
        assert disk.calls == before + 1, "not a cached answer of the periodic check"
    finally:
        await store.close()


def test_free_space_is_read_on_the_nearest_existing_folder(tmp_path):
    guard = DiskGuard(tmp_path / "not" / "yet" / "made", 1)
    st = os.statvfs(tmp_path)
    assert abs(guard.free_bytes() - st.f_bavail * st.f_frsize) < 64 * MIB


async def test_the_embedded_store_is_guarded_unless_the_margin_is_zero(tmp_path):
    from llmesh.services.cache.semantic.config import SemanticConfig
    from llmesh.services.cache.semantic.factory import open_store

    guarded_store = await open_store(SemanticConfig(store_path=str(tmp_path / "a"), min_free_mb=1), "c", DIM)
    bare = await open_store(SemanticConfig(store_path=str(tmp_path / "b"), min_free_mb=0), "c", DIM)
    try:
        assert isinstance(guarded_store, GuardedStore) and guarded_store.opened
        assert isinstance(bare, EdgeStore)
    finally:
        await guarded_store.close()
        await bare.close()
