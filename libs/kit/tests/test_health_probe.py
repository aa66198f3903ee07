"""`python -m llmesh.kit.health_probe`, the images' HEALTHCHECK, against a real grpc.aio server."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from llmesh.kit.testing import free_port

pytestmark = pytest.mark.timeout(60)


async def _probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmesh.kit.health_probe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await process.communicate()
    return process.returncode, out.decode()


async def test_exit_code_follows_the_health_service():
    servicer = health.aio.HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await servicer.set("llmesh.toy.v1.ToyService", health_pb2.HealthCheckResponse.SERVING)
        code, out = await _probe(address)
        assert (code, out.strip()) == (1, f"{address}: NOT_SERVING")

        code, out = await _probe(address, "--service", "llmesh.toy.v1.ToyService")
        assert code == 0 and "SERVING" in out

        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        code, out = await _probe(env={"LLMESH_PORT": str(port), "PATH": ""})  # address from LLMESH_PORT
        assert (code, out.strip()) == (0, f"{address}: SERVING")

        code, out = await _probe(address, "--service", "llmesh.unknown.v1.Nothing")
        assert code == 1 and "NOT_FOUND" in out

        await servicer.enter_graceful_shutdown()  # draining after SIGTERM
        code, out = await _probe(address)
        assert (code, out.strip()) == (1, f"{address}: NOT_SERVING")
    finally:
        await server.stop(0)


async def test_nothing_listening_fails_within_the_timeout():
    code, out = await _probe(f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert code == 1 and ("UNAVAILABLE" in out or "DEADLINE_EXCEEDED" in out)


async def test_bad_arguments_exit_2():
    code, out = await _probe(env={"PATH": ""})  # no address and no LLMESH_PORT
    assert code == 2 and "LLMESH_PORT" in out
    code, _ = await _probe("127.0.0.1:1", "--timeout", "0")
    assert code == 2
