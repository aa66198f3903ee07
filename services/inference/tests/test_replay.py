"""A repeated Generate of a completed generation (same caller request id, same request) is answered
from the replay store, without the backend (docs/adr/0018)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.chat import Message, Sampling
from llmesh.kit.errors import Unavailable
from llmesh.kit.vocabulary import FinishReason
from llmesh.services.inference.backend import (
    Backend,
    BackendCompletion,
    BackendLoad,
    GenerationRequest,
    ModelInfo,
    TextDelta,
)
from llmesh.services.inference.core import Completion, InferenceEngine
from llmesh.services.inference.replay import ReplayStore, fingerprint
from prometheus_client import REGISTRY

from services.inference.tests.conftest import MODEL

pytestmark = pytest.mark.timeout(30)

SCRIPTED = "scripted-replay"


class Scripted(Backend):
    """Answers every request with the same pieces, or fails / hangs as told; counts its calls."""

    name = "scripted"

    def __init__(self, pieces=("Hello", ", ", "sea."), *, fail_after: int | None = None, hang_after: int | None = None):
        self.pieces = pieces
        self.fail_after = fail_after
        self.hang_after = hang_after
        self.calls = 0

    def models(self):
        return [ModelInfo(SCRIPTED, self.name, 4096, 4, 4), ModelInfo(SCRIPTED + "-b", self.name, 4096, 4, 4)]

    def load(self, model):
        return BackendLoad(0, 0)

    async def generate(self, request):
        self.calls += 1
        for i, piece in enumerate(self.pieces):
            if self.fail_after == i:
                raise Unavailable("backend went away")
            if self.hang_after == i:
                await asyncio.Event().wait()
            yield TextDelta(piece)
        yield BackendCompletion(7, len(self.pieces), FinishReason.STOP)


def req(request_id: str = "job-1", model: str = SCRIPTED, **changes) -> GenerationRequest:
    values = dict(
        model=model,
        messages=(Message("user", "Write about the sea."),),
        max_tokens=16,
        sampling=Sampling(temperature=0.7, seed=3),
        request_id=request_id,
    )
    values.update(changes)
    return GenerationRequest(**values)


async def engine(backend: Backend, store: ReplayStore | None) -> InferenceEngine:
    e = InferenceEngine([backend], replay=store)
    await e.start()
    return e


async def run(e: InferenceEngine, request: GenerationRequest, replayable: bool = True):
    events = [event async for event in e.generate(request, replayable=replayable)]
    assert isinstance(events[-1], Completion)
    return [x.text for x in events[:-1]], events[-1]


def replays(model: str = SCRIPTED, backend: str = "scripted") -> float:
    return REGISTRY.get_sample_value("llmesh_inference_replays_total", {"model": model, "backend": backend}) or 0.0


def completed(model: str = SCRIPTED) -> float:
    return (
        REGISTRY.get_sample_value(
            "llmesh_inference_generations_total", {"model": model, "backend": "scripted", "finish_reason": "stop"}
        )
        or 0.0
    )


async def test_same_request_id_and_request_is_replayed_without_the_backend():
    backend = Scripted()
    e = await engine(backend, ReplayStore(16, 60, 10_000))
    replays_before, completed_before = replays(), completed()
    first_pieces, first = await run(e, req())
    second_pieces, second = await run(e, req())
    assert backend.calls == 1
    assert second_pieces == first_pieces == ["Hello", ", ", "sea."]
    assert second == first and second.finish_reason is FinishReason.STOP and second.completion_tokens == 3
    assert replays() - replays_before == 1
    assert completed() - completed_before == 1, "a replay is not a new completed generation"


async def test_another_request_under_the_same_id_generates():
    backend = Scripted()
    e = await engine(backend, ReplayStore(16, 60, 10_000))
    await run(e, req())
    # A router's fallback to another model, or any other change of the request, reuses the id.
    await run(e, req(model=SCRIPTED + "-b"))
    await run(e, req(max_tokens=17))
    await run(e, req(sampling=Sampling(temperature=0.7, seed=4)))
    await run(e, req(sampling=Sampling(temperature=0.7, seed=3, stop=("x",))))
    await run(e, req(messages=(Message("user", "Write about the sky."),)))
    await run(e, req(batch=True))
    assert backend.calls == 7
    # Another id with the same request generates too.
    await run(e, req(request_id="job-2"))
    assert backend.calls == 8


def test_the_fingerprint_ignores_only_the_request_id():
    assert fingerprint(req("a")) == fingerprint(req("b"))
    assert fingerprint(req()) != fingerprint(req(max_tokens=15))
    assert fingerprint(req()) != fingerprint(req(messages=(Message("system", "Write about the sea."),)))


async def test_only_a_callers_request_id_is_recorded():
    backend = Scripted()
    e = await engine(backend, ReplayStore(16, 60, 10_000))
    await run(e, req(), replayable=False)
    await run(e, req(), replayable=False)
    assert backend.calls == 2
    await run(e, req(request_id=""), replayable=True)
    await run(e, req(request_id=""), replayable=True)
    assert backend.calls == 4


async def test_failed_and_cancelled_generations_are_not_recorded():
    failing = Scripted(fail_after=1)
    store = ReplayStore(16, 60, 10_000)
    e = await engine(failing, store)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await run(e, req())
    assert failing.calls == 2 and len(store) == 0

    hanging = Scripted(hang_after=2)
    e = await engine(hanging, store)
    events = e.generate(req(), replayable=True)
    assert (await anext(events)).text == "Hello"
    await events.aclose()  # the caller went away
    task = asyncio.ensure_future(run(e, req()))
    await asyncio.sleep(0.05)
    assert not task.done() and hanging.calls == 2, "a cancelled generation is not replayed"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(store) == 0


async def test_entries_expire_after_the_ttl():
    now = [1000.0]
    backend = Scripted()
    e = await engine(backend, ReplayStore(16, 60, 10_000, clock=lambda: now[0]))
    await run(e, req())
    now[0] += 59
    await run(e, req())
    assert backend.calls == 1
    now[0] += 2  # 61 s after the recording: a replay no longer
    await run(e, req())
    assert backend.calls == 2


async def test_entries_and_characters_are_bounded():
    backend = Scripted()
    store = ReplayStore(2, 60, 10_000)
    e = await engine(backend, store)
    for rid in ("a", "b", "c"):
        await run(e, req(rid))
    assert len(store) == 2 and backend.calls == 3
    await run(e, req("a"))  # the least recently used went first
    assert backend.calls == 4
    await run(e, req("c"))
    assert backend.calls == 4

    # "Hello, sea." is 11 characters, plus the request id.
    store = ReplayStore(100, 60, 30)
    e = await engine(backend, store)
    await run(e, req("x1"))
    await run(e, req("x2"))
    assert len(store) == 2 and store.chars == 26
    await run(e, req("x3"))
    assert len(store) == 2 and store.chars <= 30
    calls = backend.calls
    await run(e, req("x1"))  # evicted for the characters
    assert backend.calls == calls + 1

    # A generation larger than the whole budget is not kept.
    big = Scripted(pieces=("x" * 20, "y" * 20))
    store = ReplayStore(100, 60, 30)
    e = await engine(big, store)
    await run(e, req("big"))
    await run(e, req("big"))
    assert big.calls == 2 and len(store) == 0 and store.chars == 0


@pytest.mark.parametrize(
    "store", [ReplayStore(0, 60, 10_000), ReplayStore(16, 0, 10_000), ReplayStore(16, 60, 0), None]
)
async def test_zero_turns_replay_off(store):
    backend = Scripted()
    e = await engine(backend, store)
    await run(e, req())
    await run(e, req())
    assert backend.calls == 2


def generated_tokens() -> float:
    return (
        REGISTRY.get_sample_value("llmesh_inference_generated_tokens_total", {"model": MODEL, "backend": "llama_cpp"})
        or 0.0
    )


def gemma_request(request_id: str = "") -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=MODEL,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Tell me a story.")],
        max_tokens=8,
        sampling=common_pb2.SamplingParams(temperature=1.0, top_p=0.95),  # unseeded: answers differ
        request_id=request_id,
    )


async def answer(stub, request, metadata=()):
    responses = [r async for r in stub.Generate(request, timeout=30, metadata=metadata)]
    return [r.delta for r in responses[:-1]], responses[-1].completion


async def test_the_service_replays_a_repeated_request_id(inference):
    before_tokens, before_replays = generated_tokens(), replays(MODEL, "llama_cpp")
    deltas, completion = await answer(inference.stub, gemma_request("job-7-3"))
    tokens = generated_tokens() - before_tokens
    assert tokens > 0
    again_deltas, again = await answer(inference.stub, gemma_request("job-7-3"))
    # The same text (a replay's deltas are all there at once: the stream sends them as one).
    assert "".join(again_deltas) == "".join(deltas) and again == completion
    assert generated_tokens() - before_tokens == tokens, "the model ran again"
    assert replays(MODEL, "llama_cpp") - before_replays == 1

    # The x-request-id header is the caller's id as well.
    header = (("x-request-id", "job-7-4"),)
    deltas, _ = await answer(inference.stub, gemma_request(), header)
    tokens = generated_tokens() - before_tokens
    assert "".join((await answer(inference.stub, gemma_request(), header))[0]) == "".join(deltas)
    assert generated_tokens() - before_tokens == tokens
    assert replays(MODEL, "llama_cpp") - before_replays == 2

    # Without an id of the caller's, every call generates.
    await answer(inference.stub, gemma_request())
    await answer(inference.stub, gemma_request())
    assert generated_tokens() - before_tokens > tokens
    assert replays(MODEL, "llama_cpp") - before_replays == 2
