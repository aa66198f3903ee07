"""A small SemanticIndex for the service-side tests: "meaning" is word overlap (Jaccard), with the
filters the protocol requires. The real engine lives in llmesh.services.cache.semantic."""

from __future__ import annotations

import re

from llmesh.services.cache.semantic.api import Decision, SemanticEntry, SemanticMatch, SemanticQuery

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def jaccard(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 0.0


class ToySemanticIndex:
    """Similarity >= upper: HIT; lower..upper: the gray zone, where a "second stage" says same
    question when the word sets differ by at most one word."""

    def __init__(self, lower: float = 0.5, upper: float = 0.9):
        self.lower = lower
        self.upper = upper
        self.entries: dict[tuple[str, str], SemanticEntry] = {}
        self.tightened: list[tuple[str, str]] = []
        self.targets: list[tuple[str, str, float]] = []
        self.lookups = 0
        self.added_batches: list[int] = []
        self.fail = False
        self.closed = False

    def _thresholds(self, tenant_id: str, use_case: str) -> tuple[float, float]:
        bump = 0.05 * self.tightened.count((tenant_id, use_case))
        return min(self.lower + bump, 1.0), min(self.upper + bump, 1.0)

    async def lookup(self, query: SemanticQuery) -> SemanticMatch:
        self.lookups += 1
        if self.fail:
            raise RuntimeError("index down")
        candidates = [
            e
            for e in self.entries.values()
            if e.tenant_id == query.tenant_id
            and e.use_case == query.use_case
            and e.context_hash == query.context_hash
            and e.params_hash == query.params_hash
            and e.expires_at > query.now
            and (query.tier == 0 or e.tier >= query.tier)
        ]
        if not candidates:
            return SemanticMatch(Decision.MISS, 0.0, None)
        best = max(candidates, key=lambda e: jaccard(e.text, query.text))
        similarity = jaccard(best.text, query.text)
        lower, upper = self._thresholds(query.tenant_id, query.use_case)
        if similarity >= upper:
            return SemanticMatch(Decision.HIT, similarity, best)
        if similarity >= lower:
            same = len(words(best.text) ^ words(query.text)) <= 1
            return SemanticMatch(
                Decision.GRAY_HIT if same else Decision.GRAY_MISS, similarity, best, 1.0 if same else 0.0
            )
        return SemanticMatch(Decision.MISS, similarity, best)

    async def add(self, entry: SemanticEntry) -> None:
        await self.add_many([entry])

    async def add_many(self, entries: list[SemanticEntry]) -> None:
        if self.fail:
            raise RuntimeError("index down")
        if any(not 1 <= e.tier <= 3 or e.expires_at <= e.created_at for e in entries):
            raise ValueError("entries need a tier in 1..3 and an expiry after their creation")
        self.added_batches.append(len(entries))
        for e in entries:
            self.entries[(e.tenant_id, e.entry_id)] = e

    async def delete(self, tenant_id: str, entry_ids: list[str]) -> int:
        return sum(self.entries.pop((tenant_id, i), None) is not None for i in entry_ids)

    async def delete_matching(
        self, tenant_id, *, use_case=None, document_id=None, older_than_version=None, created_before=None
    ) -> int:
        doomed = [
            k
            for k, e in self.entries.items()
            if e.tenant_id == tenant_id
            and (use_case is None or e.use_case == use_case)
            and (document_id is None or e.content_versions.get(document_id, older_than_version) < older_than_version)
            and (created_before is None or e.created_at < created_before)
        ]
        for k in doomed:
            del self.entries[k]
        return len(doomed)

    async def purge_expired(self, now: float) -> int:
        doomed = [k for k, e in self.entries.items() if e.expires_at <= now]
        for k in doomed:
            del self.entries[k]
        return len(doomed)

    def tighten(self, tenant_id: str, use_case: str) -> None:
        self.tightened.append((tenant_id, use_case))

    def set_target(self, tenant_id: str, use_case: str, false_hit_rate: float) -> None:
        if false_hit_rate < 0.001:
            raise ValueError("no calibrated operating point below 0.1 %")
        self.targets.append((tenant_id, use_case, false_hit_rate))

    async def close(self) -> None:
        self.closed = True
