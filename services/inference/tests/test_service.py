"""The inference service over gRPC, with the real model."""

from __future__ import annotations

import gc
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llama_cpp._internals import LlamaSampler
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.testing import assert_eventually
from prometheus_client import REGISTRY

from services.inference.tests.conftest import CONTEXT_LENGTH, MAX_CONCURRENCY, MAX_QUEUE, MODEL

pytestmark = pytest.mark.timeout(60)

# The base model loops on this prompt under greedy decoding instead of ending its answer, so a
# long generation really runs long.
LOOPING_PROMPT = "Write a short poem about the sea."


def user(content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=content)


def request(content: str = LOOPING_PROMPT, *, max_tokens: int = 12, **sampling) -> inference_pb2.GenerateRequest:
    sampling.setdefault("temperature", 0.0)
    return inference_pb2.GenerateRequest(
        model=MODEL,
        messages=[user(content)],
        max_tokens=max_tokens,
        sampling=common_pb2.SamplingParams(**sampling),
    )


async def collect(stub, req, **kw) -> tuple[list[tuple[float, inference_pb2.GenerateResponse]], float]:
    started = time.perf_counter()
    received = []
    async for response in stub.Generate(req, timeout=30, **kw):
        received.append((time.perf_counter() - started, response))
    return received, started


def split(received) -> tuple[str, list[str], inference_pb2.GenerateCompletion]:
    deltas = [r.delta for _, r in received if r.WhichOneof("event") == "delta"]
    completions = [r.completion for _, r in received if r.WhichOneof("event") == "completion"]
    assert len(completions) == 1 and received[-1][1].WhichOneof("event") == "completion"
    return "".join(deltas), deltas, completions[0]


def generated_tokens() -> float:
    return (
        REGISTRY.get_sample_value("llmesh_inference_generated_tokens_total", {"model": MODEL, "backend": "llama_cpp"})
        or 0.0
    )


async def test_streams_deltas_before_the_completion(inference):
    received, _ = await collect(inference.stub, request(max_tokens=16))
    text, deltas, completion = split(received)
    assert len(deltas) > 1 and all(deltas) and text.strip()
    first_delta_at = received[0][0]
    completion_at = received[-1][0]
    assert first_delta_at < 0.6 * completion_at, "the first delta must not wait for the whole answer"
    assert completion.model == MODEL and completion.backend == "llama_cpp"
    assert 0 < completion.time_to_first_token_ms <= completion.total_time_ms
    assert completion.total_time_ms <= completion_at * 1000


async def test_usage_counts_come_from_the_tokenizer(inference):
    short, _ = await collect(inference.stub, request("Hi", max_tokens=8))
    _, _, short_completion = split(short)
    long_, _ = await collect(inference.stub, request("Hi " + "tell me about the sea " * 20, max_tokens=8))
    _, long_deltas, long_completion = split(long_)
    assert 0 < short_completion.usage.prompt_tokens < long_completion.usage.prompt_tokens
    # Gemma's turn markup alone is a handful of tokens; the user text adds about one per word.
    assert short_completion.usage.prompt_tokens >= 8
    assert long_completion.usage.prompt_tokens >= short_completion.usage.prompt_tokens + 80
    for completion in (short_completion, long_completion):
        assert 0 < completion.usage.completion_tokens <= 8
    assert long_completion.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert long_completion.usage.completion_tokens == 8
    assert len(long_deltas) <= 8


async def test_stop_sequence_ends_the_answer_before_it(inference):
    free, _ = await collect(inference.stub, request(max_tokens=24))
    text, _, _ = split(free)
    words = text.split()
    assert len(words) >= 4, text
    stop_word = words[3]
    cut, _ = await collect(inference.stub, request(max_tokens=24, stop=[stop_word]))
    cut_text, _, completion = split(cut)
    assert cut_text == text[: text.index(stop_word)]
    assert completion.finish_reason == common_pb2.FINISH_REASON_STOP
    assert completion.usage.completion_tokens < 24


@pytest.mark.parametrize("seed", [1234, 2**64 - 1])
async def test_a_seed_reproduces_a_sampled_answer(inference, seed):
    req = request("Tell me a story.", max_tokens=12, temperature=1.0, top_p=0.95, top_k=50, seed=seed)
    first, _ = await collect(inference.stub, req)
    second, _ = await collect(inference.stub, req)
    assert split(first)[0] == split(second)[0]


