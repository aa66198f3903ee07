"""Wiring of the inference service: the local llama.cpp backend, and an OpenAI-compatible API
when one is configured, behind the engine."""

from __future__ import annotations

import grpc
from llmesh.inference.v1 import inference_pb2_grpc
from llmesh.kit.config import ConfigError
from llmesh.kit.server import ServiceApp
from llmesh.services.inference.backend import Backend
from llmesh.services.inference.core import InferenceEngine
from llmesh.services.inference.llama_cpp_backend import LlamaCppBackend, LlamaCppConfig
from llmesh.services.inference.openai_backend import OpenAIBackend, OpenAIModel
from llmesh.services.inference.servicer import SERVICE_NAME, InferenceServicer
from llmesh.services.inference.settings import InferenceSettings, parse_openai_models


class InferenceApp(ServiceApp):
    name = "inference"

    def __init__(self, settings: InferenceSettings):
        self.settings = settings
        self.local_backend = LlamaCppBackend(
            LlamaCppConfig(
                model_name=settings.model_name,
                model_path=settings.model_path,
                context_length=settings.context_length,
                threads=settings.threads,
                max_concurrency=settings.max_concurrency,
                max_queue=settings.max_queue,
                retry_after_s=settings.retry_after_s,
                chat_format=settings.chat_format,
            )
        )
        backends: list[Backend] = [self.local_backend]
        self.openai_backend = openai_backend(settings)
        if self.openai_backend is not None:
            backends.append(self.openai_backend)
        self.engine = InferenceEngine(backends)

    def register(self, server: grpc.aio.Server):
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(self.engine), server)
        return [SERVICE_NAME]

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.close()


def openai_backend(settings: InferenceSettings) -> OpenAIBackend | None:
    """The OpenAI-compatible API backend the settings describe; None when no URL is set."""
    if not settings.openai_url:
        return None
    if not settings.openai_models:
        raise ConfigError("LLMESH_INFERENCE_OPENAI_MODELS must name at least one model when OPENAI_URL is set")
    return OpenAIBackend(
        settings.openai_url,
        [
            OpenAIModel(
                name=name,
                remote_model=remote,
                context_length=context_length,
                max_concurrency=settings.openai_max_concurrency,
                max_queue=settings.openai_max_queue,
            )
            for name, remote, context_length in parse_openai_models(settings.openai_models)
        ],
        api_key=settings.openai_api_key,
        timeout_s=settings.openai_timeout_s,
        connect_timeout_s=settings.openai_connect_timeout_s,
        read_timeout_s=settings.openai_read_timeout_s,
        max_retries=settings.openai_max_retries,
        retry_after_s=settings.retry_after_s,
    )
