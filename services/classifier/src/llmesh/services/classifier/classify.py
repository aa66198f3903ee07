"""One classification: the complexity score and tier from the complexity model, the sensitivity and
PII from the scanner, under the tenant's policy.

The score reads the last user message only: it is the request the answer must satisfy, while a
system prompt is usually shared boilerplate that would blur the difference between requests (and
the training data has no system prompts). The sensitivity scan reads every message, since PII in
a system prompt or an earlier turn leaves with the request just the same.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from llmesh.kit.chat import Message
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.classifier import metrics
from llmesh.services.classifier.complexity.features import FEATURE_SET
from llmesh.services.classifier.drift import DriftMonitor
from llmesh.services.classifier.policy import ClassifierPolicy
from llmesh.services.classifier.rollout import ModelSelector
from llmesh.services.classifier.sensitivity.findings import Finding
from llmesh.services.classifier.sensitivity.scanner import SensitivityScanner
from llmesh.services.classifier.tiers import decide_tier


@dataclass(frozen=True)
class Classification:
    complexity_score: float
    expected_gain: float
    tier: int
    confidence: float
    sensitivity: Sensitivity
    findings: tuple[Finding, ...]
    model_name: str
    model_version: str
    feature_set: str
    features: tuple[float, ...]
    # During a rollout: the other version's score of the same request (version -> score).
    shadow_scores: tuple[tuple[str, float], ...] = ()


def routing_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    raise ValueError("a request to classify has a user message (validated by the caller)")


class Classifier:
    def __init__(self, models: ModelSelector, scanner: SensitivityScanner, drift: DriftMonitor | None = None):
        self._models = models
        self._scanner = scanner
        self._drift = drift

    def classify(
        self, messages: Sequence[Message], policy: ClassifierPolicy, *, tenant_id: str = "", request_id: str = ""
    ) -> Classification:
        started = time.perf_counter()
        model, other = self._models.pick(tenant_id, request_id)
        prediction = model.predict(routing_text(messages))
        shadow = () if other is None else ((other.version, other.score_one(prediction.features)),)
        decision = decide_tier(prediction.score, policy.thresholds)
        if self._drift is not None:
            self._drift.observe(model.version, prediction.score)
        scan = self._scanner.scan([m.content for m in messages], policy.sensitivity)
        metrics.CLASSIFY_SECONDS.labels(model.version).observe(time.perf_counter() - started)
        metrics.TIERS.labels(str(decision.tier), model.version).inc()
        metrics.SENSITIVITY.labels(scan.level.name.lower()).inc()
        for finding in scan.findings:
            metrics.PII_FOUND.labels(finding.kind.value).inc()
        return Classification(
            complexity_score=prediction.score,
            expected_gain=prediction.expected_gain,
            tier=decision.tier,
            confidence=calibrated
            if (calibrated := model.confidence(prediction.score, decision.tier)) is not None
            else decision.confidence,
            sensitivity=scan.level,
            findings=scan.findings,
            model_name=model.name,
            model_version=model.version,
            feature_set=FEATURE_SET,
            features=prediction.features,
            shadow_scores=shadow,
        )
