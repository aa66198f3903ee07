"""The classifier's Prometheus metrics (the per-RPC ones come from the kit's interceptor)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CLASSIFY_SECONDS = Histogram(
    "llmesh_classifier_classify_seconds",
    "time to score and scan one request, inside the service (excludes gRPC), by model version",
    ["model_version"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
TIERS = Counter(
    "llmesh_classifier_tier_total", "requests classified, by tier and model version", ["tier", "model_version"]
)
SENSITIVITY = Counter("llmesh_classifier_sensitivity_total", "requests classified, by sensitivity level", ["level"])
PII_FOUND = Counter("llmesh_classifier_pii_total", "PII findings, by kind", ["kind"])
MODEL_INFO = Gauge(
    "llmesh_classifier_model_info", "1 for the complexity model version in use, 0 for earlier ones", ["model_version"]
)
MODEL_LOADS = Counter("llmesh_classifier_model_loads_total", "complexity model versions loaded (start and hot swaps)")
FEEDBACK = Counter("llmesh_classifier_feedback_total", "feedback received, by rating", ["rating"])
OUTCOMES = Counter(
    "llmesh_classifier_outcomes_total",
    "routing outcomes from the router (labels, ADR 0027), by source and result (stored; unknown_request: "
    "not classified by this replica's store; invalid)",
    ["source", "result"],
)
ROLLOUT_SHARE = Gauge(
    "llmesh_classifier_rollout_share",
    "share of requests served by the candidate model version of a rollout (0: none in progress)",
    ["candidate"],
)
ROLLOUT_APGR = Gauge(
    "llmesh_classifier_rollout_apgr",
    "APGR of each version of a rollout on the same recent labelled requests",
    ["model_version", "role"],
)
ROLLOUT_LABELLED = Gauge("llmesh_classifier_rollout_labelled", "labelled requests the last rollout evaluation used")
ROLLOUT_DECISIONS = Counter(
    "llmesh_classifier_rollout_decisions_total", "rollouts started, rolled back and promoted", ["decision"]
)
SCORE_DRIFT_PSI = Gauge(
    "llmesh_classifier_score_drift_psi",
    "population stability index of the recent complexity scores against the training score distribution "
    "(model.json score_bins), by model version; > 0.25: traffic has shifted",
    ["model_version"],
)
POLICY_VARIANT = Counter(
    "llmesh_classifier_policy_variant_total",
    "requests classified under a policy experiment variant, by variant (<experiment>/<variant>)",
    ["policy_variant"],
)
