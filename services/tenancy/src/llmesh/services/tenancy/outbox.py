"""Publishes outbox events to NATS: right after the change that recorded them, and again from a
periodic job of the app for any that NATS did not take (down, or the process died in between). Each
publish carries the event id as Nats-Msg-Id, so a retry that did reach the stream is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from google.protobuf.message import Message
from llmesh.events.v1 import events_pb2
from llmesh.kit.logging import get_logger
from llmesh.services.tenancy.repository import OutboxEvent, Repository

log = get_logger("llmesh.tenancy.outbox")

EVENT_TYPES: dict[str, type[Message]] = {
    events_pb2.ApiKeyRevoked.DESCRIPTOR.full_name: events_pb2.ApiKeyRevoked,
}

Publish = Callable[[str, Message, str], Awaitable[object]]


def outbox_event(event_id: str, subject: str, message: Message, created_at_us: int) -> OutboxEvent:
    return OutboxEvent(event_id, subject, message.DESCRIPTOR.full_name, message.SerializeToString(), created_at_us)


class OutboxRelay:
    def __init__(self, repository: Repository, publish: Publish):
        self._repository = repository
        self._publish = publish
        self._lock = asyncio.Lock()

    async def flush(self) -> int:
        """Publishes every pending event; returns how many are still pending."""
        async with self._lock:
            pending = await self._repository.pending_events()
            for index, event in enumerate(pending):
                message = EVENT_TYPES[event.event_type].FromString(event.payload)
                try:
                    await self._publish(event.subject, message, event.event_id)
                except Exception as exc:
                    log.warning(
                        "event_publish_deferred", event_id=event.event_id, subject=event.subject, error=repr(exc)
                    )
                    return len(pending) - index
                await self._repository.mark_published(event.event_id)
            return 0
