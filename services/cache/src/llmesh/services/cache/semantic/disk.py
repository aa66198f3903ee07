"""Free-space guard of the embedded store: the cache stops writing before the disk is full.

qdrant-edge keeps its segments, payloads and write-ahead log in memory-mapped files that grow
by pages. On a full file system a write into a page not yet backed by a block is not an error
the engine can return: the kernel sends SIGBUS and the process dies (and dies again at each
restart while the disk stays full, since opening a shard writes too). Python cannot catch that.
So the cache never lets the engine write below a margin of free space
(LLMESH_CACHE_SEMANTIC_MIN_FREE_MB):

- `os.statvfs` of the store's file system before every write and on a periodic check
  (LLMESH_CACHE_SEMANTIC_DISK_CHECK_S);
- below the margin, stores are refused (`DiskFull`, RESOURCE_EXHAUSTED: the answer is kept by
  the exact layer only), expired-entry purges wait, and a shard that is not open yet (start-up on
  a full disk) stays closed: the cache serves without the semantic layer;
- lookups go on (reads write nothing) unless a delete was refused: then the store may hold
  entries an invalidation or an eviction meant to remove, so lookups answer "no candidate"
  until the refused deletes are applied. A refused delete raises too, so an invalidation event
  is redelivered by its stream (nothing is lost across a restart either);
- when the periodic check finds room again it opens the shard if needed, applies the refused
  deletes, and the store is whole again: no restart, no operator.

The margin must exceed what one write can allocate: a fresh shard allocates its files when it
is opened (see docs/reports/reliability.md for the sizes measured), and a burst of stores fills
pages between two checks. A writer outside the cache filling the last margin faster than one
statvfs call can still make a page fault fail: the guard narrows that window, it cannot close it
(the engine does not preallocate its maps).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
from collections.abc import Awaitable, Callable

import numpy as np
from llmesh.kit import errors
from llmesh.kit.logging import get_logger
from llmesh.kit.tasks import BackgroundTasks
from prometheus_client import Gauge

from .api import SemanticEntry
from .scope import TenantScope
from .store import Candidate, VectorStore

log = get_logger("llmesh.cache.semantic")

MIB = 1 << 20

DISK_FREE = Gauge(
    "llmesh_cache_semantic_disk_free_bytes", "Free bytes on the file system of the embedded semantic store"
)
WRITES_SUSPENDED = Gauge(
    "llmesh_cache_semantic_writes_suspended",
    "1 while the embedded semantic store refuses writes (free space below LLMESH_CACHE_SEMANTIC_MIN_FREE_MB)",
)
DELETES_PENDING = Gauge(
    "llmesh_cache_semantic_deletes_pending",
    "Deletes refused for lack of disk space and not applied yet (semantic lookups miss meanwhile)",
)


class DiskFull(errors.ResourceExhausted):
    """The embedded store's file system is below its free-space margin."""

    def __init__(self, message: str):
        super().__init__(message, reason="SEMANTIC_STORE_DISK_FULL", retry_after_s=5.0)


