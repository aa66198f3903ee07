"""The exact layer in Redis, shared by every replica.

Keys (prefix `p`, default "llmesh:cache:"):
  p e:<tenant>:<entry_id>      the entry (JSON), expiring with it (PXAT; no expiry while pinned)
  p t:<tenant>                 zset entry_id -> created_at: the tenant's entries (tenant flush)
  p u:<tenant>:<use_case>      zset entry_id -> created_at: one use case's entries
  p d:<tenant>:<document_id>   zset entry_id -> version: entries built from a document
  p x                          zset [tenant, id, use_case, documents] -> expires_at: index cleanup
  p v:<tenant>                 zset document_id -> newest version seen in an invalidation

Index members whose entry is gone (expired, or evicted by Redis' maxmemory policy) are dropped
when an invalidation or the background purge meets them. Size is bounded by Redis itself
(`maxmemory` with `allkeys-lru`), not by this process.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from llmesh.kit import errors
from llmesh.services.cache import metrics
from llmesh.services.cache.entries import CacheEntry
from llmesh.services.cache.exact import matches

BATCH = 500

P = ParamSpec("P")
T = TypeVar("T")


def _reachable(call: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Redis down or cut off is UNAVAILABLE to the caller (the router then goes on without the
    cache; an invalidation is redelivered), not an unexpected error. redis-py reconnects by itself
    on the next call once Redis is back."""

    @functools.wraps(call)
    async def reachable(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await call(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise errors.Unavailable(f"the exact layer's Redis is unreachable: {exc}", retry_after_s=1.0) from exc

    return reachable


class RedisStore:
    layer = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str = "llmesh:cache:"):
        self._r = client
        self._p = prefix

    @classmethod
    async def connect(cls, url: str, prefix: str = "llmesh:cache:") -> "RedisStore":
        client = aioredis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0, health_check_interval=30)
        await client.ping()
        return cls(client, prefix)

    def _entry_key(self, tenant_id: str, entry_id: str) -> str:
        return f"{self._p}e:{tenant_id}:{entry_id}"

    def _tenant_index(self, tenant_id: str) -> str:
        return f"{self._p}t:{tenant_id}"

    def _use_case_index(self, tenant_id: str, use_case: str) -> str:
        return f"{self._p}u:{tenant_id}:{use_case}"

    def _document_index(self, tenant_id: str, document_id: str) -> str:
        return f"{self._p}d:{tenant_id}:{document_id}"

    @property
    def _expiry_index(self) -> str:
        return f"{self._p}x"

    def _versions_key(self, tenant_id: str) -> str:
        return f"{self._p}v:{tenant_id}"

    @staticmethod
    def _expiry_member(entry: CacheEntry) -> str:
        return json.dumps([entry.tenant_id, entry.entry_id, entry.use_case, sorted(entry.content_versions)])

    @_reachable
    async def get(self, tenant_id: str, entry_id: str, now: float) -> CacheEntry | None:
        raw = await self._r.get(self._entry_key(tenant_id, entry_id))
        if raw is None:
            return None
        entry = CacheEntry.from_bytes(raw)
        if entry.expired(now):
            # Redis expiry runs on its own clock; this replica's clock decides what it serves.
            await self._remove([entry])
            metrics.EVICTIONS.labels(self.layer, "expired").inc()
            return None
        return entry

    @_reachable
    async def put(self, entry: CacheEntry) -> None:
        key = self._entry_key(entry.tenant_id, entry.entry_id)
        async with self._r.pipeline(transaction=True) as pipe:
            if entry.pinned:
                pipe.set(key, entry.to_bytes())
            else:
                pipe.set(key, entry.to_bytes(), pxat=max(1, math.ceil(entry.expires_at * 1000)))
            pipe.zadd(self._tenant_index(entry.tenant_id), {entry.entry_id: entry.created_at})
            pipe.zadd(self._use_case_index(entry.tenant_id, entry.use_case), {entry.entry_id: entry.created_at})
            for document_id, version in entry.content_versions.items():
                pipe.zadd(self._document_index(entry.tenant_id, document_id), {entry.entry_id: version})
            pipe.zadd(self._expiry_index, {self._expiry_member(entry): math.inf if entry.pinned else entry.expires_at})
            await pipe.execute()

    async def _remove(self, entries: list[CacheEntry]) -> None:
        if not entries:
            return
        async with self._r.pipeline(transaction=True) as pipe:
            for entry in entries:
                pipe.delete(self._entry_key(entry.tenant_id, entry.entry_id))
                pipe.zrem(self._tenant_index(entry.tenant_id), entry.entry_id)
                pipe.zrem(self._use_case_index(entry.tenant_id, entry.use_case), entry.entry_id)
                for document_id in entry.content_versions:
                    pipe.zrem(self._document_index(entry.tenant_id, document_id), entry.entry_id)
                pipe.zrem(self._expiry_index, self._expiry_member(entry))
            await pipe.execute()

    async def _load(self, tenant_id: str, entry_ids: list[str]) -> tuple[list[CacheEntry], list[str]]:
        """The entries that exist, and the ids whose entry is gone."""
        found: list[CacheEntry] = []
        gone: list[str] = []
        for start in range(0, len(entry_ids), BATCH):
            chunk = entry_ids[start : start + BATCH]
            values = await self._r.mget([self._entry_key(tenant_id, i) for i in chunk])
            for entry_id, raw in zip(chunk, values):
                if raw is None:
                    gone.append(entry_id)
                else:
                    found.append(CacheEntry.from_bytes(raw))
        return found, gone

    @_reachable
    async def delete(self, tenant_id: str, entry_ids: list[str]) -> int:
        found, gone = await self._load(tenant_id, list(entry_ids))
        await self._remove(found)
        if gone:
            await self._r.zrem(self._tenant_index(tenant_id), *gone)
        return len(found)

    @_reachable
    async def delete_matching(
        self,
        tenant_id: str,
        *,
        use_case: str | None = None,
        document_id: str | None = None,
        older_than_version: int | None = None,
        created_before: float | None = None,
    ) -> int:
        if document_id is not None:
            if older_than_version is None:
                return 0
            index = self._document_index(tenant_id, document_id)
            upper = f"({older_than_version}"
        else:
            index = self._use_case_index(tenant_id, use_case) if use_case is not None else self._tenant_index(tenant_id)
            upper = "+inf" if created_before is None else f"({created_before!r}"
        ids = [i.decode() if isinstance(i, bytes) else i for i in await self._r.zrangebyscore(index, "-inf", upper)]
        if not ids:
            return 0
        found, gone = await self._load(tenant_id, ids)
        doomed = [
            e
            for e in found
            if matches(
                e,
                use_case=use_case,
                document_id=document_id,
                older_than_version=older_than_version,
                created_before=created_before,
            )
        ]
        await self._remove(doomed)
        if gone:
            await self._r.zrem(index, *gone)
        return len(doomed)

    @_reachable
    async def purge_expired(self, now: float) -> int:
        """Drops index members of entries Redis expired; returns how many entries were gone."""
        purged = 0
        while True:
            members = await self._r.zrangebyscore(self._expiry_index, "-inf", now, start=0, num=BATCH)
            if not members:
                return purged
            parsed = [json.loads(m) for m in members]
            async with self._r.pipeline(transaction=False) as pipe:
                for tenant_id, entry_id, _, _ in parsed:
                    pipe.exists(self._entry_key(tenant_id, entry_id))
                alive = await pipe.execute()
            async with self._r.pipeline(transaction=True) as pipe:
                for member, (tenant_id, entry_id, use_case, documents), exists in zip(members, parsed, alive):
                    pipe.zrem(self._expiry_index, member)
                    if exists:
                        # Stored again since (a newer member tracks it): only this member is stale.
                        continue
                    purged += 1
                    pipe.zrem(self._tenant_index(tenant_id), entry_id)
                    pipe.zrem(self._use_case_index(tenant_id, use_case), entry_id)
                    for document_id in documents:
                        pipe.zrem(self._document_index(tenant_id, document_id), entry_id)
                await pipe.execute()
            if purged:
                metrics.EVICTIONS.labels(self.layer, "expired").inc(purged)
            if len(members) < BATCH:
                return purged

    @_reachable
    async def count(self) -> int:
        return int(await self._r.zcard(self._expiry_index))

    @_reachable
    async def note_document_version(self, tenant_id: str, document_id: str, version: int) -> None:
        # GT: concurrent replicas applying events in any order keep the newest version.
        await self._r.zadd(self._versions_key(tenant_id), {document_id: version}, gt=True)

    @_reachable
    async def document_versions(self, tenant_id: str, document_ids: list[str]) -> dict[str, int]:
        if not document_ids:
            return {}
        scores = await self._r.zmscore(self._versions_key(tenant_id), document_ids)
        return {d: int(s) for d, s in zip(document_ids, scores) if s is not None}

    async def close(self) -> None:
        await self._r.aclose()
