"""The cache's domain: lookups (exact, then semantic), stores, invalidations, feedback and admin
operations over the exact layer and the semantic index. No gRPC here."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from llmesh.kit.errors import LlmeshError, NotFound
from llmesh.kit.logging import get_logger
from llmesh.kit.vocabulary import DEFAULT_USE_CASE
from llmesh.services.cache import metrics
from llmesh.services.cache.analytics import Analytics, Outcome, Scope
from llmesh.services.cache.entries import Answer, CacheEntry
from llmesh.services.cache.exact import ExactStore
from llmesh.services.cache.hits import EntryHits, HitHistory
from llmesh.services.cache.invalidation import Invalidation
from llmesh.services.cache.keys import (
    RequestKey,
    context_hash,
    exact_key,
    params_hash,
    request_doc,
    semantic_text,
)
from llmesh.services.cache.policy import CachePolicy, PolicyResolver
from llmesh.services.cache.semantic.api import Decision, SemanticEntry, SemanticIndex, SemanticMatch, SemanticQuery

log = get_logger("llmesh.cache")

# What a pinned entry tells the semantic index as its expiry: it does not expire.
PINNED_EXPIRES_AT = 253402300799.0  # 9999-12-31T23:59:59Z


@dataclasses.dataclass(frozen=True, slots=True)
class LookupQuery:
    key: RequestKey
    tier: int = 0  # the tier the request needs; 0: any
    exact_only: bool = False
    business_unit: str = ""
    restricted: bool = False
    # with exact_only: a full lookup follows a miss and counts the request (not this one)
    lookup_follows: bool = False
    # the exact layer is skipped: the caller's exact_only lookup of this key just missed
    semantic_only: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class LookupResult:
    outcome: Outcome
    entry: CacheEntry | None = None
    decision: Decision | None = None  # None: the semantic layer did not run
    similarity: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class StoreCommand:
    key: RequestKey
    answer: Answer
    ttl_s: float = 0.0  # 0: from policy or the default
    content_versions: dict[str, int] = dataclasses.field(default_factory=dict)
    content_class: str = ""
    business_unit: str = ""
    restricted: bool = False
    exact_only: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class StoreResult:
    entry: CacheEntry | None  # None: not stored, see `reason`
    reason: str = ""
    semantic_indexed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ReportedHits:
    """Exact hits a router answered from its copy of an entry (docs/adr/0033), counted as the
    cache counts its own: `hits` lookups of the scope, each saving `tokens` and `cost_usd`."""

    scope: Scope
    entry_id: str
    hits: int
    tokens: int
    cost_usd: float
    last_hit_at: float = 0.0  # unix seconds; 0: not said


@dataclasses.dataclass(frozen=True, slots=True)
class FeedbackResult:
    evicted: bool
    tightened: bool


def tier_suffices(entry_tier: int, wanted_tier: int) -> bool:
    """An answer from a stronger tier may answer a request for a weaker one, not the reverse."""
    return wanted_tier == 0 or entry_tier >= wanted_tier


def to_semantic(entry: CacheEntry) -> SemanticEntry:
    return SemanticEntry(
        entry_id=entry.entry_id,
        tenant_id=entry.tenant_id,
        use_case=entry.use_case,
        tier=entry.answer.tier,
        context_hash=entry.context_hash,
        params_hash=entry.params_hash,
        text=entry.text,
        expires_at=PINNED_EXPIRES_AT if entry.pinned else entry.expires_at,
        created_at=entry.created_at,
        content_class=entry.content_class,
        content_versions=dict(entry.content_versions),
        payload=entry.to_bytes(),
        pinned=entry.pinned,
    )


class Cache:
    def __init__(
        self,
        exact: ExactStore,
        semantic: SemanticIndex | None,
        policy: PolicyResolver,
        analytics: Analytics,
        *,
        default_ttl_s: float,
        clock: Callable[[], float] = time.time,
        removed: Callable[[str, str, str], object] | None = None,
    ):
        """`removed(tenant_id, entry_id, reason)` is told of every entry removed on its own (a
        thumbs-down eviction, DeleteEntry), for the routers' copies of exact answers."""
        self.exact = exact
        self._removed = removed
        self.semantic = semantic
        self._policy = policy
        self.analytics = analytics
        self.default_ttl_s = default_ttl_s
        self._clock = clock
        # The policy's false-hit rate last given to the index, per (tenant, use case): set again
        # only when the policy changes, so a thumbs-down's tightening is not undone on every lookup.
        self._targets: dict[tuple[str, str], float] = {}
        self.hits = HitHistory()

    def policy(self, tenant_id: str, use_case: str) -> CachePolicy:
        return self._policy(tenant_id, use_case)

    # -- lookups ---------------------------------------------------------------------------------

    async def lookup(self, query: LookupQuery) -> LookupResult:
        key = query.key
        scope = Scope(key.tenant_id, query.business_unit, key.use_case)
        policy = self.policy(key.tenant_id, key.use_case)
        # A miss the caller follows with a full lookup is counted by that one.
        counted = not (query.exact_only and query.lookup_follows)
        if query.restricted and not policy.allow_restricted:
            if counted:
                self.analytics.record_lookup(scope, Outcome.UNCACHEABLE)
            return LookupResult(Outcome.UNCACHEABLE)
        now = self._clock()
        if not query.semantic_only:
            entry = await self.exact.get(key.tenant_id, exact_key(key), now)
            if entry is not None and tier_suffices(entry.answer.tier, query.tier):
                return self._hit(scope, Outcome.EXACT_HIT, entry)
        if self.semantic is None or query.exact_only or not policy.semantic:
            if counted:
                self.analytics.record_lookup(scope, Outcome.MISS)
            return LookupResult(Outcome.MISS)

        self._apply_target(key.tenant_id, key.use_case, policy)
        match = await self._semantic_lookup(query, now)
        if match is None:
            self.analytics.record_lookup(scope, Outcome.MISS)
            return LookupResult(Outcome.MISS)
        # Gray-zone decisions are counted here by tenant, business unit and use case; the engine
        # keeps each one's texts and scores for tuning the thresholds.
        gray = {Decision.GRAY_HIT: "hit", Decision.GRAY_MISS: "miss"}.get(match.decision)
        if match.decision in (Decision.HIT, Decision.GRAY_HIT):
            hit = self._usable_semantic_entry(match, query, now)
            if hit is not None:
                return self._hit(scope, Outcome.SEMANTIC_HIT, hit, match=match, gray=gray)
        self.analytics.record_lookup(scope, Outcome.MISS, gray_zone=gray)
        return LookupResult(Outcome.MISS, decision=match.decision, similarity=match.similarity)

    def _hit(
        self, scope: Scope, outcome: Outcome, entry: CacheEntry, *, match: SemanticMatch | None = None, gray=None
    ) -> LookupResult:
        self.analytics.record_lookup(
            scope, outcome, gray_zone=gray, tokens=entry.answer.tokens, cost_usd=entry.answer.cost_usd
        )
        self.hits.record(entry.tenant_id, entry.use_case, entry.entry_id, self._clock())
        return LookupResult(
            outcome,
            entry,
            decision=match.decision if match else None,
            similarity=match.similarity if match else 0.0,
        )

    def record_reported_hits(self, reported: list[ReportedHits]) -> None:
        """Counts hits the routers answered from their copies of this cache's exact answers, as
        `_hit` counts the cache's own (analytics by scope, hit history by entry)."""
        for row in reported:
            self.analytics.record_lookup(
                row.scope, Outcome.EXACT_HIT, tokens=row.tokens, cost_usd=row.cost_usd, count=row.hits
            )
            hit_at = row.last_hit_at or self._clock()  # a report that does not say: when it arrived
            self.hits.record(row.scope.tenant_id, row.scope.use_case, row.entry_id, hit_at, count=row.hits)
            metrics.REPORTED_HITS.inc(row.hits)

    def _apply_target(self, tenant_id: str, use_case: str, policy: CachePolicy) -> None:
        wanted = policy.target_false_hit_rate
        if wanted is None or self._targets.get((tenant_id, use_case)) == wanted:
            return
        self._targets[(tenant_id, use_case)] = wanted
        assert self.semantic is not None
        try:
            self.semantic.set_target(tenant_id, use_case, wanted)
        except Exception as exc:
            log.warning("policy_false_hit_rate_rejected", tenant=tenant_id, use_case=use_case, error=str(exc))

    async def _semantic_lookup(self, query: LookupQuery, now: float) -> SemanticMatch | None:
        key = query.key
        assert self.semantic is not None
        try:
            return await self.semantic.lookup(
                SemanticQuery(
                    tenant_id=key.tenant_id,
                    use_case=key.use_case,
                    tier=query.tier,
                    context_hash=context_hash(key),
                    params_hash=params_hash(key),
                    text=semantic_text(key),
                    now=now,
                )
            )
        except Exception:
            # A failing semantic layer costs hits, not requests: the exact layer already answered.
            log.exception("semantic_lookup_failed", tenant=key.tenant_id)
            metrics.SEMANTIC_ERRORS.labels("lookup").inc()
            return None

    def _usable_semantic_entry(self, match: SemanticMatch, query: LookupQuery, now: float) -> CacheEntry | None:
        """The matched entry, checked again here: a defect in the index must never serve another
        tenant's, an expired, or a too-weak answer."""
        candidate = match.entry
        if candidate is None or not candidate.payload:
            return None
        key = query.key
        if (
            candidate.tenant_id != key.tenant_id
            or candidate.use_case != key.use_case
            or candidate.context_hash != context_hash(key)
            or candidate.params_hash != params_hash(key)
        ):
            log.error("semantic_match_out_of_scope", tenant=key.tenant_id, candidate=candidate.entry_id)
            metrics.SEMANTIC_ERRORS.labels("out_of_scope").inc()
            return None
        entry = CacheEntry.from_bytes(candidate.payload)
        if entry.tenant_id != key.tenant_id or entry.expired(now) or not tier_suffices(entry.answer.tier, query.tier):
            return None
        return dataclasses.replace(entry, pinned=candidate.pinned)

    async def hot_entries(
        self, tenant_id: str, use_case: str, *, min_hits: int, expiring_within_s: float, limit: int
    ) -> list[tuple[CacheEntry, EntryHits]]:
        """The tenant's live entries hit at least `min_hits` times that expire within
        `expiring_within_s`, the most hit first; pinned entries (they do not expire) and entries
        stored before requests were kept with them (nothing to generate again) are left out."""
        now = self._clock()
        found = []
        for row in self.hits.often_hit(tenant_id, use_case, min_hits):
            entry = await self.exact.get(tenant_id, row.entry_id, now)
            if entry is None or entry.pinned or not entry.request or entry.expires_at > now + expiring_within_s:
                continue
            found.append((entry, row))
            if len(found) >= limit:
                break
        return found

    # -- stores ----------------------------------------------------------------------------------

    async def _prepare(self, command: StoreCommand, now: float) -> CacheEntry | StoreResult:
        key = command.key
        policy = self.policy(key.tenant_id, key.use_case)
        if command.restricted and not policy.allow_restricted:
            metrics.STORES.labels("uncacheable").inc()
            return StoreResult(None, "restricted requests are not cached under this tenant's policy")
        current = await self.exact.document_versions(key.tenant_id, list(command.content_versions))
        for document_id, version in command.content_versions.items():
            if current.get(document_id, version) > version:
                metrics.STORES.labels("outdated").inc()
                return StoreResult(
                    None,
                    f"built from document {document_id!r} version {version}; version {current[document_id]} is current",
                )
        ttl = policy.ttl_for(command.ttl_s, command.content_class, self.default_ttl_s)
        return CacheEntry(
            entry_id=exact_key(key),
            tenant_id=key.tenant_id,
            use_case=key.use_case,
            answer=command.answer,
            created_at=now,
            expires_at=now + ttl,
            content_versions=dict(command.content_versions),
            content_class=command.content_class,
            text=semantic_text(key),
            context_hash=context_hash(key),
            params_hash=params_hash(key),
            semantic=self.semantic is not None and not command.exact_only and policy.semantic,
            request=request_doc(key),
        )

    async def store(self, command: StoreCommand) -> StoreResult:
        return (await self.store_many([command]))[0]

    async def store_many(self, commands: list[StoreCommand]) -> list[StoreResult]:
        """Stores in both layers; the semantic index embeds the whole batch at once."""
        now = self._clock()
        prepared = [await self._prepare(c, now) for c in commands]
        entries = [p for p in prepared if isinstance(p, CacheEntry)]
        for entry in entries:
            await self.exact.put(entry)
        metrics.STORES.labels("stored").inc(len(entries))
        semantic_entries = [to_semantic(e) for e in entries if e.semantic]
        indexed, refusal = False, ""
        if semantic_entries:
            assert self.semantic is not None
            try:
                if len(semantic_entries) == 1:
                    await self.semantic.add(semantic_entries[0])
                else:
                    await self.semantic.add_many(semantic_entries)
                indexed = True
            except LlmeshError as exc:
                # Refused with a reason (e.g. the semantic store's disk is full): the exact layer
                # keeps the answer, the caller is told why it was not indexed by meaning.
                log.warning("semantic_add_refused", entries=len(semantic_entries), reason=exc.reason, error=exc.message)
                metrics.SEMANTIC_ERRORS.labels("add").inc()
                refusal = f"stored for exact matches only: {exc.message}"
            except Exception:
                log.exception("semantic_add_failed", entries=len(semantic_entries))
                metrics.SEMANTIC_ERRORS.labels("add").inc()
        return [
            p
            if isinstance(p, StoreResult)
            else StoreResult(p, reason=refusal if p.semantic else "", semantic_indexed=indexed and p.semantic)
            for p in prepared
        ]

    # -- invalidation ----------------------------------------------------------------------------

    async def apply_invalidation(self, inv: Invalidation) -> int:
        """Applies an event from the stream; raising makes the stream redeliver it."""
        conditions = dict(
            use_case=inv.use_case,
            document_id=inv.document_id,
            older_than_version=inv.version if inv.document_id is not None else None,
            created_before=inv.issued_at,
        )
        if inv.document_id is not None:
            await self.exact.note_document_version(inv.tenant_id, inv.document_id, inv.version or 0)
        removed = await self.exact.delete_matching(inv.tenant_id, **conditions)
        if self.semantic is not None:
            removed = max(removed, await self.semantic.delete_matching(inv.tenant_id, **conditions))
        metrics.INVALIDATIONS.labels(inv.scope).inc()
        metrics.EVICTIONS.labels(self.exact.layer, "invalidated").inc(removed)
        log.info("invalidation_applied", event_id=inv.event_id, tenant=inv.tenant_id, scope=inv.scope, removed=removed)
        return removed

    # -- feedback and admin ----------------------------------------------------------------------

    async def _delete_everywhere(self, tenant_id: str, entry_id: str) -> bool:
        removed = await self.exact.delete(tenant_id, [entry_id])
        if self.semantic is not None:
            removed += await self.semantic.delete(tenant_id, [entry_id])
        return removed > 0

    async def feedback(
        self,
        tenant_id: str,
        entry_id: str,
        *,
        thumbs_up: bool,
        served_as: Outcome | None = None,
        use_case: str = "",
        business_unit: str = "",
    ) -> FeedbackResult:
        entry = await self.exact.get(tenant_id, entry_id, self._clock())
        use_case = use_case or (entry.use_case if entry else DEFAULT_USE_CASE)
        self.analytics.record_feedback(Scope(tenant_id, business_unit, use_case), thumbs_up)
        if thumbs_up:
            return FeedbackResult(evicted=False, tightened=False)
        evicted = False
        if entry is None or not entry.pinned:
            evicted = await self._delete_everywhere(tenant_id, entry_id)
            if evicted:
                metrics.EVICTIONS.labels(self.exact.layer, "feedback").inc()
                self._tell_removed(tenant_id, entry_id, "feedback")
        # A wrong exact hit says nothing about the semantic operating point.
        tightened = self.semantic is not None and served_as is not Outcome.EXACT_HIT
        if tightened:
            assert self.semantic is not None
            self.semantic.tighten(tenant_id, use_case)
        log.info("cache_thumbs_down", tenant=tenant_id, entry_id=entry_id, evicted=evicted, tightened=tightened)
        return FeedbackResult(evicted=evicted, tightened=tightened)

    async def set_pinned(self, tenant_id: str, entry_id: str, pinned: bool) -> CacheEntry:
        now = self._clock()
        entry = await self.exact.get(tenant_id, entry_id, now)
        if entry is None:
            raise NotFound(f"tenant {tenant_id!r} has no cached answer {entry_id!r}", field="entry_id")
        if pinned:
            updated = dataclasses.replace(entry, pinned=True)
        else:
            ttl = self.policy(tenant_id, entry.use_case).ttl_for(0, entry.content_class, self.default_ttl_s)
            updated = dataclasses.replace(entry, pinned=False, expires_at=max(entry.expires_at, now + ttl))
        await self.exact.put(updated)
        if updated.semantic and self.semantic is not None:
            await self.semantic.add(to_semantic(updated))
        log.info("cache_entry_pinned" if pinned else "cache_entry_unpinned", tenant=tenant_id, entry_id=entry_id)
        return updated

    async def delete_entry(self, tenant_id: str, entry_id: str) -> bool:
        deleted = await self._delete_everywhere(tenant_id, entry_id)
        if deleted:
            metrics.EVICTIONS.labels(self.exact.layer, "admin").inc()
            self._tell_removed(tenant_id, entry_id, "admin")
        log.info("cache_entry_deleted", tenant=tenant_id, entry_id=entry_id, deleted=deleted)
        return deleted

    def _tell_removed(self, tenant_id: str, entry_id: str, reason: str) -> None:
        if self._removed is not None:
            self._removed(tenant_id, entry_id, reason)

    # -- upkeep ----------------------------------------------------------------------------------

    async def purge_expired(self) -> int:
        return await self.exact.purge_expired(self._clock())
