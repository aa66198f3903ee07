"""gRPC face of the inference service: validate and convert, call the engine, convert back."""

from __future__ import annotations

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit.chat import messages_from_proto, sampling_from_proto
from llmesh.kit.logging import bind_contextvars, get_contextvars
from llmesh.kit.vocabulary import request_id_from
from llmesh.services.inference.backend import GenerationRequest, TextDelta
from llmesh.services.inference.engine import Completion, InferenceEngine, ModelStatus


def generation_request_from_proto(request: inference_pb2.GenerateRequest) -> GenerationRequest:
    request_id = request_id_from(request.request_id)
    return GenerationRequest(
        model=request.model,
        messages=messages_from_proto(request.messages),
        max_tokens=request.max_tokens,
        sampling=sampling_from_proto(request.sampling),
        # The field wins; else the x-request-id the interceptor bound, so worker logs carry one.
        request_id=request_id or get_contextvars().get("request_id", ""),
    )


def completion_to_proto(completion: Completion) -> inference_pb2.GenerateCompletion:
    return inference_pb2.GenerateCompletion(
        usage=common_pb2.Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens),
        finish_reason=completion.finish_reason.to_proto(),
        time_to_first_token_ms=completion.time_to_first_token_ms,
        total_time_ms=completion.total_time_ms,
        model=completion.model,
        backend=completion.backend,
    )


def model_info_to_proto(status: ModelStatus) -> inference_pb2.ModelInfo:
    info = status.info
    return inference_pb2.ModelInfo(
        name=info.name,
        backend=info.backend,
        context_length=info.context_length,
        max_concurrency=info.max_concurrency,
        active_requests=status.load.active,
        queued_requests=status.load.queued,
        max_queue=info.max_queue,
    )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: InferenceEngine):
        self._engine = engine

    async def Generate(self, request, context):
        generation = generation_request_from_proto(request)
        bind_contextvars(model=generation.model, request_id=generation.request_id)
        async for event in self._engine.generate(generation):
            if isinstance(event, TextDelta):
                yield inference_pb2.GenerateResponse(delta=event.text)
            else:
                yield inference_pb2.GenerateResponse(completion=completion_to_proto(event))

    async def ListModels(self, request, context):
        return inference_pb2.ListModelsResponse(models=[model_info_to_proto(s) for s in self._engine.models()])
