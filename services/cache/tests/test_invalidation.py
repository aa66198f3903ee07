"""Invalidation events: their wire form, and a replica catching up on what it missed."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import pytest
from llmesh.cache.v1 import cache_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.errors import FailedPrecondition
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.streams import cache_invalidate_subject
from llmesh.kit.testing import assert_eventually, free_port, unique
from llmesh.services.cache.app import CacheApp
from llmesh.services.cache.invalidation import Invalidation, InvalidationChannel, durable_name, from_event, to_event

from services.cache.tests.builders import lookup, store
from services.cache.tests.hosting import cache_service, cache_settings, drop_durable

pytestmark = pytest.mark.timeout(30)


def test_events_round_trip_every_scope():
    for inv in (
        Invalidation.new("t1", now=1_700_000_000.123456),
        Invalidation.new("t1", use_case="sales", now=1.5),
        Invalidation.new("t1", document_id="handbook", version=7, now=2.0),
    ):
        assert from_event(to_event(inv).SerializeToString()) == inv
    assert to_event(Invalidation.new("t", now=1)).WhichOneof("scope") == "all"


def test_malformed_events_are_rejected():
    with pytest.raises(ValueError):
        from_event(events_pb2.CacheInvalidated(event_id="x", tenant_id="t").SerializeToString())


def test_durable_names_are_valid_and_distinct_per_replica():
    assert durable_name("cache-0.pod.local") == "cache-cache-0_pod_local"
    assert durable_name("a") != durable_name("b")


async def test_a_starting_replica_waits_until_the_missed_events_are_applied(nats_url):
    tenant = unique("acme")
    replica = unique("replica")
    publisher_bus = await Bus.connect(nats_url, "test-publisher")
    bus = await Bus.connect(nats_url, "test-replica")
    channel = InvalidationChannel(bus, replica)
    try:
        await channel.ensure_stream()
        publisher = InvalidationChannel(publisher_bus, unique("other"))
        missed = [Invalidation.new(tenant, use_case=f"uc{i}") for i in range(3)]
        for inv in missed:
            assert await publisher.publish(inv)  # confirmed by the stream
        # A malformed event in the stream is dropped, not redelivered forever.
        await publisher_bus.js.publish(cache_invalidate_subject(tenant), b"\xff not protobuf")
        applied: list[str] = []

        async def slow_apply(inv: Invalidation) -> None:
            await asyncio.sleep(0.05)
            if inv.tenant_id == tenant:
                applied.append(inv.event_id)

        await channel.consume(slow_apply)
        assert await channel.wait_caught_up(timeout_s=20)
        assert applied == [inv.event_id for inv in missed]
    finally:
        await bus.close()
        await publisher_bus.close()
        await drop_durable(nats_url, channel.durable)


async def test_a_second_replica_with_the_same_id_is_refused(nats_url):
    # Sharing one durable consumer, each would apply only part of the invalidations.
    replica = unique("replica")
    async with cache_service(nats_url, replica_id=replica) as (_, stub, _):
        second = CacheApp(cache_settings(nats_url, replica_id=replica))
        with pytest.raises(FailedPrecondition, match="LLMESH_CACHE_REPLICA_ID"):
            await second.start()
        # The running replica still applies every invalidation.
        tenant = unique("acme")
        await stub.Store(store(tenant, "How do I reset my password?", "Use the reset link."))
        await stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, all=True))

        async def flushed() -> bool:
            found = await stub.Lookup(lookup(tenant, "How do I reset my password?"))
            return found.outcome == cache_pb2.LOOKUP_OUTCOME_MISS

        await assert_eventually(flushed, timeout_s=10)


async def test_an_invalidation_while_nats_is_down_fails_in_time_and_is_not_applied_later(tmp_path):
    """Either accepted and applied everywhere, or refused and never applied: while NATS is down
    Invalidate answers UNAVAILABLE within the caller's deadline, and when NATS returns the refused
    invalidation does not come back to life (the later one, applied in stream order, proves it)."""
    nats = NatsServerProcess(str(tmp_path / "nats"), port=free_port()).start()
    tenant = unique("tenant")
    try:
        async with cache_service(nats.url) as (_, stub, _):
            for use_case in ("kept", "dropped"):
                await stub.Store(store(tenant, "q", f"{use_case} answer", key_kw={"use_case": use_case}))
            nats.stop()
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, use_case="kept"), timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "nothing was published" in refused.value.details()
            assert time.monotonic() - started < 3

            nats.start()

            async def invalidated_after_reconnect():
                await stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, use_case="dropped"), timeout=3)

            await assert_eventually(invalidated_after_reconnect, timeout_s=20, message="NATS back")

            async def dropped_is_gone():
                reply = await stub.Lookup(lookup(tenant, "q", key_kw={"use_case": "dropped"}))
                assert reply.outcome == cache_pb2.LOOKUP_OUTCOME_MISS

            await assert_eventually(dropped_is_gone, timeout_s=10)
            kept = await stub.Lookup(lookup(tenant, "q", key_kw={"use_case": "kept"}))
            assert kept.outcome == cache_pb2.LOOKUP_OUTCOME_EXACT_HIT
    finally:
        nats.stop()


@pytest.mark.timeout(90)
async def test_an_invalidation_nats_did_not_confirm_is_accepted_as_pending_and_applied(tmp_path):
    """NATS frozen (SIGSTOP): the event goes out on a connection that still looks open, and no ack
    comes. It may be stored already, so it cannot be refused as 'not applied': the replica accepts
    it as pending within the caller's deadline, publishes it again with the same id until the
    stream confirms it, and it is applied once NATS runs again (docs/adr/0032)."""
    nats = NatsServerProcess(str(tmp_path / "nats"), port=free_port()).start()
    tenant = unique("tenant")
    try:
        async with cache_service(nats.url) as (app, stub, _):
            await stub.Store(store(tenant, "q", "an answer"))
            os.kill(nats.process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                reply = await stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, all=True), timeout=3)
                assert time.monotonic() - started < 3
                assert reply.pending and reply.event_id
                # Not applied while NATS is frozen: nothing reached the replicas' consumers.
                still = await stub.Lookup(lookup(tenant, "q"))
                assert still.outcome == cache_pb2.LOOKUP_OUTCOME_EXACT_HIT
            finally:
                os.kill(nats.process.pid, signal.SIGCONT)

            async def applied():
                reply = await stub.Lookup(lookup(tenant, "q"))
                assert reply.outcome == cache_pb2.LOOKUP_OUTCOME_MISS
                assert len(app.outbox) == 0

            await assert_eventually(applied, timeout_s=20, message="the pending invalidation applied")
    finally:
        nats.stop()
