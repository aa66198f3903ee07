"""Prometheus metrics of the cache service (the per-RPC ones come from the kit's interceptor)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SCOPE_LABELS = ["tenant", "business_unit", "use_case"]

LOOKUPS = Counter(
    "llmesh_cache_lookups_total",
    "Cache lookups by outcome (exact_hit, semantic_hit, miss, uncacheable)",
    [*SCOPE_LABELS, "outcome"],
)
GRAY_ZONE = Counter(
    "llmesh_cache_gray_zone_total",
    "Lookups whose best semantic candidate fell between the thresholds, by the second stage's decision",
    [*SCOPE_LABELS, "decision"],
)
TOKENS_SAVED = Counter(
    "llmesh_cache_tokens_saved_total", "Prompt and completion tokens that cache hits did not generate", SCOPE_LABELS
)
COST_SAVED = Counter("llmesh_cache_cost_saved_usd_total", "US dollars that cache hits did not spend", SCOPE_LABELS)
FEEDBACK = Counter("llmesh_cache_feedback_total", "Ratings of cached answers", [*SCOPE_LABELS, "rating"])
ENTRIES = Gauge("llmesh_cache_entries", "Entries in the exact layer (shared by all replicas with Redis)", ["layer"])
EVICTIONS = Counter(
    "llmesh_cache_evictions_total",
    "Entries removed, by layer and reason (lru, expired, invalidated, feedback, admin)",
    ["layer", "reason"],
)
STORES = Counter("llmesh_cache_stores_total", "Store calls by result (stored, uncacheable, outdated)", ["result"])
INVALIDATIONS = Counter(
    "llmesh_cache_invalidations_applied_total", "Invalidation events applied by this replica", ["scope"]
)
SEMANTIC_ERRORS = Counter(
    "llmesh_cache_semantic_errors_total",
    "Semantic layer failures (the request is served by the exact layer alone)",
    ["operation"],
)
REPORTED_HITS = Counter(
    "llmesh_cache_reported_hits_total",
    "Exact hits the routers answered from their copies of this cache's answers and reported (docs/adr/0033); "
    "also counted in llmesh_cache_lookups_total",
)
