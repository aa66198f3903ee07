"""TLS and mutual TLS between services (docs/adr/0024), with a CA each test makes: a client with a
certificate of the mesh's CA is served; one without a certificate, with another CA's, or in
plaintext is refused at the handshake (UNAVAILABLE); the server's certificate files rotate under
a running server (new handshakes see the new serial, a half-written rotation keeps the old one),
and a client channel follows its own files."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import socket
import ssl

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.kit import health_probe, tls
from llmesh.kit.client import open_channel
from llmesh.kit.config import ConfigError, ServerSettings, TLSSettings, load_settings
from llmesh.kit.server import ServiceApp, ServiceHost
from llmesh.kit.testing import assert_eventually, hosted, unique
from prometheus_client import REGISTRY

pytestmark = pytest.mark.timeout(60)


class _App(ServiceApp):
    name = "tlstoy"

    def register(self, server):
        return []


@dataclasses.dataclass
class Identity:
    cert: pathlib.Path
    key: pathlib.Path

    def write(self, pem: tuple[bytes, bytes]) -> int:
        """Rotates the files (certificate first, as a tool writing them one by one would); the new serial."""
        tls.write_pem(self.cert, pem[0])
        tls.write_pem(self.key, pem[1], private=True)
        return tls.certificate_serial(pem[0])


class PKI:
    """A CA in `folder`, its certificates, and another CA nobody trusts."""

    def __init__(self, folder: pathlib.Path):
        self.folder = folder
        self.ca_cert, self.ca_key = tls.make_ca("test CA")
        self.ca_file = folder / "ca.crt"
        tls.write_pem(self.ca_file, self.ca_cert)
        self.other_ca = tls.make_ca("another CA")

    def issue(self, name: str, *, other_ca: bool = False, **names) -> tuple[bytes, bytes]:
        ca = self.other_ca if other_ca else (self.ca_cert, self.ca_key)
        names.setdefault("ip_addresses", ["127.0.0.1"])
        return tls.issue_certificate(*ca, name, **names)

    def identity(self, name: str, pem: tuple[bytes, bytes]) -> Identity:
        identity = Identity(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        identity.write(pem)
        return identity

    def server_settings(self, server: Identity, **overrides) -> ServerSettings:
        return load_settings(
            ServerSettings,
            environ={},
            port=0,
            metrics_port=0,
            tls_cert_file=str(server.cert),
            tls_key_file=str(server.key),
            tls_ca_file=str(self.ca_file),
            **overrides,
        )

    def client(self, identity: Identity | None, **overrides) -> TLSSettings:
        files = {"tls_cert_file": str(identity.cert), "tls_key_file": str(identity.key)} if identity else {}
        return load_settings(TLSSettings, environ={}, tls_ca_file=str(self.ca_file), **files, **overrides)


@pytest.fixture
def pki(tmp_path) -> PKI:
    return PKI(tmp_path)


async def _health(target: str, settings: TLSSettings | None) -> int:
    kwargs = {"tls_settings": settings} if settings is not None else {}
    async with open_channel(target, **kwargs) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return response.status


async def _refused(target: str, settings: TLSSettings | None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(target, settings)
    return caught.value


def _served_serial(port: int, client: Identity, ca_file: pathlib.Path) -> int:
    """The serial of the certificate a new TLS handshake with the server gets."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(client.cert), str(client.key))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            der = conn.getpeercert(binary_form=True)
    return tls.certificate_serial(ssl.DER_cert_to_PEM_cert(der).encode())


