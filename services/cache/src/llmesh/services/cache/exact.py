"""The exact layer: entries by their exact key, tenant-scoped. Two implementations: an in-process
LRU (llmesh.services.cache.lru) and Redis (llmesh.services.cache.redis_store)."""

from __future__ import annotations

from typing import Protocol

from llmesh.services.cache.entries import CacheEntry


class ExactStore(Protocol):
    #: label of the metrics, e.g. "lru" or "redis"
    layer: str

    async def get(self, tenant_id: str, entry_id: str, now: float) -> CacheEntry | None:
        """The entry, or None when absent or expired (an expired entry is removed)."""
        ...

    async def put(self, entry: CacheEntry) -> None: ...

    async def delete(self, tenant_id: str, entry_ids: list[str]) -> int: ...

    async def delete_matching(
        self,
        tenant_id: str,
        *,
        use_case: str | None = None,
        document_id: str | None = None,
        older_than_version: int | None = None,
        created_before: float | None = None,
    ) -> int:
        """Deletes the tenant's entries matching every given condition (document_id needs
        older_than_version: entries built from an older version of it); returns how many."""
        ...

    async def purge_expired(self, now: float) -> int: ...

    async def count(self) -> int: ...

    async def note_document_version(self, tenant_id: str, document_id: str, version: int) -> None:
        """Remembers the newest version of a document, so a late answer built from an older one
        is not stored after its invalidation was applied."""
        ...

    async def document_versions(self, tenant_id: str, document_ids: list[str]) -> dict[str, int]: ...

    async def close(self) -> None: ...


def matches(
    entry: CacheEntry,
    *,
    use_case: str | None,
    document_id: str | None,
    older_than_version: int | None,
    created_before: float | None,
) -> bool:
    if use_case is not None and entry.use_case != use_case:
        return False
    if document_id is not None:
        if older_than_version is None or not entry.built_from_older(document_id, older_than_version):
            return False
    if created_before is not None and entry.created_at >= created_before:
        return False
    return True
