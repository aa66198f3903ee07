"""Deltas queued while the previous stream message was written go out as one (coalesce.py):
order, the final event, errors and closing are kept, and nothing waits for more text."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit.chat import Message
from llmesh.kit.client import open_channel
from llmesh.kit.errors import Unavailable
from llmesh.kit.server import ServiceApp
from llmesh.kit.testing import assert_eventually, hosted
from llmesh.kit.vocabulary import FinishReason
from llmesh.services.inference.backend import (
    Backend,
    BackendCompletion,
    BackendLoad,
    GenerationRequest,
    ModelInfo,
    TextDelta,
)
from llmesh.services.inference.coalesce import coalesce_deltas
from llmesh.services.inference.core import InferenceEngine
from llmesh.services.inference.servicer import SERVICE_NAME, InferenceServicer
from prometheus_client import REGISTRY

from services.inference.tests.conftest import inference_settings

pytestmark = pytest.mark.timeout(10)

END = object()  # stands for the final event (a Completion): never joined


class Source:
    """An event source the test drives: `put` hands it events; it records being closed."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self.sent = 0

    def put(self, *events) -> None:
        for event in events:
            self.queue.put_nowait(event)

    async def events(self):
        try:
            while True:
                event = await self.queue.get()
                if isinstance(event, BaseException):
                    raise event
                self.sent += 1
                yield event
                if event is END:
                    return
        finally:
            self.closed = True


async def test_the_first_delta_leaves_without_waiting_for_more():
    source = Source()
    async with contextlib.aclosing(coalesce_deltas(source.events())) as events:
        source.put(TextDelta("Hel"))
        assert await asyncio.wait_for(anext(events), 2) == TextDelta("Hel")
        source.put(TextDelta("lo"))
        assert await asyncio.wait_for(anext(events), 2) == TextDelta("lo")
        source.put(END)
        assert await asyncio.wait_for(anext(events), 2) is END
        with pytest.raises(StopAsyncIteration):
            await anext(events)


async def test_deltas_queued_while_the_consumer_was_busy_are_joined_in_order():
    source = Source()
    async with contextlib.aclosing(coalesce_deltas(source.events())) as events:
        source.put(TextDelta("a"))
        assert await anext(events) == TextDelta("a")
        # The consumer is "writing" while four deltas and the end arrive.
        source.put(TextDelta("b"), TextDelta("c"), TextDelta("d"), TextDelta("e"), END)
        await assert_eventually(lambda: source.sent == 6, timeout_s=2)
        rest = [event async for event in events]
    assert rest == [TextDelta("bcde"), END]
    assert source.closed


async def test_a_joined_delta_is_bounded():
    source = Source()
    async with contextlib.aclosing(coalesce_deltas(source.events(), max_chars=5)) as events:
        # All queued before the reader starts (with the first request for an event).
        source.put(*(TextDelta("ab") for _ in range(5)), END)
        got = [event async for event in events]
    assert got == [TextDelta("abab"), TextDelta("abab"), TextDelta("ab"), END]


async def test_queued_text_is_sent_before_the_error_that_followed_it():
    source = Source()
    events = coalesce_deltas(source.events())
    source.put(TextDelta("x"), TextDelta("y"), Unavailable("backend died"))
    got = []
    with pytest.raises(Unavailable, match="backend died"):
        async for event in events:
            got.append(event)
    assert "".join(e.text for e in got) == "xy"
    assert source.closed


async def test_closing_the_stream_closes_the_source():
    source = Source()
    events = coalesce_deltas(source.events())
    source.put(TextDelta("x"))
    assert await anext(events) == TextDelta("x")
    await events.aclose()
    assert source.closed, "the generation upstream was not stopped"


async def test_cancelling_the_consumer_closes_the_source():
    source = Source()
    started = asyncio.Event()

    async def consume():
        async with contextlib.aclosing(coalesce_deltas(source.events())) as events:
            async for _ in events:
                started.set()

    task = asyncio.create_task(consume())
    source.put(TextDelta("x"))
    await asyncio.wait_for(started.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed


# -- through the gRPC service ------------------------------------------------------------------

BURST = "burst-model"


class Burst(Backend):
    """Yields `pieces` deltas with nothing awaited between them (as a backend whose network read
    brought several at once), then the completion."""

    name = "burst"

    def __init__(self, pieces: int):
        self.pieces = pieces

    def models(self):
        return [ModelInfo(BURST, self.name, 4096, 4, 4)]

    def load(self, model):
        return BackendLoad(0, 0)

    async def generate(self, request):
        for i in range(self.pieces):
            yield TextDelta(f"t{i} ")
        yield BackendCompletion(5, self.pieces, FinishReason.LENGTH)


class BurstInference(ServiceApp):
    name = "inference"

    def __init__(self, pieces: int, coalesce: bool):
        self.engine = InferenceEngine([Burst(pieces)])
        self.coalesce = coalesce

    def register(self, server):
        servicer = InferenceServicer(self.engine, coalesce=self.coalesce)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    async def start(self):
        await self.engine.start()


def ttft_count() -> float:
    labels = {"model": BURST, "backend": "burst"}
    return REGISTRY.get_sample_value("llmesh_inference_time_to_first_token_seconds_count", labels) or 0.0


@pytest.mark.parametrize("coalesce", [True, False])
async def test_the_service_sends_a_burst_in_fewer_messages_with_the_same_text_and_usage(coalesce):
    pieces = 40
    request = inference_pb2.GenerateRequest(
        model=BURST, messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")], max_tokens=64
    )
    before = ttft_count()
    settings = inference_settings()
    async with hosted(BurstInference(pieces, coalesce), settings) as host, open_channel(host.address) as channel:
        responses = [r async for r in inference_pb2_grpc.InferenceServiceStub(channel).Generate(request, timeout=10)]
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[-1] == "completion" and "completion" not in kinds[:-1]
    assert "".join(r.delta for r in responses[:-1]) == "".join(f"t{i} " for i in range(pieces))
    completion = responses[-1].completion
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, pieces)
    assert completion.finish_reason == common_pb2.FINISH_REASON_LENGTH
    if coalesce:
        assert len(responses) - 1 < pieces, "nothing was joined"
    else:
        assert len(responses) - 1 == pieces
    assert ttft_count() - before == 1


async def test_the_first_token_time_is_recorded_when_the_caller_leaves_at_the_first_delta():
    engine = InferenceEngine([Burst(3)])
    await engine.start()
    before = ttft_count()
    request = GenerationRequest(BURST, (Message("user", "hi"),), 8)
    async with contextlib.aclosing(engine.generate(request)) as events:
        assert isinstance(await anext(events), TextDelta)
    assert ttft_count() - before == 1
