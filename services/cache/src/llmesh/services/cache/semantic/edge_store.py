"""The embedded store: Qdrant's engine in process (qdrant-edge), persistent at a directory.

One shard per embedding model (`<path>/<collection>`). The tenant field has an `is_tenant`
keyword index and the graph is built per tenant (m=0, payload_m=16), as Qdrant recommends for
multitenancy: a tenant's search only ever visits that tenant's points.

qdrant-edge holds the GIL while it works, so calls never overlap whichever thread makes them.
Writes and maintenance run on one worker thread (calls stay ordered); long ones (`optimize`) are
left to start-up and maintenance. A search runs on the event loop's own thread when nothing is
queued on the worker: the loop could not run during it anyway (the engine holds the GIL), and the
hop to the worker and back costs two thread wake-ups, much of the tail on shared cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import qdrant_edge as qe
from llmesh.kit import errors

from .api import SemanticEntry
from .scope import (
    DOCS,
    KEYWORD_FIELDS,
    TENANT,
    TIER,
    TIME_FIELDS,
    BuiltFromOlder,
    Condition,
    Match,
    Range,
    TenantScope,
    expired,
    from_payload,
    point_id,
    satisfied,
    to_payload,
)
from .store import Candidate

T = TypeVar("T")

_UPSERT_BATCH = 1000
_FIRST_LOOK = 8


def _condition(cond: Condition):
    if isinstance(cond, Match):
        return qe.FieldCondition(cond.key, match=qe.MatchValue(cond.value))
    if isinstance(cond, Range):
        return qe.FieldCondition(cond.key, range=qe.RangeFloat(gt=cond.gt, gte=cond.gte, lt=cond.lt, lte=cond.lte))
    if isinstance(cond, BuiltFromOlder):
        return qe.NestedCondition(
            DOCS,
            qe.Filter(
                must=[
                    qe.FieldCondition("doc", match=qe.MatchValue(cond.document_id)),
                    qe.FieldCondition("v", range=qe.RangeFloat(lt=cond.version)),
                ]
            ),
        )
    raise TypeError(f"unknown condition {cond!r}")


def edge_filter(scope: TenantScope) -> qe.Filter:
    return qe.Filter(must=[_condition(c) for c in scope.conditions])


def shard_config(dim: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        # No global graph: one per tenant, built from the is_tenant index (payload_m).
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000, payload_m=16),
        # Searches run on the caller's thread: the mesh shares two cores (docs/adr/0003).
        max_search_threads=1,
        # Payloads read into the page cache when the shard opens (~0.4 kB an entry, LZ4), not
        # page by page from disk by the first lookups after a start (~0.15 ms a page). It
        # applies to segments made from now on: those of a shard made with the default (cold)
        # keep their placement, and still load, until optimize() rebuilds them.
        payload_memory=qe.Memory.Cached,
    )


class EdgeStore:
    def __init__(self, shard: qe.EdgeShard, pool: concurrent.futures.ThreadPoolExecutor):
        self._shard = shard
        self._pool = pool
        self._queued = 0  # calls submitted to the worker and not finished
        self._closed = False
        self.full_filter_queries = 0  # lookups the first look could not answer

    @classmethod
    async def open(cls, path: str | pathlib.Path, dim: int) -> EdgeStore:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")
        try:
            shard = await asyncio.get_running_loop().run_in_executor(pool, cls._open_shard, pathlib.Path(path), dim)
        except Exception as exc:
            pool.shutdown(wait=False)
            # qdrant-edge raises bare Exceptions; an incompatible or damaged shard is an operator's matter.
            if "WouldBlock" in str(exc):
                # Its write-ahead log is locked: the store is open elsewhere, most likely by a second
                # replica that took the same default id (the hostname).
                raise errors.FailedPrecondition(
                    f"the semantic store at {path} is already open, by another cache replica? Replicas on one "
                    "host need their own LLMESH_CACHE_REPLICA_ID (or LLMESH_CACHE_SEMANTIC_PATH)"
                ) from exc
            raise errors.FailedPrecondition(f"the semantic store at {path} cannot be opened: {exc}") from exc
        return cls(shard, pool)

    @staticmethod
    def _open_shard(path: pathlib.Path, dim: int) -> qe.EdgeShard:
        if path.is_dir() and any(path.iterdir()):
            # Passing the config makes the engine check the stored vectors are compatible.
            shard = qe.EdgeShard.load(str(path), shard_config(dim))
        else:
            path.mkdir(parents=True, exist_ok=True)
            shard = qe.EdgeShard.create(str(path), shard_config(dim))
        existing = set(shard.info().payload_schema)
        wanted: dict[str, object] = {TENANT: qe.KeywordIndexParams(is_tenant=True), TIER: qe.PayloadSchemaType.Integer}
        wanted.update({key: qe.PayloadSchemaType.Keyword for key in KEYWORD_FIELDS})
        wanted.update({key: qe.PayloadSchemaType.Float for key in TIME_FIELDS})
        for field, schema in wanted.items():
            if field not in existing:
                shard.update(qe.UpdateOperation.create_field_index(field, schema))
        return shard

    async def _run(self, fn: Callable[..., T], *args) -> T:
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._queued -= 1

    async def _read(self, fn: Callable[..., T], *args) -> T:
        """A short read: on this thread when the worker is idle, else queued behind its calls, so
        a read never overtakes a write submitted before it."""
        if self._queued or self._closed:
            return await self._run(fn, *args)
        return fn(*args)

    async def upsert(self, entries: list[SemanticEntry], vectors: np.ndarray) -> None:
        points = [
            qe.Point(point_id(e.tenant_id, e.entry_id), vector.tolist(), to_payload(e))
            for e, vector in zip(entries, np.asarray(vectors, dtype=np.float32), strict=True)
        ]

        def write() -> None:
            for start in range(0, len(points), _UPSERT_BATCH):
                self._shard.update(qe.UpdateOperation.upsert_points(points[start : start + _UPSERT_BATCH]))

        await self._run(write)

    async def nearest(self, scope: TenantScope, vector: np.ndarray, limit: int = 1) -> list[Candidate]:
        found = await self._read(self._nearest, scope, np.asarray(vector, dtype=np.float32).tolist(), limit)
        return [Candidate(float(score), from_payload(payload)) for score, payload in found]

    def _nearest(self, scope: TenantScope, vector: list[float], limit: int) -> list[tuple[float, dict]]:
        """Every condition the engine checks costs ~0.4 us per point of the tenant, the vector
        itself less, and a payload page not yet in memory costs ~0.15 ms (storage on disk). So
        first the tenant's nearest `_FIRST_LOOK` points under the tenant filter alone, without
        payloads; then the payloads of the `limit` nearest: when they pass the other conditions
        they are the answer (no eligible point can rank above them): one payload read.
        Else the engine checks the conditions on those ids only (on its payload indexes, reading
        the payloads of the answers alone): the first points that pass are the answer. Only
        when fewer pass, and the tenant has more points, it runs the full filter over the whole
        tenant."""
        query = qe.Query.Nearest(vector)
        look = max(limit, _FIRST_LOOK)
        first = self._shard.query(
            qe.QueryRequest(
                limit=look, query=query, filter=edge_filter(TenantScope(scope.tenant_id)), with_payload=False
            )
        )
        if not first:
            return []
        nearest = first[:limit]
        payloads = {
            r.id: r.payload for r in self._shard.retrieve([p.id for p in nearest], with_payload=True, with_vector=False)
        }
        if all(p.id in payloads and satisfied(scope.conditions, payloads[p.id]) for p in nearest):
            return [(p.score, payloads[p.id]) for p in nearest]
        conditions = [_condition(c) for c in scope.conditions]
        among = qe.Filter(must=[qe.HasIdCondition({p.id for p in first}), *conditions])
        eligible = self._shard.query(qe.QueryRequest(limit=limit, query=query, filter=among, with_payload=True))
        if len(eligible) < limit and len(first) == look:
            self.full_filter_queries += 1
            eligible = self._shard.query(
                qe.QueryRequest(limit=limit, query=query, filter=qe.Filter(must=conditions), with_payload=True)
            )
        return [(p.score, p.payload) for p in eligible]

    async def holds_any(self, scope: TenantScope) -> bool:
        # The first point that passes, on the payload indexes: tens of microseconds however many
        # pass (an exact count grows with them: ~1.4 ms at 5,000).
        return bool(await self._read(self._first_id, edge_filter(scope)))

    def _first_id(self, selection: qe.Filter) -> list:
        records, _ = self._shard.scroll(
            qe.ScrollRequest(limit=1, filter=selection, with_payload=False, with_vector=False)
        )
        return records

    async def count(self, scope: TenantScope) -> int:
        return await self._run(self._shard.count, qe.CountRequest(exact=True, filter=edge_filter(scope)))

    async def delete_ids(self, tenant_id: str, entry_ids: list[str]) -> int:
        ids = {point_id(tenant_id, e) for e in entry_ids}
        if not ids:
            return 0
        # The ids embed the tenant; the filter makes the scoping explicit all the same.
        only = qe.Filter(must=[_condition(Match(TENANT, tenant_id)), qe.HasIdCondition(ids)])
        return await self._delete(only)

    async def delete_scope(self, scope: TenantScope) -> int:
        return await self._delete(edge_filter(scope))

    async def purge_expired(self, now: float) -> int:
        return await self._delete(qe.Filter(must=[_condition(expired(now))]))

    async def _delete(self, selection: qe.Filter) -> int:
        def delete() -> int:
            matched = self._shard.count(qe.CountRequest(exact=True, filter=selection))
            if matched:
                self._shard.update(qe.UpdateOperation.delete_points_by_filter(selection))
            return matched

        return await self._run(delete)

    async def optimize(self) -> bool:
        """Builds the per-tenant graphs and vacuums deleted points. Blocks the process while it
        runs (qdrant-edge keeps the GIL): call it at start-up or in a maintenance window."""
        return await self._run(self._shard.optimize)

    async def close(self) -> None:
        def close() -> None:
            self._shard.flush()
            self._shard.close()

        self._closed = True
        try:
            await self._run(close)
        finally:
            self._pool.shutdown(wait=True)
