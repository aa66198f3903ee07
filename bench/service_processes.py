"""Services of the mesh as processes of their own, for the benchmarks that measure them from
outside: each started with its identity, a private LLMESH_HOME and a ready file, stopped with
SIGTERM (then SIGKILL). Used by hot_path_bench.py and router_failover_triton_bench.py."""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import time

from llmesh.kit.testing import ensure_identity, identity_env


class ServiceProcesses:
    """Processes named like the services they are (`router-b` is a router), on one NATS."""

    def __init__(self, home: pathlib.Path, *, poll_s: float = 0.1):
        self.home = home
        self.admin_token = secrets.token_urlsafe(24)
        # The services' keys, and this process's operator credential for its own calls.
        self.identity_dir = ensure_identity()
        self.processes: dict[str, subprocess.Popen] = {}
        self.addresses: dict[str, str] = {}
        self.nats_url = ""
        self._poll_s = poll_s

    def spawn(self, name: str, extra: dict[str, str], argv: list[str] | None = None) -> pathlib.Path:
        """Starts `python -m llmesh.services.<service>` (or `argv`); returns its ready file."""
        service = name.split("-")[0]
        ready = self.home / f"{name}.ready.json"
        env = {
            **os.environ,
            "LLMESH_HOME": str(self.home),
            "LLMESH_NATS_URL": self.nats_url,
            "LLMESH_ADMIN_TOKEN": self.admin_token,
            "LLMESH_PORT": "0",
            "LLMESH_METRICS_PORT": "0",
            "LLMESH_READY_FILE": str(ready),
            "OMP_NUM_THREADS": "1",
            # Each process is the service it stands for (docs/adr/0023).
            **identity_env(self.identity_dir, service),
            **extra,
        }
        argv = argv or [sys.executable, "-m", f"llmesh.services.{service}"]
        with open(self.home / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        return ready

    def wait(self, name: str, ready: pathlib.Path, timeout_s: float = 300) -> None:
        """Until the process wrote its ready file; its address is then in `addresses`."""
        deadline = time.monotonic() + timeout_s
        process = self.processes[name]
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (self.home / f"{name}.log").read_text()[-3000:]
                raise RuntimeError(f"{name} did not get ready (exit {process.poll()}):\n{tail}")
            time.sleep(self._poll_s)
        self.addresses[name] = f"127.0.0.1:{json.loads(ready.read_text())['port']}"

    def stop_all(self, grace_s: float = 15) -> None:
        """SIGTERM to every process (last started first), SIGKILL to those still up after `grace_s`."""
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def new_api_key(self, tenant_prefix: str) -> str:
        """A new tenant (confidential clearance) and an API key of it, through tenancy's API."""
        import grpc
        from llmesh.common.v1 import common_pb2
        from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

        admin = [("authorization", f"Bearer {self.admin_token}")]
        with grpc.insecure_channel(self.addresses["tenancy"]) as channel:
            stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
            tenant = stub.CreateTenant(
                tenancy_pb2.CreateTenantRequest(
                    name=f"{tenant_prefix}-{os.getpid()}",
                    business_unit="bench",
                    clearance=common_pb2.SENSITIVITY_CONFIDENTIAL,
                ),
                metadata=admin,
                timeout=30,
            ).tenant
            return stub.CreateApiKey(
                tenancy_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, label="bench"), metadata=admin, timeout=30
            ).api_key
