"""Prometheus metrics of the inference service, labelled by model and backend."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LABELS = ("model", "backend")

TIME_TO_FIRST_TOKEN = Histogram(
    "llmesh_inference_time_to_first_token_seconds",
    "From a Generate call's arrival (queueing included) to its first text delta",
    LABELS,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKENS_PER_SECOND = Histogram(
    "llmesh_inference_tokens_per_second",
    "Decode speed of a finished generation: completion tokens after the first, per second after it",
    LABELS,
    buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000),
)
GENERATED_TOKENS = Counter(
    "llmesh_inference_generated_tokens_total", "Tokens sampled, cancelled generations included", LABELS
)
PROMPT_TOKENS = Counter("llmesh_inference_prompt_tokens_total", "Prompt tokens of admitted generations", LABELS)
GENERATIONS = Counter(
    "llmesh_inference_generations_total", "Generations that ended, by finish reason", (*LABELS, "finish_reason")
)
REPLAYS = Counter(
    "llmesh_inference_replays_total",
    "Generate calls answered with a recorded generation of the same request id and request, without the backend",
    LABELS,
)
ACTIVE_GENERATIONS = Gauge("llmesh_inference_active_generations", "Generations running now", LABELS)
QUEUED_GENERATIONS = Gauge("llmesh_inference_queued_generations", "Generations waiting for a slot", LABELS)
USAGE_SOURCE = Counter(
    "llmesh_inference_usage_source_total",
    "Finished generations by where their token counts came from: provider (the API's usage chunk, a Triton model's count outputs) or estimated (counted here)",
    (*LABELS, "source"),
)
