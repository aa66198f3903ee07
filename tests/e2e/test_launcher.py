"""`llmesh up --detach`, `llmesh status` and `llmesh down` as a user runs them: separate processes,
a private LLMESH_HOME, the services reached from outside."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmesh.launcher.processes import pid_alive
from llmesh.launcher.state import SERVICES

pytestmark = pytest.mark.timeout(400)

SERVICE_NAMES = {
    "tenancy": "llmesh.tenancy.v1.TenancyService",
    "classifier": "llmesh.classifier.v1.ClassifierService",
    "cache": "llmesh.cache.v1.CacheService",
    "inference": "llmesh.inference.v1.InferenceService",
    "router": "llmesh.router.v1.RouterService",
}


def cli_env(home) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("LLMESH_") and (k.endswith("_ADDR") or k in ("LLMESH_NATS_URL", "LLMESH_ADMIN_TOKEN")))
    }
    # Port 0 for the router: a mesh a developer runs on this machine keeps its 50051.
    env.update(LLMESH_HOME=str(home), LLMESH_ROUTER_PORT="0")
    return env


def llmesh(env, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmesh.cli.main", *argv], env=env, capture_output=True, text=True, timeout=timeout
    )


def listed_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        return {s.name for r in responses for s in r.list_services_response.service}


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_up_detached_status_and_down(tmp_path):
    env = cli_env(tmp_path)
    up = llmesh(env, "up", "--detach", "--timeout", "240", timeout=320)
    state = None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state_file = tmp_path / "mesh.json"
        state = json.loads(state_file.read_text())
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600, "the admin token is in there"
        assert set(state["endpoints"]) == set(SERVICES) and state["admin_token"]
        for name in SERVICES:
            assert state["endpoints"][name] in up.stdout and f"{name}.log" in up.stdout

        status = llmesh(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("SERVING") == len(SERVICES)

        for name, address in state["endpoints"].items():
            assert health(address) == health_pb2.HealthCheckResponse.SERVING
            listed = listed_services(address)
            assert {SERVICE_NAMES[name], "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed

        again = llmesh(env, "up", "--detach")
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        down = llmesh(env, "down", timeout=150)
    assert down.returncode == 0 and "mesh stopped" in down.stdout, down.stdout + down.stderr
    assert not (tmp_path / "mesh.json").exists()
    for pid in [state["supervisor_pid"], *state["pids"].values()]:
        assert not pid_alive(pid)
    after = llmesh(env, "status")
    assert after.returncode == 1 and "UNREACHABLE" in after.stdout
    assert llmesh(env, "down").stdout.strip() == "no mesh is running"
