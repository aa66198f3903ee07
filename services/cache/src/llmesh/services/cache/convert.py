"""Validation and conversion between the cache contract (llmesh.cache.v1) and the domain."""

from __future__ import annotations

import math
import re

from google.protobuf.timestamp_pb2 import Timestamp
from llmesh.cache.v1 import cache_pb2
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.chat import messages_from_proto, messages_to_proto, sampling_from_proto, sampling_to_proto
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.vocabulary import (
    MAX_ANSWER_COST_USD,
    MAX_TOKENS_BOUND,
    MAX_USAGE_TOKENS,
    Sensitivity,
    tenant_id_from,
    use_case_from,
)
from llmesh.services.cache.analytics import Counts, Outcome, Scope
from llmesh.services.cache.core import LookupQuery, LookupResult, ReportedHits, StoreCommand, StoreResult
from llmesh.services.cache.entries import Answer, CacheEntry
from llmesh.services.cache.hits import EntryHits
from llmesh.services.cache.invalidation import Invalidation
from llmesh.services.cache.keys import RequestKey, key_from_doc
from llmesh.services.cache.semantic.api import Decision

CONTENT_CLASS = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_TTL_S = 30 * 24 * 3600
MAX_CONTENT_BYTES = 256 * 1024
MAX_LABEL_CHARS = 256
MAX_CONTENT_VERSIONS = 64
ENTRY_ID = re.compile(r"^[0-9a-f]{64}$")

_OUTCOMES = {
    Outcome.EXACT_HIT: cache_pb2.LOOKUP_OUTCOME_EXACT_HIT,
    Outcome.SEMANTIC_HIT: cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT,
    Outcome.MISS: cache_pb2.LOOKUP_OUTCOME_MISS,
    Outcome.UNCACHEABLE: cache_pb2.LOOKUP_OUTCOME_MISS,
}
_DECISIONS = {
    None: cache_pb2.SEMANTIC_DECISION_UNSPECIFIED,
    Decision.HIT: cache_pb2.SEMANTIC_DECISION_HIT,
    Decision.GRAY_HIT: cache_pb2.SEMANTIC_DECISION_GRAY_HIT,
    Decision.GRAY_MISS: cache_pb2.SEMANTIC_DECISION_GRAY_MISS,
    Decision.MISS: cache_pb2.SEMANTIC_DECISION_MISS,
}


def entry_id_from(value: str, field: str = "entry_id") -> str:
    if not ENTRY_ID.match(value):
        raise InvalidArgument(
            f"{field} must be the 64 hex digits of a cached answer's id (got {value[:80]!r})", field=field
        )
    return value


def _label(value: str, field: str) -> str:
    if len(value) > MAX_LABEL_CHARS:
        raise InvalidArgument(f"{field} is {len(value)} characters; the limit is {MAX_LABEL_CHARS}", field=field)
    return value


def _enum(value: int, enum_type, field: str) -> int:
    if value not in enum_type.values():
        names = ", ".join(n for n in enum_type.keys() if not n.endswith("_UNSPECIFIED"))
        raise InvalidArgument(f"{field} must be one of {names} (got {value})", field=field)
    return value


def key_from(key: cache_pb2.CacheKey, field: str = "key") -> tuple[RequestKey, bool]:
    """The request key, and whether the request is restricted-sensitivity."""
    tenant_id = tenant_id_from(key.tenant_id, f"{field}.tenant_id")
    use_case = use_case_from(key.use_case, f"{field}.use_case")
    messages = messages_from_proto(key.messages, field_name=f"{field}.messages")
    sampling = sampling_from_proto(key.sampling, field_name=f"{field}.sampling")
    if not 0 <= key.max_tokens <= MAX_TOKENS_BOUND:
        raise InvalidArgument(
            f"{field}.max_tokens must be in 0..{MAX_TOKENS_BOUND} (got {key.max_tokens})", field=f"{field}.max_tokens"
        )
    model = _label(key.model, f"{field}.model")
    sensitivity = Sensitivity.from_proto(key.sensitivity, field=f"{field}.sensitivity")
    request_key = RequestKey(
        tenant_id=tenant_id,
        use_case=use_case,
        messages=messages,
        model=model,
        sampling=sampling,
        max_tokens=key.max_tokens,
    )
    return request_key, sensitivity is Sensitivity.RESTRICTED


