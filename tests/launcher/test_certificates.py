"""`llmesh up --tls` without a mesh: the CA and certificates under $LLMESH_HOME/tls (private keys,
the CA kept while it is good, renewed when it is not), what mesh.json records, and how the CLI
takes the mesh's certificates (never over variables already set, never into `llmesh up`)."""

from __future__ import annotations

import asyncio
import datetime
import stat

import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.kit import tls
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, TLSSettings, load_settings
from llmesh.kit.server import ServiceApp
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.launcher import certificates
from llmesh.launcher import state as mesh_state
from llmesh.launcher.state import SERVICES
from prometheus_client import REGISTRY

pytestmark = pytest.mark.timeout(60)

TLS_VARIABLES = ("LLMESH_TLS_CA_FILE", "LLMESH_TLS_CERT_FILE", "LLMESH_TLS_KEY_FILE", "LLMESH_TLS_SERVER_NAME")


@pytest.fixture
def no_tls_env(monkeypatch, tmp_path):
    """No LLMESH_TLS_* variables, and whatever the test's code sets in os.environ undone after it."""
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    for variable in TLS_VARIABLES:
        monkeypatch.setenv(variable, "")  # recorded, so the teardown restores the original
        monkeypatch.delenv(variable)


def test_prepare_makes_a_ca_and_a_certificate_per_service_and_for_the_cli(tmp_path):
    mesh = certificates.prepare(tmp_path)
    folder = tmp_path / "tls"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    ca = (folder / "ca.crt").read_bytes()
    for name in (*SERVICES, certificates.CLIENT):
        files = mesh.files(name)
        assert stat.S_IMODE((folder / f"{name}.key").stat().st_mode) == 0o600, name
        material = tls.load_material(files["LLMESH_TLS_CERT_FILE"], files["LLMESH_TLS_KEY_FILE"], str(mesh.ca_file))
        cert = x509.load_pem_x509_certificate(material.certificate_chain)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["localhost"]
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert files["LLMESH_TLS_CLIENT_AUTH"] == "require"
        assert files["LLMESH_TLS_SERVER_NAME"] == "localhost"
    assert mesh.record() == {
        "ca_file": str(folder / "ca.crt"),
        "cert_file": str(folder / "cli.crt"),
        "key_file": str(folder / "cli.key"),
        "server_name": "localhost",
    }


def test_the_ca_is_kept_while_good_and_renewed_before_it_expires(tmp_path):
    certificates.prepare(tmp_path)
    folder = tmp_path / "tls"
    ca = (folder / "ca.crt").read_bytes()
    router = (folder / "router.crt").read_bytes()
    certificates.prepare(tmp_path)
    assert (folder / "ca.crt").read_bytes() == ca  # the CLI's trust survives a restart of the mesh
    assert (folder / "router.crt").read_bytes() != router  # the services' certificates are new
    # A CA with less than CA_RENEW_DAYS left is replaced.
    short = tls.make_ca("short", valid_days=certificates.CA_RENEW_DAYS - 1)
    tls.write_pem(folder / "ca.crt", short[0])
    tls.write_pem(folder / "ca.key", short[1], private=True)
    certificates.prepare(tmp_path)
    renewed = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    left = renewed.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert left > datetime.timedelta(days=certificates.CA_VALID_DAYS - 1)


def test_the_cli_uses_the_mesh_certificates_unless_told_otherwise(tmp_path, monkeypatch, no_tls_env):
    assert not mesh_state.use_mesh_tls()  # no mesh
    mesh_state.save_state(mesh_state.MeshState(endpoints={}))
    assert not mesh_state.use_mesh_tls()  # a plaintext mesh
    record = certificates.prepare(tmp_path).record()
    mesh_state.save_state(mesh_state.MeshState(endpoints={}, tls=record))
    assert mesh_state.load_state().tls == record
    assert mesh_state.use_mesh_tls()
    settings = tls.client_settings()
    assert (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file, settings.tls_server_name) == (
        record["ca_file"],
        record["cert_file"],
        record["key_file"],
        "localhost",
    )
    monkeypatch.setenv("LLMESH_TLS_CA_FILE", "/elsewhere/ca.crt")
    assert not mesh_state.use_mesh_tls()  # what the caller set wins


def test_up_does_not_take_a_stopped_mesh_certificates(tmp_path, monkeypatch, no_tls_env):
    from llmesh.cli import main as cli_main

    mesh_state.save_state(mesh_state.MeshState(endpoints={}, tls=certificates.prepare(tmp_path).record()))
    seen = {}

    def recorder(command: str):
        def run(args) -> int:
            seen[command] = tls.client_settings()
            return 0

        return run

    monkeypatch.setattr("llmesh.cli.mesh.up_command", recorder("up"))
    monkeypatch.setattr("llmesh.cli.mesh.down_command", recorder("down"))
    assert cli_main.main(["up"]) == 0 and seen["up"] is None
    assert cli_main.main(["down"]) == 0 and seen["down"] is not None


class _Replica(ServiceApp):
    """A process of the replicated service, told apart by its name in the kit's call counter."""

    def __init__(self, name: str):
        self.name = name

    def register(self, server):
        return []

    def checks(self) -> float:
        labels = {"service": self.name, "method": "Check", "code": "OK"}
        return REGISTRY.get_sample_value("llmesh_grpc_requests_total", labels) or 0


async def test_the_meshs_certificates_serve_a_replicated_service_over_its_multi_address_target(tmp_path):
    # `llmesh up --tls --replicas router=2`: two processes with the router's certificate and
    # variables, and callers (here the CLI) given the one target naming both.
    mesh = certificates.prepare(tmp_path)
    served = load_settings(ServerSettings, environ=mesh.files("router"), port=0, metrics_port=0)
    cli = load_settings(TLSSettings, environ=mesh.files(certificates.CLIENT))
    replicas = [_Replica(unique("router")), _Replica(unique("router"))]
    async with hosted(replicas[0], served, serve_metrics=False) as first:
        async with hosted(replicas[1], served, serve_metrics=False) as second:
            target = mesh_state.multi_address_target([first.address, second.address])
            assert target.startswith("ipv4:") and "," in target
            async with open_channel(target, tls_settings=cli) as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def both_replicas_answer() -> bool:
                    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    assert response.status == health_pb2.HealthCheckResponse.SERVING
                    return all(r.checks() > 0 for r in replicas)

                await assert_eventually(both_replicas_answer, timeout_s=20, message="round robin over both")

            def blocking() -> int:  # the `llmesh` commands' channel
                with tls.blocking_channel(target, cli) as channel:
                    request = health_pb2.HealthCheckRequest()
                    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status

            assert await asyncio.to_thread(blocking) == health_pb2.HealthCheckResponse.SERVING
