"""Wiring of the inference service: the local llama.cpp backend behind the engine."""

from __future__ import annotations

import grpc
from llmesh.inference.v1 import inference_pb2_grpc
from llmesh.kit.server import ServiceApp
from llmesh.services.inference.core import InferenceEngine
from llmesh.services.inference.llama_cpp_backend import LlamaCppBackend, LlamaCppConfig
from llmesh.services.inference.servicer import SERVICE_NAME, InferenceServicer
from llmesh.services.inference.settings import InferenceSettings


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
        self.engine = InferenceEngine([self.local_backend])

    def register(self, server: grpc.aio.Server):
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(self.engine), server)
        return [SERVICE_NAME]

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.close()
