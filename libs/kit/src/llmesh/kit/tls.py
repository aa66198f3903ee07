"""TLS and mutual TLS between services (docs/adr/0024), from PEM files that are reloaded when they
change: what a cert-manager Secret mounted as a volume, or `llmesh up --tls`, provides.

- Server: `server_credentials` gives grpc's dynamic SSL credentials; their fetcher runs at each new
  handshake and hands grpc a new certificate configuration once the files changed (and parse, and
  the key matches the certificate). Connections already open keep the certificate they shook
  hands with; new ones get the new one, without a restart.
- Client: `open_tls_channel` gives a channel that re-opens its underlying secure channel when the
  files change (grpc has no dynamic channel credentials); calls in flight on the old one get
  `RETIRE_GRACE_S` to finish.
- NATS: `ssl_context` for a `tls://` NATS URL.
- `llmesh_tls_certificate_expiry_timestamp_seconds{service}`: the expiry of the certificate a
  server serves now, behind the CertificateExpiringSoon/Imminent alerts.
- `make_ca` / `issue_certificate`: a private CA and its certificates (the launcher, tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import os
import pathlib
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from llmesh.kit.config import ConfigError, TLSSettings, load_settings
from llmesh.kit.logging import get_logger
from prometheus_client import Counter, Gauge

log = get_logger("llmesh.tls")

REQUIRE = "require"
#: seconds the calls on a client channel that was re-opened for new certificates get to finish
RETIRE_GRACE_S = 60.0
#: how often a client channel looks at its files' modification times (at most)
CHECK_INTERVAL_S = 1.0

CERT_EXPIRY = Gauge(
    "llmesh_tls_certificate_expiry_timestamp_seconds",
    "Expiry (not-after, epoch seconds) of the TLS certificate this service serves now",
    ["service"],
)
CERT_RELOADS = Counter(
    "llmesh_tls_certificate_reloads_total",
    "Certificate files that changed and were loaded (ok) or could not be (failed: the previous ones stay)",
    ["service", "result"],
)


class TLSError(ValueError):
    """Certificate files that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Material:
    """The PEM bytes of one process's TLS identity and trust, as read together."""

    certificate_chain: bytes | None
    private_key: bytes | None
    root_certificates: bytes | None
    #: the leaf certificate's not-after (epoch seconds) and serial number, when there is one
    not_after: float | None = None
    serial: int | None = None


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    return pathlib.Path(path).read_bytes()


def load_material(cert_file: str | None, key_file: str | None, ca_file: str | None) -> Material:
    """Reads and checks the files: each parses as PEM, the key is the certificate's. Raises
    TLSError (or OSError when a file cannot be read)."""
    chain, key, roots = _read(cert_file), _read(key_file), _read(ca_file)
    not_after = serial = None
    if chain is not None:
        try:
            leaf = x509.load_pem_x509_certificates(chain)[0]
        except ValueError as exc:
            raise TLSError(f"{cert_file}: not a PEM certificate ({exc})") from None
        if key is None:
            raise TLSError(f"{cert_file}: no private key for it")
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:
            raise TLSError(f"{key_file}: not an unencrypted PEM private key ({exc})") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        pem = serialization.Encoding.PEM
        if private.public_key().public_bytes(pem, spki) != leaf.public_key().public_bytes(pem, spki):
            raise TLSError(f"{key_file}: not the key of {cert_file} (a rotation half done?)")
        not_after = leaf.not_valid_after_utc.timestamp()
        serial = leaf.serial_number
    if roots is not None:
        try:
            x509.load_pem_x509_certificates(roots)
        except ValueError as exc:
            raise TLSError(f"{ca_file}: not a PEM CA bundle ({exc})") from None
    return Material(chain, key, roots, not_after, serial)


