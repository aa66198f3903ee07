"""Standard gRPC health checks of mesh services, as the launcher and `llmesh status` see them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"
UNREACHABLE = "UNREACHABLE"


def health_status(address: str, *, timeout_s: float = 1.0) -> str:
    """SERVING, NOT_SERVING (or another status name), or UNREACHABLE."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return UNREACHABLE
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def health_of_all(endpoints: dict[str, str], *, timeout_s: float = 1.0) -> dict[str, str]:
    """Checks every service at once, so a dead mesh answers in one deadline rather than five."""
    with ThreadPoolExecutor(max_workers=max(1, len(endpoints))) as pool:
        futures = {
            name: pool.submit(health_status, address, timeout_s=timeout_s) for name, address in endpoints.items()
        }
        return {name: future.result() for name, future in futures.items()}
