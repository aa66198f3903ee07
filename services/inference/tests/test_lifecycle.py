"""Start-up, shutdown, configuration and the model file, on the real service."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit.client import open_channel
from llmesh.kit.config import ConfigError, load_settings
from llmesh.kit.testing import health_status, starting
from llmesh.services.inference.app import InferenceApp
from llmesh.services.inference.servicer import SERVICE_NAME
from llmesh.services.inference.settings import InferenceSettings

from services.inference.tests.conftest import MODEL, inference_settings

pytestmark = pytest.mark.timeout(60)


def generate_request(max_tokens: int) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=MODEL,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Write a short poem about the sea.")],
        max_tokens=max_tokens,
        sampling=common_pb2.SamplingParams(temperature=0),
    )


async def test_lifecycle_from_loading_to_stop_with_one_slot():
    settings = inference_settings(max_concurrency=1, max_queue=0)
    app = InferenceApp(settings)
    async with starting(app, settings) as (host, start), open_channel(host.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        if not start.done():
            assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        await start
        assert await health_status(channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING

        # One slot, no queue: a client's next request finds the slot its last one freed.
        for _ in range(5):
            responses = [r async for r in stub.Generate(generate_request(2), timeout=10)]
            assert responses[-1].completion.usage.completion_tokens == 2

        call = stub.Generate(generate_request(900), timeout=60)
        assert (await call.read()).delta
        # A stop with no grace: the running generation is cut, its worker ends, stop returns.
        await asyncio.wait_for(host.stop(grace_s=0), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            while await call.read() is not grpc.aio.EOF:
                pass
        assert app.local_backend.load(MODEL).active == 0


async def test_a_missing_model_file_fails_start_with_a_clear_error():
    settings = inference_settings(model_path="/nonexistent/model.gguf")
    with pytest.raises(FileNotFoundError, match="LLMESH_INFERENCE_MODEL_PATH"):
        await InferenceApp(settings).start()


class _StillLoading(InferenceApp):
    """The state between binding the port and the end of the model load, held open."""

    async def start(self) -> None:
        await asyncio.Event().wait()


async def test_calls_before_the_model_is_loaded_are_unavailable():
    settings = inference_settings()
    async with starting(_StillLoading(settings), settings) as (host, _), open_channel(host.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as early:
            async for _ in stub.Generate(generate_request(4), timeout=5):
                pass
        assert early.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)).models == []


def test_settings_are_validated_with_every_problem_named():
    with pytest.raises(ConfigError) as bad:
        load_settings(
            InferenceSettings,
            environ={
                "LLMESH_INFERENCE_THREADS": "0",
                "LLMESH_INFERENCE_MAX_CONCURRENCY": "0",
                "LLMESH_INFERENCE_MAX_QUEUE": "-1",
                "LLMESH_INFERENCE_CONTEXT_LENGTH": "16",
                "LLMESH_INFERENCE_CHAT_FORMAT": "llama-2",
            },
        )
    for name in ("THREADS", "MAX_CONCURRENCY", "MAX_QUEUE", "CONTEXT_LENGTH", "CHAT_FORMAT"):
        assert f"LLMESH_INFERENCE_{name}" in str(bad.value)
    defaults = load_settings(InferenceSettings, environ={})
    assert (defaults.port, defaults.threads, defaults.context_length, defaults.max_concurrency) == (50055, 1, 2048, 2)


def test_model_files_command_is_idempotent_and_prints_the_path():
    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "llmesh.services.inference.model_files"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    first, second = run(), run()
    assert first == second and first.endswith(".gguf")
    with open(first, "rb") as f:
        assert f.read(4) == b"GGUF"
