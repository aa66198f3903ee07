"""Configuration from environment variables, validated at start-up.

A service declares its settings as a frozen dataclass whose fields carry `setting(...)` metadata;
`load_settings` reads and validates them all at once and raises ConfigError naming every bad
variable, and `settings_table` renders the documented table for the README.

A secret setting (`secret=True`) may instead be read from a file named by `<VARIABLE>_FILE`, e.g.
`LLMESH_ADMIN_TOKEN_FILE=/var/run/secrets/llmesh/admin-token`: what a Kubernetes Secret or a Docker
secret mounts, so the value never appears in the process environment. Setting both is an error;
the file's trailing newline is stripped.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(Exception):
    """One or more environment variables are invalid; the message lists each."""


def setting(
    env: str,
    default: Any = dataclasses.MISSING,
    help: str = "",
    check: Callable[[Any], str | None] | None = None,
    secret: bool = False,
) -> Any:
    """A dataclass field read from the environment variable `env`.

    `check` returns an error message for an invalid value, or None.
    """
    meta = {"env": env, "help": help, "check": check, "secret": secret}
    return dataclasses.field(default=default, metadata=meta)


def port_check(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number in 0..65535 (0 picks a free port)"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def redis_url_check(value: str) -> str | None:
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        return "must be empty or a redis://, rediss:// or unix:// URL"
    return None


def one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def parses(parse: Callable[[Any], object]) -> Callable[[Any], str | None]:
    """A check that accepts what `parse` accepts; the ValueError's message names the problem."""

    def check(value: Any) -> str | None:
        try:
            parse(value)
        except ValueError as exc:
            return str(exc)
        return None

    return check


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(raw: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw == "":
            return None
        return _parse(raw, args[0])
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("must be true or false")
    if annotation is int:
        return int(raw)
    if annotation is float:
        return float(raw)
    if origin in (tuple, list):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


FILE_SUFFIX = "_FILE"


def _raw_value(env: str | None, secret: bool, environ: Mapping[str, str]) -> str | None:
    """The text of `env`, for a secret also from the file named by `<env>_FILE`; None when unset.
    Raises ValueError naming the variables or the file when the value cannot be had."""
    if not env:
        return None
    file_env = env + FILE_SUFFIX
    path = environ.get(file_env, "") if secret else ""
    if not path:
        return environ.get(env)
    if env in environ:
        raise ValueError(f"{env} and {file_env} are both set: set one of them")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{file_env}={path!r}: cannot read the file: {reason}") from None


def load_settings(cls: type, environ: Mapping[str, str] | None = None, **overrides: Any):
    """Builds `cls` from the environment; keyword overrides win (used by tests and the launcher).
    A secret setting is also read from the file named by `<VARIABLE>_FILE`."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in dataclasses.fields(cls):
        env = field.metadata.get("env")
        secret = bool(field.metadata.get("secret"))
        raw = None
        if field.name not in overrides:
            try:
                raw = _raw_value(env, secret, environ)
            except ValueError as exc:
                problems.append(str(exc))
                continue
        if field.name in overrides:
            value = overrides[field.name]
        elif raw is not None:
            try:
                value = _parse(raw, hints[field.name])
            except ValueError as exc:
                shown = "<hidden>" if secret else repr(raw)
                problems.append(f"{env}={shown}: {exc}")
                continue
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = field.default_factory()  # type: ignore[misc]
        else:
            problems.append(f"{env}: required but not set")
            continue
        check = field.metadata.get("check")
        if check is not None and value is not None:
            message = check(value)
            if message:
                shown = "<hidden>" if secret else repr(value)
                problems.append(f"{env}={shown}: {message}")
                continue
        values[field.name] = value
    if problems:
        raise ConfigError(f"invalid configuration for {cls.__name__}:\n  " + "\n  ".join(problems))
    return cls(**values)


def settings_table(cls: type) -> str:
    """A markdown table of the variables `cls` reads, for the README."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for field in dataclasses.fields(cls):
        env = field.metadata.get("env")
        if not env:
            continue
        if field.default is dataclasses.MISSING:
            default = "(required)"
        elif field.metadata.get("secret"):
            default = "(none)" if not field.default else "(set)"
        else:
            default = f"`{field.default}`" if field.default not in (None, "", ()) else "(empty)"
        meaning = field.metadata.get("help", "")
        if field.metadata.get("secret"):
            meaning += f" (secret: or from the file named by `{env}{FILE_SUFFIX}`)"
        rows.append(f"| `{env}` | {default} | {meaning} |")
    return "\n".join(rows)


def _region(value: str) -> str:
    """A NATS subject token: letters, digits, '-' and '_'."""
    if not value or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise ValueError("must be non-empty letters, digits, '-' or '_' (it is a NATS subject token)")
    return value


TLS_CLIENT_AUTH = ("none", "require")


@dataclasses.dataclass(frozen=True)
class TLSSettings:
    """TLS between services (docs/adr/0024), read by every service and by every client process
    (the CLI): one certificate per process, served to callers and presented to the services it
    calls. Unset files: plaintext, as on loopback."""

    tls_cert_file: str | None = setting(
        "LLMESH_TLS_CERT_FILE",
        None,
        "PEM certificate (chain) this process serves and presents to the services it calls (mutual TLS); "
        "with LLMESH_TLS_KEY_FILE it turns TLS on for the gRPC port. Reloaded when the file changes",
    )
    tls_key_file: str | None = setting(
        "LLMESH_TLS_KEY_FILE", None, "PEM private key of LLMESH_TLS_CERT_FILE (reloaded with it)"
    )
    tls_ca_file: str | None = setting(
        "LLMESH_TLS_CA_FILE",
        None,
        "PEM CA bundle: the servers this process's channels (and a tls:// NATS connection) trust, and the "
        "client certificates the server accepts; when set, calls to other services use TLS",
    )
    tls_client_auth: str = setting(
        "LLMESH_TLS_CLIENT_AUTH",
        "require",
        "`require`: callers must present a certificate from LLMESH_TLS_CA_FILE (mutual TLS); `none`: server TLS only",
        one_of(*TLS_CLIENT_AUTH),
    )
    tls_server_name: str | None = setting(
        "LLMESH_TLS_SERVER_NAME",
        None,
        "name the servers' certificates are checked against instead of the target's host "
        "(for `ipv4:` targets or addresses not in the certificate); unset, an `ipv4:` list of several "
        "addresses is checked against their one host, and one over several hosts is refused",
    )

    def __post_init__(self) -> None:
        problems = []
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append("LLMESH_TLS_CERT_FILE and LLMESH_TLS_KEY_FILE: set both or neither")
        if self.tls_cert_file and self.tls_client_auth == "require" and not self.tls_ca_file:
            problems.append(
                "LLMESH_TLS_CLIENT_AUTH=require: needs LLMESH_TLS_CA_FILE (the CA of the callers' certificates)"
            )
        if problems:
            raise ConfigError(f"invalid configuration for {type(self).__name__}:\n  " + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class _CoreSettings:
    """What every service reads besides TLS."""

    host: str = setting("LLMESH_HOST", "127.0.0.1", "address the gRPC server binds")
    port: int = setting("LLMESH_PORT", 0, "gRPC port (0 picks a free one)", port_check)
    metrics_port: int = setting("LLMESH_METRICS_PORT", 0, "Prometheus /metrics port (0 picks a free one)", port_check)
    log_level: str = setting(
        "LLMESH_LOG_LEVEL", "info", "debug, info, warning or error", one_of("debug", "info", "warning", "error")
    )
    grace_s: float = setting("LLMESH_GRACE_S", 10.0, "seconds in-flight calls get to finish on SIGTERM", non_negative)
    event_loop: str = setting(
        "LLMESH_EVENT_LOOP",
        "uvloop",
        "the process's event loop: `uvloop` (less CPU per call; plain asyncio where uvloop is not installed) or `asyncio`",
        one_of("uvloop", "asyncio"),
    )
    ready_file: str | None = setting(
        "LLMESH_READY_FILE", None, "when set, the service writes its bound ports here (JSON) once SERVING"
    )
    nats_url: str = setting(
        "LLMESH_NATS_URL",
        "nats://127.0.0.1:4222",
        "NATS server(s), comma-separated; `tls://` ones over TLS with LLMESH_TLS_CA_FILE and the process's certificate",
    )
    region: str = setting(
        "LLMESH_REGION", "local", "region this instance runs in (NATS subjects, model catalog)", parses(_region)
    )
    # Service identity (docs/adr/0023): who this service is, and whom it believes.
    identity_credential_file: str = setting(
        "LLMESH_IDENTITY_CREDENTIAL_FILE",
        "",
        "this service's signed credential, sent on every call it makes (`llmesh up` writes one per service)",
    )
    identity_trust_file: str = setting(
        "LLMESH_IDENTITY_TRUST_FILE",
        "",
        "the issuers' public keys (JSON) that callers' credentials and tenant tokens are checked against",
    )
    identity_insecure_anonymous: bool = setting(
        "LLMESH_IDENTITY_INSECURE_ANONYMOUS",
        False,
        "development only: without credential and trust files, answer every caller (no identity checks)",
    )


@dataclasses.dataclass(frozen=True)
class ServerSettings(TLSSettings, _CoreSettings):
    """What every service reads (its own settings, then TLS). Subclasses add their own fields (all
    with defaults)."""
