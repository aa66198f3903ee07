"""An in-memory outbox for JetStream events published off the response path (usage records,
budget alerts, cache invalidations): `put` never blocks and never fails; a background drain
publishes what is queued (each with its Nats-Msg-Id, so a retry is deduplicated by the stream) and
keeps what could not be published for the next try. Bounded: when full, the oldest event is
dropped and counted.

Batching, an option (docs/adr/0035): events put with `batched=True` wait per subject until
`max_records` of them are there or the first one waited `linger_s`, then leave as one message
(`pack` of them) whose Nats-Msg-Id derives from theirs. A batch, once formed, never changes: a
failed publish is retried with the same id and the same events, so a batch the stream stored
without confirming it is dropped as a repeat, never stored again with other contents. A consumer
still keys each event by its own id (the usage ledger by request id), as it does without batches.

For events that must survive a crash of the publisher, keep the outbox in the database instead
(tenancy's key revocations, docs/adr/0007); these are lost with the process (open batches
included), counted as pending."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from google.protobuf.message import Message
from llmesh.kit.bus import Bus
from llmesh.kit.logging import get_logger
from prometheus_client import Counter, Gauge

log = get_logger("llmesh.outbox")

PUBLISHED = Counter("llmesh_outbox_published_total", "events the outbox published", ["outbox"])
FAILED = Counter("llmesh_outbox_publish_failures_total", "publish attempts that failed (retried later)", ["outbox"])
DROPPED = Counter("llmesh_outbox_dropped_total", "events dropped because the outbox was full", ["outbox"])
PENDING = Gauge("llmesh_outbox_pending", "events waiting in the outbox (in batches or not)", ["outbox"])
BATCHES = Counter("llmesh_outbox_batches_published_total", "batches of events the outbox published", ["outbox"])


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    subject: str
    message: Message
    msg_id: str
    # How many events it carries, and whether it is a batch of them (`pack`ed).
    records: int = 1
    batch: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Batching:
    """How an outbox groups the events put with `batched=True`. Off (each event its own message,
    as without batching) when max_records is 1 or linger_s is 0."""

    pack: Callable[[Sequence[Message]], Message]
    max_records: int = 64
    linger_s: float = 0.02

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.linger_s < 0:
            raise ValueError("max_records must be at least 1 and linger_s at least 0")

    @property
    def enabled(self) -> bool:
        return self.max_records > 1 and self.linger_s > 0


def batch_msg_id(msg_ids: Sequence[str]) -> str:
    """A batch's Nats-Msg-Id, from its events' ids in order: the same events give the same id."""
    return "batch-" + hashlib.blake2b("\n".join(msg_ids).encode(), digest_size=16).hexdigest()


class _Open:
    """Events of one subject waiting for their batch to fill up or for the linger to end."""

    __slots__ = ("messages", "msg_ids", "timer")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.msg_ids: list[str] = []
        self.timer: asyncio.TimerHandle | None = None


class Outbox:
    def __init__(
        self,
        bus: Bus | None,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task],
        *,
        name: str,
        max_events: int = 10_000,
        parallel: int = 64,
        publish_timeout_s: float = 1.0,
        batching: Batching | None = None,
    ):
        self._bus = bus
        self._spawn = spawn
        self._name = name
        self._queue: collections.deque[Event] = collections.deque()
        self._open: dict[str, _Open] = {}
        # Events held: queued, waiting in an open batch, or being published.
        self._held = 0
        self._max_events = max_events
        self._parallel = parallel
        self._timeout_s = publish_timeout_s
        self._batching = batching if batching is not None and batching.enabled else None
        if self._batching is not None and self._batching.max_records > max_events:
            raise ValueError("a batch cannot hold more events than the outbox")
        self._draining: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        PENDING.labels(name).set(0)

    def __len__(self) -> int:
        """Events not published yet (those in open batches and in flight included)."""
        return self._held

    def put(self, subject: str, message: Message, *, msg_id: str, batched: bool = False) -> None:
        """Queues one event and starts a drain unless one runs. Never blocks, never raises.
        batched: grouped with the other batched events of `subject` when the outbox batches."""
        while self._held >= self._max_events and self._drop_oldest():
            pass
        self._held += 1
        batching = self._batching
        if batched and batching is not None:
            waiting = self._open.get(subject)
            if waiting is None:
                waiting = self._open[subject] = _Open()
                waiting.timer = asyncio.get_running_loop().call_later(batching.linger_s, self._seal, subject, waiting)
            waiting.messages.append(message)
            waiting.msg_ids.append(msg_id)
            if len(waiting.messages) >= batching.max_records:
                self._seal(subject, waiting)
        else:
            self._queue.append(Event(subject, message, msg_id))
            self._kick()
        PENDING.labels(self._name).set(self._held)

    def _seal(self, subject: str, waiting: _Open) -> None:
        """Turns an open batch into an event of the queue: from now on its contents are fixed."""
        if self._open.get(subject) is not waiting:
            return  # sealed when it filled up, before its linger ended
        del self._open[subject]
        if waiting.timer is not None:
            waiting.timer.cancel()
        assert self._batching is not None
        packed = self._batching.pack(waiting.messages)
        self._queue.append(Event(subject, packed, batch_msg_id(waiting.msg_ids), len(waiting.messages), batch=True))
        self._kick()

    def _seal_all(self) -> None:
        for subject, waiting in list(self._open.items()):
            self._seal(subject, waiting)

    def _kick(self) -> None:
        if self._bus is not None and (self._draining is None or self._draining.done()):
            self._draining = self._spawn(self.drain())

    def _drop_oldest(self) -> bool:
        """Makes room: drops the oldest queued event (a whole batch), else the oldest event of an
        open batch. False when everything held is being published."""
        if self._queue:
            dropped = self._queue.popleft().records
        elif self._open:
            subject, waiting = next(iter(self._open.items()))
            waiting.messages.pop(0)
            waiting.msg_ids.pop(0)
            if not waiting.messages:
                if waiting.timer is not None:
                    waiting.timer.cancel()
                del self._open[subject]
            dropped = 1
        else:
            return False
        self._held -= dropped
        DROPPED.labels(self._name).inc(dropped)
        log.warning("outbox_full_dropped_oldest", outbox=self._name, max_events=self._max_events, dropped=dropped)
        return True

    async def drain(self) -> int:
        """Publishes queued events until the queue is empty or a publish fails (the rest stay
        queued for the next drain: the app runs one now and then). Open batches wait for their
        linger. Returns how many events went out (each event of a batch counts)."""
        if self._bus is None:
            return 0
        sent = 0
        async with self._lock:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._parallel, len(self._queue)))]
                try:
                    results = await asyncio.gather(
                        *(
                            self._bus.publish(
                                e.subject, e.message, msg_id=e.msg_id, timeout_s=self._timeout_s, attempts=1
                            )
                            for e in batch
                        ),
                        return_exceptions=True,
                    )
                except asyncio.CancelledError:
                    # Cut short (a flush's timeout, shutdown): kept, to be republished under the same ids.
                    self._queue.extendleft(reversed(batch))
                    raise
                published = [e for e, r in zip(batch, results, strict=True) if not isinstance(r, BaseException)]
                failed = [e for e, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
                records = sum(e.records for e in published)
                sent += records
                self._held -= records
                PUBLISHED.labels(self._name).inc(records)
                BATCHES.labels(self._name).inc(sum(e.batch for e in published))
                if failed:
                    FAILED.labels(self._name).inc(len(failed))
                    # Back at the front, in order and unchanged (a batch keeps its id and events).
                    self._queue.extendleft(reversed(failed))
                    while self._held > self._max_events and self._drop_oldest():
                        pass
                    PENDING.labels(self._name).set(self._held)
                    error = next(r for r in results if isinstance(r, BaseException))
                    log.warning("outbox_publish_failed", outbox=self._name, failed=len(failed), error=repr(error))
                    break
                PENDING.labels(self._name).set(self._held)
        return sent

    async def flush(self, timeout_s: float) -> bool:
        """Closes the open batches and drains until empty or `timeout_s` passed (on shutdown, in
        tests). True when empty."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._seal_all()
        while self._held and loop.time() < deadline:
            self._seal_all()
            try:
                await asyncio.wait_for(self.drain(), max(0.01, deadline - loop.time()))
            except TimeoutError:
                break
            if self._held:
                await asyncio.sleep(0.1)
        return not self._held
