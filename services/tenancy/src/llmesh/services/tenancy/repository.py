"""Tenants, keys and the event outbox in SQL, on SQLite or PostgreSQL (db.py runs each statement
on either). The SQL is plain and portable: BIGINT timestamps in microseconds, TEXT hex for hashes
and payloads, `?` placeholders, no store-only functions. Every multi-row change runs in one
transaction. The schema is owned by the yoyo migrations in `migrations/` (a migration is added,
never edited).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llmesh.kit.errors import AlreadyExists
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.tenancy.db import Database, Session, UniqueViolation, migrate, open_database
from llmesh.services.tenancy.keys import StoredSecret
from llmesh.services.tenancy.models import ApiKey, AuditEntry, Checkpoint, Role, Tenant


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event recorded in the same transaction as the change it reports, published afterwards."""

    event_id: str
    subject: str
    event_type: str
    payload: bytes
    created_at_us: int


@dataclass(frozen=True, slots=True)
class Credentials:
    key: ApiKey
    secret: StoredSecret
    tenant: Tenant


_TENANT_COLUMNS = "tenant_id, name, business_unit, clearance, created_at_us"
_KEY_COLUMNS = "key_id, tenant_id, label, created_at_us, revoked_at_us, role, expires_at_us"
_KEY_WIDTH = 7
_AUDIT_COLUMNS = "seq, at_us, actor, action, tenant_id, target, detail_json, prev_hash, entry_hash"

_USAGE_FIELDS = (
    "request_id",
    "tenant_id",
    "business_unit",
    "use_case",
    "key_id",
    "model",
    "tier",
    "backend",
    "region",
    "cache_outcome",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cost_avoided_usd",
    "occurred_at_us",
)
_USAGE_COLUMNS = ", ".join(_USAGE_FIELDS)
# Rows of one INSERT: 17 parameters each stay far below SQLite's and PostgreSQL's limits.
_USAGE_ROWS_PER_STATEMENT = 256


def _tenant(row) -> Tenant:
    return Tenant(row[0], row[1], row[2], Sensitivity[row[3]], row[4])


def _key(row) -> ApiKey:
    return ApiKey(row[0], row[1], row[2], row[3], row[4], Role(row[5]), row[6])


class AuditBuild(Protocol):
    """Builds the next audit entry from the chain's head (audit.PendingAudit)."""

    event_id: str | None

    def __call__(self, head: tuple[int, str] | None) -> AuditEntry: ...


def _key_values(key: ApiKey) -> tuple:
    return (
        key.key_id,
        key.tenant_id,
        key.label,
        key.created_at_us,
        key.revoked_at_us,
        key.role.value,
        key.expires_at_us,
    )


