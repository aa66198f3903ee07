"""Hosts the cache service in this event loop for a test, and cleans its durable consumer up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from llmesh.cache.v1 import cache_pb2_grpc
from llmesh.kit.bus import Bus
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings
from llmesh.kit.streams import CACHE_INVALIDATE
from llmesh.kit.testing import hosted, unique
from llmesh.services.cache.app import CacheApp
from llmesh.services.cache.settings import CacheSettings

ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def cache_settings(nats_url: str, **overrides) -> CacheSettings:
    values = dict(
        port=0,
        metrics_port=0,
        nats_url=nats_url,
        semantic=False,
        replica_id=unique("replica"),
        admin_token=ADMIN_TOKEN,
        purge_interval_s=0.0,
    )
    values.update(overrides)
    return load_settings(CacheSettings, environ={}, **values)


async def drop_durable(nats_url: str, durable: str) -> None:
    bus = await Bus.connect(nats_url, "test-cleanup")
    try:
        await bus.delete_consumer(CACHE_INVALIDATE, durable)
    finally:
        await bus.close()


@contextlib.asynccontextmanager
async def cache_service(nats_url: str, *, semantic_index=None, clock=None, **overrides) -> AsyncIterator[tuple]:
    """(app, stub, address) of a running cache service."""
    settings = cache_settings(nats_url, **overrides)
    kwargs = {"semantic_index": semantic_index}
    if clock is not None:
        kwargs["clock"] = clock
    app = CacheApp(settings, **kwargs)
    try:
        async with hosted(app, settings) as host, open_channel(host.address) as channel:
            yield app, cache_pb2_grpc.CacheServiceStub(channel), host.address
    finally:
        await drop_durable(nats_url, app.channel.durable if app.channel else "")