async def test_list_models_reports_limits_and_load(inference):
    response = await inference.stub.ListModels(inference_pb2.ListModelsRequest())
    [model] = response.models
    assert model.name == MODEL and model.backend == "llama_cpp"
    assert model.context_length == CONTEXT_LENGTH
    assert model.max_concurrency == MAX_CONCURRENCY and model.max_queue == MAX_QUEUE
    assert model.active_requests == 0 and model.queued_requests == 0

    call = inference.stub.Generate(request(max_tokens=400), timeout=30)
    await call.read()
    busy = await inference.stub.ListModels(inference_pb2.ListModelsRequest())
    assert busy.models[0].active_requests == 1
    call.cancel()
    await assert_eventually(lambda: inference.load().active == 0, timeout_s=5)


async def test_cancelling_the_call_stops_the_worker(inference):
    before = generated_tokens()
    call = inference.stub.Generate(request(max_tokens=900), timeout=60)
    first = await call.read()
    assert first.WhichOneof("event") == "delta"
    assert inference.load().active == 1
    call.cancel()
    # Unstopped, 900 tokens would keep the worker busy for half a minute or more.
    await assert_eventually(lambda: inference.load().active == 0, timeout_s=3, message="worker still running")
    assert generated_tokens() - before < 60


def live_samplers() -> int:
    """llama.cpp sampler chains not yet freed (each holds an n_vocab-sized buffer: 3 MiB here)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, LlamaSampler) and o.sampler is not None)


async def test_requests_and_cancellations_leave_no_per_request_state(inference):
    backend = inference.app.local_backend
    # With the cyclic collector off, nothing but the backend itself can free a finished
    # generation's sampler chain (docs/adr/0040).
    gc.disable()
    try:
        for i in range(6):
            received, _ = await collect(inference.stub, request(f"Say one word about topic {i}.", max_tokens=4))
            assert split(received)[2].usage.completion_tokens > 0
        for _ in range(2):
            call = inference.stub.Generate(request(max_tokens=400), timeout=30)
            await call.read()
            call.cancel()
        await assert_eventually(lambda: inference.load().active == 0, timeout_s=5, message="worker still running")
        assert not backend._stop_flags
        assert all(context._sampler is None for context in backend._contexts)
        assert live_samplers() == 0
    finally:
        gc.enable()


async def test_a_passed_deadline_stops_the_worker(inference):
    before = generated_tokens()
    with pytest.raises(grpc.aio.AioRpcError) as late:
        async for _ in inference.stub.Generate(request(max_tokens=900), timeout=0.5):
            pass
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await assert_eventually(lambda: inference.load().active == 0, timeout_s=3, message="worker still running")
    assert generated_tokens() - before < 60


async def test_full_service_rejects_with_retry_info_then_recovers(inference):
    running = []
    for _ in range(MAX_CONCURRENCY):
        call = inference.stub.Generate(request(max_tokens=900), timeout=60)
        await call.read()
        running.append(call)
    queued = inference.stub.Generate(request(max_tokens=8), timeout=60)
    await assert_eventually(lambda: inference.load().queued == MAX_QUEUE)

    with pytest.raises(grpc.aio.AioRpcError) as full:
        async for _ in inference.stub.Generate(request(max_tokens=8), timeout=10):
            pass
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "capacity" in full.value.details()
    retry = error_details_pb2.RetryInfo()
    detail = rpc_status.from_call(full.value).details[0]  # then the ErrorInfo
    assert detail.Unpack(retry) and retry.retry_delay.ToNanoseconds() > 0

    # The queued request gets the first slot that frees up.
    running[0].cancel()
    responses = [r async for r in queued]
    assert responses[-1].completion.usage.completion_tokens > 0
    running[1].cancel()
    await assert_eventually(lambda: inference.load().active == 0 and inference.load().queued == 0, timeout_s=5)
    received, _ = await collect(inference.stub, request(max_tokens=4))
    assert split(received)[2].usage.completion_tokens == 4


def _with(**changes) -> inference_pb2.GenerateRequest:
    req = request()
    for name, value in changes.items():
        if name == "messages":
            del req.messages[:]
            req.messages.extend(value)
        elif name == "sampling":
            req.sampling.CopyFrom(value)
        else:
            setattr(req, name, value)
    return req


BAD_REQUESTS = {
    "no messages": (_with(messages=[]), grpc.StatusCode.INVALID_ARGUMENT, "messages is empty"),
    "unspecified role": (
        _with(messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_UNSPECIFIED, content="hi")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "role",
    ),
    "unknown role": (
        _with(messages=[common_pb2.ChatMessage(role=42, content="hi")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "role",
    ),
    "blank content": (_with(messages=[user("   ")]), grpc.StatusCode.INVALID_ARGUMENT, "content is empty"),
    "system only": (
        _with(messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content="be nice")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no user message",
    ),
    "oversized": (_with(messages=[user("x" * 70_000)]), grpc.StatusCode.INVALID_ARGUMENT, "limit"),
    "no model": (_with(model=""), grpc.StatusCode.INVALID_ARGUMENT, "model is required"),
    "overlong model": (_with(model="m" * 500), grpc.StatusCode.INVALID_ARGUMENT, "model names"),
    "unknown model": (_with(model="gpt-17"), grpc.StatusCode.NOT_FOUND, "gemma-3-270m"),
    "zero max_tokens": (_with(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be in 1..1024"),
    "negative max_tokens": (_with(max_tokens=-5), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    "max_tokens over context": (
        _with(max_tokens=CONTEXT_LENGTH + 1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_tokens must be in",
    ),
    "prompt + max_tokens over context": (
        _with(messages=[user("tell me about the sea " * 60)], max_tokens=CONTEXT_LENGTH - 50),
        grpc.StatusCode.INVALID_ARGUMENT,
        "context",
    ),
    "temperature": (
        _with(sampling=common_pb2.SamplingParams(temperature=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "temperature",
    ),
    "top_p": (_with(sampling=common_pb2.SamplingParams(top_p=0)), grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    "top_k": (_with(sampling=common_pb2.SamplingParams(top_k=-1)), grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    "too many stops": (
        _with(sampling=common_pb2.SamplingParams(stop=list("abcdef"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "stop",
    ),
    "empty stop": (_with(sampling=common_pb2.SamplingParams(stop=[""])), grpc.StatusCode.INVALID_ARGUMENT, "stop"),
    "overlong request_id": (_with(request_id="r" * 200), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
async def test_bad_generate_requests_are_refused_clearly(inference, case):
    req, code, needle = BAD_REQUESTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in inference.stub.Generate(req, timeout=10):
            pass
    assert refused.value.code() == code
    assert needle in refused.value.details()
    assert inference.load().active == 0


async def test_prompt_overflow_names_the_allowed_max_tokens(inference):
    req, _, _ = BAD_REQUESTS["prompt + max_tokens over context"]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in inference.stub.Generate(req, timeout=10):
            pass
    detail = error_details_pb2.BadRequest()
    rpc_status.from_call(refused.value).details[0].Unpack(detail)
    assert detail.field_violations[0].field == "max_tokens"
    assert "lower max_tokens to at most" in refused.value.details()


async def test_service_keeps_serving_after_errors(inference):
    for req, _, _ in BAD_REQUESTS.values():
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in inference.stub.Generate(req, timeout=10):
                pass
    received, _ = await collect(inference.stub, request(max_tokens=4))
    assert split(received)[2].usage.completion_tokens == 4
    assert (await inference.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)).models


async def test_a_backend_failure_is_unavailable_without_internals_and_frees_the_slot(inference, monkeypatch):
    # A llama.cpp failure cannot be provoked with valid input: injected into the worker.
    def fail(*_args):
        raise RuntimeError("llama_decode returned -3 at 0xdeadbeef")

    monkeypatch.setattr(inference.app.local_backend, "_decode", fail)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in inference.stub.Generate(request(max_tokens=4), timeout=10, metadata=(("x-request-id", "r-42"),)):
            pass
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "request_id=r-42" in failed.value.details() and "0xdeadbeef" not in failed.value.details()
    await assert_eventually(lambda: inference.load().active == 0, timeout_s=3)
    monkeypatch.undo()
    received, _ = await collect(inference.stub, request(max_tokens=4))
    assert split(received)[2].usage.completion_tokens == 4
