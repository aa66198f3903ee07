"""Fewer, larger stream messages when text comes faster than it can be sent: the text deltas that
arrived while the previous message was being written go out as one delta. The window is 0 ms:
only what is already queued is joined, nothing waits for more, so the first delta (and any delta
that finds the writer idle) leaves as soon as it arrives. Order, the final event and errors are
kept: queued text is sent before an error is raised, and closing the stream closes the source
(stopping the generation upstream). Domain code (no grpc)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

from llmesh.services.inference.backend import TextDelta

E = TypeVar("E")

# A joined delta holds at most this many characters (a later delta starts the next one).
MAX_COALESCED_CHARS = 16_384


async def coalesce_deltas(
    events: AsyncIterator[E], *, max_chars: int = MAX_COALESCED_CHARS
) -> AsyncIterator[TextDelta | E]:
    """`events` (TextDelta and other events, e.g. the final completion) with the deltas that are
    queued when the consumer asks for the next event joined into one. `events` is read by a task
    of its own, started on the first request for an event and closed with this iterator."""
    queue: collections.deque = collections.deque()
    waiter: asyncio.Future[None] | None = None
    failure: BaseException | None = None
    ended = False

    def wake() -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read() -> None:
        nonlocal ended, failure
        try:
            async with contextlib.aclosing(events) as source:
                async for event in source:
                    queue.append(event)
                    wake()
        except BaseException as exc:  # handed to the consumer after what was queued before it
            failure = exc
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            ended = True
            wake()

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while True:
            if not queue:
                if ended:
                    if failure is not None:
                        raise failure
                    return
                waiter = asyncio.get_running_loop().create_future()
                await waiter
                waiter = None
                continue
            event = queue.popleft()
            if isinstance(event, TextDelta) and queue and isinstance(queue[0], TextDelta):
                parts = [event.text]
                size = len(event.text)
                while queue and isinstance(queue[0], TextDelta) and size + len(queue[0].text) <= max_chars:
                    text = queue.popleft().text
                    parts.append(text)
                    size += len(text)
                if len(parts) > 1:
                    event = TextDelta("".join(parts))
            yield event
    finally:
        if not reader.done():
            reader.cancel()
        # The source is closed (its generation stopped upstream) before the caller's stream ends.
        with contextlib.suppress(asyncio.CancelledError):
            await reader
