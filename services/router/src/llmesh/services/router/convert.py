"""Router protos ↔ domain: request validation (every bad field is INVALID_ARGUMENT with a clear
message) and the streamed events."""

from __future__ import annotations

from llmesh.common.v1 import common_pb2
from llmesh.kit.chat import messages_from_proto, sampling_from_proto
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.vocabulary import use_case_from
from llmesh.router.v1 import router_pb2
from llmesh.services.router.domain import CacheOutcome, Delta, GenerateCommand, Priority, Summary

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 256
MAX_MODEL_CHARS = 128

PRIORITIES = {
    router_pb2.PRIORITY_UNSPECIFIED: Priority.INTERACTIVE,
    router_pb2.PRIORITY_INTERACTIVE: Priority.INTERACTIVE,
    router_pb2.PRIORITY_BATCH: Priority.BATCH,
}
USE_CACHE = {
    router_pb2.CACHE_POLICY_UNSPECIFIED: True,
    router_pb2.CACHE_POLICY_ALLOW: True,
    router_pb2.CACHE_POLICY_BYPASS: False,
}
CACHE_OUTCOMES = {
    CacheOutcome.MISS: router_pb2.CACHE_OUTCOME_MISS,
    CacheOutcome.EXACT_HIT: router_pb2.CACHE_OUTCOME_EXACT_HIT,
    CacheOutcome.SEMANTIC_HIT: router_pb2.CACHE_OUTCOME_SEMANTIC_HIT,
    CacheOutcome.BYPASSED: router_pb2.CACHE_OUTCOME_BYPASSED,
}


def command_from_proto(request: router_pb2.GenerateRequest) -> GenerateCommand:
    messages = messages_from_proto(request.messages)
    if request.max_tokens < 0 or request.max_tokens > MAX_TOKENS_LIMIT:
        raise InvalidArgument(
            f"max_tokens must be in 1..{MAX_TOKENS_LIMIT}, or 0 for the default {DEFAULT_MAX_TOKENS} "
            f"(got {request.max_tokens})",
            field="max_tokens",
        )
    sampling = sampling_from_proto(request.sampling)
    use_case = use_case_from(request.use_case)
    # proto3 keeps enum numbers it does not know: a newer client's value must not be guessed at.
    if request.priority not in PRIORITIES:
        raise InvalidArgument(
            f"priority must be PRIORITY_INTERACTIVE or PRIORITY_BATCH (got {request.priority})", field="priority"
        )
    if request.cache_policy not in USE_CACHE:
        raise InvalidArgument(
            f"cache_policy must be CACHE_POLICY_ALLOW or CACHE_POLICY_BYPASS (got {request.cache_policy})",
            field="cache_policy",
        )
    model = request.model
    if len(model) > MAX_MODEL_CHARS or (model and (model != model.strip() or not model.isprintable())):
        raise InvalidArgument(
            f"model must be a model name of at most {MAX_MODEL_CHARS} printable characters", field="model"
        )
    return GenerateCommand(
        messages=messages,
        max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
        sampling=sampling,
        use_case=use_case,
        priority=PRIORITIES[request.priority],
        use_cache=USE_CACHE[request.cache_policy],
        pinned_model=model,
    )


def event_to_proto(event: Delta | Summary) -> router_pb2.GenerateResponse:
    if isinstance(event, Delta):
        return router_pb2.GenerateResponse(delta=event.text)
    return router_pb2.GenerateResponse(
        summary=router_pb2.GenerateSummary(
            request_id=event.request_id,
            tier=event.tier,
            model=event.model,
            backend=event.backend,
            cache_outcome=CACHE_OUTCOMES[event.cache_outcome],
            usage=common_pb2.Usage(
                prompt_tokens=event.usage.prompt_tokens, completion_tokens=event.usage.completion_tokens
            ),
            cost_usd=event.cost_usd,
            time_to_first_token_ms=event.time_to_first_token_ms,
            total_time_ms=event.total_time_ms,
            finish_reason=event.finish_reason.to_proto(),
        )
    )
