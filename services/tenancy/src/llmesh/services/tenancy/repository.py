"""Tenants, keys and the event outbox in SQL.

The SQL is plain and portable (BIGINT timestamps in microseconds, TEXT hex for hashes and
payloads, no SQLite-only functions); a PostgreSQL repository keeps the statements and the methods
and replaces what is driver-specific here: connection setup, `BEGIN IMMEDIATE`, `?` placeholders
(`%s`), the unique-violation check, one worker thread (a pool). The schema is versioned in
`schema_migrations`; a migration is appended to MIGRATIONS, never edited.

sqlite3 calls block, so every one runs on a single worker thread that owns the connection: the
event loop never waits on disk, and one connection used from one thread needs no locking. Measured
(bench/tenancy_bench.py, 2 cores): a key lookup takes ~5 µs inline and ~60 µs through the thread,
small beside a ~0.7 ms Authenticate round trip, while a commit is ~20 µs at the median but
milliseconds at p99 (WAL checkpoints), which must not stall every other call on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from llmesh.kit.errors import AlreadyExists
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.tenancy.keys import StoredSecret
from llmesh.services.tenancy.models import ApiKey, Tenant

T = TypeVar("T")

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "tenants, api keys, event outbox",
        (
            """CREATE TABLE tenants (
                tenant_id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                business_unit TEXT NOT NULL,
                clearance TEXT NOT NULL,
                created_at_us BIGINT NOT NULL
            )""",
            """CREATE TABLE api_keys (
                key_id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
                label TEXT NOT NULL,
                salt_hex TEXT NOT NULL,
                hash_hex TEXT NOT NULL,
                created_at_us BIGINT NOT NULL,
                revoked_at_us BIGINT
            )""",
            "CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id)",
            """CREATE TABLE outbox (
                event_id TEXT PRIMARY KEY,
                subject TEXT NOT NULL,
                event_type TEXT NOT NULL,
                payload_hex TEXT NOT NULL,
                created_at_us BIGINT NOT NULL,
                published_at_us BIGINT
            )""",
            "CREATE INDEX outbox_pending ON outbox (published_at_us, created_at_us)",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]


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
_KEY_COLUMNS = "key_id, tenant_id, label, created_at_us, revoked_at_us"


def _tenant(row) -> Tenant:
    return Tenant(row[0], row[1], row[2], Sensitivity[row[3]], row[4])


def _key(row) -> ApiKey:
    return ApiKey(row[0], row[1], row[2], row[3], row[4])


class SqliteRepository:
    def __init__(self, path: pathlib.Path | str):
        self.path = str(path)
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenancy-db")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            raise RuntimeError("the repository is closed")

        def call() -> T:
            assert self._conn is not None, "open() first"
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> int:
        """Connects and migrates; returns the schema version."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
        return await self._run(self._migrate)

    def _connect(self) -> None:
        if self.path != ":memory:":
            pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Key hashes live here: owner-only, like the mesh state file (SQLite gives its WAL
            # files the database file's mode).
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE takes the write lock up
        # front, so two processes migrating at once serialise instead of deadlocking).
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: commits survive a process crash; a power loss may drop the last ones.
        conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> int:
        with self._transaction(conn):
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY,
                    description TEXT NOT NULL,
                    applied_at_us BIGINT NOT NULL
                )"""
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            unknown = applied - {version for version, _, _ in MIGRATIONS}
            if unknown:
                raise RuntimeError(
                    f"{self.path} has schema versions {sorted(unknown)} this release does not know: "
                    "it was written by a newer release"
                )
            for version, description, statements in MIGRATIONS:
                if version in applied:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at_us) VALUES (?, ?, ?)",
                    (version, description, now_us()),
                )
        return max(applied | {SCHEMA_VERSION})

    async def close(self) -> None:
        if self._executor is None:
            return

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)
        self._executor = None

    # Tenants

    async def insert_tenant(self, tenant: Tenant) -> Tenant:
        def insert(conn: sqlite3.Connection) -> Tenant:
            try:
                conn.execute(
                    f"INSERT INTO tenants ({_TENANT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (tenant.tenant_id, tenant.name, tenant.business_unit, tenant.clearance.name, tenant.created_at_us),
                )
            except sqlite3.IntegrityError as exc:
                if "tenants.name" in str(exc):
                    raise AlreadyExists(f"a tenant named {tenant.name!r} already exists", field="name") from None
                raise
            return tenant

        return await self._run(insert)

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return await self._one(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = ?", (tenant_id,), _tenant)

    async def tenant_by_name(self, name: str) -> Tenant | None:
        return await self._one(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name = ?", (name,), _tenant)

    async def list_tenants(self) -> list[Tenant]:
        def select(conn: sqlite3.Connection) -> list[Tenant]:
            return [_tenant(r) for r in conn.execute(f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY name")]

        return await self._run(select)

    # Keys

    async def insert_key(self, key: ApiKey, secret: StoredSecret) -> ApiKey:
        def insert(conn: sqlite3.Connection) -> ApiKey:
            conn.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}, salt_hex, hash_hex) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key.key_id,
                    key.tenant_id,
                    key.label,
                    key.created_at_us,
                    key.revoked_at_us,
                    secret.salt_hex,
                    secret.hash_hex,
                ),
            )
            return key

        return await self._run(insert)

    async def key_by_id(self, key_id: str) -> ApiKey | None:
        return await self._one(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,), _key)

    async def credentials(self, key_id: str) -> Credentials | None:
        """A key with its stored secret and tenant: the one lookup behind Authenticate."""
        columns = ", ".join(f"k.{c.strip()}" for c in _KEY_COLUMNS.split(","))
        tenant_columns = ", ".join(f"t.{c.strip()}" for c in _TENANT_COLUMNS.split(","))
        sql = (
            f"SELECT {columns}, k.salt_hex, k.hash_hex, {tenant_columns} "
            "FROM api_keys k JOIN tenants t ON t.tenant_id = k.tenant_id WHERE k.key_id = ?"
        )
        return await self._one(
            sql, (key_id,), lambda r: Credentials(_key(r[:5]), StoredSecret(r[5], r[6]), _tenant(r[7:]))
        )

    async def revoke_key(self, key_id: str, revoked_at_us: int, event: OutboxEvent) -> tuple[ApiKey, bool] | None:
        """Revokes the key and records `event` in one transaction. Returns the key and whether this
        call revoked it (False: it already was, and no event is recorded), or None if unknown."""

        def revoke(conn: sqlite3.Connection) -> tuple[ApiKey, bool] | None:
            with self._transaction(conn):
                changed = conn.execute(
                    "UPDATE api_keys SET revoked_at_us = ? WHERE key_id = ? AND revoked_at_us IS NULL",
                    (revoked_at_us, key_id),
                ).rowcount
                if changed:
                    self._insert_event(conn, event)
                row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
            return None if row is None else (_key(row), bool(changed))

        return await self._run(revoke)

    # Outbox

    @staticmethod
    def _insert_event(conn: sqlite3.Connection, event: OutboxEvent) -> None:
        conn.execute(
            "INSERT INTO outbox (event_id, subject, event_type, payload_hex, created_at_us) VALUES (?, ?, ?, ?, ?)",
            (event.event_id, event.subject, event.event_type, event.payload.hex(), event.created_at_us),
        )

    async def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        def select(conn: sqlite3.Connection) -> list[OutboxEvent]:
            rows = conn.execute(
                "SELECT event_id, subject, event_type, payload_hex, created_at_us FROM outbox "
                "WHERE published_at_us IS NULL ORDER BY created_at_us LIMIT ?",
                (limit,),
            )
            return [OutboxEvent(r[0], r[1], r[2], bytes.fromhex(r[3]), r[4]) for r in rows]

        return await self._run(select)

    async def mark_published(self, event_id: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE outbox SET published_at_us = ? WHERE event_id = ?", (now_us(), event_id))

        await self._run(update)

    async def _one(self, sql: str, params: tuple, convert: Callable) -> T | None:
        def select(conn: sqlite3.Connection):
            row = conn.execute(sql, params).fetchone()
            return None if row is None else convert(row)

        return await self._run(select)
