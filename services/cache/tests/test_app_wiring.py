"""How the service opens its semantic engine (the engine itself is tested in its own package), and
forecasts its load (llmesh.kit.forecast)."""

from __future__ import annotations

import json

import llmesh.services.cache.semantic as engine
import pytest
from llmesh.cache.v1 import cache_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.errors import Unavailable
from llmesh.kit.testing import assert_eventually, unique
from llmesh.services.cache.app import open_semantic_index, semantic_config
from prometheus_client import REGISTRY

from services.cache.tests.builders import lookup, store
from services.cache.tests.hosting import cache_service
from services.cache.tests.toy_semantic import ToySemanticIndex

pytestmark = pytest.mark.timeout(30)


def test_each_replica_gets_its_own_embedded_store(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    monkeypatch.delenv("LLMESH_CACHE_SEMANTIC_PATH", raising=False)
    monkeypatch.delenv("LLMESH_QDRANT_URL", raising=False)
    a, b = semantic_config("cache-0"), semantic_config("cache-1")
    assert a.store_path == str(tmp_path / "cache" / "semantic" / "cache-cache-0") != b.store_path
    monkeypatch.setenv("LLMESH_CACHE_SEMANTIC_PATH", "/srv/semantic")
    assert semantic_config("cache-0").store_path == "/srv/semantic"
    monkeypatch.delenv("LLMESH_CACHE_SEMANTIC_PATH")
    monkeypatch.setenv("LLMESH_QDRANT_URL", "http://qdrant:6334")
    assert semantic_config("cache-0").store_path == ""


async def test_a_missing_engine_fails_the_start_with_a_clear_message(monkeypatch):
    monkeypatch.delattr(engine, "open_semantic_index", raising=False)
    with pytest.raises(Unavailable, match="LLMESH_CACHE_SEMANTIC=false"):
        await open_semantic_index("r")


async def test_the_configured_engine_serves_lookups_and_is_closed_on_stop(monkeypatch, nats_url, tmp_path):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    opened: list = []

    async def factory(config):
        opened.append((config, ToySemanticIndex()))
        return opened[-1][1]

    monkeypatch.setattr(engine, "open_semantic_index", factory, raising=False)
    replica = unique("replica")
    async with cache_service(nats_url, semantic=True, replica_id=replica) as (_, stub, _):
        tenant = unique("acme")
        await stub.Store(store(tenant, "how do i reset my password", "a"))
        hit = await stub.Lookup(lookup(tenant, "how do i reset my password please"))
        assert hit.outcome == cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT
    ((config, index),) = opened
    assert config.store_path.endswith(f"cache-{replica}") and index.closed


async def test_the_service_learns_its_load_exports_the_forecast_and_keeps_the_history(nats_url):
    bucket = unique("forecast")
    async with cache_service(nats_url, forecast_step_s=1.0, forecast_bucket=bucket) as (app, stub, _):
        tenant = unique("acme")

        async def learned():
            for _ in range(20):
                await stub.Lookup(lookup(tenant, "what is the capital of France"))
            assert app.forecast.forecaster.recent and app.forecast.forecaster.recent > 0

        await assert_eventually(learned, timeout_s=15, interval_s=0.2)
        assert REGISTRY.get_sample_value("llmesh_service_requests_per_second", {"service": "cache"}) > 0
        forecast = REGISTRY.get_sample_value(
            "llmesh_forecast_requests_per_second", {"service": "cache", "horizon": "15m"}
        )
        assert forecast is not None and forecast > 0
    # Saved on stop, for the next replica to start from.
    bus = await Bus.connect(nats_url, "test-forecast")
    try:
        kv = await bus.js.key_value(bucket)
        state = json.loads((await kv.get("local.cache")).value)
        assert state["recent"] > 0 and len(state["season"]) == 168
    finally:
        await bus.close()
