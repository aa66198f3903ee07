"""The semantic index: embed the last user message once, find the tenant's nearest entry made in
the same context, and decide with the use case's operating point."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import time
from collections.abc import Callable

import numpy as np
from llmesh.kit import errors
from llmesh.kit.logging import get_logger
from llmesh.kit.tasks import BackgroundTasks

from .api import Decision, SemanticEntry, SemanticMatch, SemanticQuery
from .decision import HitPolicy
from .embedder import Embedder
from .features import veto
from .scope import TenantScope, deletion_scope, lookup_scope
from .stage2 import SecondStage
from .store import VectorStore

log = get_logger("llmesh.cache.semantic")

MAX_TIER = 3
# Embeddings started ahead at most at once: past it a lookup's miss leaves the embedding to the
# store that follows, so a burst of new contexts cannot queue work nobody waits for yet.
MAX_AHEAD = 16


@dataclasses.dataclass(frozen=True)
class GrayZoneRecord:
    """A decision the second stage made: kept for tuning the operating points."""

    at: float
    tenant_id: str
    use_case: str
    similarity: float
    stage2_score: float
    decision: Decision
    entry_id: str
    query_text: str
    candidate_text: str
    veto: str | None = None  # set when a veto (features.veto), not the second stage, said no


class _VectorMemo:
    """The embedding of recent lookups, so the answer stored after a miss is not embedded again."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._items: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def get(self, text: str) -> np.ndarray | None:
        key = self._key(text)
        vector = self._items.get(key)
        if vector is not None:
            self._items.move_to_end(key)
        return vector

    def put(self, text: str, vector: np.ndarray) -> None:
        if self._capacity <= 0:
            return
        key = self._key(text)
        self._items[key] = vector
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)


def _check_tenant(tenant_id: str) -> None:
    TenantScope(tenant_id)


def _check_query(query: SemanticQuery) -> None:
    _check_tenant(query.tenant_id)
    if not query.text or not query.text.strip():
        raise errors.InvalidArgument("the last user message is empty", field="text")
    if not 0 <= query.tier <= MAX_TIER:
        raise errors.InvalidArgument(f"tier must be 0..{MAX_TIER}, got {query.tier}", field="tier")


def _check_entry(entry: SemanticEntry) -> None:
    _check_tenant(entry.tenant_id)
    if not entry.entry_id:
        raise errors.InvalidArgument("an entry needs an id", field="entry_id")
    if not entry.text or not entry.text.strip():
        raise errors.InvalidArgument("the entry's user message is empty", field="text")
    if not 1 <= entry.tier <= MAX_TIER:
        raise errors.InvalidArgument(f"an entry's tier must be 1..{MAX_TIER}, got {entry.tier}", field="tier")
    if entry.expires_at <= entry.created_at:
        raise errors.InvalidArgument("an entry must expire after it was created", field="expires_at")


