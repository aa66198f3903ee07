"""Router protos ↔ domain: request validation (every bad field is INVALID_ARGUMENT with a clear
message) and the streamed events of the router's own contract, then the messages exchanged with
tenancy, classifier, cache and inference (upstreams.py makes the calls)."""

from __future__ import annotations

import uuid

from llmesh.cache.v1 import cache_pb2
from llmesh.classifier.v1 import classifier_pb2
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.chat import messages_from_proto, messages_to_proto, sampling_from_proto, sampling_to_proto
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.vocabulary import FinishReason, Sensitivity, use_case_from
from llmesh.router.v1 import router_pb2
from llmesh.services.router.breakers import BreakerChange, BreakerState
from llmesh.services.router.domain import (
    TIERS,
    AnswerToStore,
    CachedAnswer,
    CacheKey,
    CacheOutcome,
    Classification,
    Completion,
    Delta,
    GenerateCommand,
    HotEntries,
    HotEntry,
    ModelInfo,
    Priority,
    StreamInterruptedError,
    Summary,
    Usage,
)
from llmesh.services.router.exact_l1 import HitCount, Removal
from llmesh.services.router.load import LoadSnapshot

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 256
MAX_MODEL_CHARS = 128

PRIORITIES = {
    # Unlabelled traffic is standard: the interactive class is opted into (ADR 0013).
    router_pb2.PRIORITY_UNSPECIFIED: Priority.STANDARD,
    router_pb2.PRIORITY_INTERACTIVE: Priority.INTERACTIVE,
    router_pb2.PRIORITY_STANDARD: Priority.STANDARD,
    router_pb2.PRIORITY_BATCH: Priority.BATCH,
}
PRIORITY_TO_PROTO = {
    Priority.INTERACTIVE: router_pb2.PRIORITY_INTERACTIVE,
    Priority.STANDARD: router_pb2.PRIORITY_STANDARD,
    Priority.BATCH: router_pb2.PRIORITY_BATCH,
}
USE_CACHE = {
    router_pb2.CACHE_POLICY_UNSPECIFIED: True,
    router_pb2.CACHE_POLICY_ALLOW: True,
    router_pb2.CACHE_POLICY_BYPASS: False,
    router_pb2.CACHE_POLICY_REFRESH: True,
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
            f"priority must be PRIORITY_INTERACTIVE, PRIORITY_STANDARD or PRIORITY_BATCH (got {request.priority})",
            field="priority",
        )
    if request.cache_policy not in USE_CACHE:
        raise InvalidArgument(
            "cache_policy must be CACHE_POLICY_ALLOW, CACHE_POLICY_BYPASS or CACHE_POLICY_REFRESH "
            f"(got {request.cache_policy})",
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
        refresh_cache=request.cache_policy == router_pb2.CACHE_POLICY_REFRESH,
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
            usage=usage_to_proto(event.usage),
            cost_usd=event.cost_usd,
            time_to_first_token_ms=event.time_to_first_token_ms,
            total_time_ms=event.total_time_ms,
            finish_reason=event.finish_reason.to_proto(),
            policy_variant=event.policy_variant,
            attempts=[
                router_pb2.RouteAttempt(
                    model=a.model,
                    backend=a.backend,
                    region=a.region,
                    outcome=a.outcome,
                    reason=a.reason,
                    elapsed_ms=a.elapsed_ms,
                    after_first_token=a.after_first_token,
                )
                for a in event.attempts
            ],
            overflow=router_pb2.Overflow(
                reason=event.overflow.reason,
                utilization=event.overflow.utilization,
                extra_cost_usd=event.overflow.extra_cost_usd,
            )
            if event.overflow is not None
            else None,
            escalation=router_pb2.Escalation(
                from_tier=event.escalation.from_tier,
                from_model=event.escalation.from_model,
                quality_score=event.escalation.quality_score,
                threshold=event.escalation.threshold,
                first_answer_cost_usd=event.escalation.first_answer_cost_usd,
            )
            if event.escalation is not None
            else None,
            region=event.region,
            queue_wait_ms=event.queue_wait_ms,
            priority=PRIORITY_TO_PROTO.get(event.priority, router_pb2.PRIORITY_UNSPECIFIED),
        )
    )


def interrupted_to_proto(error: StreamInterruptedError) -> router_pb2.StreamInterrupted:
    return router_pb2.StreamInterrupted(
        request_id=error.request_id,
        model=error.model,
        usage=usage_to_proto(error.usage),
        cost_usd=error.cost_usd,
        delivered_chars=error.delivered_chars,
    )


def usage_to_proto(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def usage_from_proto(usage: common_pb2.Usage) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens)