class FileWatch:
    """Tells whether files changed since the last look: modification time, size and inode of
    each (a Kubernetes Secret volume swaps a symlinked directory, so the inode changes too)."""

    def __init__(self, paths: Iterable[str | None]):
        self.paths = [p for p in paths if p]
        self._seen = self._stamp()

    def _stamp(self) -> tuple | None:
        try:
            return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in map(os.stat, self.paths))
        except OSError:
            return None

    def changed(self) -> bool:
        """True once per change (the next call is False until the files change again)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return True

    def forget(self) -> None:
        """Makes the next `changed` true (to retry files that did not load)."""
        self._seen = None


class ServerCertificates:
    """The certificate a server serves, reloaded by grpc's fetcher when its files change."""

    def __init__(self, settings: TLSSettings, service: str):
        self.settings = settings
        self.service = service
        self._watch = FileWatch([settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file])
        try:
            self.material = self._load()
        except (OSError, TLSError) as exc:
            raise ConfigError(f"TLS for {service}: {exc}") from None
        self._publish()

    def _load(self) -> Material:
        s = self.settings
        return load_material(s.tls_cert_file, s.tls_key_file, s.tls_ca_file)

    def _publish(self) -> None:
        if self.material.not_after is not None:
            CERT_EXPIRY.labels(self.service).set(self.material.not_after)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        m = self.material
        return grpc.ssl_server_certificate_configuration(
            [(m.private_key, m.certificate_chain)], root_certificates=m.root_certificates
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's certificate configuration fetcher: None keeps the current configuration."""
        try:
            if not self._watch.changed():
                return None
            try:
                material = self._load()
            except (OSError, TLSError) as exc:
                # A rotation written file by file can be seen half done: keep serving the old
                # certificate and look again at the next handshake.
                self._watch.forget()
                CERT_RELOADS.labels(self.service, "failed").inc()
                log.warning("tls_reload_failed", error=str(exc))
                return None
            self.material = material
            self._publish()
            CERT_RELOADS.labels(self.service, "ok").inc()
            log.info("tls_reloaded", serial=f"{material.serial:x}", not_after=material.not_after)
            return self.configuration()
        except Exception as exc:  # never into grpc's core: it would fail the handshake
            log.error("tls_fetcher_failed", error=repr(exc))
            return None


def server_credentials(settings: TLSSettings, service: str) -> grpc.ServerCredentials | None:
    """TLS credentials for a service's gRPC port, reloaded when the files change; None when
    LLMESH_TLS_CERT_FILE is not set (plaintext). Raises ConfigError for files that cannot be used."""
    if not settings.tls_cert_file:
        return None
    certificates = ServerCertificates(settings, service)
    return grpc.dynamic_ssl_server_credentials(
        certificates.configuration(),
        certificates,
        require_client_authentication=settings.tls_client_auth == REQUIRE,
    )


def client_settings(environ: Mapping[str, str] | None = None) -> TLSSettings | None:
    """The TLS settings of this process's client side (the same LLMESH_TLS_* variables a
    service reads); None when LLMESH_TLS_CA_FILE is not set (plaintext channels)."""
    settings = load_settings(TLSSettings, environ)
    return settings if settings.tls_ca_file else None


def channel_credentials(settings: TLSSettings) -> grpc.ChannelCredentials:
    m = load_material(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    return grpc.ssl_channel_credentials(
        root_certificates=m.root_certificates, private_key=m.private_key, certificate_chain=m.certificate_chain
    )


def ssl_context(settings: TLSSettings) -> ssl.SSLContext:
    """A client context trusting LLMESH_TLS_CA_FILE and presenting LLMESH_TLS_CERT_FILE (NATS)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca_file)
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def _address_hosts(target: str) -> list[str] | None:
    """The hosts of an `ipv4:` or `ipv6:` target of several addresses (`ipv4:h:p,h:p`,
    `ipv6:[h]:p,[h]:p`, with or without `///`), else None."""
    scheme, _, rest = target.partition(":")
    if scheme not in ("ipv4", "ipv6") or "," not in rest:
        return None
    hosts = []
    for address in rest.removeprefix("///").split(","):
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
        hosts.append(host.strip("[]"))
    return hosts


def server_name(target: str, settings: TLSSettings) -> str | None:
    """The name the certificates of `target`'s servers are checked against, where it is not the
    target's own host: LLMESH_TLS_SERVER_NAME when set. Else, for an `ipv4:`/`ipv6:` list of several
    addresses (replicas, docs/adr/0034), which grpc would check as one host name that no certificate
    carries: their host when they share one (what a target of one of them is checked against);
    addresses on several hosts need LLMESH_TLS_SERVER_NAME (ConfigError), not one host's name
    checked against the others' certificates. None: grpc checks the target's host."""
    if settings.tls_server_name:
        return settings.tls_server_name
    hosts = _address_hosts(target)
    if hosts is None:
        return None
    if len(set(hosts)) == 1:
        return hosts[0]
    raise ConfigError(
        f"TLS for channel to {target}: its addresses are on several hosts, so there is no one name to check "
        "their certificates against; set LLMESH_TLS_SERVER_NAME to a name (DNS SAN) the certificates carry"
    )


def _name_options(target: str, settings: TLSSettings) -> list[tuple[str, Any]]:
    name = server_name(target, settings)
    return [("grpc.ssl_target_name_override", name)] if name else []


def blocking_channel(target: str, settings: TLSSettings | None = None) -> grpc.Channel:
    """A synchronous channel (the CLI, the launcher's and the container's health checks): TLS
    when `settings`, else the process's LLMESH_TLS_* variables, name a CA file; else plaintext.
    Short-lived, so it reads the files once."""
    settings = settings if settings is not None else client_settings()
    if settings is None or not settings.tls_ca_file:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, channel_credentials(settings), options=_name_options(target, settings))


class _MultiCallable:
    """A stub's handle on one RPC of a ReloadingChannel: each call goes to the channel open now."""

    def __init__(self, owner: ReloadingChannel, kind: str, method: str, kwargs: dict[str, Any]):
        self._owner, self._kind, self._method, self._kwargs = owner, kind, method, kwargs
        self._cached: tuple[grpc.aio.Channel, Any] | None = None

    def __call__(self, *args, **kwargs):
        channel = self._owner.current()
        if self._cached is None or self._cached[0] is not channel:
            self._cached = (channel, getattr(channel, self._kind)(self._method, **self._kwargs))
        return self._cached[1](*args, **kwargs)


class ReloadingChannel(grpc.aio.Channel):
    """A TLS channel whose certificates follow their files: once they change (looked at no more
    than every CHECK_INTERVAL_S, when a call starts), the next call opens a new secure channel with
    the new files; the old one closes after its calls had RETIRE_GRACE_S to finish."""

    def __init__(self, settings: TLSSettings, open_with: Callable[[grpc.ChannelCredentials], grpc.aio.Channel]):
        self._settings = settings
        self._open_with = open_with
        self._watch = FileWatch([settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file])
        self._channel = open_with(channel_credentials(settings))
        self._checked_at = time.monotonic()
        self._retiring: set[asyncio.Task] = set()
        self.reopened = 0

    def current(self) -> grpc.aio.Channel:
        now = time.monotonic()
        if now - self._checked_at >= CHECK_INTERVAL_S:
            self._checked_at = now
            if self._watch.changed():
                self._reopen()
        return self._channel

    def _reopen(self) -> None:
        try:
            credentials = channel_credentials(self._settings)
        except (OSError, TLSError) as exc:
            self._watch.forget()
            log.warning("tls_client_reload_failed", error=str(exc))
            return
        old, self._channel = self._channel, self._open_with(credentials)
        self.reopened += 1
        task = asyncio.get_running_loop().create_task(old.close(RETIRE_GRACE_S))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.info("tls_client_reloaded")

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _MultiCallable(
            self,
            "unary_unary",
            method,
            {"request_serializer": request_serializer, "response_deserializer": response_deserializer},
        )

    def unary_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _MultiCallable(
            self,
            "unary_stream",
            method,
            {"request_serializer": request_serializer, "response_deserializer": response_deserializer},
        )

    def stream_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _MultiCallable(
            self,
            "stream_unary",
            method,
            {"request_serializer": request_serializer, "response_deserializer": response_deserializer},
        )

    def stream_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _MultiCallable(
            self,
            "stream_stream",
            method,
            {"request_serializer": request_serializer, "response_deserializer": response_deserializer},
        )

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, exc_type, exc_val, exc_tb) -> None:
        await self.close(None)


def open_tls_channel(
    target: str, settings: TLSSettings, *, options: list[tuple[str, Any]], interceptors: list
) -> ReloadingChannel:
    """A secure channel to `target` that re-opens when the certificate files change; the servers'
    certificates are checked against `server_name(target, settings)` where there is one."""
    options = [*options, *_name_options(target, settings)]

    def open_with(credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)

    try:
        return ReloadingChannel(settings, open_with)
    except (OSError, TLSError) as exc:
        raise ConfigError(f"TLS for channel to {target}: {exc}") from None


# --- a private CA and its certificates (the local launcher, tests) ---


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str = "llmesh local CA", *, valid_days: int = 365) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a new self-signed CA (EC P-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue_certificate(
    ca_cert: bytes,
    ca_key: bytes,
    common_name: str,
    *,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    valid_days: float = 90,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) signed by the CA, good as a server and as a client certificate
    (a service both serves and calls), for the given DNS names and IP addresses."""
    issuer = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def write_pem(path: pathlib.Path, data: bytes, *, private: bool = False) -> None:
    """Writes `path` whole at once (a reader never sees half a file); keys readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def certificate_serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificates(pem)[0].serial_number
