"""gRPC face of the inference service: validate and convert (convert.py), call the engine, convert back."""

from __future__ import annotations

import contextlib

from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit.identity import require_some_tenant
from llmesh.kit.interceptors import REQUEST_ID_KEY
from llmesh.kit.logging import bind_contextvars
from llmesh.services.inference.backend import TextDelta
from llmesh.services.inference.coalesce import coalesce_deltas
from llmesh.services.inference.convert import completion_to_proto, generation_request_from_proto, model_info_to_proto
from llmesh.services.inference.core import InferenceEngine

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: InferenceEngine, *, coalesce: bool = True):
        self._engine = engine
        # Deltas queued while the previous message was written go out as one (coalesce.py).
        self._coalesce = coalesce

    async def Generate(self, request, context):
        generation = generation_request_from_proto(request)
        require_some_tenant()  # the router generates for a tenant, whose token it forwards
        bind_contextvars(model=generation.model, request_id=generation.request_id)
        # Only a request id the caller chose (the field or x-request-id) names a request that may
        # come again; the id the interceptor makes up for a call without one never does.
        replayable = bool(request.request_id) or any(
            key == REQUEST_ID_KEY and value for key, value in (context.invocation_metadata() or ())
        )
        events = self._engine.generate(generation, replayable=replayable)
        if self._coalesce:
            events = coalesce_deltas(events)
        async with contextlib.aclosing(events):
            async for event in events:
                if type(event) is TextDelta:
                    yield inference_pb2.GenerateResponse(delta=event.text)
                else:
                    yield inference_pb2.GenerateResponse(completion=completion_to_proto(event))

    async def ListModels(self, request, context):
        return inference_pb2.ListModelsResponse(models=[model_info_to_proto(s) for s in self._engine.models()])
