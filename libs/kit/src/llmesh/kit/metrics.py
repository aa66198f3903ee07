"""Prometheus metrics shared by every service: per-RPC counts, latency and errors."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "llmesh_grpc_requests_total", "gRPC calls handled, by RPC and status code", ["service", "method", "code"]
)
RPC_ERRORS = Counter(
    "llmesh_grpc_errors_total", "gRPC calls that ended with a status other than OK", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "llmesh_grpc_request_seconds",
    "gRPC call duration in seconds (whole stream for streaming calls)",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def start_metrics_server(host: str, port: int) -> tuple[object, int]:
    """Serves /metrics; returns the server (to shut down) and the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return server, server.server_address[1]
