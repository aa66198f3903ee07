"""The OpenAI-compatible API backend against a real OpenAI-compatible server: llama_cpp.server with
the bundled Gemma 3 270M (one process for the module), directly or behind a proxy that injects
429s, 5xxs, dropped streams and latency."""

from __future__ import annotations

import contextlib
import json
import pathlib
import time

import grpc
import pytest
import pytest_asyncio
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit.chat import Message, Sampling
from llmesh.kit.client import open_channel
from llmesh.kit.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from llmesh.kit.testing import assert_eventually, free_port, hosted
from llmesh.launcher.openai_server import LlamaCppServerProcess
from llmesh.services.inference.app import InferenceApp
from llmesh.services.inference.backend import (
    BackendCompletion,
    FinishReason,
    GenerationRequest,
    TextDelta,
    estimate_prompt_tokens,
)
from llmesh.services.inference.model_files import resolve_model_path
from llmesh.services.inference.openai_backend import (
    OpenAIBackend,
    OpenAIModel,
    parse_retry_after,
)
from prometheus_client import REGISTRY

from services.inference.tests.conftest import inference_settings
from services.inference.tests.faulty_proxy import Fault, FaultyProxy

pytestmark = pytest.mark.timeout(60)

MODEL = "gpt-frontier"
REMOTE = "gemma-remote"
CONTEXT_LENGTH = 512
API_KEY = "stand-in-key"
# The base model loops on this prompt under greedy decoding, so an answer runs to max_tokens.
LOOPING_PROMPT = "Write a short poem about the sea."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("openai") / "llama_cpp_server.log"
    process = LlamaCppServerProcess(
        resolve_model_path(""),
        REMOTE,
        context_length=CONTEXT_LENGTH,
        chat_format="gemma",
        api_key=API_KEY,
        log_path=log_path,
    )
    process.start(timeout_s=60)
    yield process
    process.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def proxy(server):
    faulty = await FaultyProxy("127.0.0.1", server.port).start()
    yield faulty
    await faulty.stop()


@contextlib.asynccontextmanager
async def started(base_url: str, **options):
    options.setdefault("api_key", API_KEY)
    options.setdefault("backoff_s", 0.02)
    options.setdefault("timeout_s", 20.0)
    model = OpenAIModel(
        MODEL,
        REMOTE,
        CONTEXT_LENGTH,
        max_concurrency=options.pop("max_concurrency", 2),
        max_queue=options.pop("max_queue", 2),
    )
    backend = OpenAIBackend(base_url, [model], **options)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def request(content: str = LOOPING_PROMPT, max_tokens: int = 8) -> GenerationRequest:
    return GenerationRequest(
        MODEL, (Message("user", content),), max_tokens, Sampling(temperature=0.0), request_id="req-test"
    )


async def run(backend: OpenAIBackend, req: GenerationRequest | None = None):
    """(deltas, completion) of a whole generation."""
    deltas: list[str] = []
    completion = None
    async for event in backend.generate(req or request()):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            completion = event
    return deltas, completion


def usage_source(source: str) -> float:
    labels = {"model": MODEL, "backend": "openai", "source": source}
    return REGISTRY.get_sample_value("llmesh_inference_usage_source_total", labels) or 0.0


async def test_streams_an_answer_with_usage_counted_here_when_the_provider_sends_none(server):
    estimated_before = usage_source("estimated")
    async with started(server.base_url) as backend:
        deltas, completion = await run(backend, request(max_tokens=8))
        assert backend.load(MODEL).active == 0
    assert len(deltas) >= 4 and all(deltas)
    assert isinstance(completion, BackendCompletion)
    assert completion.finish_reason is FinishReason.LENGTH
    # llama_cpp.server sends no usage chunk although asked to (stream_options.include_usage):
    # one token per streamed chunk, and the local prompt estimate.
    assert completion.completion_tokens == len(deltas) == 8
    assert completion.prompt_tokens == estimate_prompt_tokens(request())
    assert usage_source("estimated") == estimated_before + 1


