"""The classifier's use cases as the servicer and the event consumer call them: classify (and record
the request for feedback), take feedback, take a routing outcome. No transport types here."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from llmesh.kit.chat import Message
from llmesh.kit.experiments import VariantPolicies
from llmesh.services.classifier import metrics
from llmesh.services.classifier.classify import Classification, Classifier
from llmesh.services.classifier.feedback import ClassificationRecord, FeedbackStore, Outcome


class ClassifierService:
    def __init__(
        self,
        classifier: Classifier,
        policy: Callable[[str, str], VariantPolicies],
        feedback: FeedbackStore,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self._classifier = classifier
        self._policy = policy
        self._feedback = feedback
        self._clock = clock

    def classify(
        self, messages: Sequence[Message], *, tenant_id: str, use_case: str, request_id: str
    ) -> Classification:
        # Policy experiments: the request's variant (thresholds), as the router picks it for the same request.
        policy, variant = self._policy(tenant_id, use_case).pick(tenant_id, request_id)
        if variant:
            metrics.POLICY_VARIANT.labels(variant).inc()
        result = self._classifier.classify(messages, policy, tenant_id=tenant_id, request_id=request_id)
        if request_id:
            self._feedback.record(
                ClassificationRecord(
                    request_id=request_id,
                    tenant_id=tenant_id,
                    use_case=use_case,
                    created_at=self._clock(),
                    feature_set=result.feature_set,
                    features=result.features,
                    score=result.complexity_score,
                    tier=result.tier,
                    model_version=result.model_version,
                    scores={result.model_version: result.complexity_score, **dict(result.shadow_scores)},
                    policy_variant=variant,
                )
            )
        return result

    def feedback(self, request_id: str, *, tenant_id: str, rating: int, comment: str) -> None:
        self._feedback.add_feedback(request_id, tenant_id, rating, comment)
        metrics.FEEDBACK.labels(str(rating)).inc()

    def outcome(self, outcome: Outcome) -> bool:
        """Stores the router's verdict on a request as its label; False (counted) when this store
        did not classify the request."""
        stored = self._feedback.add_outcome(outcome)
        metrics.OUTCOMES.labels(outcome.source, "stored" if stored else "unknown_request").inc()
        return stored