# Upstream services' messages.


def classify_request_to_proto(
    command: GenerateCommand, *, tenant_id: str, request_id: str
) -> classifier_pb2.ClassifyRequest:
    return classifier_pb2.ClassifyRequest(
        messages=messages_to_proto(command.messages),
        tenant_id=tenant_id,
        use_case=command.use_case,
        request_id=request_id,
    )


def classification_from_proto(response: classifier_pb2.ClassifyResponse) -> Classification:
    sensitivity = Sensitivity.from_proto(response.sensitivity, unknown=Sensitivity.RESTRICTED)
    if sensitivity is Sensitivity.UNSPECIFIED:
        # An unlabeled answer is treated as the most sensitive.
        sensitivity = Sensitivity.RESTRICTED
    return Classification(int(response.tier), sensitivity, response.confidence, model_version=response.model_version)


def cache_key_to_proto(key: CacheKey) -> cache_pb2.CacheKey:
    return cache_pb2.CacheKey(
        tenant_id=key.tenant_id,
        use_case=key.use_case,
        messages=messages_to_proto(key.messages),
        model=key.pinned_model,
        sampling=sampling_to_proto(key.sampling),
        max_tokens=key.max_tokens,
    )


def lookup_request_to_proto(
    key: CacheKey, *, business_unit: str, exact_only: bool = False, semantic_only: bool = False
) -> cache_pb2.LookupRequest:
    # The router's exact-only lookup is always followed by a semantic one on a miss (speculation,
    # docs/adr/0029, 0039): that one counts the request in the cache's analytics.
    return cache_pb2.LookupRequest(
        key=cache_key_to_proto(key),
        business_unit=business_unit,
        exact_only=exact_only,
        lookup_follows=exact_only,
        semantic_only=semantic_only,
    )


def cached_answer_from_proto(response: cache_pb2.LookupResponse) -> CachedAnswer | None:
    """The answer of a hit; None for any other outcome."""
    if response.outcome not in (cache_pb2.LOOKUP_OUTCOME_EXACT_HIT, cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT):
        return None
    answer = response.answer
    return CachedAnswer(
        content=answer.content,
        model=answer.model,
        backend=answer.backend,
        tier=int(answer.tier),
        usage=usage_from_proto(answer.usage),
        cost_usd=answer.cost_usd,
        semantic=response.outcome == cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT,
        entry_id=answer.entry_id,
        expires_at=answer.expires_at.ToNanoseconds() / 1e9 if answer.HasField("expires_at") else None,
        created_at=answer.created_at.ToNanoseconds() / 1e9,
        pinned=answer.pinned,
        content_versions=tuple((cv.document_id, cv.version) for cv in answer.content_versions),
    )


def store_request_to_proto(
    key: CacheKey, answer: AnswerToStore, *, business_unit: str, sensitivity: Sensitivity
) -> cache_pb2.StoreRequest:
    proto_key = cache_key_to_proto(key)
    proto_key.sensitivity = sensitivity.to_proto()
    return cache_pb2.StoreRequest(
        key=proto_key,
        business_unit=business_unit,
        content=answer.content,
        model=answer.model,
        backend=answer.backend,
        tier=answer.tier,
        usage=usage_to_proto(answer.usage),
        cost_usd=answer.cost_usd,
    )


def model_info_from_proto(model: inference_pb2.ModelInfo) -> ModelInfo:
    priced = model.prompt_price_per_1k > 0 or model.completion_price_per_1k > 0
    return ModelInfo(
        name=model.name,
        backend=model.backend,
        tiers=tuple(sorted({t for t in model.tiers if t in TIERS})),
        self_hosted=model.hosting == inference_pb2.HOSTING_SELF_HOSTED,
        # A model whose allowance is not stated (an older inference) gets public data only.
        max_sensitivity=Sensitivity.from_proto(model.max_sensitivity, unknown=Sensitivity.PUBLIC)
        if model.max_sensitivity
        else Sensitivity.PUBLIC,
        prompt_price_per_1k=model.prompt_price_per_1k if priced else None,
        completion_price_per_1k=model.completion_price_per_1k if priced else None,
        region=model.region,
        fallback=model.fallback,
        max_concurrency=max(0, model.max_concurrency),
    )


def generate_request_to_proto(
    model: str, command: GenerateCommand, *, request_id: str
) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=model,
        messages=messages_to_proto(command.messages),
        max_tokens=command.max_tokens,
        sampling=sampling_to_proto(command.sampling),
        request_id=request_id,
        batch=command.priority is Priority.BATCH,
    )