async def test_usage_comes_from_the_provider_when_it_sends_a_usage_chunk(server, proxy):
    provider_before = usage_source("provider")
    proxy.script(Fault.usage(prompt_tokens=17, completion_tokens=8))
    async with started(proxy.base_url) as backend:
        deltas, completion = await run(backend)
    assert proxy.faults_used == ["usage"]
    assert len(deltas) == 8
    assert (completion.prompt_tokens, completion.completion_tokens) == (17, 8)
    assert usage_source("provider") == provider_before + 1


async def test_429_is_retried_after_the_providers_retry_after(server, proxy):
    proxy.script(Fault.http(429, retry_after="1"))
    async with started(proxy.base_url) as backend:
        deltas, completion = await run(backend)
    assert proxy.faults_used == ["status", "pass"]
    waited = proxy.requests[1] - proxy.requests[0]
    assert 0.95 <= waited < 1.6, waited
    assert deltas and completion.finish_reason is FinishReason.LENGTH


async def test_5xx_is_retried_with_backoff(server, proxy):
    proxy.script(Fault.http(503), Fault.http(502))
    async with started(proxy.base_url, max_retries=2) as backend:
        deltas, completion = await run(backend)
    assert proxy.faults_used == ["status", "status", "pass"]
    assert deltas and completion is not None


async def test_retries_exhausted_on_429_is_resource_exhausted_with_the_retry_delay(server, proxy):
    proxy.script(*[Fault.http(429, retry_after="0.2")] * 3)
    async with started(proxy.base_url, max_retries=2) as backend:
        with pytest.raises(ResourceExhausted) as caught:
            await run(backend)
        assert backend.load(MODEL).active == 0
    assert len(proxy.requests) == 3
    assert caught.value.retry_after_s == pytest.approx(0.2)
    assert "rate limiting" in caught.value.message


async def test_a_retry_after_beyond_the_limit_is_not_waited_for(server, proxy):
    proxy.script(Fault.http(429, retry_after="120"))
    async with started(proxy.base_url, max_retries=3, max_retry_after_s=10) as backend:
        started_at = time.monotonic()
        with pytest.raises(ResourceExhausted) as caught:
            await run(backend)
    assert time.monotonic() - started_at < 1.0
    assert len(proxy.requests) == 1 and caught.value.retry_after_s == pytest.approx(120, abs=1)


async def test_retries_exhausted_on_5xx_is_unavailable(server, proxy):
    proxy.script(*[Fault.http(500)] * 2)
    async with started(proxy.base_url, max_retries=1) as backend:
        with pytest.raises(Unavailable, match="HTTP 500"):
            await run(backend)
    assert len(proxy.requests) == 2


async def test_a_stream_dropped_after_the_first_token_is_not_retried(server, proxy):
    # Event 1 is the role chunk, event 2 the first text.
    proxy.script(Fault.drop_after(2))
    received: list[str] = []
    async with started(proxy.base_url, max_retries=3) as backend:
        with pytest.raises(Unavailable, match="broke off the answer after 1 chunk"):
            async for event in backend.generate(request()):
                assert isinstance(event, TextDelta)
                received.append(event.text)
        assert backend.load(MODEL).active == 0
    assert len(received) == 1
    assert proxy.faults_used == ["drop"]


async def test_a_stream_dropped_before_any_text_is_retried(server, proxy):
    proxy.script(Fault.drop_after(1))
    async with started(proxy.base_url) as backend:
        deltas, completion = await run(backend)
    assert proxy.faults_used == ["drop", "pass"]
    assert len(deltas) == 8 and completion.completion_tokens == 8


async def test_closing_the_iterator_closes_the_upstream_request(server):
    async with started(server.base_url) as backend:
        events = backend.generate(request(max_tokens=400))
        first = await anext(events)
        assert isinstance(first, TextDelta)
        await events.aclose()
        assert backend.load(MODEL).active == 0
        # The server notices the disconnect and stops generating: it serves one request at a
        # time, so the next answer comes at once rather than after ~400 tokens.
        await assert_eventually(
            lambda: "Disconnected from client" in server.log_path.read_text(errors="replace"),
            timeout_s=10,
            message="llama_cpp.server saw the disconnect",
        )
        started_at = time.monotonic()
        deltas, completion = await run(backend, request(max_tokens=4))
        assert completion.completion_tokens == 4
        assert time.monotonic() - started_at < 5


