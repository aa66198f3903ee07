"""Health of the mesh as the launcher and `llmesh status` see it: the standard gRPC health check
of each service, and whether NATS greets a client."""

from __future__ import annotations

import socket
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.kit import tls

SERVING = "SERVING"
UNREACHABLE = "UNREACHABLE"


def health_status(address: str, *, timeout_s: float = 1.0) -> str:
    """SERVING, NOT_SERVING (or another status name), or UNREACHABLE."""
    with tls.blocking_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return UNREACHABLE
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def nats_status(url: str, *, timeout_s: float = 1.0) -> str:
    """SERVING when the (first) server of a NATS URL list sends its INFO greeting, else UNREACHABLE."""
    parsed = urllib.parse.urlsplit(url.split(",")[0].strip())
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            greeting = b""
            while len(greeting) < 4:
                chunk = s.recv(4 - len(greeting))
                if not chunk:
                    break
                greeting += chunk
    except OSError:
        return UNREACHABLE
    return SERVING if greeting == b"INFO" else UNREACHABLE


def http_status(url: str, *, timeout_s: float = 1.0) -> str:
    """SERVING when GET `url` answers 200 (Triton's /v2/health/ready; the stand-in's /v1/models,
    where 401 without its API key still means it serves), NOT_SERVING on another status, else UNREACHABLE."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return SERVING if response.status == 200 else "NOT_SERVING"
    except urllib.error.HTTPError as exc:
        return SERVING if exc.code == 401 and url.endswith("/models") else "NOT_SERVING"
    except OSError:
        return UNREACHABLE


def health_of_all(
    endpoints: dict[str, str],
    *,
    timeout_s: float = 1.0,
    nats_url: str | None = None,
    http_urls: dict[str, str] | None = None,
) -> dict[str, str]:
    """Checks every service (NATS under the name "nats" when `nats_url` is given; each of
    `http_urls` by HTTP GET) at once, so a dead mesh answers in one deadline rather than one per service."""
    http_urls = http_urls or {}
    with ThreadPoolExecutor(max_workers=len(endpoints) + len(http_urls) + 1) as pool:
        futures = {
            name: pool.submit(health_status, address, timeout_s=timeout_s) for name, address in endpoints.items()
        }
        for name, url in http_urls.items():
            futures[name] = pool.submit(http_status, url, timeout_s=timeout_s)
        if nats_url:
            futures["nats"] = pool.submit(nats_status, nats_url, timeout_s=timeout_s)
        return {name: future.result() for name, future in futures.items()}
