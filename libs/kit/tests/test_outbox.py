"""The event outbox (llmesh.kit.outbox): publishes off the caller's path, keeps events while NATS
is down and delivers them once it is back, deduplicated by message id; bounded."""

from __future__ import annotations

import time

import pytest
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.outbox import DROPPED, Outbox
from llmesh.kit.streams import StreamSpec
from llmesh.kit.tasks import BackgroundTasks
from llmesh.kit.testing import assert_eventually, free_port, unique

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