async def test_a_prompt_over_the_context_is_invalid_argument_before_any_call(server, proxy):
    proxy.script()
    async with started(proxy.base_url) as backend:
        with pytest.raises(InvalidArgument, match="context") as caught:
            await run(backend, request("hello " * 2000, max_tokens=16))
    assert caught.value.field == "max_tokens"
    assert proxy.requests == []


async def test_a_provider_400_is_invalid_argument_with_the_providers_message(server, proxy):
    message = "This model's maximum context length is 512 tokens. However, you requested 900 tokens."
    proxy.script(Fault.http(400, body={"error": {"message": message, "type": "invalid_request_error"}}))
    async with started(proxy.base_url) as backend:
        with pytest.raises(InvalidArgument, match="maximum context length is 512"):
            await run(backend)
    assert len(proxy.requests) == 1  # not retried


async def test_a_refused_api_key_is_unavailable_and_says_so(server):
    async with started(server.base_url, api_key="wrong-key") as backend:
        with pytest.raises(Unavailable, match="refused llmesh's API key") as caught:
            await run(backend)
    assert "HTTP 401" in caught.value.message


async def test_connection_refused_is_unavailable_after_the_retries(server):
    async with started(f"http://127.0.0.1:{free_port()}/v1", max_retries=1) as backend:
        with pytest.raises(Unavailable, match="ConnectError"):
            await run(backend)


async def test_a_provider_slower_than_the_deadline_is_deadline_exceeded(server, proxy):
    proxy.script(Fault.delay(3))
    async with started(proxy.base_url, timeout_s=0.5, max_retries=3) as backend:
        started_at = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await run(backend)
    assert time.monotonic() - started_at < 1.5


async def test_concurrency_beyond_slots_and_queue_is_resource_exhausted(server, proxy):
    proxy.script(Fault.delay(1.0))
    async with started(proxy.base_url, max_concurrency=1, max_queue=0) as backend:
        events = backend.generate(request())
        first = await anext(events)  # holds the only slot
        assert isinstance(first, TextDelta) and backend.load(MODEL).active == 1
        with pytest.raises(ResourceExhausted):
            await anext(backend.generate(request()))
        await events.aclose()
        assert backend.load(MODEL).active == 0


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111777 - 5) == pytest.approx(5)
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111777 + 5) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_generate_through_the_inference_service(server):
    catalog = {
        "models": [
            {
                "name": MODEL,
                "backend": "openai",
                "endpoint": server.base_url,
                "remote_model": REMOTE,
                "tiers": [3],
                "hosting": "external",
                "max_sensitivity": "internal",
                "context_length": CONTEXT_LENGTH,
            }
        ]
    }
    settings = inference_settings(openai_api_key=API_KEY, catalog=json.dumps(catalog))
    app = InferenceApp(settings)
    async with hosted(app, settings) as host, open_channel(host.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        models = await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
        served = {m.name: m for m in models.models}
        assert served[MODEL].backend == "openai" and served[MODEL].context_length == CONTEXT_LENGTH
        call = stub.Generate(
            inference_pb2.GenerateRequest(
                model=MODEL,
                messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=LOOPING_PROMPT)],
                max_tokens=6,
                sampling=common_pb2.SamplingParams(temperature=0.0),
            ),
            timeout=30,
        )
        responses = [r async for r in call]
        deltas = [r.delta for r in responses if r.WhichOneof("event") == "delta"]
        completion = responses[-1].completion
        # One delta per token, unless tokens queued up while a message was written (joined then).
        assert 1 < len(deltas) <= 6 and all(deltas) and completion.usage.completion_tokens == 6
        assert completion.backend == "openai" and completion.model == MODEL
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Generate(
                inference_pb2.GenerateRequest(
                    model=MODEL,
                    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hello " * 2000)],
                    max_tokens=16,
                ),
                timeout=10,
            ):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_server_helper_reports_a_failed_start(tmp_path):
    process = LlamaCppServerProcess(tmp_path / "missing.gguf", "x")
    with pytest.raises(FileNotFoundError):
        process.start(timeout_s=5)
    assert pathlib.Path(tmp_path).exists()