def generate_event_from_proto(response: inference_pb2.GenerateResponse) -> Delta | Completion:
    if not response.HasField("completion"):
        return Delta(response.delta)
    c = response.completion
    return Completion(
        usage=usage_from_proto(c.usage),
        finish_reason=FinishReason.from_proto(c.finish_reason),
        model=c.model,
        backend=c.backend,
    )


def load_snapshot_from_proto(event: events_pb2.ModelLoad) -> LoadSnapshot:
    return LoadSnapshot(
        model=event.model,
        region=event.region,
        backend=event.backend,
        utilization=event.utilization,
        active=event.active,
        queued=event.queued,
        capacity=event.capacity,
        max_queue=event.max_queue,
        ttft_p50_ms=event.time_to_first_token_p50_ms,
        ttft_p95_ms=event.time_to_first_token_p95_ms,
        tokens_per_second_p50=event.tokens_per_second_p50,
        observed_at=event.observed_at.ToMicroseconds() / 1e6,
        crossed_percent=event.crossed_percent,
        instance=event.instance,
    )


BREAKER_STATES = {
    BreakerState.CLOSED: events_pb2.BreakerStateChanged.STATE_CLOSED,
    BreakerState.OPEN: events_pb2.BreakerStateChanged.STATE_OPEN,
    BreakerState.HALF_OPEN: events_pb2.BreakerStateChanged.STATE_HALF_OPEN,
}


def breaker_event_to_proto(change: BreakerChange, *, replica: str) -> events_pb2.BreakerStateChanged:
    event = events_pb2.BreakerStateChanged(
        event_id=uuid.uuid4().hex,
        router_replica=replica,
        region=change.region,
        model=change.model,
        endpoint=f"{change.region}/{change.model}",
        state=BREAKER_STATES[change.state],
        previous_state=BREAKER_STATES[change.previous],
        reason=change.reason,
        ejection_count=change.ejections,
    )
    if change.ejected_until_wall is not None:
        event.ejected_until.FromNanoseconds(int(change.ejected_until_wall * 1e9))
    event.observed_at.GetCurrentTime()
    return event


def hot_entries_from_proto(response: cache_pb2.ListHotEntriesResponse) -> HotEntries:
    """The cache's hot entries as requests a cache refresh generates again."""
    entries = [
        HotEntry(
            messages=messages_from_proto(hot.key.messages),
            model=hot.key.model,
            sampling=sampling_from_proto(hot.key.sampling),
            max_tokens=hot.key.max_tokens,
            hits=hot.hits,
            expires_at=hot.answer.expires_at.ToNanoseconds() / 1e9,
        )
        for hot in response.entries
    ]
    return HotEntries(entries, list(response.hits_by_hour))


def l1_removal_from_invalidation(data: bytes) -> Removal:
    """A CacheInvalidated event as the L1 of exact answers applies it (docs/adr/0033)."""
    event = events_pb2.CacheInvalidated.FromString(data)
    scope = event.WhichOneof("scope")
    if not event.tenant_id or scope is None or not event.HasField("issued_at"):
        raise ValueError(f"malformed CacheInvalidated event {event.event_id!r}: tenant, scope and issued_at required")
    issued_at = event.issued_at.ToNanoseconds() / 1e9
    if scope == "content_version":
        return Removal(
            event.tenant_id,
            issued_at,
            document_id=event.content_version.document_id,
            version=event.content_version.version,
        )
    if scope == "use_case":
        return Removal(event.tenant_id, issued_at, use_case=event.use_case)
    return Removal(event.tenant_id, issued_at)


def l1_removal_from_entry_removed(data: bytes) -> Removal:
    event = events_pb2.CacheEntryRemoved.FromString(data)
    if not event.tenant_id or not event.entry_id or not event.HasField("removed_at"):
        raise ValueError(f"malformed CacheEntryRemoved event {event.event_id!r}: tenant, entry and removed_at required")
    return Removal(event.tenant_id, event.removed_at.ToNanoseconds() / 1e9, entry_id=event.entry_id)


def hits_report_to_proto(rows: list[HitCount], *, replica: str) -> events_pb2.CacheHitsReported:
    report = events_pb2.CacheHitsReported(event_id=uuid.uuid4().hex, router_replica=replica)
    for row in rows:
        hit = report.hits.add(
            tenant_id=row.tenant_id,
            business_unit=row.business_unit,
            use_case=row.use_case,
            entry_id=row.entry_id,
            hits=row.hits,
            tokens=row.tokens,
            cost_usd=row.cost_usd,
        )
        hit.last_hit_at.FromNanoseconds(int(row.last_hit_at * 1e9))
    report.observed_at.GetCurrentTime()
    return report
