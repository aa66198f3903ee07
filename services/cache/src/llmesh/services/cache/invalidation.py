"""Invalidation events over JetStream: published by any replica, applied by every replica through
its own durable consumer (so a replica that was down applies what it missed when it returns)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus, NotConfirmed
from llmesh.kit.errors import AlreadyExists, FailedPrecondition
from llmesh.kit.logging import get_logger
from llmesh.kit.outbox import Outbox
from llmesh.kit.streams import CACHE_INVALIDATE, cache_invalidate_subject

ALL_TENANTS = "llmesh.cache.invalidate.>"
_NOT_IN_DURABLE_NAME = re.compile(r"[^A-Za-z0-9_-]")

log = get_logger("llmesh.cache.invalidation")


@dataclasses.dataclass(frozen=True, slots=True)
class Invalidation:
    """Removes a tenant's entries created before `issued_at`: all of them, one use case's, or those
    built from a version of `document_id` older than `version`."""

    event_id: str
    tenant_id: str
    issued_at: float
    use_case: str | None = None
    document_id: str | None = None
    version: int | None = None

    @property
    def scope(self) -> str:
        if self.document_id is not None:
            return "content_version"
        if self.use_case is not None:
            return "use_case"
        return "all"

    @classmethod
    def new(
        cls,
        tenant_id: str,
        *,
        use_case: str | None = None,
        document_id: str | None = None,
        version: int | None = None,
        now: float | None = None,
    ) -> "Invalidation":
        return cls(
            event_id=uuid.uuid4().hex,
            tenant_id=tenant_id,
            issued_at=time.time() if now is None else now,
            use_case=use_case,
            document_id=document_id,
            version=version,
        )


def to_event(inv: Invalidation) -> events_pb2.CacheInvalidated:
    issued = Timestamp()
    issued.FromNanoseconds(round(inv.issued_at * 1e9))
    event = events_pb2.CacheInvalidated(event_id=inv.event_id, tenant_id=inv.tenant_id, issued_at=issued)
    if inv.document_id is not None:
        event.content_version.CopyFrom(common_pb2.ContentVersion(document_id=inv.document_id, version=inv.version or 0))
    elif inv.use_case is not None:
        event.use_case = inv.use_case
    else:
        event.all = True
    return event


def from_event(data: bytes) -> Invalidation:
    event = events_pb2.CacheInvalidated.FromString(data)
    scope = event.WhichOneof("scope")
    if not event.tenant_id or scope is None or not event.HasField("issued_at"):
        raise ValueError(f"malformed CacheInvalidated event {event.event_id!r}: tenant, scope and issued_at required")
    common = dict(event_id=event.event_id, tenant_id=event.tenant_id, issued_at=event.issued_at.ToNanoseconds() / 1e9)
    if scope == "content_version":
        return Invalidation(
            **common, document_id=event.content_version.document_id, version=event.content_version.version
        )
    if scope == "use_case":
        return Invalidation(**common, use_case=event.use_case)
    return Invalidation(**common)


def durable_name(replica_id: str) -> str:
    """A JetStream durable name for the replica: one consumer per replica, so each applies every
    event (replicas sharing a name would split the events between them)."""
    return "cache-" + _NOT_IN_DURABLE_NAME.sub("_", replica_id)[:200]


class InvalidationChannel:
    def __init__(self, bus: Bus, replica_id: str, *, peer_domains: tuple[str, ...] = ()):
        self._bus = bus
        # Other regions' JetStream domains whose invalidations this region's stream copies (ADR 0017).
        self._stream = CACHE_INVALIDATE.sourcing(peer_domains)
        self.replica_id = replica_id
        self.durable = durable_name(replica_id)

    async def ensure_stream(self) -> None:
        await self._bus.ensure_stream(self._stream)

    async def publish(self, inv: Invalidation, *, budget_s: float | None = None, outbox: Outbox | None = None) -> bool:
        """Publishes the event; True once the stream confirmed it. Raises Unavailable when NATS
        certainly did not get it (nothing is applied later). An event that went out unconfirmed
        (NATS frozen or slow: it may be stored already) is handed to `outbox`, which publishes it
        again with the same Nats-Msg-Id until the stream confirms it, and False is returned: the
        invalidation is accepted and will be applied, never left as a maybe (docs/adr/0032)."""
        subject, event = cache_invalidate_subject(inv.tenant_id), to_event(inv)
        try:
            await self._bus.publish(subject, event, msg_id=inv.event_id, budget_s=budget_s)
        except NotConfirmed:
            if outbox is None:
                raise
            outbox.put(subject, event, msg_id=inv.event_id)
            log.warning("invalidation_pending", event_id=inv.event_id, tenant=inv.tenant_id)
            return False
        return True

    async def consume(self, apply: Callable[[Invalidation], Awaitable[object]]) -> None:
        async def handle(data: bytes) -> None:
            try:
                inv = from_event(data)
            except (DecodeError, ValueError) as exc:
                # Acked and dropped: redelivering a malformed event would never succeed.
                log.error("invalidation_malformed", error=str(exc))
                return
            await apply(inv)

        try:
            await self._bus.consume_durable(CACHE_INVALIDATE, ALL_TENANTS, self.durable, handle)
        except AlreadyExists as exc:
            # Two replicas sharing the consumer would each apply only part of the events.
            raise FailedPrecondition(
                f"a running cache replica already uses the replica id {self.replica_id!r}; give each replica "
                "its own LLMESH_CACHE_REPLICA_ID"
            ) from exc

    async def caught_up(self) -> bool:
        """Whether every event in the stream was delivered to this replica and acknowledged."""
        info = await self._bus.js.consumer_info(CACHE_INVALIDATE.name, self.durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    async def wait_caught_up(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Waits until the events published while this replica was down are applied."""
        deadline = time.monotonic() + timeout_s
        while not await self.caught_up():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(poll_s)
        return True