def lookup_from(request: cache_pb2.LookupRequest) -> LookupQuery:
    if request.exact_only and request.semantic_only:
        raise InvalidArgument("exact_only and semantic_only exclude each other", field="semantic_only")
    key, restricted = key_from(request.key)
    return LookupQuery(
        key=key,
        tier=_enum(request.tier, common_pb2.Tier, "tier"),
        exact_only=request.exact_only,
        business_unit=_label(request.business_unit, "business_unit"),
        restricted=restricted,
        lookup_follows=request.exact_only and request.lookup_follows,
        semantic_only=request.semantic_only,
    )


def _content_versions(versions, field: str) -> dict[str, int]:
    if len(versions) > MAX_CONTENT_VERSIONS:
        raise InvalidArgument(f"{field} has {len(versions)} entries; the limit is {MAX_CONTENT_VERSIONS}", field=field)
    result: dict[str, int] = {}
    for i, cv in enumerate(versions):
        document_id = _content_version_document(cv, f"{field}[{i}]")
        if document_id in result:
            raise InvalidArgument(f"{field} names document {document_id!r} twice", field=field)
        result[document_id] = cv.version
    return result


def _content_version_document(cv: common_pb2.ContentVersion, field: str) -> str:
    if not cv.document_id.strip():
        raise InvalidArgument(f"{field}.document_id is empty", field=f"{field}.document_id")
    _label(cv.document_id, f"{field}.document_id")
    if cv.version < 0:
        raise InvalidArgument(f"{field}.version must be >= 0 (got {cv.version})", field=f"{field}.version")
    return cv.document_id


def store_from(request: cache_pb2.StoreRequest) -> StoreCommand:
    key, restricted = key_from(request.key)
    if not request.content.strip():
        raise InvalidArgument("content is empty: only complete answers are cached", field="content")
    size = len(request.content.encode("utf-8"))
    if size > MAX_CONTENT_BYTES:
        raise InvalidArgument(f"content is {size} bytes; the limit is {MAX_CONTENT_BYTES}", field="content")
    if not 0 <= request.ttl_seconds <= MAX_TTL_S:
        raise InvalidArgument(
            f"ttl_seconds must be in 0..{MAX_TTL_S} (30 days; 0 takes the default), got {request.ttl_seconds}",
            field="ttl_seconds",
        )
    for name in ("prompt_tokens", "completion_tokens"):
        count = getattr(request.usage, name)
        if not 0 <= count <= MAX_USAGE_TOKENS:
            raise InvalidArgument(f"usage.{name} must be in 0..{MAX_USAGE_TOKENS} (got {count})", field=f"usage.{name}")
    if not (math.isfinite(request.cost_usd) and 0 <= request.cost_usd <= MAX_ANSWER_COST_USD):
        raise InvalidArgument(
            f"cost_usd must be a finite amount in 0..{MAX_ANSWER_COST_USD:g} USD (got {request.cost_usd})",
            field="cost_usd",
        )
    content_class = request.content_class
    if content_class and not CONTENT_CLASS.match(content_class):
        raise InvalidArgument(
            f"content_class must be empty or 1-64 characters of [A-Za-z0-9._-] (got {content_class[:80]!r})",
            field="content_class",
        )
    answer = Answer(
        content=request.content,
        model=_label(request.model, "model"),
        backend=_label(request.backend, "backend"),
        # An answer of unknown origin is taken for the weakest tier's: it never answers a request
        # that needs a stronger one.
        tier=_enum(request.tier, common_pb2.Tier, "tier") or common_pb2.TIER_1,
        prompt_tokens=request.usage.prompt_tokens,
        completion_tokens=request.usage.completion_tokens,
        cost_usd=request.cost_usd,
    )
    return StoreCommand(
        key=key,
        answer=answer,
        ttl_s=float(request.ttl_seconds),
        content_versions=_content_versions(request.content_versions, "content_versions"),
        content_class=content_class,
        business_unit=_label(request.business_unit, "business_unit"),
        restricted=restricted,
        exact_only=request.exact_only,
    )


