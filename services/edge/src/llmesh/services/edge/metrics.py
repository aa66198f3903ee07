"""Edge metrics (Prometheus): HTTP requests by route and status, and their duration."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "llmesh_edge_http_requests_total", "HTTP requests answered, by route and status", ["route", "status"]
)
HTTP_LATENCY = Histogram(
    "llmesh_edge_http_request_seconds",
    "HTTP request duration in seconds (the whole stream for streamed completions)",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
