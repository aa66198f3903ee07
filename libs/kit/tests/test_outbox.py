"""The event outbox (llmesh.kit.outbox): publishes off the caller's path, keeps events while NATS
is down and delivers them once it is back, deduplicated by message id; bounded; batches the
events put as batched by subject, by size and linger, and retries a batch unchanged."""

from __future__ import annotations

import time

import pytest
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import TYPE_HEADER, Bus
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.outbox import DROPPED, FAILED, Batching, Outbox, batch_msg_id
from llmesh.kit.streams import StreamSpec
from llmesh.kit.tasks import BackgroundTasks
from llmesh.kit.testing import assert_eventually, free_port, unique
from llmesh.kit.usage import pack_usage, usage_records

pytestmark = pytest.mark.timeout(60)

SPEC = StreamSpec("TEST_OUTBOX", ("test.outbox.>",), max_age_s=3600)


def event(i: int) -> events_pb2.UsageRecorded:
    return events_pb2.UsageRecorded(request_id=f"req-{i}", tenant_id="t")


async def stored(bus: Bus) -> int:
    return (await bus.js.stream_info(SPEC.name)).state.messages


async def test_events_wait_out_a_nats_outage_and_arrive_once(tmp_path):
    port = free_port()
    server = NatsServerProcess(str(tmp_path), port=port).start()
    tasks = BackgroundTasks("test")
    bus = await Bus.connect(server.url, unique("outbox"))
    try:
        await bus.ensure_stream(SPEC)
        outbox = Outbox(bus, tasks.spawn, name=unique("outbox"), publish_timeout_s=0.5)
        for i in range(3):
            outbox.put("test.outbox.t", event(i), msg_id=f"req-{i}")
        assert await outbox.flush(5.0)
        assert await stored(bus) == 3

        server.stop()
        started = time.perf_counter()
        for i in range(3, 8):
            outbox.put("test.outbox.t", event(i), msg_id=f"req-{i}")
        outbox.put("test.outbox.t", event(0), msg_id="req-0")  # a repeat of one already stored
        assert time.perf_counter() - started < 0.05, "put never waits for NATS"
        assert await outbox.drain() == 0
        assert len(outbox) == 6

        server = NatsServerProcess(str(tmp_path), port=port).start()
        await assert_eventually(lambda: outbox.flush(1.0), timeout_s=20, message="delivered after the outage")
        assert await stored(bus) == 8, "each event once: the repeat was dropped by its message id"
    finally:
        await tasks.stop()
        await bus.close()
        server.stop()


async def test_a_full_outbox_drops_the_oldest_and_counts_it():
    name = unique("outbox")
    outbox = Outbox(None, BackgroundTasks("test").spawn, name=name, max_events=3)
    for i in range(5):
        outbox.put("test.outbox.t", event(i), msg_id=f"req-{i}")
    assert len(outbox) == 3
    assert DROPPED.labels(name)._value.get() == 2


async def stream_messages(bus: Bus) -> list[tuple[str, str, list[str]]]:
    """(Nats-Msg-Id, type header, request ids) of each message of the test stream, in order."""
    info = await bus.js.stream_info(SPEC.name)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg(SPEC.name, seq)
        found.append(
            (
                msg.headers["Nats-Msg-Id"],
                msg.headers[TYPE_HEADER],
                [r.request_id for r in usage_records(msg.data, msg.headers)],
            )
        )
    return found


async def test_batched_events_leave_together_when_the_batch_is_full_or_its_linger_ends(nats_url):
    subject = unique("b").replace(".", "-")
    bus = await Bus.connect(nats_url, unique("outbox"))
    tasks = BackgroundTasks("test")
    try:
        await bus.ensure_stream(SPEC)
        await bus.js.purge_stream(SPEC.name)
        linger_s = 1.5
        outbox = Outbox(
            bus, tasks.spawn, name=unique("outbox"), batching=Batching(pack_usage, max_records=4, linger_s=linger_s)
        )
        a, b = f"test.outbox.{subject}-a", f"test.outbox.{subject}-b"
        started = time.monotonic()
        for i in range(9):
            outbox.put(a, event(i), msg_id=f"req-{i}", batched=True)
        outbox.put(b, event(9), msg_id="req-9", batched=True)
        outbox.put(b, event(10), msg_id="req-10")  # not batched: at once, alone
        await assert_eventually(lambda: _equals(stored(bus), 3), message="two full batches and the single one")
        assert time.monotonic() - started < linger_s, "full batches do not wait for the linger"
        assert len(outbox) == 2, "the last event of `a` and the one of `b` wait for their linger"
        await assert_eventually(lambda: _equals(stored(bus), 5), timeout_s=10, message="the lingering ones")
        assert time.monotonic() - started >= linger_s
        messages = await stream_messages(bus)
        batch, single = (
            events_pb2.UsageRecordedBatch.DESCRIPTOR.full_name,
            events_pb2.UsageRecorded.DESCRIPTOR.full_name,
        )
        by_ids = {tuple(ids): (msg_id, kind) for msg_id, kind, ids in messages}
        assert by_ids == {
            ("req-0", "req-1", "req-2", "req-3"): (batch_msg_id(["req-0", "req-1", "req-2", "req-3"]), batch),
            ("req-4", "req-5", "req-6", "req-7"): (batch_msg_id(["req-4", "req-5", "req-6", "req-7"]), batch),
            ("req-8",): (batch_msg_id(["req-8"]), batch),
            ("req-9",): (batch_msg_id(["req-9"]), batch),
            ("req-10",): ("req-10", single),
        }
        assert len(outbox) == 0
    finally:
        await tasks.stop()
        await bus.close()