def invalidation_from(request: cache_pb2.InvalidateRequest, now: float) -> Invalidation:
    tenant_id = tenant_id_from(request.tenant_id)
    scope = request.WhichOneof("scope")
    if scope is None:
        raise InvalidArgument("scope is required: set all, use_case or content_version", field="scope")
    if scope == "all":
        if not request.all:
            raise InvalidArgument("all must be true to flush the tenant's entries", field="all")
        return Invalidation.new(tenant_id, now=now)
    if scope == "use_case":
        if not request.use_case:
            raise InvalidArgument("use_case is empty", field="use_case")
        return Invalidation.new(tenant_id, use_case=use_case_from(request.use_case), now=now)
    document_id = _content_version_document(request.content_version, "content_version")
    return Invalidation.new(tenant_id, document_id=document_id, version=request.content_version.version, now=now)


def served_as_from(value: int) -> Outcome | None:
    _enum(value, cache_pb2.LookupOutcome, "served_as")
    return {
        cache_pb2.LOOKUP_OUTCOME_EXACT_HIT: Outcome.EXACT_HIT,
        cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT: Outcome.SEMANTIC_HIT,
    }.get(value)


def rating_from(value: int) -> bool:
    """True for a thumbs-up."""
    if value not in (cache_pb2.RATING_THUMBS_UP, cache_pb2.RATING_THUMBS_DOWN):
        raise InvalidArgument(f"rating must be RATING_THUMBS_UP or RATING_THUMBS_DOWN (got {value})", field="rating")
    return value == cache_pb2.RATING_THUMBS_UP


def feedback_scope_from(request: cache_pb2.FeedbackRequest) -> tuple[str, str]:
    use_case = use_case_from(request.use_case) if request.use_case else ""
    return use_case, _label(request.business_unit, "business_unit")


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def answer_to_proto(entry: CacheEntry) -> cache_pb2.CachedAnswer:
    a = entry.answer
    proto = cache_pb2.CachedAnswer(
        entry_id=entry.entry_id,
        content=a.content,
        model=a.model,
        backend=a.backend,
        tier=a.tier,
        usage=common_pb2.Usage(prompt_tokens=a.prompt_tokens, completion_tokens=a.completion_tokens),
        cost_usd=a.cost_usd,
        created_at=_timestamp(entry.created_at),
        pinned=entry.pinned,
        content_versions=[
            common_pb2.ContentVersion(document_id=d, version=v) for d, v in sorted(entry.content_versions.items())
        ],
        content_class=entry.content_class,
    )
    if not entry.pinned:
        proto.expires_at.CopyFrom(_timestamp(entry.expires_at))
    return proto


def lookup_to_proto(result: LookupResult) -> cache_pb2.LookupResponse:
    response = cache_pb2.LookupResponse(
        outcome=_OUTCOMES[result.outcome],
        semantic_decision=_DECISIONS[result.decision],
        similarity=result.similarity,
        uncacheable=result.outcome is Outcome.UNCACHEABLE,
    )
    if result.entry is not None:
        response.answer.CopyFrom(answer_to_proto(result.entry))
    return response


def store_to_proto(result: StoreResult) -> cache_pb2.StoreResponse:
    response = cache_pb2.StoreResponse(
        stored=result.entry is not None, reason=result.reason, semantic_indexed=result.semantic_indexed
    )
    if result.entry is not None:
        response.entry_id = result.entry.entry_id
        if not result.entry.pinned:
            response.expires_at.CopyFrom(_timestamp(result.entry.expires_at))
    return response


def stats_to_proto(scope: Scope | None, counts: Counts) -> cache_pb2.CacheStats:
    row = cache_pb2.CacheStats(
        lookups=counts.lookups,
        exact_hits=counts.exact_hits,
        semantic_hits=counts.semantic_hits,
        gray_zone=counts.gray_zone,
        misses=counts.misses,
        uncacheable=counts.uncacheable,
        hit_rate=counts.hit_rate,
        exact_hit_rate=counts.exact_hit_rate,
        semantic_hit_rate=counts.semantic_hit_rate,
        gray_zone_rate=counts.gray_zone_rate,
        tokens_saved=counts.tokens_saved,
        cost_saved_usd=counts.cost_saved_usd,
        thumbs_up=counts.thumbs_up,
        thumbs_down=counts.thumbs_down,
    )
    if scope is not None:
        row.tenant_id, row.business_unit, row.use_case = scope.labels
    return row