class QdrantSemanticIndex:
    """Implements api.SemanticIndex over an Embedder, a VectorStore and a HitPolicy."""

    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        policy: HitPolicy,
        stage2: SecondStage | None,
        *,
        max_chars: int = 1000,
        purge_interval_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        gray_zone_capacity: int = 1000,
        memo_capacity: int = 4096,
    ):
        self.embedder = embedder
        self.store = store
        self.policy = policy
        self.stage2 = stage2
        self._max_chars = max_chars
        self._clock = clock
        self._memo = _VectorMemo(memo_capacity)
        # Embeddings started ahead of their lookup (embed_ahead), by text, until they finish.
        self._ahead: dict[str, asyncio.Task[np.ndarray]] = {}
        self.gray_zone: collections.deque[GrayZoneRecord] = collections.deque(maxlen=gray_zone_capacity)
        self._tasks = BackgroundTasks("semantic-index")
        if purge_interval_s > 0:
            self._tasks.every(purge_interval_s, self._purge, name="semantic-purge")

    def _comparable(self, text: str) -> bool:
        # Past the embedder's window two texts that share a beginning would look identical.
        return len(text) <= self._max_chars

    def embed_ahead(self, text: str) -> None:
        """Starts embedding `text` in the background, for a later `_embed` of it (a lookup's
        miss that needed no vector is usually stored next): `_embed` takes that vector, the
        same it would compute (a pure function of the text), or waits for it."""
        if not text.strip() or not self._comparable(text) or text in self._ahead or self._memo.get(text) is not None:
            return
        if len(self._ahead) >= MAX_AHEAD:
            return
        self._ahead[text] = self._tasks.spawn(self._embed_ahead(text), name="semantic-embed-ahead")

    async def _embed_ahead(self, text: str) -> np.ndarray:
        try:
            vector = (await self.embedder.embed([text]))[0]
            self._memo.put(text, vector)
            return vector
        finally:
            self._ahead.pop(text, None)

    async def _started(self, text: str) -> np.ndarray | None:
        """The vector of an embedding started ahead, once it is done; None when none was started
        or it failed (the caller embeds the text itself). A cancelled caller leaves it running."""
        task = self._ahead.get(text)
        if task is None:
            return None
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # the index is closing, not the caller cancelled
                return None
            raise
        except Exception:
            return None  # logged by the background tasks

    async def _embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.empty((len(texts), self.embedder.dim), dtype=np.float32)
        missing = []
        for i, text in enumerate(texts):
            known = self._memo.get(text)
            if known is None and self._ahead:
                known = await self._started(text)
            if known is None:
                missing.append(i)
            else:
                vectors[i] = known
        if missing:
            fresh = await self.embedder.embed([texts[i] for i in missing])
            for i, vector in zip(missing, fresh, strict=True):
                vectors[i] = vector
                self._memo.put(texts[i], vector)
        return vectors

    async def lookup(self, query: SemanticQuery) -> SemanticMatch:
        _check_query(query)
        if not self._comparable(query.text):
            return SemanticMatch(Decision.MISS, 0.0, None)
        scope = lookup_scope(query)
        # The embedding starts before the store is asked: a write may hold the store (an upsert
        # keeps the GIL), and the vector is needed either way, by this lookup or by the entry a
        # miss is usually stored as.
        self.embed_ahead(query.text)
        if not await self.store.holds_any(scope):
            # No entry in this tenant, use case, context and parameters (a new conversation's
            # later turns, a new system prompt): a miss whatever the vector, so the embedding is
            # not waited for (docs/adr/0039).
            return SemanticMatch(Decision.MISS, 0.0, None)
        vector = (await self._embed([query.text]))[0]
        candidates = await self.store.nearest(scope, vector, limit=1)
        if not candidates:
            return SemanticMatch(Decision.MISS, 0.0, None)
        best = candidates[0]
        point = self.policy.point(query.tenant_id, query.use_case)
        decision = point.first_stage(best.similarity)
        if decision is Decision.MISS:
            return SemanticMatch(decision, best.similarity, best.entry)
        vetoed_by = veto(query.text, best.entry.text)
        if vetoed_by is not None:
            # However close: a negated question or other numbers never share an answer.
            self._record(query, best.entry, best.similarity, 0.0, Decision.GRAY_MISS, vetoed_by)
            return SemanticMatch(Decision.GRAY_MISS, best.similarity, best.entry, 0.0)
        if decision is Decision.HIT:
            return SemanticMatch(decision, best.similarity, best.entry)
        if self.stage2 is None:
            return SemanticMatch(Decision.MISS, best.similarity, best.entry)
        score = await self.stage2.score(query.text, best.entry.text, best.similarity)
        decision = point.second_stage(score)
        self._record(query, best.entry, best.similarity, score, decision)
        return SemanticMatch(decision, best.similarity, best.entry, score)

    def _record(
        self,
        query: SemanticQuery,
        entry: SemanticEntry,
        similarity: float,
        score: float,
        decision: Decision,
        vetoed_by: str | None = None,
    ) -> None:
        record = GrayZoneRecord(
            at=self._clock(),
            tenant_id=query.tenant_id,
            use_case=query.use_case,
            similarity=similarity,
            stage2_score=score,
            decision=decision,
            entry_id=entry.entry_id,
            query_text=query.text,
            candidate_text=entry.text,
            veto=vetoed_by,
        )
        self.gray_zone.append(record)
        log.info(
            "semantic_gray_zone",
            tenant=query.tenant_id,
            use_case=query.use_case,
            similarity=round(similarity, 4),
            stage2_score=round(score, 4),
            decision=decision.value,
            entry_id=entry.entry_id,
            veto=vetoed_by,
        )

    async def add(self, entry: SemanticEntry) -> None:
        await self.add_many([entry])

    async def add_many(self, entries: list[SemanticEntry]) -> None:
        for entry in entries:
            _check_entry(entry)
        kept = [e for e in entries if self._comparable(e.text)]
        if not kept:
            return
        vectors = await self._embed([e.text for e in kept])
        await self.store.upsert(kept, vectors)

    async def delete(self, tenant_id: str, entry_ids: list[str]) -> int:
        _check_tenant(tenant_id)
        return await self.store.delete_ids(tenant_id, list(entry_ids))

    async def delete_matching(
        self,
        tenant_id: str,
        *,
        use_case: str | None = None,
        document_id: str | None = None,
        older_than_version: int | None = None,
        created_before: float | None = None,
    ) -> int:
        scope = deletion_scope(
            tenant_id,
            use_case=use_case,
            document_id=document_id,
            older_than_version=older_than_version,
            created_before=created_before,
        )
        return await self.store.delete_scope(scope)

    async def count(self, tenant_id: str) -> int:
        return await self.store.count(TenantScope(tenant_id))

    async def purge_expired(self, now: float) -> int:
        return await self.store.purge_expired(now)

    async def _purge(self) -> None:
        purged = await self.purge_expired(self._clock())
        if purged:
            log.info("semantic_purged", entries=purged)

    def tighten(self, tenant_id: str, use_case: str) -> None:
        target = self.policy.tighten(tenant_id, use_case)
        log.info("semantic_tightened", tenant=tenant_id, use_case=use_case, target_false_hit_rate=target)

    def set_target(self, tenant_id: str, use_case: str, false_hit_rate: float) -> None:
        """A use case's policy: the false-hit rate it accepts (default: the configured one)."""
        try:
            self.policy.set_target(tenant_id, use_case, false_hit_rate)
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc), field="false_hit_rate") from exc

    async def thumbs_down(self, tenant_id: str, use_case: str, entry_id: str) -> int:
        """A wrong cached answer: evict it and make the use case stricter; returns entries removed."""
        removed = await self.delete(tenant_id, [entry_id])
        self.tighten(tenant_id, use_case)
        return removed

    async def close(self) -> None:
        await self._tasks.stop()
        try:
            await self.store.close()
        finally:
            await self.embedder.close()
