"""A tenancy service hosted in-process on port 0, with its own SQLite file and the session's NATS."""

from __future__ import annotations

import contextlib
import secrets

import grpc
import pytest
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings
from llmesh.kit.testing import hosted
from llmesh.services.tenancy.app import TenancyApp
from llmesh.services.tenancy.settings import TenancySettings
from llmesh.tenancy.v1 import tenancy_pb2_grpc


def tenancy_settings(db_path, nats_url: str, admin_token: str) -> TenancySettings:
    return load_settings(
        TenancySettings,
        environ={},
        port=0,
        metrics_port=0,
        db_path=str(db_path),
        nats_url=nats_url,
        admin_token=admin_token,
        outbox_retry_s=0.2,
    )


@contextlib.asynccontextmanager
async def tenancy_client(db_path, nats_url: str, admin_token: str):
    """(host, stub) of a running service."""
    settings = tenancy_settings(db_path, nats_url, admin_token)
    async with hosted(TenancyApp(settings), settings) as host:
        async with open_channel(host.address) as channel:
            yield host, tenancy_pb2_grpc.TenancyServiceStub(channel)


@pytest.fixture
def admin_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def admin(admin_token) -> grpc.aio.Metadata:
    return grpc.aio.Metadata(("authorization", f"Bearer {admin_token}"))


@pytest.fixture
async def service(tmp_path, nats_url, admin_token):
    async with tenancy_client(tmp_path / "tenancy.db", nats_url, admin_token) as running:
        yield running
