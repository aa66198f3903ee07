"""Inference protos ↔ domain: the generation request (validated) and what the engine reports."""

from __future__ import annotations

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.chat import messages_from_proto, sampling_from_proto
from llmesh.kit.logging import get_contextvars
from llmesh.kit.vocabulary import request_id_from
from llmesh.services.inference.backend import GenerationRequest
from llmesh.services.inference.core import Completion, ModelStatus


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