async def test_a_linger_of_zero_publishes_each_event_alone_as_before(nats_url):
    bus = await Bus.connect(nats_url, unique("outbox"))
    tasks = BackgroundTasks("test")
    try:
        await bus.ensure_stream(SPEC)
        await bus.js.purge_stream(SPEC.name)
        outbox = Outbox(bus, tasks.spawn, name=unique("outbox"), batching=Batching(pack_usage, linger_s=0))
        for i in range(3):
            outbox.put("test.outbox.zero", event(i), msg_id=f"req-{i}", batched=True)
        assert await outbox.flush(5.0)
        single = events_pb2.UsageRecorded.DESCRIPTOR.full_name
        assert sorted(await stream_messages(bus)) == [(f"req-{i}", single, [f"req-{i}"]) for i in range(3)]
    finally:
        await tasks.stop()
        await bus.close()


async def test_a_batch_that_failed_is_retried_unchanged_after_more_events_arrived(tmp_path):
    port = free_port()
    server = NatsServerProcess(str(tmp_path), port=port).start()
    tasks = BackgroundTasks("test")
    bus = await Bus.connect(server.url, unique("outbox"))
    name = unique("outbox")
    try:
        await bus.ensure_stream(SPEC)
        outbox = Outbox(
            bus, tasks.spawn, name=name, publish_timeout_s=0.5, batching=Batching(pack_usage, linger_s=0.05)
        )
        server.stop()
        for i in range(3):
            outbox.put("test.outbox.t", event(i), msg_id=f"req-{i}", batched=True)
        assert not await outbox.flush(0.3), "NATS is down: the batch is formed but not published"
        assert await outbox.drain() == 0
        assert FAILED.labels(name)._value.get() >= 1, "its publish failed"
        for i in range(3, 5):  # arrive while the first batch waits for its retry
            outbox.put("test.outbox.t", event(i), msg_id=f"req-{i}", batched=True)
        assert not await outbox.flush(0.3)
        assert len(outbox) == 5

        server = NatsServerProcess(str(tmp_path), port=port).start()
        await assert_eventually(lambda: outbox.flush(1.0), timeout_s=20, message="delivered after the outage")
        first, second = ["req-0", "req-1", "req-2"], ["req-3", "req-4"]
        batch = events_pb2.UsageRecordedBatch.DESCRIPTOR.full_name
        assert await stream_messages(bus) == [
            (batch_msg_id(first), batch, first),
            (batch_msg_id(second), batch, second),
        ], "each batch as it was formed, under the id of its first try"
        # A try the stream stored without confirming it, repeated: dropped by the batch's id.
        ack = await bus.publish("test.outbox.t", pack_usage([event(i) for i in range(3)]), msg_id=batch_msg_id(first))
        assert ack.duplicate
    finally:
        await tasks.stop()
        await bus.close()
        server.stop()


async def test_batched_events_count_towards_the_bound():
    name = unique("outbox")
    outbox = Outbox(
        None, BackgroundTasks("test").spawn, name=name, max_events=5, batching=Batching(pack_usage, max_records=2)
    )
    for i in range(7):
        outbox.put("test.outbox.t", event(i), msg_id=f"req-{i}", batched=True)
    assert len(outbox) == 5
    assert DROPPED.labels(name)._value.get() == 2, "the oldest batch (two events) went"
    with pytest.raises(ValueError, match="cannot hold more"):
        Outbox(
            None, BackgroundTasks("test").spawn, name=name, max_events=5, batching=Batching(pack_usage, max_records=8)
        )


async def _equals(value, expected) -> bool:
    return (await value) == expected
