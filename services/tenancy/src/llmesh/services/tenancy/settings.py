"""Tenancy configuration from the environment."""

from __future__ import annotations

import dataclasses
import pathlib

from llmesh.kit.auth import admin_token_setting
from llmesh.kit.config import ServerSettings, port_check, positive, setting
from llmesh.kit.defaults import DEFAULT_PORTS, home


def _database_url_check(value: str) -> str | None:
    if "://" in value and not value.startswith(("postgresql://", "postgres://", "sqlite:///")):
        return "must be postgresql://..., sqlite:///path or a file path"
    return None


@dataclasses.dataclass(frozen=True)
class TenancySettings(ServerSettings):
    port: int = setting("LLMESH_PORT", DEFAULT_PORTS["tenancy"], "gRPC port (0 picks a free one)", port_check)
    db_path: str = setting(
        "LLMESH_TENANCY_DB_PATH",
        "",
        "SQLite database file when no database URL is set (empty: `$LLMESH_HOME/tenancy.db`)",
    )
    database_url: str = setting(
        "LLMESH_TENANCY_DATABASE_URL",
        "",
        "the store: `postgresql://user:password@host:port/db` (production) or a SQLite path; empty: SQLite at "
        "`LLMESH_TENANCY_DB_PATH`",
        _database_url_check,
        secret=True,
    )
    db_pool_size: int = setting(
        "LLMESH_TENANCY_DB_POOL_SIZE", 10, "most PostgreSQL connections of this replica's pool", positive
    )
    admin_token: str = admin_token_setting(
        "bearer token of the admin RPCs (tenants, keys), 16+ characters; empty disables them"
    )
    audit_key: str = setting(
        "LLMESH_TENANCY_AUDIT_KEY",
        "",
        "HMAC key (16+ characters) that signs the audit log's checkpoints; empty: no checkpoints (the chain alone)",
        lambda v: None if not v or len(v) >= 16 else "must be empty or at least 16 characters",
        secret=True,
    )
    audit_checkpoint_every: int = setting(
        "LLMESH_TENANCY_AUDIT_CHECKPOINT_EVERY", 100, "entries between signed checkpoints of the audit log", positive
    )
    audit_checkpoint_s: float = setting(
        "LLMESH_TENANCY_AUDIT_CHECKPOINT_S",
        60.0,
        "seconds between periodic signed checkpoints of the audit head",
        positive,
    )
    outbox_retry_s: float = setting(
        "LLMESH_TENANCY_OUTBOX_RETRY_S", 5.0, "seconds between retries of events NATS did not take", positive
    )
    token_key_file: str = setting(
        "LLMESH_TENANCY_TOKEN_KEY_FILE",
        "",
        "the Ed25519 key (JSON, `llmesh up` writes it) that signs the tenant tokens Authenticate hands out",
    )
    token_ttl_s: float = setting(
        "LLMESH_TENANCY_TOKEN_TTL_S",
        300.0,
        "seconds a tenant token stays valid (the router renews it before)",
        positive,
    )

    @property
    def store_url(self) -> str:
        """What the repository opens: the database URL, or else the SQLite file."""
        return self.database_url or str(self.database_path)

    @property
    def database_path(self) -> pathlib.Path:
        # Resolved late so LLMESH_HOME set after import (launcher, tests) is honoured.
        return pathlib.Path(self.db_path) if self.db_path else home() / "tenancy.db"
