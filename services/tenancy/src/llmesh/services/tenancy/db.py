"""One async SQL interface over the two stores of tenancy: SQLite (embedded default) and
PostgreSQL (production, asyncpg with a connection pool). The repository writes each statement
once, with `?` placeholders and portable SQL; this module runs it on either store.

Migrations are yoyo-migrations scripts in `migrations/` (docs/adr/0015-tenancy-stores-and-migrations.md), run
by `migrate()` before the service opens its connections. yoyo takes a lock table, so two replicas
starting at once apply each migration once.

SQLite calls block, so each runs on one worker thread that owns the connection: the event loop
never waits on disk. A transaction holds an asyncio lock for its whole span, so statements of other
calls cannot slip into it through the shared connection (`BEGIN IMMEDIATE` also serialises other
processes). PostgreSQL transactions each take a pooled connection of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import asyncpg
from llmesh.kit import errors

MIGRATIONS_DIR = pathlib.Path(__file__).resolve().parent / "migrations"

Row = tuple


class UniqueViolation(Exception):
    """An INSERT hit a unique constraint; `detail` names it as the store reports it."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class Session(Protocol):
    """Statements on one connection: inside a transaction, or each on its own."""

    async def execute(self, sql: str, *args: Any) -> int: ...
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...


class Database(Session, Protocol):
    dialect: str
    url: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Session]: ...
    async def lock(self, session: Session, name: str) -> None: ...


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_database(url: str, *, pool_size: int = 10) -> Database:
    """`url`: a SQLite file path (or `sqlite:///path`), or `postgresql://user:pass@host:port/db`."""
    if is_postgres(url):
        return PostgresDatabase(url, pool_size=pool_size)
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    return SqliteDatabase(path)


def migrate(url: str) -> list[str]:
    """Applies the pending migrations (blocking; run it on a thread). Returns their ids."""
    from yoyo import get_backend, read_migrations

    if is_postgres(url):
        parts = urllib.parse.urlsplit(url)
        yoyo_url = urllib.parse.urlunsplit(parts._replace(scheme="postgresql+psycopg"))
    else:
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
        _create_private(path)
        yoyo_url = f"sqlite:///{os.path.abspath(path)}"
    backend = get_backend(yoyo_url)
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    finally:
        with contextlib.suppress(Exception):
            backend.connection.close()


def _create_private(path: str) -> None:
    if path == ":memory:":
        return
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Key hashes live here: owner-only, like the mesh state file (SQLite gives its WAL files the
    # database file's mode).
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


# SQLite


class _SqliteSession:
    def __init__(self, db: SqliteDatabase):
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._db._call(lambda c: c.execute(sql, args).rowcount)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._db._call(lambda c: [tuple(r) for r in c.execute(sql, args).fetchall()])

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        def one(c: sqlite3.Connection) -> Row | None:
            row = c.execute(sql, args).fetchone()
            return None if row is None else tuple(row)

        return await self._db._call(one)


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str):
        self.url = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._session = _SqliteSession(self)

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenancy-db")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)

    def _connect(self) -> None:
        _create_private(self.url)
        # Autocommit mode; transactions are explicit.
        conn = sqlite3.connect(self.url, isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: commits survive a process crash; a power loss may drop the last ones.
        conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn

    async def _call(self, fn):
        if self._executor is None or self._conn is None:
            raise RuntimeError("the database is not open")
        conn = self._conn

        def call():
            try:
                return fn(conn)
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" in str(exc):
                    raise UniqueViolation(str(exc)) from None
                raise

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return await self._session.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            return await self._session.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._lock:
            return await self._session.fetchrow(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        async with self._lock:
            # IMMEDIATE takes the write lock up front: two writers serialise, never deadlock.
            await self._session.execute("BEGIN IMMEDIATE")
            try:
                yield self._session
            except BaseException:
                await asyncio.shield(self._session.execute("ROLLBACK"))
                raise
            await asyncio.shield(self._session.execute("COMMIT"))

    async def lock(self, session: Session, name: str) -> None:
        """Serialises transactions on `name`: BEGIN IMMEDIATE already holds the database's one
        write lock."""

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


# PostgreSQL

_PLACEHOLDER = re.compile(r"\?")


def postgres_sql(sql: str) -> str:
    """`?` placeholders as asyncpg's `$1, $2, ...` (no statement here has a `?` in a literal)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    # "UPDATE 3", "DELETE 0", "INSERT 0 1"
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


# The server down, restarting or cut off (refused, reset, timed out, shutting down, not accepting
# connections yet): the caller is told UNAVAILABLE, an event handler's message is redelivered, and the
# pool opens new connections once the server is back.
_UNREACHABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError)


@contextlib.contextmanager
def _reachable():
    try:
        yield
    except _UNREACHABLE as exc:
        raise errors.Unavailable(
            f"the tenancy database is unreachable ({type(exc).__name__}: {exc})", retry_after_s=1.0
        ) from exc


class _PostgresSession:
    def __init__(self, conn: asyncpg.Connection | asyncpg.Pool):
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            with _reachable():
                return _rowcount(await self._conn.execute(postgres_sql(sql), *args))
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(f"{exc.constraint_name}: {exc}") from None

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        with _reachable():
            return [tuple(r) for r in await self._conn.fetch(postgres_sql(sql), *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        with _reachable():
            row = await self._conn.fetchrow(postgres_sql(sql), *args)
        return None if row is None else tuple(row)


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 10):
        self.url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self._pool_size, command_timeout=10)

    def _session(self) -> _PostgresSession:
        if self._pool is None:
            raise RuntimeError("the database is not open")
        return _PostgresSession(self._pool)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._session().execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._session().fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return await self._session().fetchrow(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        if self._pool is None:
            raise RuntimeError("the database is not open")
        with _reachable():
            async with self._pool.acquire() as conn, conn.transaction():
                yield _PostgresSession(conn)

    async def lock(self, session: Session, name: str) -> None:
        """A transaction-scoped advisory lock on `name`: held until the transaction ends."""
        await session.execute("SELECT pg_advisory_xact_lock(hashtext(?))", name)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def placeholders(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)
