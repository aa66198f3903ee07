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
    "time from the request's arrival at the router to its first streamed delta",
    ["cache_outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COST = Counter("llmesh_router_cost_usd_total", "USD charged to tenants for generated answers", ["tenant"])
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
    "llmesh_router_model_utilization",
    "Latest utilization a model's inference reported (active / capacity); NaN while unknown (no fresh snapshot)",
    ["region", "model"],
)
MODEL_LOAD_KNOWN = Gauge(
    "llmesh_router_model_load_known",
    "1 while the router holds a fresh load snapshot of the model, 0 when it is stale or missing",
    ["region", "model"],
)
QUEUE_DEPTH = Gauge(
    "llmesh_router_queue_depth",
    "Requests waiting in the router's fair queues, by model (pool) and priority class",
    ["model", "priority"],
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