def stats_response_to_proto(rows: list[tuple[Scope, Counts]], total: Counts) -> cache_pb2.StatsResponse:
    return cache_pb2.StatsResponse(
        rows=[stats_to_proto(scope, counts) for scope, counts in rows], total=stats_to_proto(None, total)
    )


MAX_HOT_ENTRIES = 1000


def hot_entries_from(request: cache_pb2.ListHotEntriesRequest) -> tuple[str, str, int, float, int]:
    """(tenant_id, use_case, min_hits, expiring_within_s, limit), checked."""
    tenant_id = tenant_id_from(request.tenant_id)
    use_case = use_case_from(request.use_case) if request.use_case else ""
    if request.min_hits < 1:
        raise InvalidArgument(f"min_hits must be >= 1 (got {request.min_hits})", field="min_hits")
    within = request.expiring_within_seconds
    if not (math.isfinite(within) and 0 < within <= MAX_TTL_S):
        raise InvalidArgument(
            f"expiring_within_seconds must be in (0, {MAX_TTL_S}] (got {within})", field="expiring_within_seconds"
        )
    if not 0 <= request.limit <= MAX_HOT_ENTRIES:
        raise InvalidArgument(f"limit must be in 0..{MAX_HOT_ENTRIES} (got {request.limit})", field="limit")
    return tenant_id, use_case, request.min_hits, within, request.limit or 100


def key_to_proto(key: RequestKey) -> cache_pb2.CacheKey:
    return cache_pb2.CacheKey(
        tenant_id=key.tenant_id,
        use_case=key.use_case,
        messages=messages_to_proto(key.messages),
        model=key.model,
        sampling=sampling_to_proto(key.sampling),
        max_tokens=key.max_tokens,
    )


def hot_entries_to_proto(
    found: list[tuple[CacheEntry, EntryHits]], hours: list[int]
) -> cache_pb2.ListHotEntriesResponse:
    response = cache_pb2.ListHotEntriesResponse(hits_by_hour=hours)
    for entry, hits in found:
        response.entries.add(
            key=key_to_proto(key_from_doc(entry.tenant_id, entry.use_case, entry.request)),
            answer=answer_to_proto(entry),
            hits=hits.hits,
            last_hit_at=_timestamp(hits.last_hit_at),
        )
    return response


# Hits of one entry one report may count (a router reports every second or every 256 hits).
MAX_REPORTED_HITS = 1_000_000


def reported_hits_rows(data: bytes) -> tuple[list[ReportedHits], list[str]]:
    """A router's CacheHitsReported event (docs/adr/0033): the rows that hold, and what was wrong
    with each one that does not (skipped)."""
    event = events_pb2.CacheHitsReported.FromString(data)
    rows: list[ReportedHits] = []
    problems: list[str] = []
    for i, hit in enumerate(event.hits):
        try:
            if not 0 < hit.hits <= MAX_REPORTED_HITS:
                raise InvalidArgument(f"hits must be in 1..{MAX_REPORTED_HITS}", field="hits")
            if not 0 <= hit.tokens <= MAX_USAGE_TOKENS:
                raise InvalidArgument("tokens out of range", field="tokens")
            if not (math.isfinite(hit.cost_usd) and 0 <= hit.cost_usd <= MAX_ANSWER_COST_USD):
                raise InvalidArgument("cost_usd out of range", field="cost_usd")
            rows.append(
                ReportedHits(
                    scope=Scope(
                        tenant_id_from(hit.tenant_id),
                        _label(hit.business_unit, "business_unit"),
                        use_case_from(hit.use_case),
                    ),
                    entry_id=entry_id_from(hit.entry_id),
                    hits=hit.hits,
                    tokens=hit.tokens,
                    cost_usd=hit.cost_usd,
                    last_hit_at=hit.last_hit_at.ToNanoseconds() / 1e9 if hit.HasField("last_hit_at") else 0.0,
                )
            )
        except InvalidArgument as exc:
            problems.append(f"hits[{i}]: {exc.message}")
    return rows, problems
