"""Inference protos ↔ domain: the generation request (validated) and what the engine reports."""

from __future__ import annotations

import uuid

from google.protobuf import timestamp_pb2
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.chat import messages_from_proto, sampling_from_proto
from llmesh.kit.logging import get_contextvars
from llmesh.kit.vocabulary import request_id_from
from llmesh.services.inference.backend import GenerationRequest
from llmesh.services.inference.catalog import Hosting
from llmesh.services.inference.core import Completion, ModelStatus

_HOSTING = {
    Hosting.SELF_HOSTED: inference_pb2.HOSTING_SELF_HOSTED,
    Hosting.EXTERNAL: inference_pb2.HOSTING_EXTERNAL,
}


def generation_request_from_proto(request: inference_pb2.GenerateRequest) -> GenerationRequest:
    request_id = request_id_from(request.request_id)
    return GenerationRequest(
        model=request.model,
        messages=messages_from_proto(request.messages),
        max_tokens=request.max_tokens,
        sampling=sampling_from_proto(request.sampling),
        # The field wins; else the x-request-id the interceptor bound, so worker logs carry one.
        request_id=request_id or get_contextvars().get("request_id", ""),
        batch=request.batch,
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
    message = inference_pb2.ModelInfo(
        name=info.name,
        backend=info.backend,
        context_length=info.context_length,
        max_concurrency=info.max_concurrency,
        active_requests=status.load.active,
        queued_requests=status.load.queued,
        max_queue=info.max_queue,
        capacity=status.capacity,
        utilization=status.utilization,
    )
    entry = status.entry
    if entry is not None:
        message.tiers.extend(entry.tiers)
        message.region = entry.region
        message.hosting = _HOSTING[entry.hosting]
        message.max_sensitivity = entry.max_sensitivity.to_proto()
        message.prompt_price_per_1k = entry.prompt_price_per_1k
        message.completion_price_per_1k = entry.completion_price_per_1k
        message.gpu_hour_cost = entry.gpu_hour_cost
        message.endpoint = entry.endpoint
        message.remote_model = entry.remote_model
        message.batch_model = entry.batch_model
        message.fallback = entry.fallback
    if status.latency is not None:
        latency = status.latency
        message.latency.CopyFrom(
            inference_pb2.LatencyStats(
                window_s=latency.window_s,
                samples=latency.samples,
                time_to_first_token_p50_ms=latency.ttft_p50_ms,
                time_to_first_token_p95_ms=latency.ttft_p95_ms,
                tokens_per_second_p50=latency.tokens_per_second_p50,
            )
        )
    return message


def model_load_to_proto(
    status: ModelStatus, region: str, crossed_percent: int, instance: str = ""
) -> events_pb2.ModelLoad:
    observed_at = timestamp_pb2.Timestamp()
    observed_at.GetCurrentTime()
    latency = status.latency
    return events_pb2.ModelLoad(
        event_id=uuid.uuid4().hex,
        model=status.info.name,
        region=region,
        backend=status.info.backend,
        utilization=status.utilization,
        active=status.load.active,
        queued=status.load.queued,
        capacity=status.capacity,
        max_queue=status.info.max_queue,
        time_to_first_token_p50_ms=latency.ttft_p50_ms if latency else 0.0,
        time_to_first_token_p95_ms=latency.ttft_p95_ms if latency else 0.0,
        tokens_per_second_p50=latency.tokens_per_second_p50 if latency else 0.0,
        window_s=latency.window_s if latency else 0.0,
        observed_at=observed_at,
        crossed_percent=crossed_percent,
        instance=instance,
    )
