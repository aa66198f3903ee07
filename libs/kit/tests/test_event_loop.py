"""LLMESH_EVENT_LOOP: a service process runs on uvloop by default, on asyncio's loop when asked, and
serves gRPC on either (docs/adr/0028)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.kit.config import ConfigError, ServerSettings, load_settings
from llmesh.kit.server import loop_factory

pytestmark = pytest.mark.timeout(60)

# A service with nothing but the kit's own servicers (health, reflection), run as `llmesh up` runs one.
SERVICE = """
from llmesh.kit.config import ServerSettings
from llmesh.kit.server import ServiceApp, run_service

class Bare(ServiceApp):
    name = "bare"

    def register(self, server):
        return []

run_service(lambda settings: Bare(), ServerSettings)
"""


def test_the_setting_defaults_to_uvloop_and_takes_asyncio():
    assert load_settings(ServerSettings, environ={}).event_loop == "uvloop"
    assert load_settings(ServerSettings, environ={"LLMESH_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="LLMESH_EVENT_LOOP"):
        load_settings(ServerSettings, environ={"LLMESH_EVENT_LOOP": "trio"})


def test_the_loop_factory():
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_a_service_starts_serves_and_stops_on_either_loop(tmp_path, event_loop):
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        "LLMESH_EVENT_LOOP": event_loop,
        "LLMESH_PORT": "0",
        "LLMESH_METRICS_PORT": "0",
        "LLMESH_READY_FILE": str(ready),
        "LLMESH_IDENTITY_INSECURE_ANONYMOUS": "true",
        "LLMESH_IDENTITY_CREDENTIAL_FILE": "",
        "LLMESH_IDENTITY_TRUST_FILE": "",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SERVICE], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "not ready in 30 s"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["event_loop"] == event_loop
        with grpc.insecure_channel(f"127.0.0.1:{info['port']}") as channel:
            for _ in range(20):  # several calls, each through the server interceptor
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert status.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