class Repository:
    """The one repository of tenancy; `url` picks the store (a SQLite path or postgresql://)."""

    def __init__(self, url: str, *, pool_size: int = 10):
        self.url = str(url)
        self.db: Database = open_database(self.url, pool_size=pool_size)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    async def open(self) -> list[str]:
        """Migrates, then connects; returns the ids of the migrations applied now."""
        applied = await asyncio.to_thread(migrate, self.url)
        await self.db.open()
        return applied

    async def close(self) -> None:
        await self.db.close()

    # Tenants

    async def insert_tenant(self, tenant: Tenant, audit: AuditBuild | None = None) -> Tenant:
        try:
            async with self.db.transaction() as tx:
                await self._insert_tenant(tx, tenant)
                if audit is not None:
                    await self._append_audit(tx, audit)
        except UniqueViolation as exc:
            if "name" in exc.detail:
                raise AlreadyExists(f"a tenant named {tenant.name!r} already exists", field="name") from None
            raise
        return tenant

    @staticmethod
    async def _insert_tenant(tx: Session, tenant: Tenant) -> None:
        await tx.execute(
            f"INSERT INTO tenants ({_TENANT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            tenant.tenant_id,
            tenant.name,
            tenant.business_unit,
            tenant.clearance.name,
            tenant.created_at_us,
        )

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        row = await self.db.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = ?", tenant_id)
        return None if row is None else _tenant(row)

    async def tenant_by_name(self, name: str) -> Tenant | None:
        row = await self.db.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name = ?", name)
        return None if row is None else _tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        return [_tenant(r) for r in await self.db.fetch(f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY name")]

    # Keys

    async def insert_key(self, key: ApiKey, secret: StoredSecret, audit: AuditBuild | None = None) -> ApiKey:
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}, salt_hex, hash_hex) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                *_key_values(key),
                secret.salt_hex,
                secret.hash_hex,
            )
            if audit is not None:
                await self._append_audit(tx, audit)
        return key

    async def keys_of(self, tenant_id: str, include_revoked: bool) -> list[ApiKey]:
        where = "" if include_revoked else " AND revoked_at_us IS NULL"
        rows = await self.db.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?{where} ORDER BY created_at_us, key_id", tenant_id
        )
        return [_key(r) for r in rows]

    async def rotate_key(
        self,
        old_key_id: str,
        new_key: ApiKey,
        secret: StoredSecret,
        old_expires_at_us: int,
        at_us: int,
        audit: AuditBuild | None = None,
    ) -> ApiKey | None:
        """In one transaction: the new key, and the old one (still active) set to expire at
        `old_expires_at_us` (or its own earlier expiry). None when the old key is not active."""
        async with self.db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE api_keys SET expires_at_us = CASE WHEN expires_at_us IS NOT NULL AND expires_at_us < ? "
                "THEN expires_at_us ELSE ? END "
                "WHERE key_id = ? AND revoked_at_us IS NULL AND (expires_at_us IS NULL OR expires_at_us > ?)",
                old_expires_at_us,
                old_expires_at_us,
                old_key_id,
                at_us,
            )
            if not changed:
                return None
            await tx.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}, salt_hex, hash_hex) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                *_key_values(new_key),
                secret.salt_hex,
                secret.hash_hex,
            )
            row = await tx.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", old_key_id)
            if audit is not None:
                await self._append_audit(tx, audit)
        return _key(row)

    async def key_by_id(self, key_id: str) -> ApiKey | None:
        row = await self.db.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", key_id)
        return None if row is None else _key(row)

    async def credentials(self, key_id: str) -> Credentials | None:
        """A key with its stored secret and tenant: the one lookup behind Authenticate."""
        columns = ", ".join(f"k.{c.strip()}" for c in _KEY_COLUMNS.split(","))
        tenant_columns = ", ".join(f"t.{c.strip()}" for c in _TENANT_COLUMNS.split(","))
        row = await self.db.fetchrow(
            f"SELECT {columns}, k.salt_hex, k.hash_hex, {tenant_columns} "
            "FROM api_keys k JOIN tenants t ON t.tenant_id = k.tenant_id WHERE k.key_id = ?",
            key_id,
        )
        if row is None:
            return None
        n = _KEY_WIDTH
        return Credentials(_key(row[:n]), StoredSecret(row[n], row[n + 1]), _tenant(row[n + 2 :]))

    async def revoke_key(
        self, key_id: str, revoked_at_us: int, event: OutboxEvent, audit: AuditBuild | None = None
    ) -> tuple[ApiKey, bool] | None:
        """Revokes the key and records `event` (and the audit entry) in one transaction. Returns the
        key and whether this call revoked it (False: it already was, and nothing is recorded), or
        None if unknown."""
        async with self.db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE api_keys SET revoked_at_us = ? WHERE key_id = ? AND revoked_at_us IS NULL",
                revoked_at_us,
                key_id,
            )
            if changed:
                await self._insert_event(tx, event)
                if audit is not None:
                    await self._append_audit(tx, audit)
            row = await tx.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", key_id)
        return None if row is None else (_key(row), bool(changed))

    # Outbox

    @staticmethod
    async def _insert_event(tx: Session, event: OutboxEvent) -> None:
        await tx.execute(
            "INSERT INTO outbox (event_id, subject, event_type, payload_hex, created_at_us) VALUES (?, ?, ?, ?, ?)",
            event.event_id,
            event.subject,
            event.event_type,
            event.payload.hex(),
            event.created_at_us,
        )

    async def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        rows = await self.db.fetch(
            "SELECT event_id, subject, event_type, payload_hex, created_at_us FROM outbox "
            "WHERE published_at_us IS NULL ORDER BY created_at_us LIMIT ?",
            limit,
        )
        return [OutboxEvent(r[0], r[1], r[2], bytes.fromhex(r[3]), r[4]) for r in rows]

    async def mark_published(self, event_id: str) -> None:
        await self.db.execute("UPDATE outbox SET published_at_us = ? WHERE event_id = ?", now_us(), event_id)

    # Usage ledger

    async def insert_usage(self, entries: Sequence, recorded_at_us: int) -> set[str]:
        """Writes ledger entries (ledger.UsageEntry), each once, all or none: returns the request
        ids written now; one already in the ledger (or twice in `entries`) is skipped."""
        rows: dict[str, tuple] = {}
        for entry in entries:
            rows.setdefault(entry.request_id, (*(getattr(entry, c) for c in _USAGE_FIELDS), recorded_at_us))
        chunks = [
            list(rows.values())[i : i + _USAGE_ROWS_PER_STATEMENT]
            for i in range(0, len(rows), _USAGE_ROWS_PER_STATEMENT)
        ]
        if len(chunks) == 1:  # one statement: atomic on its own
            return await self._insert_usage_rows(self.db, chunks[0])
        written: set[str] = set()
        async with self.db.transaction() as tx:
            for chunk in chunks:
                written |= await self._insert_usage_rows(tx, chunk)
        return written

    @staticmethod
    async def _insert_usage_rows(session: Session, rows: list[tuple]) -> set[str]:
        values = ", ".join(f"({', '.join('?' for _ in range(len(_USAGE_FIELDS) + 1))})" for _ in rows)
        returned = await session.fetch(
            f"INSERT INTO usage_ledger ({_USAGE_COLUMNS}, recorded_at_us) VALUES {values} "
            "ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            *(value for row in rows for value in row),
        )
        return {r[0] for r in returned}

    async def usage_totals(
        self,
        columns: list[str],
        since_us: int | None,
        until_us: int | None,
        tenant_id: str | None,
        *,
        order_by_cost: bool = False,
        limit: int | None = None,
    ) -> list[tuple[tuple, tuple[int, int, int, float, float]]]:
        """(group values, (requests, prompt tokens, completion tokens, cost, cost avoided)) per group
        of `columns` (ledger column names, from ledger.GROUPS only)."""
        where, args = [], []
        for clause, value in (
            ("occurred_at_us >= ?", since_us),
            ("occurred_at_us < ?", until_us),
            ("tenant_id = ?", tenant_id),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        group = ", ".join(columns)
        sql = (
            f"SELECT {group + ', ' if group else ''}COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
            "COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_usd), 0), COALESCE(SUM(cost_avoided_usd), 0) "
            f"FROM usage_ledger{' WHERE ' + ' AND '.join(where) if where else ''}"
        )
        if group:
            sql += f" GROUP BY {group} ORDER BY " + ("SUM(cost_usd) DESC, " if order_by_cost else "") + group
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        n = len(columns)
        return [
            (tuple(r[:n]), (int(r[n]), int(r[n + 1]), int(r[n + 2]), float(r[n + 3]), float(r[n + 4])))
            for r in await self.db.fetch(sql, *args)
        ]

    # Audit log

    async def append_audit(self, build: AuditBuild) -> AuditEntry | None:
        async with self.db.transaction() as tx:
            return await self._append_audit(tx, build)

    async def _append_audit(self, tx: Session, build: AuditBuild) -> AuditEntry | None:
        """Appends the entry `build(head)` returns, serialised with every other append (so the
        chain has one order), inside the transaction `tx`. None: its event id is already there."""
        await self.db.lock(tx, "llmesh-tenancy-audit")
        if build.event_id is not None and await tx.fetchrow(
            "SELECT seq FROM audit_log WHERE event_id = ?", build.event_id
        ):
            return None
        head = await tx.fetchrow("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        entry = build(None if head is None else (head[0], head[1]))
        await tx.execute(
            f"INSERT INTO audit_log ({_AUDIT_COLUMNS}, event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            entry.seq,
            entry.at_us,
            entry.actor,
            entry.action,
            entry.tenant_id,
            entry.target,
            entry.detail_json,
            entry.prev_hash,
            entry.entry_hash,
            build.event_id,
        )
        return entry

    async def audit_head(self) -> tuple[int, str] | None:
        row = await self.db.fetchrow("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        return None if row is None else (row[0], row[1])

    async def audit_entries(self, after_seq: int, limit: int, tenant_id: str | None) -> list[AuditEntry]:
        if tenant_id is None:
            rows = await self.db.fetch(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", after_seq, limit
            )
        else:
            rows = await self.db.fetch(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE seq > ? AND tenant_id = ? ORDER BY seq LIMIT ?",
                after_seq,
                tenant_id,
                limit,
            )
        return [AuditEntry(*r) for r in rows]

    async def insert_checkpoint(self, checkpoint: Checkpoint) -> bool:
        written = await self.db.execute(
            "INSERT INTO audit_checkpoints (seq, entry_hash, signed_at_us, signature) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (seq) DO NOTHING",
            checkpoint.seq,
            checkpoint.entry_hash,
            checkpoint.signed_at_us,
            checkpoint.signature,
        )
        return written == 1

    async def audit_checkpoints(self) -> list[Checkpoint]:
        rows = await self.db.fetch(
            "SELECT seq, entry_hash, signed_at_us, signature FROM audit_checkpoints ORDER BY seq"
        )
        return [Checkpoint(*r) for r in rows]
