"""Router metrics (Prometheus), on top of the per-RPC ones every service records."""

from __future__ import annotations

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
CACHE_TIER_REJECTED = Counter(
    "llmesh_router_cache_tier_rejected_total",
    "cache hits not served because the answer came from a lower tier than the request needs",
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
