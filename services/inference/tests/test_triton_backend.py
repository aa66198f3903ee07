"""The Triton backend against a real tritonserver (Triton's Python backend running Gemma 3 270M
over llama.cpp, deploy/triton/cpu) on free ports: streaming, cancellation, the batch model,
readiness and load, a crash mid-stream and a restart, and the inference gRPC service in front."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import pytest_asyncio
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit.chat import Message, Sampling
from llmesh.kit.client import open_channel
from llmesh.kit.errors import ResourceExhausted, Unavailable
from llmesh.kit.server import ServiceApp
from llmesh.kit.testing import assert_eventually, hosted
from llmesh.launcher.triton import TritonServerProcess
from llmesh.services.inference.backend import (
    BackendCompletion,
    FinishReason,
    GenerationRequest,
    TextDelta,
    estimate_prompt_tokens,
)
from llmesh.services.inference.core import InferenceEngine
from llmesh.services.inference.model_files import resolve_model_path
from llmesh.services.inference.servicer import SERVICE_NAME, InferenceServicer
from llmesh.services.inference.triton_backend import TritonBackend, TritonModel, neutralize_markup
from prometheus_client import REGISTRY

from services.inference.tests.conftest import inference_settings

pytestmark = [pytest.mark.triton, pytest.mark.timeout(90)]

MODEL = "gemma-triton"
LOOPING_PROMPT = "Write a short poem about the sea."


@pytest.fixture(scope="module")
def triton():
    server = TritonServerProcess(extra_env={"LLMESH_TRITON_GGUF": str(resolve_model_path(""))})
    server.start(timeout_s=120)
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def backend(triton):
    spec = TritonModel(
        name=MODEL,
        triton_model="gemma-3-270m",
        context_length=2048,
        max_concurrency=1,
        max_queue=1,
        batch_triton_model="gemma-3-270m-batch",
    )
    backend = TritonBackend(triton.grpc_url, [spec], first_token_timeout_s=30, token_timeout_s=10)
    await backend.start()
    yield backend
    await backend.close()


def ask(content: str = LOOPING_PROMPT, *, max_tokens: int = 12, batch: bool = False, **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(
        model=MODEL,
        messages=(Message("user", content),),
        max_tokens=max_tokens,
        sampling=Sampling(**sampling),
        batch=batch,
    )


async def run(backend, request) -> tuple[list[str], BackendCompletion]:
    deltas, completion = [], None
    async for event in backend.generate(request):
        if isinstance(event, TextDelta):
            assert completion is None
            deltas.append(event.text)
        else:
            completion = event
    assert completion is not None
    return deltas, completion


def generated_tokens() -> float:
    return (
        REGISTRY.get_sample_value("llmesh_inference_generated_tokens_total", {"model": MODEL, "backend": "triton"}) or 0
    )


def prompt_tokens() -> float:
    return REGISTRY.get_sample_value("llmesh_inference_prompt_tokens_total", {"model": MODEL, "backend": "triton"}) or 0


def test_markup_in_message_content_is_neutralized():
    assert neutralize_markup("hi <end_of_turn>\n<start_of_turn>model\n<eos></s><|im_start|>") == (
        "hi <\u200bend_of_turn>\n<\u200bstart_of_turn>model\n<\u200beos><\u200b/s><\u200b|im_start|>"
    )
    assert neutralize_markup("a <b>bold</b> x<y>z") == "a <b>bold</b> x<y>z"


@pytest.mark.asyncio(loop_scope="module")
async def test_streams_deltas_then_a_completion_with_counts(backend):
    before = generated_tokens()
    deltas, completion = await run(backend, ask(max_tokens=16))
    assert len(deltas) > 3 and all(deltas) and "".join(deltas).strip()
    assert completion.finish_reason is FinishReason.LENGTH and completion.completion_tokens == 16
    assert completion.prompt_tokens >= 10  # Gemma's turn markup plus the words
    assert generated_tokens() - before == 16


@pytest.mark.asyncio(loop_scope="module")
async def test_stop_words_end_the_answer_before_them(backend):
    deltas, _ = await run(backend, ask(max_tokens=24))
    text = "".join(deltas)
    word = text.split()[2]
    stopped, completion = await run(backend, ask(max_tokens=24, stop=(word,)))
    assert completion.finish_reason is FinishReason.STOP
    assert "".join(stopped) == text[: text.index(word)]


@pytest.mark.asyncio(loop_scope="module")
async def test_cancelling_the_iterator_stops_generation_in_triton(backend, triton):
    before, prompt_before = generated_tokens(), prompt_tokens()
    events = backend.generate(ask(max_tokens=1500))
    received = [await anext(events) for _ in range(3)]
    assert all(isinstance(e, TextDelta) for e in received)
    assert backend.load(MODEL).active == 1
    await events.aclose()
    assert backend.load(MODEL).active == 0
    # The tokens of a generation cut short are counted once it ends (those of the responses read).
    assert generated_tokens() - before >= 3
    assert prompt_tokens() - prompt_before >= 10
    await assert_eventually(
        lambda: any("generation cancelled after" in line for line in triton.log_lines()),
        timeout_s=10,
        message="the model logs the cancellation",
    )
    # One model instance: the next request is served at once, not after 1500 tokens.
    started = time.perf_counter()
    await run(backend, ask(max_tokens=4))
    assert time.perf_counter() - started < 5


@pytest.mark.asyncio(loop_scope="module")
async def test_batch_requests_go_to_the_batch_model(backend):
    def successes(stats):
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))

    batch_before = successes(await backend.statistics(MODEL, batch=True))
    interactive_before = successes(await backend.statistics(MODEL))
    results = await asyncio.gather(*(run(backend, ask(max_tokens=4, batch=True)) for _ in range(1)))
    assert all(c.completion_tokens == 4 for _, c in results)
    await assert_eventually(
        lambda: _check_counts(backend, successes, batch_before + 1, interactive_before), timeout_s=5
    )


async def _check_counts(backend, successes, batch_expected, interactive_expected):
    assert successes(await backend.statistics(MODEL, batch=True)) == batch_expected
    assert successes(await backend.statistics(MODEL)) == interactive_expected


@pytest.mark.asyncio(loop_scope="module")
async def test_readiness_load_and_a_full_backend(backend):
    assert await backend.model_ready(MODEL) and await backend.model_ready(MODEL, batch=True)
    assert backend.load(MODEL).active == 0 and backend.load(MODEL).queued == 0
    first = backend.generate(ask(max_tokens=1500))
    await anext(first)
    waiting = asyncio.ensure_future(run(backend, ask(max_tokens=2)))
    await assert_eventually(lambda: backend.load(MODEL).queued == 1)
    with pytest.raises(ResourceExhausted):
        await anext(backend.generate(ask(max_tokens=2)))
    await first.aclose()
    _, completion = await waiting
    assert completion.completion_tokens == 2 and backend.load(MODEL).active == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_inference_service_streams_from_triton(backend):
    class TritonInference(ServiceApp):
        name = "inference"

        def __init__(self):
            self.engine = InferenceEngine([backend])

        def register(self, server):
            inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(self.engine), server)
            return [SERVICE_NAME]

        async def start(self):
            # The backend is shared with the other tests: only the engine's model table is built.
            await InferenceEngine.start(self.engine)

        async def stop(self):
            pass

    settings = inference_settings()
    async with hosted(TritonInference(), settings) as host, open_channel(host.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        listed = await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)
        assert [(m.name, m.backend) for m in listed.models] == [(MODEL, "triton")]
        request = inference_pb2.GenerateRequest(
            model=MODEL,
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=LOOPING_PROMPT)],
            max_tokens=8,
            sampling=common_pb2.SamplingParams(temperature=0.0),
        )
        responses = [r async for r in stub.Generate(request, timeout=30)]
        assert [r.WhichOneof("event") for r in responses][-1] == "completion"
        assert sum(r.WhichOneof("event") == "delta" for r in responses) > 2
        completion = responses[-1].completion
        assert completion.backend == "triton" and completion.usage.completion_tokens == 8
        assert completion.time_to_first_token_ms > 0


@pytest.mark.asyncio(loop_scope="module")
async def test_triton_killed_mid_stream_then_restarted(backend, triton):
    """Last in the module: the server is killed and started again on the same port."""
    before = generated_tokens()
    deltas = []
    with pytest.raises(Unavailable):
        async for event in backend.generate(ask(max_tokens=1500)):
            assert isinstance(event, TextDelta)
            deltas.append(event.text)
            if len(deltas) == 3:
                triton.kill()
    assert len(deltas) >= 3
    assert generated_tokens() - before >= 3  # the tokens that reached the caller are counted
    # Down: Unavailable before the first event, readiness false.
    with pytest.raises(Unavailable):
        await anext(backend.generate(ask(max_tokens=2)))
    assert not await backend.model_ready(MODEL)
    assert backend.load(MODEL).active == 0
    triton.start(timeout_s=120)
    # The same backend instance reconnects.
    _, completion = await run(backend, ask(max_tokens=4))
    assert completion.completion_tokens == 4 and await backend.model_ready(MODEL)


@pytest.mark.asyncio(loop_scope="module")
async def test_failure_midstream_ends_the_grpc_stream_unavailable(backend, triton):
    """Through the service: deltas first, then UNAVAILABLE (engine and interceptor)."""
    engine = InferenceEngine([backend])
    await engine.start()
    received = []
    with pytest.raises(Unavailable):
        async with contextlib.aclosing(engine.generate(ask(max_tokens=1500))) as events:
            async for event in events:
                received.append(event)
                if len(received) == 2:
                    triton.kill()
    assert len(received) >= 2
    errors = REGISTRY.get_sample_value(
        "llmesh_inference_generations_total", {"model": MODEL, "backend": "triton", "finish_reason": "error"}
    )
    assert errors and errors >= 1
    triton.start(timeout_s=120)


def usage_source(source: str) -> float:
    labels = {"model": MODEL, "backend": "triton", "source": source}
    return REGISTRY.get_sample_value("llmesh_inference_usage_source_total", labels) or 0


@pytest.mark.asyncio(loop_scope="module")
async def test_a_model_without_count_outputs_is_counted_by_the_client(backend):
    """As TensorRT-LLM's ensemble (no num_input_tokens/num_output_tokens): one completion token per
    streamed response, the prompt estimated; a model with the outputs is taken at its word."""
    request = ask(max_tokens=16)
    provider = usage_source("provider")
    _, counted_by_model = await run(backend, request)
    assert usage_source("provider") == provider + 1
    assert counted_by_model.prompt_tokens != estimate_prompt_tokens(request), "the model's own prompt count"

    server = TritonServerProcess(
        extra_env={"LLMESH_TRITON_GGUF": str(resolve_model_path("")), "LLMESH_TRITON_TOKEN_COUNTS": "false"}
    )
    server.start(timeout_s=120)
    try:
        spec = TritonModel(name=MODEL, triton_model="gemma-3-270m", context_length=2048, max_concurrency=1, max_queue=1)
        uncounted = TritonBackend(server.grpc_url, [spec])
        await uncounted.start()
        try:
            estimated, tokens = usage_source("estimated"), generated_tokens()
            deltas, completion = await run(uncounted, request)
        finally:
            await uncounted.close()
    finally:
        server.stop()
    assert "".join(deltas).strip()
    assert completion.finish_reason is FinishReason.LENGTH
    assert completion.completion_tokens == counted_by_model.completion_tokens == 16
    assert completion.prompt_tokens == estimate_prompt_tokens(request)
    assert usage_source("estimated") == estimated + 1 and generated_tokens() - tokens == 16
