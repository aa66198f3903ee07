"""A tenancy service hosted in-process on port 0, with its own store and the session's NATS.

Every test that takes `store_url` (and so `service`) runs twice: on a SQLite file and on a fresh
database of the session's private PostgreSQL server."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import uuid

import asyncpg
import grpc
import pytest
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings
from llmesh.kit.postgres_server import PostgresServerProcess
from llmesh.kit.testing import hosted
from llmesh.services.tenancy.app import TenancyApp
from llmesh.services.tenancy.settings import TenancySettings
from llmesh.tenancy.v1 import tenancy_pb2_grpc


def tenancy_settings(store_url, nats_url: str, admin_token: str, **overrides) -> TenancySettings:
    return load_settings(
        TenancySettings,
        environ={},
        port=0,
        metrics_port=0,
        database_url=str(store_url),
        nats_url=nats_url,
        admin_token=admin_token,
        outbox_retry_s=0.2,
        **overrides,
    )


@contextlib.asynccontextmanager
async def tenancy_client(store_url, nats_url: str, admin_token: str, **overrides):
    """(host, stub) of a running service."""
    settings = tenancy_settings(store_url, nats_url, admin_token, **overrides)
    async with hosted(TenancyApp(settings), settings) as host:
        async with open_channel(host.address) as channel:
            yield host, tenancy_pb2_grpc.TenancyServiceStub(channel)


@pytest.fixture
def admin_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def admin(admin_token) -> grpc.aio.Metadata:
    return grpc.aio.Metadata(("authorization", f"Bearer {admin_token}"))


@pytest.fixture(scope="session")
def postgres_server():
    # Not under pytest's tmp folder: every pytest run of the machine's user resets that folder to
    # owner-only, which would lock out the `postgres` user the server runs as under root.
    folder = tempfile.mkdtemp(prefix="llmesh-postgres-")
    server = PostgresServerProcess(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request, tmp_path) -> str:
    """A new, empty store of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "tenancy.db")
    server: PostgresServerProcess = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server.admin_url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def service(store_url, nats_url, admin_token):
    async with tenancy_client(store_url, nats_url, admin_token) as running:
        yield running
