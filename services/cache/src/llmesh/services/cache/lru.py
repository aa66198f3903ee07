"""The in-process exact layer: a bounded LRU with TTLs, one per replica."""

from __future__ import annotations

from collections import OrderedDict

from llmesh.services.cache import metrics
from llmesh.services.cache.entries import CacheEntry
from llmesh.services.cache.exact import matches

# Newest document versions remembered, beyond which the least recently seen are forgotten.
MAX_DOCUMENT_VERSIONS = 100_000


class LruStore:
    layer = "lru"

    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], CacheEntry] = OrderedDict()
        self._by_tenant: dict[str, set[str]] = {}
        self._versions: OrderedDict[tuple[str, str], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, tenant_id: str, entry_id: str, now: float) -> CacheEntry | None:
        entry = self._entries.get((tenant_id, entry_id))
        if entry is None:
            return None
        if entry.expired(now):
            self._remove(entry)
            metrics.EVICTIONS.labels(self.layer, "expired").inc()
            return None
        self._entries.move_to_end((tenant_id, entry_id))
        return entry

    async def put(self, entry: CacheEntry) -> None:
        slot = (entry.tenant_id, entry.entry_id)
        self._entries[slot] = entry
        self._entries.move_to_end(slot)
        self._by_tenant.setdefault(entry.tenant_id, set()).add(entry.entry_id)
        self._evict_over_capacity()
        metrics.ENTRIES.labels(self.layer).set(len(self._entries))

    def _evict_over_capacity(self) -> None:
        # Pinned entries are skipped while unpinned ones remain: an admin chose to keep them.
        skipped = 0
        while len(self._entries) > self.max_entries:
            slot, oldest = next(iter(self._entries.items()))
            if oldest.pinned and skipped < len(self._entries):
                self._entries.move_to_end(slot)
                skipped += 1
                continue
            self._remove(oldest)
            metrics.EVICTIONS.labels(self.layer, "lru").inc()

    def _remove(self, entry: CacheEntry) -> None:
        self._entries.pop((entry.tenant_id, entry.entry_id), None)
        ids = self._by_tenant.get(entry.tenant_id)
        if ids is not None:
            ids.discard(entry.entry_id)
            if not ids:
                del self._by_tenant[entry.tenant_id]
        metrics.ENTRIES.labels(self.layer).set(len(self._entries))

    async def delete(self, tenant_id: str, entry_ids: list[str]) -> int:
        removed = 0
        for entry_id in entry_ids:
            entry = self._entries.get((tenant_id, entry_id))
            if entry is not None:
                self._remove(entry)
                removed += 1
        return removed

    async def delete_matching(
        self,
        tenant_id: str,
        *,
        use_case: str | None = None,
        document_id: str | None = None,
        older_than_version: int | None = None,
        created_before: float | None = None,
    ) -> int:
        doomed = [
            entry
            for entry_id in self._by_tenant.get(tenant_id, ())
            if matches(
                entry := self._entries[(tenant_id, entry_id)],
                use_case=use_case,
                document_id=document_id,
                older_than_version=older_than_version,
                created_before=created_before,
            )
        ]
        for entry in doomed:
            self._remove(entry)
        return len(doomed)

    async def purge_expired(self, now: float) -> int:
        expired = [entry for entry in self._entries.values() if entry.expired(now)]
        for entry in expired:
            self._remove(entry)
        if expired:
            metrics.EVICTIONS.labels(self.layer, "expired").inc(len(expired))
        return len(expired)

    async def count(self) -> int:
        return len(self._entries)

    async def note_document_version(self, tenant_id: str, document_id: str, version: int) -> None:
        slot = (tenant_id, document_id)
        self._versions[slot] = max(version, self._versions.get(slot, version))
        self._versions.move_to_end(slot)
        while len(self._versions) > MAX_DOCUMENT_VERSIONS:
            self._versions.popitem(last=False)

    async def document_versions(self, tenant_id: str, document_ids: list[str]) -> dict[str, int]:
        return {d: self._versions[(tenant_id, d)] for d in document_ids if (tenant_id, d) in self._versions}

    async def close(self) -> None:
        self._entries.clear()
        self._by_tenant.clear()
