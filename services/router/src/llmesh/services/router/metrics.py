"""Router metrics (Prometheus), on top of the per-RPC ones every service records."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "llmesh_router_requests_total",
    "Generate requests answered, by tier, model and cache outcome",
    ["tier", "model", "cache_outcome"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmesh_router_time_to_first_token_seconds",
    "time from the request's arrival at the router to its first streamed delta, by tier and cache outcome",
    ["tier", "cache_outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REQUEST_DURATION = Histogram(
    "llmesh_router_request_duration_seconds",
    "time from the request's arrival at the router to its last delta (the whole answer), by tier and cache outcome",
    ["tier", "cache_outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
COST = Counter(
    "llmesh_router_cost_usd_total",
    "USD charged to tenants for generated answers, by tenant (bounded: llmesh.kit.metrics.TENANT) and model",
    ["tenant", "model"],
)
DEGRADED = Counter(
    "llmesh_router_degraded_total",
    "requests served without a dependency's answer (classifier: fallback tier; cache: treated as a miss)",
    ["dependency", "operation"],
)
PRINCIPAL_CACHE = Counter("llmesh_router_principal_cache_total", "principal cache lookups", ["result"])
PRINCIPAL_CACHE_HIT = PRINCIPAL_CACHE.labels("hit")
PRINCIPAL_CACHE_MISS = PRINCIPAL_CACHE.labels("miss")
# a key served past its TTL because tenancy could not answer (LLMESH_ROUTER_PRINCIPAL_STALE_S)
PRINCIPAL_STALE_SERVED = PRINCIPAL_CACHE.labels("stale")
CLASSIFICATION_MEMO = Counter(
    "llmesh_router_classification_memo_total",
    "classifications of requests that look the cache up: served from the router's memo (hit), asked of the "
    "classifier with a memo entry that did not apply (the lookup missed: stale), or without one (miss); "
    "off: memo not allowed for the request (rollout, policy experiment, unknown model version)",
    ["result"],
)
MEMO_HIT = CLASSIFICATION_MEMO.labels("hit")
MEMO_STALE = CLASSIFICATION_MEMO.labels("stale")
MEMO_MISS = CLASSIFICATION_MEMO.labels("miss")
MEMO_OFF = CLASSIFICATION_MEMO.labels("off")
EXACT_L1 = Counter(
    "llmesh_router_exact_l1_total",
    "cache lookups and the router's L1 of exact answers (docs/adr/0033): answered from the L1 (hit), an entry "
    "kept but expired (stale), none kept (miss), L1 off (size or TTL 0, or NATS disconnected: events missed)",
    ["result"],
)
L1_HIT = EXACT_L1.labels("hit")
L1_STALE = EXACT_L1.labels("stale")
L1_MISS = EXACT_L1.labels("miss")
L1_OFF = EXACT_L1.labels("off")
EXACT_L1_REPORTS = Counter(
    "llmesh_router_exact_l1_reported_hits_total",
    "L1 hits reported to the cache's analytics (sent: published on core NATS, unconfirmed), or dropped before "
    "(dropped: too many rows waiting)",
    ["result"],
)
CACHE_TIER_REJECTED = Counter(
    "llmesh_router_cache_tier_rejected_total",
    "cache hits not served because the answer came from a lower tier than the request needs",
)
SPECULATION = Counter(
    "llmesh_router_speculation_total",
    "misses dispatched while the semantic lookup ran (ADR 0029), by outcome: won (the lookup missed), lost (a hit "
    "in time cancelled the model's stream), wasted (a hit after the hold budget, ignored)",
    ["outcome"],
)
EARLY_DISPATCH = Counter(
    "llmesh_router_early_dispatch_total",
    "attempts started before the classification answered (ADR 0038), by outcome: adopted (the classification's "
    "first candidate was that model), discarded (it was not, or the request ended before: the call was cancelled)",
    ["outcome"],
)
SPECULATION_CANCELLED_TOKENS = Counter(
    "llmesh_router_speculation_cancelled_tokens_total",
    "deltas a cancelled speculative attempt had generated before a cache hit replaced it (not billed)",
    ["model"],
)
MODEL_UTILIZATION = Gauge(
    "llmesh_router_model_utilization_ratio",
    "Latest utilization a model's inference reported (active / capacity); NaN while unknown (no fresh snapshot)",
    ["region", "model"],
)
MODEL_LOAD_KNOWN = Gauge(
    "llmesh_router_model_load_known",
    "1 while the router holds a fresh load snapshot of the model, 0 when it is stale or missing",
    ["region", "model"],
)
BATCH_ITEMS = Counter("llmesh_router_batch_items_total", "batch items finished by this replica's workers", ["result"])
BATCH_WINDOW = Gauge(
    "llmesh_router_batch_window_seconds", "how long the batch workers wait to gather items (grows when idle)"
)
POLICY_VARIANT = Counter(
    "llmesh_router_policy_variant_requests_total",
    "requests routed under a policy experiment variant, by variant (<experiment>/<variant>)",
    ["policy_variant"],
)
BREAKER_STATE = Gauge(
    "llmesh_router_breaker_state",
    "Circuit breaker of each model endpoint in this replica: 0 closed, 1 half-open, 2 open",
    ["region", "model"],
)
BREAKER_EJECTIONS = Counter(
    "llmesh_router_breaker_ejections_total", "Times a model endpoint was ejected (breaker opened)", ["region", "model"]
)
BREAKER_PEER_HINTS = Counter(
    "llmesh_router_breaker_peer_hints_total",
    "Peers' ejection events received, by what this replica did with them (hinted, extended, own_event, stale, "
    "not_trusted, max_ejected, disabled)",
    ["region", "model", "decision"],
)
BREAKER_EJECTIONS_SKIPPED = Counter(
    "llmesh_router_breaker_ejections_skipped_total",
    "Ejections not made because max_ejection_percent of the endpoints were already out",
    ["region", "model"],
)
REPLICA_RETRIES = Counter(
    "llmesh_router_replica_retries_total",
    "Tries of a model that failed UNAVAILABLE before any token and were tried once more on the same model "
    "(another inference replica, docs/adr/0034)",
    ["model"],
)
ATTEMPT_FAILURES = Counter(
    "llmesh_router_attempt_failures_total",
    "Tries of a model that failed before the first token (the request moved on to the next candidate)",
    ["model", "code"],
)
STREAMS_INTERRUPTED = Counter(
    "llmesh_router_streams_interrupted_total", "Answers cut by a backend failure after tokens were sent", ["model"]
)
OVERFLOWED = Counter(
    "llmesh_router_overflow_requests_total",
    "Requests sent to the external tier because the self-hosted models were full",
    ["tenant", "tier"],
)
OVERFLOW_EXTRA_COST = Counter(
    "llmesh_router_overflow_extra_cost_usd_total",
    "USD the overflowed requests cost over what the self-hosted model would have charged",
    ["tenant"],
)
OVERFLOW_REFUSED = Counter(
    "llmesh_router_overflow_not_eligible_total",
    "Requests that would have overflowed but were not eligible (sensitivity, policy, budget, no external model)",
    ["reason"],
)
OUTCOMES_REPORTED = Counter(
    "llmesh_router_outcomes_reported_total",
    "quality-check verdicts on tier-1 answers for the classifier's labels (ADR 0027), by verdict and result "
    "(queued, sampled_out, error)",
    ["verdict", "result"],
)
ESCALATIONS = Counter(
    "llmesh_router_escalations_total",
    "Tier-1 answers scored below the quality threshold and answered again by a stronger tier",
    ["tenant", "use_case"],
)
ESCALATION_COST = Counter(
    "llmesh_router_escalation_cost_usd_total",
    "Cost of escalated requests: `first` the discarded tier-1 answers, `escalated` the answers that replaced them",
    ["tenant", "use_case", "part"],
)
QUALITY_SCORE = Histogram(
    "llmesh_router_quality_score_ratio",
    "Quality score of tier-1 answers (0..1)",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
QUEUE_DEPTH = Gauge(
    "llmesh_router_queue_depth",
    "Requests waiting in the router's fair queues, by model (pool) and priority class",
    ["model", "priority"],
)
QUEUE_CAPACITY = Gauge(
    "llmesh_router_queue_capacity",
    "Generations this router replica runs at once per model (pool) before requests queue: the "
    "model's concurrency over its live inference replicas, split between the router replicas",
    ["model"],
)
QUEUE_WAIT = Histogram(
    "llmesh_router_queue_wait_seconds",
    "time a request waited in the router's fair queue for a slot of its model, by priority class",
    ["priority"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUEUE_ADMISSIONS = Counter(
    "llmesh_router_queue_admissions_total",
    "fair-queue decisions by priority class: admitted, rejected_full (class queue at its cap), "
    "rejected_deadline (the estimated wait misses the SLA or deadline), cancelled (the caller left while queued)",
    ["priority", "outcome"],
)


# The children every request records, kept once looked up: .labels() builds and hashes the label
# tuple under a lock on each call, a cost on every request. Label values are bounded (tiers, cache
# outcomes, the catalog's models); the caches are bounded too.


@functools.lru_cache(maxsize=256)
def time_to_first_token(tier: int, cache_outcome: str) -> Histogram:
    return TIME_TO_FIRST_TOKEN.labels(str(tier), cache_outcome)


@functools.lru_cache(maxsize=256)
def request_duration(tier: int, cache_outcome: str) -> Histogram:
    return REQUEST_DURATION.labels(str(tier), cache_outcome)


@functools.lru_cache(maxsize=1024)
def requests(tier: int, model: str, cache_outcome: str) -> Counter:
    return REQUESTS.labels(str(tier), model, cache_outcome)
