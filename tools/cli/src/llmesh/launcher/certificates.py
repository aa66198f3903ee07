"""`llmesh up --tls` (or LLMESH_UP_TLS=1): mutual TLS on the local mesh (docs/adr/0024). A private
CA and one certificate per service, and one for the CLI, under $LLMESH_HOME/tls (the folder and
the keys readable by the owner only). The CA is kept from one `up` to the next while it has more
than CA_RENEW_DAYS to live; the service certificates are issued anew at each `up`, for localhost
and 127.0.0.1, where the services listen. Every channel checks the certificates against
SERVER_NAME (LLMESH_TLS_SERVER_NAME): a replicated service's target, `ipv4:127.0.0.1:p1,127.0.0.1:p2`,
has no host name of its own (docs/adr/0024, 0034). mesh.json names the CA, the CLI's certificate
and that name, which the `llmesh` commands then use. NATS and the model servers stay plaintext on
loopback."""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib

from cryptography import x509
from llmesh.kit import tls
from llmesh.kit.defaults import SERVICES

TLS_VARIABLE = "LLMESH_UP_TLS"
CLIENT = "cli"
CA_VALID_DAYS = 365
CA_RENEW_DAYS = 30
CERT_VALID_DAYS = 30
#: the name every certificate carries (with 127.0.0.1) and every channel checks
SERVER_NAME = "localhost"


def tls_requested() -> bool:
    return os.environ.get(TLS_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class MeshTLS:
    folder: pathlib.Path

    @property
    def ca_file(self) -> pathlib.Path:
        return self.folder / "ca.crt"

    def files(self, name: str) -> dict[str, str]:
        """The LLMESH_TLS_* variables of a service (or of the CLI: `CLIENT`)."""
        return {
            "LLMESH_TLS_CERT_FILE": str(self.folder / f"{name}.crt"),
            "LLMESH_TLS_KEY_FILE": str(self.folder / f"{name}.key"),
            "LLMESH_TLS_CA_FILE": str(self.ca_file),
            "LLMESH_TLS_CLIENT_AUTH": "require",
            "LLMESH_TLS_SERVER_NAME": SERVER_NAME,
        }

    def record(self) -> dict[str, str]:
        """What mesh.json keeps: the CA, the CLI's certificate, the name the servers' are checked against."""
        client = self.files(CLIENT)
        return {
            "ca_file": client["LLMESH_TLS_CA_FILE"],
            "cert_file": client["LLMESH_TLS_CERT_FILE"],
            "key_file": client["LLMESH_TLS_KEY_FILE"],
            "server_name": client["LLMESH_TLS_SERVER_NAME"],
        }


def _usable_ca(folder: pathlib.Path) -> tuple[bytes, bytes] | None:
    try:
        cert, key = (folder / "ca.crt").read_bytes(), (folder / "ca.key").read_bytes()
        expires = x509.load_pem_x509_certificate(cert).not_valid_after_utc
    except (OSError, ValueError):
        return None
    left = expires - datetime.datetime.now(datetime.UTC)
    return (cert, key) if left > datetime.timedelta(days=CA_RENEW_DAYS) else None


def prepare(home: pathlib.Path) -> MeshTLS:
    """Makes (or keeps) the CA and issues the services' and the CLI's certificates."""
    folder = home / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca = _usable_ca(folder)
    if ca is None:
        ca = tls.make_ca("llmesh local mesh CA", valid_days=CA_VALID_DAYS)
        tls.write_pem(folder / "ca.key", ca[1], private=True)
        tls.write_pem(folder / "ca.crt", ca[0])
    for name in (*SERVICES, CLIENT):
        cert, key = tls.issue_certificate(
            *ca, name, dns_names=[SERVER_NAME], ip_addresses=["127.0.0.1"], valid_days=CERT_VALID_DAYS
        )
        tls.write_pem(folder / f"{name}.key", key, private=True)
        tls.write_pem(folder / f"{name}.crt", cert)
    return MeshTLS(folder)
