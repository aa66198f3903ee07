"""Classifier protos ↔ domain: request validation (every bad field is INVALID_ARGUMENT with a clear
message) and the classification as the contract reports it."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from llmesh.classifier.v1 import classifier_pb2
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.chat import Message, messages_from_proto
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.streams import CLASSIFIER_ROLLOUT_SUBJECT
from llmesh.kit.vocabulary import request_id_from, tenant_id_from, use_case_from
from llmesh.services.classifier.classify import Classification
from llmesh.services.classifier.feedback import Outcome
from llmesh.services.classifier.rollout import Comparison
from llmesh.services.classifier.sensitivity.findings import PiiKind

MAX_COMMENT_CHARS = 4000
MAX_CLASSIFY_CHARS = 64_000

_PII_KIND = {
    PiiKind.EMAIL: classifier_pb2.PII_KIND_EMAIL,
    PiiKind.PHONE: classifier_pb2.PII_KIND_PHONE,
    PiiKind.PAYMENT_CARD: classifier_pb2.PII_KIND_PAYMENT_CARD,
    PiiKind.IBAN: classifier_pb2.PII_KIND_IBAN,
    PiiKind.NATIONAL_ID: classifier_pb2.PII_KIND_NATIONAL_ID,
    PiiKind.SECRET: classifier_pb2.PII_KIND_SECRET,
    PiiKind.TENANT_TERM: classifier_pb2.PII_KIND_TENANT_TERM,
}
_TIER = {1: common_pb2.TIER_1, 2: common_pb2.TIER_2, 3: common_pb2.TIER_3}


@dataclass(frozen=True, slots=True)
class ClassifyCall:
    messages: tuple[Message, ...]
    tenant_id: str  # optional: empty
    use_case: str  # optional: empty
    request_id: str  # optional: empty


@dataclass(frozen=True, slots=True)
class FeedbackCall:
    request_id: str
    tenant_id: str  # optional: empty
    rating: int
    comment: str


def _optional_tenant_id(value: str) -> str:
    return tenant_id_from(value) if value else ""


def _optional_use_case(value: str) -> str:
    # The mesh's use-case rule: the router forwards its callers' use cases here.
    return use_case_from(value) if value else ""


def classify_from_proto(request: classifier_pb2.ClassifyRequest) -> ClassifyCall:
    messages = messages_from_proto(request.messages, max_total_chars=MAX_CLASSIFY_CHARS)
    tenant_id = _optional_tenant_id(request.tenant_id)
    use_case = _optional_use_case(request.use_case)
    if use_case and not tenant_id:
        raise InvalidArgument("use_case needs a tenant_id (use cases are per tenant)", field="use_case")
    return ClassifyCall(messages, tenant_id, use_case, request_id_from(request.request_id))


def feedback_from_proto(request: classifier_pb2.FeedbackRequest) -> FeedbackCall:
    request_id = request_id_from(request.request_id, required=True)
    tenant_id = _optional_tenant_id(request.tenant_id)
    if request.rating not in (-1, 0, 1):
        raise InvalidArgument(
            f"rating must be -1 (bad), 0 (neutral) or 1 (good) (got {request.rating})", field="rating"
        )
    if len(request.comment) > MAX_COMMENT_CHARS:
        raise InvalidArgument(
            f"comment has {len(request.comment)} characters; the limit is {MAX_COMMENT_CHARS}", field="comment"
        )
    return FeedbackCall(request_id, tenant_id, request.rating, request.comment)


def classification_to_proto(result: Classification) -> classifier_pb2.ClassifyResponse:
    return classifier_pb2.ClassifyResponse(
        complexity_score=result.complexity_score,
        tier=_TIER[result.tier],
        confidence=result.confidence,
        sensitivity=result.sensitivity.to_proto(),
        pii=[
            classifier_pb2.PiiSpan(
                kind=_PII_KIND[f.kind], message_index=f.message_index, start=f.start, end=f.end, detail=f.detail
            )
            for f in result.findings
        ],
        model_name=result.model_name,
        model_version=result.model_version,
    )


ROLLOUT_SUBJECT = CLASSIFIER_ROLLOUT_SUBJECT


def model_loaded_event(version: str) -> events_pb2.ClassifierModelLoaded:
    event = events_pb2.ClassifierModelLoaded(event_id=uuid.uuid4().hex, version=version)
    event.occurred_at.GetCurrentTime()
    return event


def rollout_event(
    decision: str,
    *,
    current: str,
    candidate: str,
    share: float = 0.0,
    comparison: Comparison | None = None,
    reason: str = "",
) -> events_pb2.ClassifierRolloutChanged:
    def finite(x: float) -> float:
        return x if math.isfinite(x) else 0.0

    event = events_pb2.ClassifierRolloutChanged(
        event_id=uuid.uuid4().hex,
        current_version=current,
        candidate_version=candidate,
        decision=decision,
        share=share,
        reason=reason,
    )
    if comparison is not None:
        event.current_apgr = finite(comparison.current_apgr)
        event.candidate_apgr = finite(comparison.candidate_apgr)
        event.difference_low = finite(comparison.difference_low)
        event.difference_high = finite(comparison.difference_high)
        event.labelled = comparison.labelled
    event.occurred_at.FromNanoseconds(time.time_ns())
    return event


_OUTCOME_SOURCE = {
    events_pb2.RoutingOutcome.VERDICT_ESCALATED: "escalation",
    events_pb2.RoutingOutcome.VERDICT_FAILED_KEPT: "quality_fail",
    events_pb2.RoutingOutcome.VERDICT_PASSED: "quality_pass",
}


def outcome_from_event(event: events_pb2.RoutingOutcome) -> Outcome:
    """The label a RoutingOutcome carries; ValueError when it carries none (no request id, an
    unknown verdict, a sample rate outside (0, 1])."""
    if not event.request_id:
        raise ValueError("routing outcome without a request_id")
    source = _OUTCOME_SOURCE.get(event.verdict)
    if source is None:
        raise ValueError(f"routing outcome with verdict {event.verdict}")
    rate = event.sample_rate or 1.0  # an event from a router that does not sample
    if not 0.0 < rate <= 1.0 or not math.isfinite(event.quality_score):
        raise ValueError(f"routing outcome with sample_rate {event.sample_rate} or quality_score {event.quality_score}")
    return Outcome(event.request_id, event.tenant_id, source, event.quality_score, weight=1.0 / rate)
