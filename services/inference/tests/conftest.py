"""One inference service with the real Gemma 3 270M model for the whole session: loading it
takes seconds, generating a few tokens takes tens of milliseconds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest_asyncio
from llmesh.inference.v1 import inference_pb2_grpc
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings
from llmesh.kit.server import ServiceHost
from llmesh.kit.testing import hosted
from llmesh.services.inference.app import InferenceApp
from llmesh.services.inference.settings import InferenceSettings

MODEL = "gemma-3-270m"
CONTEXT_LENGTH = 1024
MAX_CONCURRENCY = 2
MAX_QUEUE = 1


@dataclass
class Inference:
    app: InferenceApp
    host: ServiceHost
    stub: inference_pb2_grpc.InferenceServiceStub

    def load(self):
        return self.app.local_backend.load(MODEL)


def inference_settings(**overrides) -> InferenceSettings:
    values = dict(
        port=0,
        metrics_port=0,
        context_length=CONTEXT_LENGTH,
        max_concurrency=MAX_CONCURRENCY,
        max_queue=MAX_QUEUE,
        retry_after_s=0.5,
    )
    values.update(overrides)
    return load_settings(InferenceSettings, environ={}, **values)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def inference(nats_url):
    settings = inference_settings(nats_url=nats_url)
    app = InferenceApp(settings)
    async with hosted(app, settings) as host:
        async with open_channel(host.address) as channel:
            yield Inference(app, host, inference_pb2_grpc.InferenceServiceStub(channel))
