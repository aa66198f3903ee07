"""A Qdrant server through qdrant-client (async, gRPC), selected by LLMESH_QDRANT_URL.

The same class runs on qdrant-client's local mode (`location=":memory:"` or a path), which has
the same client API; the tests use it because no Qdrant server runs here. Local mode searches by
brute force in Python (about 750 ms at 100k points): fine for tests, never for serving.
"""

from __future__ import annotations

import numpy as np
from llmesh.kit import errors
from qdrant_client import AsyncQdrantClient, models

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
    to_payload,
)
from .store import Candidate

_UPSERT_BATCH = 256


def _condition(cond: Condition):
    if isinstance(cond, Match):
        return models.FieldCondition(key=cond.key, match=models.MatchValue(value=cond.value))
    if isinstance(cond, Range):
        return models.FieldCondition(
            key=cond.key, range=models.Range(gt=cond.gt, gte=cond.gte, lt=cond.lt, lte=cond.lte)
        )
    if isinstance(cond, BuiltFromOlder):
        return models.NestedCondition(
            nested=models.Nested(
                key=DOCS,
                filter=models.Filter(
                    must=[
                        models.FieldCondition(key="doc", match=models.MatchValue(value=cond.document_id)),
                        models.FieldCondition(key="v", range=models.Range(lt=cond.version)),
                    ]
                ),
            )
        )
    raise TypeError(f"unknown condition {cond!r}")


def server_filter(scope: TenantScope) -> models.Filter:
    return models.Filter(must=[_condition(c) for c in scope.conditions])


class QdrantServerStore:
    def __init__(self, client: AsyncQdrantClient, collection: str, timeout_s: int = 5, *, remote: bool = True):
        self._client = client
        self._remote = remote
        self._collection = collection
        self._timeout = timeout_s

    @classmethod
    async def open(
        cls,
        collection: str,
        dim: int,
        *,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        path: str | None = None,
        timeout_s: int = 5,
    ) -> QdrantServerStore:
        if url:
            client = AsyncQdrantClient(url=url, api_key=api_key or None, prefer_grpc=True, timeout=timeout_s)
        elif path:
            client = AsyncQdrantClient(path=path)
        else:
            client = AsyncQdrantClient(location=location or ":memory:")
        store = cls(client, collection, timeout_s, remote=bool(url))
        try:
            await store._ensure_collection(dim)
        except Exception as exc:
            await client.close()
            raise errors.Unavailable(f"Qdrant at {url or path or location} cannot be used: {exc}") from exc
        return store

    async def _ensure_collection(self, dim: int) -> None:
        if not await self._client.collection_exists(self._collection):
            await self._client.create_collection(
                self._collection,
                vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                # Per-tenant graphs only (Qdrant's multitenancy guidance): no global graph.
                hnsw_config=models.HnswConfigDiff(m=0, payload_m=16),
            )
        else:
            info = await self._client.get_collection(self._collection)
            size = info.config.params.vectors.size
            if size != dim:
                raise errors.FailedPrecondition(
                    f"collection {self._collection} holds {size}-dimensional vectors, the embedder makes {dim}"
                )
        indexes: dict[str, object] = {
            TENANT: models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
            TIER: models.PayloadSchemaType.INTEGER,
        }
        indexes.update({key: models.PayloadSchemaType.KEYWORD for key in KEYWORD_FIELDS})
        indexes.update({key: models.PayloadSchemaType.FLOAT for key in TIME_FIELDS})
        if not self._remote:
            return  # local mode has no payload indexes (it scans), and warns when asked for one
        for field, schema in indexes.items():
            await self._client.create_payload_index(self._collection, field, field_schema=schema, wait=True)

    async def upsert(self, entries: list[SemanticEntry], vectors: np.ndarray) -> None:
        points = [
            models.PointStruct(id=point_id(e.tenant_id, e.entry_id), vector=v.tolist(), payload=to_payload(e))
            for e, v in zip(entries, np.asarray(vectors, dtype=np.float32), strict=True)
        ]
        for start in range(0, len(points), _UPSERT_BATCH):
            await self._client.upsert(self._collection, points[start : start + _UPSERT_BATCH], wait=True)

    async def nearest(self, scope: TenantScope, vector: np.ndarray, limit: int = 1) -> list[Candidate]:
        response = await self._client.query_points(
            self._collection,
            query=np.asarray(vector, dtype=np.float32).tolist(),
            query_filter=server_filter(scope),
            limit=limit,
            with_payload=True,
            timeout=self._timeout,
        )
        return [Candidate(float(p.score), from_payload(p.payload)) for p in response.points]

    async def holds_any(self, scope: TenantScope) -> bool:
        points, _ = await self._client.scroll(
            self._collection,
            scroll_filter=server_filter(scope),
            limit=1,
            with_payload=False,
            with_vectors=False,
            timeout=self._timeout,
        )
        return bool(points)

    async def count(self, scope: TenantScope) -> int:
        result = await self._client.count(self._collection, count_filter=server_filter(scope), exact=True)
        return result.count

    async def delete_ids(self, tenant_id: str, entry_ids: list[str]) -> int:
        ids = [point_id(tenant_id, e) for e in entry_ids]
        if not ids:
            return 0
        only = models.Filter(must=[_condition(Match(TENANT, tenant_id)), models.HasIdCondition(has_id=ids)])
        return await self._delete(only)

    async def delete_scope(self, scope: TenantScope) -> int:
        return await self._delete(server_filter(scope))

    async def purge_expired(self, now: float) -> int:
        return await self._delete(models.Filter(must=[_condition(expired(now))]))

    async def _delete(self, selection: models.Filter) -> int:
        # Qdrant does not report how many points a delete removed: count first.
        matched = (await self._client.count(self._collection, count_filter=selection, exact=True)).count
        if matched:
            await self._client.delete(self._collection, models.FilterSelector(filter=selection), wait=True)
        return matched

    async def close(self) -> None:
        await self._client.close()