def _metric(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_mutual_tls_serves_a_client_of_the_ca_and_refuses_the_others(pki):
    server = pki.identity("server", pki.issue("tlstoy"))
    good = pki.identity("client", pki.issue("router"))
    stranger = pki.identity("stranger", pki.issue("router", other_ca=True))
    async with hosted(_App(), pki.server_settings(server)) as host:
        assert await _health(host.address, pki.client(good)) == health_pb2.HealthCheckResponse.SERVING
        # no client certificate, another CA's, plaintext: refused at the handshake
        for settings in (pki.client(None), pki.client(stranger)):
            assert (await _refused(host.address, settings)).code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(host.address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # The health probe of a pod speaks the same TLS when the variables say so.
        environ = {"LLMESH_TLS_CA_FILE": str(pki.ca_file), "LLMESH_TLS_CERT_FILE": str(good.cert)}
        environ["LLMESH_TLS_KEY_FILE"] = str(good.key)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in environ.items():
                patch.setenv(key, value)
            assert await asyncio.to_thread(health_probe.check, host.address) == (True, "SERVING")
            patch.delenv("LLMESH_TLS_CERT_FILE")
            patch.delenv("LLMESH_TLS_KEY_FILE")
            serving, seen = await asyncio.to_thread(health_probe.check, host.address)
            assert not serving and seen.startswith("UNAVAILABLE")


async def test_server_tls_without_client_authentication_serves_a_client_without_certificate(pki):
    server = pki.identity("server", pki.issue("router"))
    async with hosted(_App(), pki.server_settings(server, tls_client_auth="none")) as host:
        assert await _health(host.address, pki.client(None)) == health_pb2.HealthCheckResponse.SERVING
        # still TLS: a client that trusts another CA does not accept the server
        other_ca = pki.folder / "other-ca.crt"
        tls.write_pem(other_ca, pki.other_ca[0])
        distrustful = dataclasses.replace(pki.client(None), tls_ca_file=str(other_ca))
        assert (await _refused(host.address, distrustful)).code() == grpc.StatusCode.UNAVAILABLE


async def test_the_server_name_is_checked_and_can_be_overridden(pki):
    # A certificate for the Service's name only, dialed by address (an ipv4: target, a pod IP).
    server = pki.identity("server", pki.issue("cache", dns_names=["cache"], ip_addresses=[]))
    client = pki.identity("client", pki.issue("router"))
    async with hosted(_App(), pki.server_settings(server)) as host:
        assert (await _refused(host.address, pki.client(client))).code() == grpc.StatusCode.UNAVAILABLE
        named = pki.client(client, tls_server_name="cache")
        assert await _health(f"ipv4:{host.address}", named) == health_pb2.HealthCheckResponse.SERVING


async def test_rotated_server_certificate_is_served_to_new_connections_without_a_restart(pki):
    first = pki.issue("tlstoy", valid_days=30)
    server = pki.identity("server", first)
    client = pki.identity("client", pki.issue("router"))
    async with hosted(_App(), pki.server_settings(server)) as host:
        first_serial = tls.certificate_serial(first[0])
        assert await asyncio.to_thread(_served_serial, host.port, client, pki.ca_file) == first_serial
        expiry = _metric("llmesh_tls_certificate_expiry_timestamp_seconds", service="tlstoy")
        assert expiry == pytest.approx(tls.load_material(str(server.cert), str(server.key), None).not_after)
        async with open_channel(host.address, tls_settings=pki.client(client)) as before:
            stub = health_pb2_grpc.HealthStub(before)
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)

            # Half a rotation (the new certificate, the old key): the old certificate stays.
            failed = _metric("llmesh_tls_certificate_reloads_total", service="tlstoy", result="failed") or 0
            second = pki.issue("tlstoy", valid_days=60)
            tls.write_pem(server.cert, second[0])
            assert await asyncio.to_thread(_served_serial, host.port, client, pki.ca_file) == first_serial
            assert _metric("llmesh_tls_certificate_reloads_total", service="tlstoy", result="failed") == failed + 1

            # The key follows: the next handshake gets the new certificate.
            second_serial = server.write(second)
            assert second_serial != first_serial
            assert await asyncio.to_thread(_served_serial, host.port, client, pki.ca_file) == second_serial
            assert await _health(host.address, pki.client(client)) == health_pb2.HealthCheckResponse.SERVING
            new_expiry = _metric("llmesh_tls_certificate_expiry_timestamp_seconds", service="tlstoy")
            assert new_expiry == pytest.approx(expiry + 30 * 86400, abs=60)
            # A connection made before the rotation goes on.
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_client_channel_follows_its_certificate_files(pki, monkeypatch):
    monkeypatch.setattr(tls, "CHECK_INTERVAL_S", 0.0)
    server = pki.identity("server", pki.issue("tlstoy"))
    client = pki.identity("client", pki.issue("router", other_ca=True))  # not yet the mesh's
    async with hosted(_App(), pki.server_settings(server)) as host:
        async with open_channel(host.address, tls_settings=pki.client(client)) as channel:
            assert isinstance(channel, tls.ReloadingChannel)
            stub = health_pb2_grpc.HealthStub(channel)  # made once, as a service makes its stubs
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            client.write(pki.issue("router"))

            async def served() -> bool:
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                return response.status == health_pb2.HealthCheckResponse.SERVING

            await assert_eventually(served, timeout_s=20, message="the channel re-opened with the new certificate")
            assert channel.reopened == 1


def test_tls_settings_that_cannot_work_are_refused_at_start(pki, tmp_path):
    with pytest.raises(ConfigError, match="set both or neither"):
        load_settings(ServerSettings, environ={"LLMESH_TLS_CERT_FILE": "/x.crt"})
    with pytest.raises(ConfigError, match="needs LLMESH_TLS_CA_FILE"):
        load_settings(ServerSettings, environ={"LLMESH_TLS_CERT_FILE": "/x.crt", "LLMESH_TLS_KEY_FILE": "/x.key"})
    with pytest.raises(ConfigError, match="must be one of none, require"):
        load_settings(ServerSettings, environ={"LLMESH_TLS_CLIENT_AUTH": "optional"})
    # plaintext unless a CA is named
    assert tls.client_settings({}) is None
    assert tls.client_settings({"LLMESH_TLS_CA_FILE": str(pki.ca_file)}).tls_ca_file == str(pki.ca_file)
    # A key that is not the certificate's, and a missing file: the service does not start.
    server = pki.identity("server", pki.issue("tlstoy"))
    other = pki.identity("other", pki.issue("tlstoy"))
    mismatched = dataclasses.replace(pki.server_settings(server), tls_key_file=str(other.key))
    with pytest.raises(ConfigError, match="not the key of"):
        asyncio.run(ServiceHost(_App(), mismatched, serve_metrics=False).start())
    missing = dataclasses.replace(pki.server_settings(server), tls_ca_file=str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match="No such file"):
        tls.server_credentials(missing, "tlstoy")


def test_issued_certificates_serve_and_call_and_keys_are_private(pki):
    cert, key = pki.issue("tenancy", dns_names=["tenancy", "localhost"])
    identity = pki.identity("tenancy", (cert, key))
    assert identity.key.stat().st_mode & 0o777 == 0o600
    material = tls.load_material(str(identity.cert), str(identity.key), str(pki.ca_file))
    assert material.serial == tls.certificate_serial(cert) and material.not_after is not None
    from cryptography import x509

    parsed = x509.load_pem_x509_certificate(cert)
    usages = parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usages} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["tenancy", "localhost"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


async def test_nats_over_tls_with_the_process_certificate(pki, tmp_path, monkeypatch):
    import nats as nats_client
    from llmesh.kit.bus import Bus, nats_tls_context
    from llmesh.kit.nats_server import NatsServerProcess

    server = pki.identity("nats", pki.issue("nats"))
    config = tmp_path / "nats.conf"
    config.write_text(
        f'tls {{ cert_file: "{server.cert}", key_file: "{server.key}", ca_file: "{pki.ca_file}", verify: true }}\n'
    )
    nats = NatsServerProcess(str(tmp_path / "js"), config_file=str(config)).start()
    try:
        url = f"tls://127.0.0.1:{nats.port}"
        monkeypatch.setenv("LLMESH_TLS_CA_FILE", str(pki.ca_file))
        # no certificate of its own: the server (verify: true) refuses it (tried once, not reconnecting)
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await nats_client.connect(
                servers=[url], tls=nats_tls_context([url]), allow_reconnect=False, connect_timeout=2
            )
        client = pki.identity("client", pki.issue("cache"))
        monkeypatch.setenv("LLMESH_TLS_CERT_FILE", str(client.cert))
        monkeypatch.setenv("LLMESH_TLS_KEY_FILE", str(client.key))
        bus = await asyncio.wait_for(Bus.connect(url, "tls-test", connect_timeout_s=2), 20)
        try:
            assert bus.nc.is_connected and bus.nc.connected_url.scheme == "tls"
            reply = await bus.nc.request("$JS.API.INFO", b"", timeout=5)  # JetStream answers over TLS
            assert b"memory" in reply.data
        finally:
            await bus.nc.close()
    finally:
        nats.stop()


class _Replica(ServiceApp):
    """One of two replicas of a service, told apart by its name in the kit's call counter."""

    def __init__(self, name: str):
        self.name = name

    def register(self, server):
        return []


def _handled(service: str) -> float:
    return _metric("llmesh_grpc_requests_total", service=service, method="Check", code="OK") or 0


async def test_a_multi_address_target_over_tls_is_checked_against_the_configured_name(pki):
    # Two replicas behind one `ipv4:a,b` target, as `llmesh up --replicas` gives their callers: the
    # list has no host name, so the certificates are checked against LLMESH_TLS_SERVER_NAME.
    server = pki.identity("server", pki.issue("cache", dns_names=["localhost"], ip_addresses=["127.0.0.1"]))
    client = pki.identity("client", pki.issue("router"))
    names = [f"tlsreplica-{unique('r')}" for _ in range(2)]
    async with hosted(_Replica(names[0]), pki.server_settings(server)) as a:
        async with hosted(_Replica(names[1]), pki.server_settings(server)) as b:
            target = f"ipv4:{a.address},{b.address}"
            before = [_handled(n) for n in names]
            async with open_channel(target, tls_settings=pki.client(client, tls_server_name="localhost")) as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def both_replicas_answer() -> bool:
                    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    assert response.status == health_pb2.HealthCheckResponse.SERVING
                    return all(_handled(n) > seen for n, seen in zip(names, before, strict=True))

                await assert_eventually(both_replicas_answer, timeout_s=20, message="round robin over both")
            # A name the certificates do not carry is refused at the handshake.
            stranger = pki.client(client, tls_server_name="not-the-cache")
            assert (await _refused(target, stranger)).code() == grpc.StatusCode.UNAVAILABLE
            # Without one, the addresses' shared host (what a target of one of them is checked against).
            assert await _health(target, pki.client(client)) == health_pb2.HealthCheckResponse.SERVING
            assert tls.server_name(target, pki.client(client)) == "127.0.0.1"


def test_the_name_a_multi_address_target_is_checked_against(pki):
    plain, named = pki.client(None), pki.client(None, tls_server_name="inference")
    assert tls.server_name("127.0.0.1:5000", plain) is None  # grpc checks the target's host
    assert tls.server_name("inference:5000", named) == "inference"
    assert tls.server_name("ipv4:127.0.0.1:5000,127.0.0.1:5001", plain) == "127.0.0.1"
    assert tls.server_name("ipv6:///[::1]:5000,[::1]:5001", plain) == "::1"
    assert tls.server_name("ipv4:10.0.0.1:5000,10.0.0.2:5000", named) == "inference"
    # Pods on several hosts: no one address to check every certificate against.
    with pytest.raises(ConfigError, match="LLMESH_TLS_SERVER_NAME"):
        open_channel("ipv4:10.0.0.1:5000,10.0.0.2:5000", tls_settings=plain)
    with pytest.raises(ConfigError, match="LLMESH_TLS_SERVER_NAME"):
        tls.blocking_channel("ipv4:10.0.0.1:5000,10.0.0.2:5000", plain)
