"""An in-memory outbox for JetStream events published off the response path (usage records,
budget alerts): `put` never blocks and never fails; a background drain publishes what is queued
(each with its Nats-Msg-Id, so a retry is deduplicated by the stream) and keeps what could not be
published for the next try. Bounded: when full, the oldest event is dropped and counted.

For events that must survive a crash of the publisher, keep the outbox in the database instead
(tenancy's key revocations, docs/adr/0007); these are lost with the process, counted as pending."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any

from google.protobuf.message import Message
from llmesh.kit.bus import Bus
from llmesh.kit.logging import get_logger
from prometheus_client import Counter, Gauge

log = get_logger("llmesh.outbox")

PUBLISHED = Counter("llmesh_outbox_published_total", "events the outbox published", ["outbox"])
FAILED = Counter("llmesh_outbox_publish_failures_total", "publish attempts that failed (retried later)", ["outbox"])
DROPPED = Counter("llmesh_outbox_dropped_total", "events dropped because the outbox was full", ["outbox"])
PENDING = Gauge("llmesh_outbox_pending", "events waiting in the outbox", ["outbox"])


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    subject: str
    message: Message
    msg_id: str


class Outbox:
    def __init__(
        self,
        bus: Bus | None,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task],
        *,
        name: str,
        max_events: int = 10_000,
        batch: int = 64,
        publish_timeout_s: float = 1.0,
    ):
        self._bus = bus
        self._spawn = spawn
        self._name = name
        self._queue: collections.deque[Event] = collections.deque()
        self._max_events = max_events
        self._batch = batch
        self._timeout_s = publish_timeout_s
        self._draining: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        PENDING.labels(name).set(0)

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, subject: str, message: Message, *, msg_id: str) -> None:
        """Queues one event and starts a drain unless one runs. Never blocks, never raises."""
        if len(self._queue) >= self._max_events:
            self._queue.popleft()
            DROPPED.labels(self._name).inc()
            log.warning("outbox_full_dropped_oldest", outbox=self._name, max_events=self._max_events)
        self._queue.append(Event(subject, message, msg_id))
        PENDING.labels(self._name).set(len(self._queue))
        if self._bus is not None and (self._draining is None or self._draining.done()):
            self._draining = self._spawn(self.drain())

    async def drain(self) -> int:
        """Publishes queued events until the queue is empty or a publish fails (the rest stay
        queued for the next drain: the app runs one now and then). Returns how many went out."""
        if self._bus is None:
            return 0
        sent = 0
        async with self._lock:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                results = await asyncio.gather(
                    *(
                        self._bus.publish(e.subject, e.message, msg_id=e.msg_id, timeout_s=self._timeout_s, attempts=1)
                        for e in batch
                    ),
                    return_exceptions=True,
                )
                failed = [e for e, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
                sent += len(batch) - len(failed)
                PUBLISHED.labels(self._name).inc(len(batch) - len(failed))
                if failed:
                    FAILED.labels(self._name).inc(len(failed))
                    # Back at the front, in order, unless newer events filled the outbox meanwhile.
                    room = self._max_events - len(self._queue)
                    if room < len(failed):
                        DROPPED.labels(self._name).inc(len(failed) - max(room, 0))
                    self._queue.extendleft(reversed(failed[: max(room, 0)]))
                    PENDING.labels(self._name).set(len(self._queue))
                    log.warning("outbox_publish_failed", outbox=self._name, failed=len(failed), error=repr(results[0]))
                    break
                PENDING.labels(self._name).set(len(self._queue))
        return sent

    async def flush(self, timeout_s: float) -> bool:
        """Drains until empty or `timeout_s` passed (on shutdown, in tests). True when empty."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queue and loop.time() < deadline:
            try:
                await asyncio.wait_for(self.drain(), max(0.01, deadline - loop.time()))
            except TimeoutError:
                break
            if self._queue:
                await asyncio.sleep(0.1)
        return not self._queue
