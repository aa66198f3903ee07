"""Prometheus metrics shared by every service: per-RPC counts, latency and errors, and the one
helper that bounds label values a caller chooses (tenant, business unit, use case).

Naming follows Prometheus: base units (seconds, bytes, ratios 0..1), `_total` on counters,
`_seconds`/`_bytes`/`_ratio` suffixes. A label whose values come from a request (a use case, a
business unit) takes at most `limit` distinct values per process; later ones are counted under
`other`, so no caller can create unbounded series (docs/adr/0020)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

OTHER = "other"
UNSET = "none"

RPC_REQUESTS = Counter(
    "llmesh_grpc_requests_total", "gRPC calls handled, by RPC and status code", ["service", "method", "code"]
)
RPC_ERRORS = Counter(
    "llmesh_grpc_errors_total", "gRPC calls that ended with a status other than OK", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "llmesh_grpc_request_duration_seconds",
    "gRPC call duration in seconds (whole stream for streaming calls)",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# Predictive scaling (llmesh.kit.forecast): the whole service's load (every replica's requests
# summed) and the load forecast `horizon` ahead, which the autoscalers read (docs/adr/0025).
SERVICE_LOAD = Gauge(
    "llmesh_service_requests_per_second",
    "Requests per second handled by every replica of the service together, over the last step",
    ["service"],
)
FORECAST = Gauge(
    "llmesh_forecast_requests_per_second",
    "The service's requests per second (all replicas) forecast `horizon` ahead from its hour-of-week history",
    ["service", "horizon"],
)

# Leak watch (bench/soak.py): the asyncio tasks alive in the service's event loop, sampled by the
# host every ASYNCIO_TASKS_INTERVAL_S (llmesh.kit.server).
ASYNCIO_TASKS = Gauge(
    "llmesh_asyncio_tasks",
    "Asyncio tasks alive in the service's event loop (every task: RPC handlers, background jobs, clients')",
    ["service"],
)


class BoundedLabel:
    """The values one label may take in this process: the first `limit` distinct ones as they
    are, every later one as `other`; empty becomes `none`. Thread-safe; a value once admitted
    stays admitted (the series it created keeps its name)."""

    def __init__(self, name: str, limit: int):
        if limit < 1:
            raise ValueError(f"label {name}: limit must be at least 1")
        self.name = name
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return UNSET
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit or value in (OTHER, UNSET):
                return OTHER
            self._seen.add(value)
            return value


# The caller-chosen labels of every service, one bound each per process.
TENANT = BoundedLabel("tenant", 1000)
BUSINESS_UNIT = BoundedLabel("business_unit", 100)
USE_CASE = BoundedLabel("use_case", 50)


def start_metrics_server(host: str, port: int) -> tuple[object, int]:
    """Serves /metrics; returns the server (to shut down) and the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return server, server.server_address[1]