@dataclasses.dataclass
class DiskGuard:
    path: pathlib.Path
    min_free_bytes: int
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs

    def free_bytes(self) -> int:
        # The store's folder may not exist yet (first start): its nearest existing parent is on the
        # file system it will be made on.
        probe = pathlib.Path(self.path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        st = self.statvfs(str(probe))
        return st.f_bavail * st.f_frsize

    def room(self) -> tuple[bool, int]:
        free = self.free_bytes()
        DISK_FREE.set(free)
        return free >= self.min_free_bytes, free

    def refusal(self, free: int, what: str) -> DiskFull:
        return DiskFull(
            f"the semantic store's disk is full: {free / MIB:.0f} MiB free at {self.path}, below the "
            f"{self.min_free_bytes / MIB:.0f} MiB margin (LLMESH_CACHE_SEMANTIC_MIN_FREE_MB); {what}"
        )


Delete = Callable[[VectorStore], Awaitable[int]]


class GuardedStore:
    """A VectorStore over the embedded store that writes only while the disk has room (see the
    module's docstring). `opener` opens the engine's shard; it is not called while the disk is
    below the margin."""

    def __init__(self, opener: Callable[[], Awaitable[VectorStore]], guard: DiskGuard, check_interval_s: float):
        self._opener = opener
        self.guard = guard
        self._check_interval_s = check_interval_s
        self._store: VectorStore | None = None
        self._pending: list[tuple[str, Delete]] = []
        self._suspended = False
        self._lock = asyncio.Lock()  # one opener / replay of refused deletes at a time
        self._tasks = BackgroundTasks("semantic-disk-guard")

    @classmethod
    async def open(
        cls, opener: Callable[[], Awaitable[VectorStore]], guard: DiskGuard, check_interval_s: float = 1.0
    ) -> GuardedStore:
        store = cls(opener, guard, check_interval_s)
        ok, free = guard.room()
        if ok:
            # A shard that cannot be opened for another reason fails the start, as without the guard.
            store._store = await opener()
        else:
            store._suspend(free, "the store is not opened until there is room; the cache runs without it")
        if check_interval_s > 0:
            store._tasks.every(check_interval_s, store.check, name="semantic-disk-check")
        return store

    @property
    def opened(self) -> bool:
        return self._store is not None

    @property
    def suspended(self) -> bool:
        return self._suspended

    @property
    def pending_deletes(self) -> int:
        return len(self._pending)

    def _suspend(self, free: int, what: str) -> None:
        if not self._suspended:
            log.warning(
                "semantic_store_disk_full",
                path=str(self.guard.path),
                free_mib=round(free / MIB, 1),
                min_free_mib=round(self.guard.min_free_bytes / MIB, 1),
                action=what,
            )
        self._suspended = True
        WRITES_SUSPENDED.set(1)

    def _writable(self, what: str) -> VectorStore:
        ok, free = self.guard.room()
        if ok and self._store is not None:
            return self._store
        self._suspend(free, what)
        raise self.guard.refusal(free, what)

    async def check(self) -> bool:
        """The periodic check (also callable directly): whether the store is whole and writable."""
        ok, free = self.guard.room()
        if not ok:
            self._suspend(free, "writes refused until there is room")
            return False
        async with self._lock:
            if self._store is None:
                self._store = await self._opener()
                log.info("semantic_store_opened_after_disk_full", path=str(self.guard.path))
            while self._pending:
                name, delete = self._pending[0]
                removed = await delete(self._store)
                self._pending.pop(0)
                DELETES_PENDING.set(len(self._pending))
                log.info("semantic_refused_delete_applied", delete=name, removed=removed)
        if self._suspended:
            log.info("semantic_store_writable_again", path=str(self.guard.path), free_mib=round(free / MIB, 1))
        self._suspended = False
        WRITES_SUSPENDED.set(0)
        return True

    async def _delete(self, name: str, delete: Delete) -> int:
        try:
            store = self._writable("deletes are kept and applied when there is room; lookups miss until then")
        except DiskFull:
            self._pending.append((name, delete))
            DELETES_PENDING.set(len(self._pending))
            raise
        if self._pending:
            # Earlier refused deletes go first: their order is the callers'.
            await self.check()
        return await delete(store)

    # -- VectorStore ------------------------------------------------------------------------------

    async def upsert(self, entries: list[SemanticEntry], vectors: np.ndarray) -> None:
        store = self._writable("answers are stored for exact matches only")
        await store.upsert(entries, vectors)

    async def nearest(self, scope: TenantScope, vector: np.ndarray, limit: int = 1) -> list[Candidate]:
        if self._store is None or self._pending:
            return []
        return await self._store.nearest(scope, vector, limit)

    async def holds_any(self, scope: TenantScope) -> bool:
        if self._store is None or self._pending:
            return False  # as `nearest`: lookups miss until the refused deletes are applied
        return await self._store.holds_any(scope)

    async def count(self, scope: TenantScope) -> int:
        if self._store is None:
            raise errors.Unavailable("the semantic store is not open (its disk is full)", retry_after_s=5.0)
        return await self._store.count(scope)

    async def delete_ids(self, tenant_id: str, entry_ids: list[str]) -> int:
        ids = list(entry_ids)
        return await self._delete(f"ids of {tenant_id}", lambda s: s.delete_ids(tenant_id, ids))

    async def delete_scope(self, scope: TenantScope) -> int:
        return await self._delete(f"scope of {scope.tenant_id}", lambda s: s.delete_scope(scope))

    async def purge_expired(self, now: float) -> int:
        ok, _ = self.guard.room()
        if not ok or self._store is None:
            return 0  # expired entries are never served (lookups filter them); the next purge gets them
        return await self._store.purge_expired(now)

    async def close(self) -> None:
        await self._tasks.stop()
        store, self._store = self._store, None
        if store is not None:
            await store.close()
