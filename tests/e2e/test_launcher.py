"""`llmesh up`, `llmesh status` and `llmesh down` as a user runs them: separate processes, a private
LLMESH_HOME, every port picked free, the services reached from outside. One detached mesh serves the
module; the tests run in file order, the last one ends that mesh and starts two more."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.kit.testing import assert_eventually, unique
from llmesh.launcher.processes import pid_alive
from llmesh.launcher.state import SERVICES
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

pytestmark = pytest.mark.timeout(400)

SERVICE_NAMES = {
    "tenancy": "llmesh.tenancy.v1.TenancyService",
    "classifier": "llmesh.classifier.v1.ClassifierService",
    "cache": "llmesh.cache.v1.CacheService",
    "inference": "llmesh.inference.v1.InferenceService",
    "router": "llmesh.router.v1.RouterService",
    # The edge's API is HTTP: its gRPC port serves health and reflection only.
    "edge": "grpc.health.v1.Health",
}
# The services that hold a NATS connection (inference does not).
NATS_CLIENTS = ("tenancy", "classifier", "cache", "router")


def cli_env(home, ports: dict[str, int] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("LLMESH_") and (k.endswith("_ADDR") or k in ("LLMESH_NATS_URL", "LLMESH_ADMIN_TOKEN")))
    }
    # Port 0 (any free port) unless told: a mesh a developer runs on this machine keeps its own.
    env.update({f"LLMESH_{name.upper()}_PORT": str((ports or {}).get(name, 0)) for name in SERVICES})
    env["LLMESH_HOME"] = str(home)
    # The edge's HTTP API on a free port too.
    env["LLMESH_EDGE_HTTP_PORT"] = "0"
    # The model servers are tests/e2e/test_launcher_backends.py's: this module needs the services only.
    env["LLMESH_UP_BACKENDS"] = "0"
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


def health(address: str, timeout: float = 5) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


def status_rows(stdout: str) -> dict[str, dict[str, str]]:
    """`llmesh status`'s table as {process: {column: cell}} (cells may hold spaces: cut by the header)."""
    lines = stdout.splitlines()
    header = lines[0]
    columns = ["name", "state", "pid", "restarts", "last exit", "uptime", "address", "metrics"]
    starts = [0] + [header.index(column) for column in columns[1:]]
    rows = {}
    for line in lines[1:]:
        if line.startswith(("supervisor pid", "no local mesh", "the supervisor")):
            break  # the table ends; notes follow
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        rows[cells[0]] = dict(zip(columns, cells))
    return rows


@dataclasses.dataclass
class Launched:
    home: pathlib.Path
    env: dict[str, str]
    up: subprocess.CompletedProcess

    def state(self) -> dict:
        return json.loads((self.home / "mesh.json").read_text())

    def log(self, name: str) -> str:
        return (self.home / "logs" / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    home = tmp_path_factory.mktemp("llmesh-home")
    env = cli_env(home)
    up = llmesh(env, "up", "--detach", "--timeout", "240", timeout=320)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield Launched(home, env, up)
    finally:
        llmesh(env, "down", timeout=150)


async def new_key(state: dict) -> tuple[str, str]:
    """(api_key, key_id) of a fresh tenant, through the tenancy service the mesh runs."""
    admin = [("authorization", f"Bearer {state['admin_token']}")]
    async with grpc.aio.insecure_channel(state["endpoints"]["tenancy"]) as channel:
        stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
        tenant = (
            await stub.CreateTenant(
                tenancy_pb2.CreateTenantRequest(name=unique("launcher")), metadata=admin, timeout=10
            )
        ).tenant
        key = await stub.CreateApiKey(
            tenancy_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, label="launcher"), metadata=admin, timeout=10
        )
    return key.api_key, key.key.key_id


async def revoke(state: dict, key_id: str) -> None:
    admin = [("authorization", f"Bearer {state['admin_token']}")]
    async with grpc.aio.insecure_channel(state["endpoints"]["tenancy"]) as channel:
        await tenancy_pb2_grpc.TenancyServiceStub(channel).RevokeApiKey(
            tenancy_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=admin, timeout=10
        )


async def generate(state: dict, api_key: str) -> router_pb2.GenerateSummary:
    """One short answer through the router; raises grpc.aio.AioRpcError when refused."""
    request = router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=f"Say hello ({unique('q')})")],
        max_tokens=4,
        cache_policy=router_pb2.CACHE_POLICY_BYPASS,
    )
    async with grpc.aio.insecure_channel(state["endpoints"]["router"]) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        summary = None
        async for event in stub.Generate(request, metadata=[("authorization", f"Bearer {api_key}")], timeout=120):
            if event.HasField("summary"):
                summary = event.summary
    assert summary is not None
    return summary


