"""A container health check on the standard gRPC health service (what Docker's HEALTHCHECK runs;
Kubernetes asks the same service itself with its native `grpc` probes).

    python -m llmesh.kit.health_probe [ADDRESS] [--service NAME] [--timeout SECONDS]

ADDRESS defaults to 127.0.0.1:$LLMESH_PORT. Exits 0 only when the server (or the named service)
answers SERVING; 1 when it answers anything else (NOT_SERVING while its dependencies are not ready,
or while it drains) or cannot be reached in time; 2 on bad arguments. One line on stdout says what
it saw, which `docker inspect` keeps as the check's output. Over (mutual) TLS when LLMESH_TLS_CA_FILE
is set (Kubernetes' native probes cannot: deploy/components/mtls runs this one instead).
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.kit import tls

SERVING = health_pb2.HealthCheckResponse.SERVING


def default_address() -> str:
    return f"127.0.0.1:{os.environ.get('LLMESH_PORT') or '0'}"


def check(address: str, service: str = "", timeout_s: float = 3.0) -> tuple[bool, str]:
    """(whether `address` reports `service` SERVING, what it reported)."""
    with tls.blocking_channel(address) as channel:  # TLS when LLMESH_TLS_CA_FILE is set
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    return response.status == SERVING, health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmesh.kit.health_probe", description="Exits 0 only when the gRPC health service says SERVING."
    )
    parser.add_argument("address", nargs="?", default=None, help="host:port (default: 127.0.0.1:$LLMESH_PORT)")
    parser.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    address = args.address or default_address()
    if address.endswith(":0"):
        parser.error("no address given and LLMESH_PORT is not set")
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    serving, status = check(address, args.service, args.timeout)
    target = f"{address} {args.service}".rstrip()
    print(f"{target}: {status}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
