"""Two cache replicas as separate processes on one nats-server: every replica applies every
invalidation, also one that was down when it was published."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sys

import pytest
from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.testing import assert_eventually, ensure_identity, identity_env, unique

from services.cache.tests.builders import lookup, store
from services.cache.tests.hosting import drop_durable

pytestmark = pytest.mark.timeout(90)

HIT = cache_pb2.LOOKUP_OUTCOME_EXACT_HIT
MISS = cache_pb2.LOOKUP_OUTCOME_MISS


class Replica:
    """`python -m llmesh.services.cache` on a free port, stopped with SIGTERM like in production."""

    def __init__(self, tmp: pathlib.Path, nats_url: str, replica_id: str, **env: str):
        self.tmp = tmp
        self.replica_id = replica_id
        self.env = {
            **os.environ,
            **identity_env(ensure_identity(), "cache"),
            "LLMESH_HOME": str(tmp),
            "LLMESH_PORT": "0",
            "LLMESH_METRICS_PORT": "0",
            "LLMESH_NATS_URL": nats_url,
            "LLMESH_CACHE_REPLICA_ID": replica_id,
            "LLMESH_CACHE_SEMANTIC": "false",
            "LLMESH_LOG_LEVEL": "warning",
            "LLMESH_GRACE_S": "1",
            **env,
        }
        self.process: asyncio.subprocess.Process | None = None
        self.channel = None
        self.stub: cache_pb2_grpc.CacheServiceStub | None = None

    async def start(self) -> "Replica":
        ready = self.tmp / f"{self.replica_id}.ready.json"
        ready.unlink(missing_ok=True)
        log = open(self.tmp / f"{self.replica_id}.log", "ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llmesh.services.cache",
            env={**self.env, "LLMESH_READY_FILE": str(ready)},
            stdout=log,
            stderr=log,
        )
        log.close()

        def is_ready():
            assert self.process.returncode is None, f"replica exited: see {self.tmp}/{self.replica_id}.log"
            return ready.exists()

        await assert_eventually(is_ready, timeout_s=30, message=f"{self.replica_id} serving")
        port = json.loads(ready.read_text())["port"]
        self.channel = open_channel(f"127.0.0.1:{port}")
        self.stub = cache_pb2_grpc.CacheServiceStub(self.channel)
        return self

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                assert await asyncio.wait_for(self.process.wait(), 15) == 0
            finally:
                if self.process.returncode is None:
                    self.process.kill()
                    await self.process.wait()


async def outcome(replica: Replica, request) -> int:
    return (await replica.stub.Lookup(request)).outcome


@pytest.fixture
async def replicas(tmp_path, nats_url):
    started: list[Replica] = []

    def make(name: str, **env) -> Replica:
        replica = Replica(tmp_path, nats_url, unique(name), **env)
        started.append(replica)
        return replica

    yield make
    for replica in started:
        await replica.stop()
    for replica_id in {r.replica_id for r in started}:
        await drop_durable(nats_url, f"cache-{replica_id}")


async def test_lru_replicas_both_apply_an_invalidation_published_through_one(replicas):
    a = await replicas("a").start()
    b = await replicas("b").start()
    tenant, other = unique("acme"), unique("globex")
    for replica in (a, b):
        await replica.stub.Store(store(tenant, "q", "a"))
        await replica.stub.Store(store(other, "q", "a"))
        assert await outcome(replica, lookup(tenant, "q")) == HIT

    await a.stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, all=True))
    for replica in (a, b):
        await assert_eventually(lambda: _is(replica, lookup(tenant, "q"), MISS), message=replica.replica_id)
        assert await outcome(replica, lookup(other, "q")) == HIT


async def _is(replica: Replica, request, expected: int) -> bool:
    return await outcome(replica, request) == expected


async def test_a_replica_that_was_down_applies_missed_events_and_keeps_newer_answers(replicas, redis_url):
    # Each replica keeps its entries in its own Redis keyspace, so they survive its restart.
    a = await replicas("a", LLMESH_REDIS_URL=redis_url, LLMESH_CACHE_REDIS_PREFIX=unique("a") + ":").start()
    b = replicas("b", LLMESH_REDIS_URL=redis_url, LLMESH_CACHE_REDIS_PREFIX=unique("b") + ":")
    await b.start()
    tenant = unique("acme")
    handbook_v1 = [common_pb2.ContentVersion(document_id="handbook", version=1)]
    for replica in (a, b):
        await replica.stub.Store(store(tenant, "old", "built on v1", content_versions=handbook_v1))
        await replica.stub.Store(store(tenant, "unrelated", "kept"))

    await b.stop()
    await a.stub.Invalidate(
        cache_pb2.InvalidateRequest(
            tenant_id=tenant, content_version=common_pb2.ContentVersion(document_id="handbook", version=2)
        )
    )
    await assert_eventually(lambda: _is(a, lookup(tenant, "old"), MISS), message="the live replica applied it")

    await b.start()
    # Caught up before it reports SERVING: no window in which the outdated answer is served.
    assert await outcome(b, lookup(tenant, "old")) == MISS
    assert await outcome(b, lookup(tenant, "unrelated")) == HIT
    late = await b.stub.Store(store(tenant, "late", "built on v1", content_versions=handbook_v1))
    assert not late.stored, "an answer built from the outdated version is refused after the event"
    await b.stub.Store(store(tenant, "newer", "stored after the flush event"))

    # A replica whose consumer is gone replays the whole stream: old events must not remove newer answers.
    await a.stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, use_case="support"))
    await assert_eventually(lambda: _is(b, lookup(tenant, "newer"), MISS))
    await b.stub.Store(store(tenant, "newest", "stored after every event"))
    await b.stop()
    await drop_durable(b.env["LLMESH_NATS_URL"], f"cache-{b.replica_id}")
    await b.start()
    assert await outcome(b, lookup(tenant, "newest")) == HIT
    assert await outcome(b, lookup(tenant, "newer")) == MISS
