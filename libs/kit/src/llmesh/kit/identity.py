"""Who is calling (docs/adr/0023): service credentials and tenant tokens, Ed25519-signed, verified
locally by every service with public keys only (a verifier cannot mint).

- A service credential names one caller (`svc`: router, edge, ..., or `operator` for the platform
  admin's tools: the CLI, benches, tests). The launcher (or the deploy Secrets) signs one per
  service with the mesh issuer key; each service sends its own on every call
  (`x-llmesh-service`).
- A tenant token says a call acts for one tenant (`tenant`, `key`, `bu`, `clr`). Tenancy signs it
  with its own key when it authenticates an API key; the router forwards it
  (`x-llmesh-tenant-token`) on the calls it makes for that tenant.
- An admin token says its holder has an admin role (`role`: platform_admin, tenant_admin,
  auditor; `tenant` for a tenant admin). Tenancy signs it (IssueAdminToken) for an API key with
  that role; the CLI sends it (`x-llmesh-admin-token`) to other services' admin RPCs, the cache's.
  It is a kind of its own: no verifier takes it for a tenant token or a credential.
- The trust file lists the issuers' public keys and what each may issue: the mesh key issues
  service credentials, tenancy's key tenant and admin tokens, so neither can mint the other's kinds.

Token: `<base64url(canonical JSON claims)>.<base64url(Ed25519 signature of the first part)>`.
Verified tokens are kept in a small bounded LRU (the signature check costs ~50 µs, a hit ~1 µs);
expiry is checked on every use, hit or not.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import dataclasses
import json
import os
import pathlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from llmesh.kit.errors import PermissionDenied, Unauthenticated

SERVICE_METADATA_KEY = "x-llmesh-service"
TENANT_TOKEN_METADATA_KEY = "x-llmesh-tenant-token"
ADMIN_TOKEN_METADATA_KEY = "x-llmesh-admin-token"
AUDIENCE = "llmesh"
SERVICE = "svc"
TENANT = "tenant"
ADMIN = "admin"
KINDS = (SERVICE, TENANT, ADMIN)
# The roles an admin token carries (tenancy's Role values, docs/adr/0016).
PLATFORM_ADMIN = "platform_admin"
TENANT_ADMIN = "tenant_admin"
AUDITOR = "auditor"
OPERATOR = "operator"
SERVICES = ("tenancy", "classifier", "cache", "inference", "router", "edge", OPERATOR)
# Clocks of two machines disagree a little: a token is good this long before `iat` and after `exp`.
CLOCK_SKEW_S = 30.0
MAX_TOKEN_CHARS = 2048
DEFAULT_TENANT_TOKEN_TTL_S = 300.0
DEFAULT_ADMIN_TOKEN_TTL_S = 300.0
DEFAULT_SERVICE_CREDENTIAL_TTL_S = 365 * 86400.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclasses.dataclass(frozen=True)
class Claims:
    """What a verified token says."""

    kind: str  # SERVICE, TENANT or ADMIN
    subject: str  # the service name, or the tenant id ("" in a platform-wide admin token)
    issuer: str  # the key id that signed it
    issued_at: float
    expires_at: float
    key_id: str = ""  # TENANT: the API key the router authenticated
    business_unit: str = ""
    clearance: str = ""
    role: str = ""  # ADMIN: the holder's role


class Signer:
    """An issuer's private key (the launcher's mesh key, tenancy's token key)."""

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey, *, clock: Callable[[], float] = time.time):
        self.key_id = key_id
        self._key = private_key
        self._clock = clock

    @classmethod
    def generate(cls, key_id: str) -> Signer:
        return cls(key_id, Ed25519PrivateKey.generate())

    @property
    def public_key_b64(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _b64(raw)

    def to_json(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return json.dumps({"key_id": self.key_id, "private_key": _b64(raw)})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Signer:
        try:
            data = json.loads(pathlib.Path(path).read_text())
            return cls(data["key_id"], Ed25519PrivateKey.from_private_bytes(_unb64(data["private_key"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a signing key file ({exc})") from None

    def sign(self, kind: str, subject: str, ttl_s: float, **extra: str) -> str:
        now = self._clock()
        claims = {
            "aud": AUDIENCE,
            "typ": kind,
            "sub": subject,
            "iss": self.key_id,
            "iat": int(now),
            "exp": int(now + ttl_s),
            "jti": secrets.token_hex(8),
            **{k: v for k, v in extra.items() if v},
        }
        body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(self._key.sign(body.encode('ascii')))}"

    def service_credential(self, service: str, ttl_s: float = DEFAULT_SERVICE_CREDENTIAL_TTL_S) -> str:
        return self.sign(SERVICE, service, ttl_s)

    def tenant_token(
        self, tenant_id: str, *, key_id: str, business_unit: str = "", clearance: str = "", ttl_s: float
    ) -> str:
        return self.sign(TENANT, tenant_id, ttl_s, key=key_id, bu=business_unit, clr=clearance)

    def admin_token(self, role: str, *, tenant_id: str = "", key_id: str = "", ttl_s: float) -> str:
        """`tenant_id`: the tenant of a tenant admin ("" for the platform-wide roles)."""
        if not role:
            raise ValueError("an admin token needs a role")
        return self.sign(ADMIN, tenant_id, ttl_s, key=key_id, role=role)


@dataclasses.dataclass(frozen=True)
class Issuer:
    key_id: str
    public_key: Ed25519PublicKey
    kinds: frozenset[str]


class Verifier:
    """Checks tokens against the trusted issuers; keeps up to `cache_size` verified tokens."""

    def __init__(self, issuers: Iterable[Issuer], *, cache_size: int = 4096, clock: Callable[[], float] = time.time):
        self._issuers = {i.key_id: i for i in issuers}
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    @classmethod
    def from_trust(cls, trust: Mapping, **kwargs) -> Verifier:
        """From the trust file's content: {"issuers": [{"key_id", "public_key", "issues": [...]}]}."""
        issuers = []
        try:
            for entry in trust["issuers"]:
                kinds = frozenset(entry["issues"])
                if not kinds or not kinds <= set(KINDS):
                    raise ValueError(f"issuer {entry['key_id']!r} issues {sorted(kinds)}: expected some of {KINDS}")
                key = Ed25519PublicKey.from_public_bytes(_unb64(entry["public_key"]))
                issuers.append(Issuer(str(entry["key_id"]), key, kinds))
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"not a trust file ({exc!r})") from None
        if not issuers:
            raise ValueError("the trust file lists no issuer")
        return cls(issuers, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> Verifier:
        try:
            return cls.from_trust(json.loads(pathlib.Path(path).read_text()), **kwargs)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    def verify(self, token: str, kind: str, *, what: str | None = None) -> Claims:
        """The claims of a good token of `kind`; raises Unauthenticated naming what is wrong."""
        what = what or {SERVICE: "service credential", TENANT: "tenant token"}.get(kind, f"{kind} token")
        now = self._clock()
        claims = self._cache.get(token)
        if claims is None:
            claims = self._check_signature(token, what)
            self._cache[token] = claims
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(token)
        if claims.kind != kind:
            raise Unauthenticated(f"the {what} is a {claims.kind} token, not a {kind} one")
        issuer = self._issuers.get(claims.issuer)
        if issuer is None or kind not in issuer.kinds:
            raise Unauthenticated(f"the {what} comes from issuer {claims.issuer!r}, which may not issue {kind} tokens")
        if now > claims.expires_at + CLOCK_SKEW_S:
            raise Unauthenticated(f"the {what} expired {now - claims.expires_at:.0f} s ago")
        if now < claims.issued_at - CLOCK_SKEW_S:
            raise Unauthenticated(f"the {what} is not valid yet (issued in the future)")
        return claims

    def _check_signature(self, token: str, what: str) -> Claims:
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise Unauthenticated(f"malformed {what}")
        body, _, signature = token.partition(".")
        try:
            raw = json.loads(_unb64(body))
            sig = _unb64(signature)
        except (ValueError, binascii.Error):
            raise Unauthenticated(f"malformed {what}") from None
        if not isinstance(raw, dict):
            raise Unauthenticated(f"malformed {what}")
        issuer = self._issuers.get(str(raw.get("iss")))
        if issuer is None:
            raise Unauthenticated(f"the {what} is signed by an unknown key {raw.get('iss')!r}")
        try:
            issuer.public_key.verify(sig, body.encode("ascii"))
        except (InvalidSignature, ValueError):
            raise Unauthenticated(f"the {what}'s signature does not verify") from None
        if raw.get("aud") != AUDIENCE:
            raise Unauthenticated(f"the {what} is for audience {raw.get('aud')!r}, not {AUDIENCE!r}")
        try:
            return Claims(
                kind=str(raw["typ"]),
                subject=str(raw["sub"]),
                issuer=str(raw["iss"]),
                issued_at=float(raw["iat"]),
                expires_at=float(raw["exp"]),
                key_id=str(raw.get("key", "")),
                business_unit=str(raw.get("bu", "")),
                clearance=str(raw.get("clr", "")),
                role=str(raw.get("role", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise Unauthenticated(f"malformed {what}: claims missing") from None


# --- what one process holds ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Identity:
    """This process's credential (sent on every call it makes), the verifier of the calls it
    receives, and, in tenancy, the tenant-token signer."""

    service: str
    credential: str
    verifier: Verifier
    tenant_signer: Signer | None = None

    @classmethod
    def from_files(cls, service: str, credential_file: str, trust_file: str) -> Identity:
        try:
            credential = pathlib.Path(credential_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"{credential_file}: {exc.strerror}") from None
        verifier = Verifier.from_file(trust_file)
        claims = verifier.verify(credential, SERVICE)
        if claims.subject != service:
            raise ValueError(f"{credential_file} is the credential of {claims.subject!r}, not of {service!r}")
        return cls(service, credential, verifier)


_default: Identity | None = None


def set_default(identity: Identity | None) -> None:
    """The identity of channels opened without one (the CLI's operator credential, tests)."""
    global _default
    _default = identity


def default() -> Identity | None:
    return _default


# --- the mesh's keys, as the launcher (and test fixtures) make them -------------------------

MESH_KEY = "mesh-key.json"
TENANCY_KEY = "tenancy-token-key.json"
TRUST = "trust.json"


def credential_file(directory: str | os.PathLike, service: str) -> pathlib.Path:
    return pathlib.Path(directory) / f"{service}.credential"


def _write_private(path: pathlib.Path, text: str) -> None:
    """Written whole or not at all (a service starting meanwhile reads the old file), mode 0600."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# A credential with less than this left is signed again by `provision`.
RESIGN_WITHIN_S = 30 * 86400.0


def provision(
    directory: str | os.PathLike,
    services: Iterable[str] = SERVICES,
    *,
    ttl_s: float = DEFAULT_SERVICE_CREDENTIAL_TTL_S,
) -> pathlib.Path:
    """Makes (once) the mesh issuer key, tenancy's token key, the trust file and a credential per
    service in `directory` (mode 0700, files 0600); returns the directory. Keys and credentials
    already there are kept, unless a credential expires within RESIGN_WITHIN_S."""
    root = pathlib.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    signers = {}
    for name, key_id in ((MESH_KEY, "mesh"), (TENANCY_KEY, "tenancy")):
        path = root / name
        if path.exists():
            signers[name] = Signer.from_file(path)
        else:
            signers[name] = Signer.generate(f"{key_id}-{secrets.token_hex(4)}")
            _write_private(path, signers[name].to_json())
    trust = {
        "issuers": [
            {"key_id": signers[MESH_KEY].key_id, "public_key": signers[MESH_KEY].public_key_b64, "issues": [SERVICE]},
            {
                "key_id": signers[TENANCY_KEY].key_id,
                "public_key": signers[TENANCY_KEY].public_key_b64,
                "issues": [TENANT, ADMIN],
            },
        ]
    }
    trust_text = json.dumps(trust, indent=2)
    trust_path = root / TRUST
    if not trust_path.exists() or trust_path.read_text() != trust_text:
        _write_private(trust_path, trust_text)
    verifier = Verifier.from_trust(trust)
    for service in services:
        path = credential_file(root, service)
        try:
            claims = verifier.verify(path.read_text().strip(), SERVICE)
            if claims.subject == service and claims.expires_at - time.time() > min(RESIGN_WITHIN_S, ttl_s / 2):
                continue
        except (OSError, Unauthenticated):
            pass
        _write_private(path, signers[MESH_KEY].service_credential(service, ttl_s))
    return root


def load_provisioned(directory: str | os.PathLike, service: str) -> Identity:
    """`service`'s identity from a provisioned directory (tenancy's with its token signer)."""
    root = pathlib.Path(directory)
    identity = Identity.from_files(service, str(credential_file(root, service)), str(root / TRUST))
    if service == "tenancy":
        identity = dataclasses.replace(identity, tenant_signer=Signer.from_file(root / TENANCY_KEY))
    return identity


# --- the caller of the call being served, the tenant a call is made for ----------------------


@dataclasses.dataclass(frozen=True)
class Caller:
    service: str | None  # None: no credential (a public RPC, or an admin token's holder)
    tenant: Claims | None = None
    admin: Claims | None = None  # a verified admin token (the methods that take one)

    @property
    def operator(self) -> bool:
        return self.service == OPERATOR


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("llmesh_caller", default=None)
_acting_for: contextvars.ContextVar[str | None] = contextvars.ContextVar("llmesh_tenant_token", default=None)


def current_caller() -> Caller | None:
    """The verified caller of the RPC being served (None where the server checks no identity)."""
    return _caller.get()


def set_caller(caller: Caller | None) -> contextvars.Token:
    return _caller.set(caller)


def act_for(tenant_token: str | None) -> None:
    """Calls made from here on in this task (and tasks it starts) carry `tenant_token`."""
    _acting_for.set(tenant_token or None)


def acting_for() -> str | None:
    return _acting_for.get()


def require_tenant(tenant_id: str, *, what: str = "this entry") -> None:
    """Raises unless the caller may act for `tenant_id`: its tenant token names that tenant (the
    operator credential, the platform admin's, acts for any tenant)."""
    caller = _caller.get()
    if caller is None or caller.operator:
        return
    if caller.tenant is None:
        raise Unauthenticated(f"{caller.service} called without a tenant token: send '{TENANT_TOKEN_METADATA_KEY}'")
    if caller.tenant.subject != tenant_id:
        raise PermissionDenied(f"the tenant token is for another tenant than {what}'s ({tenant_id!r})")


def require_some_tenant() -> str | None:
    """The tenant the call acts for (None for the operator, or with no identity checks); raises
    for a service caller without a tenant token."""
    caller = _caller.get()
    if caller is None or caller.operator:
        return None
    if caller.tenant is None:
        raise Unauthenticated(f"{caller.service} called without a tenant token: send '{TENANT_TOKEN_METADATA_KEY}'")
    return caller.tenant.subject


def tenant_scope() -> str | None:
    """The one tenant the caller may see (None: all of them: no identity checks, or the operator)."""
    caller = _caller.get()
    if caller is None or caller.operator:
        return None
    if caller.tenant is None:
        raise PermissionDenied("only the operator credential sees every tenant: send a tenant token")
    return caller.tenant.subject


def admin_token_claims() -> Claims | None:
    """The verified admin token of the call being served, if it carries one."""
    caller = _caller.get()
    return caller.admin if caller is not None else None


def require_admin(tenant_id: str, *, what: str = "this entry") -> bool:
    """For the admin RPCs that take admin tokens: raises unless an admin token's holder may change
    `tenant_id`'s data (a platform admin any tenant's, a tenant admin its own, an auditor none).
    True when the call carries an admin token (so passed), False when it carries none (the
    operator's credential: the caller applies its older checks)."""
    caller = _caller.get()
    if caller is None or caller.admin is None:
        return False
    role, own = caller.admin.role, caller.admin.subject
    if role == PLATFORM_ADMIN:
        return True
    if role == TENANT_ADMIN:
        if own and own == tenant_id:
            return True
        raise PermissionDenied(
            f"the admin token's role {role!r} (of tenant {own!r}) does not reach tenant {tenant_id!r} ({what})"
        )
    raise PermissionDenied(f"the admin token's role {role or 'none'!r} may not change {what}")


# --- the server side: who may call what -------------------------------------------------------

PUBLIC = frozenset({"*"})
# In a method's callers: it also takes an admin token (x-llmesh-admin-token) in place of a service
# credential; the servicer checks the token's role (require_admin).
ADMIN_TOKEN_HOLDERS = "@admin-token"
PUBLIC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


class Gate:
    """Checks each call's credentials against `callers` ("Service/Method" → the services that may
    call it; PUBLIC: anyone, credentials or not). A method not listed is the operator's only."""

    def __init__(self, identity: Identity, callers: Mapping[str, frozenset[str]]):
        self.identity = identity
        self._callers = dict(callers)

    def admit(self, method: str, metadata) -> Caller:
        """`method` is gRPC's "/package.Service/Method"."""
        name = method.lstrip("/")
        service_name = name.split("/", 1)[0]
        allowed = PUBLIC if service_name in PUBLIC_SERVICES else self._callers.get(name, frozenset({OPERATOR}))
        credential = tenant_token = admin_token = None
        for key, value in metadata or ():
            if key == SERVICE_METADATA_KEY:
                credential = value
            elif key == TENANT_TOKEN_METADATA_KEY:
                tenant_token = value
            elif key == ADMIN_TOKEN_METADATA_KEY:
                admin_token = value
        verifier = self.identity.verifier
        if allowed is PUBLIC:
            # Open to anyone: what a caller presents is neither checked nor used (the router's
            # Generate checks the tenant's API key itself).
            return Caller(None)
        if admin_token is not None and ADMIN_TOKEN_HOLDERS in allowed:
            # The admin token decides, also next to a service credential: its holder asked to act
            # with its role (the operator's tools send their credential on every call).
            return Caller(None, admin=verifier.verify(_text(admin_token), ADMIN))
        if credential is None:
            raise Unauthenticated(f"{name} needs a service credential: send the metadata '{SERVICE_METADATA_KEY}'")
        claims = verifier.verify(_text(credential), SERVICE)
        if claims.subject not in allowed and claims.subject != OPERATOR:
            raise PermissionDenied(
                f"{name} is not open to {claims.subject} (only to {', '.join(sorted(a for a in allowed if a != ADMIN_TOKEN_HOLDERS))})"
            )
        tenant = verifier.verify(_text(tenant_token), TENANT) if tenant_token is not None else None
        return Caller(claims.subject, tenant)


def _text(value: str | bytes) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def main(argv: list[str] | None = None) -> int:
    """`python -m llmesh.kit.identity DIR [--days N]`: provisions DIR (what the deploy Secrets
    are made from: deploy/README.md)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llmesh.kit.identity", description=main.__doc__)
    parser.add_argument("directory")
    parser.add_argument(
        "--days", type=float, default=DEFAULT_SERVICE_CREDENTIAL_TTL_S / 86400, help="credential lifetime"
    )
    args = parser.parse_args(argv)
    directory = provision(args.directory, ttl_s=args.days * 86400)
    print(f"keys, trust.json and a credential per service ({', '.join(SERVICES)}) in {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
