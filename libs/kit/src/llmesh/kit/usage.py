"""The usage stream's messages (stream LLMESH_USAGE, subjects llmesh.usage.<tenant>): a router
publishes its requests' UsageRecorded together, as one UsageRecordedBatch per tenant subject
(docs/adr/0035); a router of an older release, or one with batching off, one UsageRecorded per
request. The Bus's type header tells them apart; a message without it is a single record.

Every reader of the stream (the ledger, `llmesh policy experiment report`, tests) goes through
`usage_records`, and treats each record as if it came alone (the ledger keys them by request id)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.message import Message
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import TYPE_HEADER

BATCH_TYPE = events_pb2.UsageRecordedBatch.DESCRIPTOR.full_name


def usage_records(data: bytes, headers: Mapping[str, str] | None) -> list[events_pb2.UsageRecorded]:
    """The records one message of the usage stream carries. Raises DecodeError when unreadable."""
    if headers and headers.get(TYPE_HEADER) == BATCH_TYPE:
        return list(events_pb2.UsageRecordedBatch.FromString(data).records)
    return [events_pb2.UsageRecorded.FromString(data)]


def pack_usage(records: Sequence[Message]) -> events_pb2.UsageRecordedBatch:
    """The batch of `records` (UsageRecorded), in order: the Outbox's `pack` for usage records."""
    return events_pb2.UsageRecordedBatch(records=records)
