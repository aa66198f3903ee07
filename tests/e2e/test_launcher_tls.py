"""`llmesh up --tls`: the local mesh with mutual TLS between its services (docs/adr/0024). The
launcher makes a CA and the certificates under $LLMESH_HOME/tls (keys readable by the owner only),
the services serve and call each other over mutual TLS, and the `llmesh` commands use the CLI's
certificate that mesh.json names: a tenant is created and a Generate answered through the CLI,
while a plaintext client, or one without a certificate, is refused. Two router replicas, so that the
CLI and the edge call the router over TLS at an `ipv4:a,b` target (docs/adr/0024, 0034). Heavy:
runs with the slow suite."""

from __future__ import annotations

import json
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.kit import tls
from llmesh.kit.config import TLSSettings
from llmesh.kit.testing import unique
from llmesh.launcher.state import SERVICES

from tests.e2e.test_launcher import cli_env, llmesh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(500)]


@pytest.fixture(scope="module")
def tls_mesh(tmp_path_factory):
    home = tmp_path_factory.mktemp("llmesh-home-tls")
    env = cli_env(home)
    for variable in ("LLMESH_TLS_CA_FILE", "LLMESH_TLS_CERT_FILE", "LLMESH_TLS_KEY_FILE"):
        env.pop(variable, None)
    up = llmesh(env, "up", "--detach", "--tls", "--replicas", "router=2", "--timeout", "240", timeout=320)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield home, env
    finally:
        llmesh(env, "down", timeout=150)


def _health(address: str, settings: TLSSettings | None) -> int:
    channel = tls.blocking_channel(address, settings) if settings else grpc.insecure_channel(address)
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_the_mesh_serves_mutual_tls_and_the_cli_uses_it(tls_mesh):
    home, env = tls_mesh
    state = json.loads((home / "mesh.json").read_text())
    folder = home / "tls"
    assert state["tls"] == {
        "ca_file": str(folder / "ca.crt"),
        "cert_file": str(folder / "cli.crt"),
        "key_file": str(folder / "cli.key"),
        "server_name": "localhost",
    }
    assert state["endpoints"]["router"].startswith("ipv4:127.0.0.1:"), "both router replicas in one target"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in (*SERVICES, "cli", "ca"):
        assert stat.S_IMODE((folder / f"{name}.key").stat().st_mode) == 0o600, name

    # Every service: served to the CLI's certificate, refused in plaintext and without a certificate.
    cli = TLSSettings(
        tls_cert_file=state["tls"]["cert_file"],
        tls_key_file=state["tls"]["key_file"],
        tls_ca_file=state["tls"]["ca_file"],
        tls_server_name=state["tls"]["server_name"],
    )
    anonymous = TLSSettings(tls_ca_file=state["tls"]["ca_file"])
    for name in SERVICES:
        address = state["endpoints"][name]
        assert _health(address, cli) == health_pb2.HealthCheckResponse.SERVING, name
        for settings in (None, anonymous):
            with pytest.raises(grpc.RpcError) as refused:
                _health(address, settings)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name

    status = llmesh(env, "status")
    assert status.returncode == 0, status.stdout + status.stderr

    # The CLI over TLS: a tenant, then an answer through the router, which calls the others over mutual TLS.
    created = llmesh(env, "tenant", "create", unique("tls"))  # the admin token from mesh.json
    assert created.returncode == 0, created.stdout + created.stderr
    api_key = created.stdout.strip().splitlines()[-1]
    answer = llmesh(
        {**env, "LLMESH_API_KEY": api_key}, "chat", "Say hello", "--max-tokens", "4", "--no-cache", timeout=200
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert answer.stdout.strip()