class HealthWatch:
    """Checks a service's health every 0.1 s in a thread and keeps every answer that was not SERVING."""

    def __init__(self, address: str):
        self.address = address
        self.failures: list[str] = []
        self.checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                status = health(self.address, timeout=2)
                if status != health_pb2.HealthCheckResponse.SERVING:
                    self.failures.append(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            except grpc.RpcError as exc:
                self.failures.append(exc.code().name)
            self.checks += 1

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def test_up_detached_serves_and_records_every_process(mesh):
    state_file = mesh.home / "mesh.json"
    state = mesh.state()
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600, "the admin token is in there"
    assert set(state["endpoints"]) == set(SERVICES) and state["admin_token"] and state["phase"] == "up"
    assert set(state["processes"]) == {"nats", *SERVICES}
    for name in SERVICES:
        assert state["endpoints"][name] in mesh.up.stdout and f"{name}.log" in mesh.up.stdout
        assert state["processes"][name]["pid"] == state["pids"][name]
        assert state["processes"][name]["address"] == state["endpoints"][name]
    assert state["processes"]["nats"]["address"] == state["nats_url"]

    status = llmesh(mesh.env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = status_rows(status.stdout)
    assert set(rows) == {"nats", *SERVICES}
    for name, row in rows.items():
        assert row["state"] == "serving", status.stdout
        assert row["pid"] == str(state["processes"][name]["pid"]) and row["restarts"] == "0"
        assert row["last exit"] == "-" and row["uptime"] != "-"

    for name, address in state["endpoints"].items():
        assert health(address) == health_pb2.HealthCheckResponse.SERVING
        listed = listed_services(address)
        assert {SERVICE_NAMES[name], "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed
    # The edge's OpenAI-compatible API answers on the HTTP port the launcher recorded.
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        urllib.request.urlopen(f"{state['http_urls']['edge']}/models", timeout=10)
    assert (
        unauthorized.value.code == 401 and json.loads(unauthorized.value.read())["error"]["code"] == "invalid_api_key"
    )

    again = llmesh(mesh.env, "up", "--detach")
    assert again.returncode != 0 and "already running" in again.stderr


def test_up_gives_each_service_its_own_credential_and_the_cli_the_operators(mesh):
    """docs/adr/0023: the keys under $LLMESH_HOME/identity, private; a caller without credentials
    is refused by the internal services; the CLI calls them with the operator credential."""
    directory = pathlib.Path(mesh.state()["identity_dir"])
    assert directory == mesh.home / "identity" and stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in (
        "mesh-key.json",
        "tenancy-token-key.json",
        "operator.credential",
        *(f"{s}.credential" for s in SERVICES),
    ):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    with grpc.insecure_channel(mesh.state()["endpoints"]["cache"]) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            cache_pb2_grpc.CacheServiceStub(channel).Stats(cache_pb2.StatsRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stats = llmesh(mesh.env, "cache", "stats")
    assert stats.returncode == 0, stats.stdout + stats.stderr


async def test_a_killed_service_is_restarted_on_its_port_while_the_others_serve(mesh):
    before = mesh.state()
    victim = before["processes"]["tenancy"]
    others = {name: before["pids"][name] for name in SERVICES if name != "tenancy"}

    with HealthWatch(before["endpoints"]["router"]) as router_watch:
        os.kill(victim["pid"], signal.SIGKILL)

        def restarted() -> None:
            record = mesh.state()["processes"]["tenancy"]
            assert record["pid"] != victim["pid"] and record["state"] == "running", record
            assert health(before["endpoints"]["tenancy"], timeout=2) == health_pb2.HealthCheckResponse.SERVING

        await assert_eventually(restarted, timeout_s=90, interval_s=0.2, message="tenancy restarted")
    assert router_watch.checks > 0 and router_watch.failures == [], "the router served throughout"

    after = mesh.state()
    assert after["endpoints"] == before["endpoints"], "every service on the port it had"
    assert {name: after["pids"][name] for name in others} == others and all(pid_alive(p) for p in others.values())
    record = after["processes"]["tenancy"]
    assert (record["restarts"], record["last_exit_code"]) == (1, -signal.SIGKILL)

    status = llmesh(mesh.env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    row = status_rows(status.stdout)["tenancy"]
    assert (row["state"], row["pid"], row["restarts"], row["last exit"]) == (
        "serving",
        str(record["pid"]),
        "1",
        "SIGKILL",
    )
    assert "tenancy (pid" in (mesh.home / "logs" / "supervisor.log").read_text()

    # The router reaches the new tenancy at the old address: a key it never saw authenticates there.
    api_key, _ = await new_key(after)
    summary = await generate(after, api_key)
    assert summary.usage.completion_tokens > 0


async def test_a_killed_nats_is_restarted_with_its_streams_and_the_services_reconnect(mesh):
    before = mesh.state()
    nats_record = before["processes"]["nats"]
    nc = await nats.connect(before["nats_url"])
    try:
        streams = {info.config.name for info in await nc.jetstream().streams_info()}
        durables = {
            (s, c.name) for s in streams for c in await nc.jetstream().consumers_info(s) if c.config.durable_name
        }
    finally:
        await nc.close()
    assert streams and durables, "the services declared their streams and durable consumers"
    reconnects = {name: mesh.log(name).count('"nats_reconnected"') for name in NATS_CLIENTS}

    os.kill(nats_record["pid"], signal.SIGKILL)

    def nats_back() -> None:
        record = mesh.state()["processes"]["nats"]
        assert record["pid"] != nats_record["pid"] and record["state"] == "running", record
        assert record["restarts"] == nats_record["restarts"] + 1 and record["last_exit_code"] == -signal.SIGKILL

    await assert_eventually(nats_back, timeout_s=60, interval_s=0.2, message="nats restarted")
    after = mesh.state()
    assert after["nats_url"] == before["nats_url"], "the same port"
    assert {name: after["pids"][name] for name in SERVICES} == before["pids"], "no service was restarted"

    def reconnected() -> None:
        counts = {name: mesh.log(name).count('"nats_reconnected"') for name in NATS_CLIENTS}
        assert all(counts[name] > reconnects[name] for name in NATS_CLIENTS), counts

    await assert_eventually(reconnected, timeout_s=60, interval_s=0.2, message="every service reconnected")

    nc = await nats.connect(before["nats_url"])
    try:
        streams_after = {info.config.name for info in await nc.jetstream().streams_info()}
        durables_after = {
            (s, c.name) for s in streams_after for c in await nc.jetstream().consumers_info(s) if c.config.durable_name
        }
    finally:
        await nc.close()
    assert streams <= streams_after and durables <= durables_after, "the JetStream store survived"

    status = llmesh(mesh.env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    row = status_rows(status.stdout)["nats"]
    assert (row["state"], row["restarts"], row["last exit"]) == ("serving", "1", "SIGKILL")

    # An event crosses the new server: a revocation published by tenancy reaches the router, which
    # drops the principal it cached (for 30 s otherwise) and refuses the key.
    api_key, key_id = await new_key(after)
    await generate(after, api_key)
    await revoke(after, key_id)

    async def refused() -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await generate(after, api_key)
        assert refusal.value.code() == grpc.StatusCode.UNAUTHENTICATED

    await assert_eventually(refused, timeout_s=15, interval_s=0.5, message="the revocation reached the router")


def leave_time_wait(port: int) -> None:
    """Leaves a connection to `port` in TIME_WAIT on the server's side, as a stopped server does."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        server_side, _ = listener.accept()
        server_side.close()
        client.recv(1)
        client.close()


async def test_up_after_a_dead_supervisor_and_right_after_down_on_the_same_ports(mesh):
    before = mesh.state()
    ports = {name: int(address.rsplit(":", 1)[1]) for name, address in before["endpoints"].items()}
    env = cli_env(mesh.home, ports)
    left = [record["pid"] for record in before["processes"].values()]

    # The whole launcher crashes: its services and NATS are left running, mesh.json is stale.
    os.kill(before["supervisor_pid"], signal.SIGKILL)
    await assert_eventually(lambda: not pid_alive(before["supervisor_pid"]), timeout_s=10)
    status = llmesh(env, "status")
    assert status.returncode == 1 and f"the supervisor (pid {before['supervisor_pid']}) is gone" in status.stdout

    up = llmesh(env, "up", "--detach", "--timeout", "240", timeout=320)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "is gone; stopping what it left running" in up.stderr
    assert not any(pid_alive(pid) for pid in left)
    second = mesh.state()
    assert second["endpoints"] == before["endpoints"], "the same ports, free again"

    down = llmesh(env, "down", timeout=150)
    assert down.returncode == 0 and "mesh stopped" in down.stdout, down.stdout + down.stderr
    leave_time_wait(ports["router"])

    # At once, in the foreground as `make up` runs it, then Ctrl-C.
    out, err = mesh.home / "foreground.out", mesh.home / "foreground.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        foreground = subprocess.Popen(
            [sys.executable, "-m", "llmesh.cli.main", "up", "--timeout", "240"], env=env, stdout=stdout, stderr=stderr
        )
    try:

        def serving() -> None:
            assert foreground.poll() is None, err.read_text()
            assert (mesh.home / "mesh.json").exists()
            state = mesh.state()
            assert state["supervisor_pid"] == foreground.pid and state["phase"] == "up"

        await assert_eventually(serving, timeout_s=240, interval_s=0.2, message="foreground mesh up")
        third = mesh.state()
        assert third["endpoints"] == before["endpoints"]
        status = llmesh(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr

        foreground.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(foreground.wait, 120) == 0, err.read_text()
    finally:
        if foreground.poll() is None:
            foreground.kill()
            foreground.wait()
    stopped = err.read_text().splitlines()[-1]
    order = ["router", "edge", "tenancy", "classifier", "cache", "inference", "nats"]
    assert stopped == "llmesh: stopped " + ", ".join(f"{name} (exit code 0)" for name in order), err.read_text()
    assert not (mesh.home / "mesh.json").exists()
    assert not any(pid_alive(record["pid"]) for record in third["processes"].values())

    # No state left: status checks the addresses it is given (not the well-known ports, where a
    # developer's own mesh may run).
    env.update({f"LLMESH_{name.upper()}_ADDR": address for name, address in before["endpoints"].items()})
    env["LLMESH_NATS_URL"] = before["nats_url"]
    after = llmesh(env, "status")
    assert after.returncode == 1 and all(row["state"] == "down" for row in status_rows(after.stdout).values())
    assert llmesh(env, "down").stdout.strip() == "no mesh is running"
