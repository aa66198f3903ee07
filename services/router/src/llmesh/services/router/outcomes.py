"""Routing outcomes as labels for the classifier (ADR 0027).

The quality check (quality.py, ADR 0012) judges every tier-1 answer that has a stronger model to
escalate to. Its verdict is a label for the complexity model that chose tier 1:

  escalated     scored below the line, answered again by tier 2     a strong call paid off
  failed_kept   scored below the line, already streamed (release)   a strong call would have paid off
  passed        scored at or above the line, kept                    the weak model sufficed

Each verdict goes out as a RoutingOutcome on llmesh.classifier.outcome.<region> through an outbox:
`report` never waits and never raises, so a Generate never slows down or fails because of it.
Passes are the bulk of tier-1 traffic and may be sampled (LLMESH_ROUTER_OUTCOME_PASS_SAMPLE); the
event carries the rate, so the classifier weighs each reported pass as 1 / rate requests.

Requests the classifier did not classify (it was down and the router assumed a tier) carry no
label: the classifier has no features for them.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

from llmesh.events.v1 import events_pb2
from llmesh.kit.logging import get_logger
from llmesh.kit.outbox import Outbox
from llmesh.kit.streams import classifier_outcome_subject
from llmesh.services.router import metrics

log = get_logger("llmesh.router.outcomes")

_TIER = {1: 1, 2: 2, 3: 3}  # common.v1.Tier numbers equal the tier


class Verdict(enum.Enum):
    ESCALATED = "escalated"
    PASSED = "passed"
    FAILED_KEPT = "failed_kept"


_VERDICT = {
    Verdict.ESCALATED: events_pb2.RoutingOutcome.VERDICT_ESCALATED,
    Verdict.PASSED: events_pb2.RoutingOutcome.VERDICT_PASSED,
    Verdict.FAILED_KEPT: events_pb2.RoutingOutcome.VERDICT_FAILED_KEPT,
}


def verdict_of(*, escalated: bool, score: float, threshold: float) -> Verdict:
    if escalated:
        return Verdict.ESCALATED
    return Verdict.PASSED if score >= threshold else Verdict.FAILED_KEPT


class OutcomeReporter:
    """Queues one RoutingOutcome per judged tier-1 answer (passes sampled at `pass_sample`)."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        region: str,
        pass_sample: float = 1.0,
        random_fraction: Callable[[], float] = random.random,
    ):
        if not 0.0 <= pass_sample <= 1.0:
            raise ValueError(f"pass_sample must be in [0, 1] (got {pass_sample})")
        self._outbox = outbox
        self._subject = classifier_outcome_subject(region)
        self._region = region
        self._pass_sample = pass_sample
        self._random = random_fraction

    def report(
        self,
        *,
        request_id: str,
        tenant_id: str,
        use_case: str,
        classified_tier: int,
        first_model: str,
        answered_tier: int,
        answered_model: str,
        quality_score: float,
        threshold: float,
        escalated: bool,
    ) -> Verdict | None:
        """The verdict reported, or None when nothing was (sampled out, or an error: logged)."""
        try:
            verdict = verdict_of(escalated=escalated, score=quality_score, threshold=threshold)
            rate = self._pass_sample if verdict is Verdict.PASSED else 1.0
            if rate < 1.0 and self._random() >= rate:
                metrics.OUTCOMES_REPORTED.labels(verdict.value, "sampled_out").inc()
                return None
            event = events_pb2.RoutingOutcome(
                request_id=request_id,
                tenant_id=tenant_id,
                use_case=use_case,
                region=self._region,
                verdict=_VERDICT[verdict],
                classified_tier=_TIER[classified_tier],
                answered_tier=_TIER[answered_tier],
                first_model=first_model,
                answered_model=answered_model,
                quality_score=quality_score,
                threshold=threshold,
                sample_rate=rate,
            )
            event.occurred_at.GetCurrentTime()
            self._outbox.put(self._subject, event, msg_id=f"outcome-{request_id}")
        except Exception as exc:  # a label is never worth a failed request
            metrics.OUTCOMES_REPORTED.labels("unknown", "error").inc()
            log.warning("outcome_not_reported", error=repr(exc))
            return None
        metrics.OUTCOMES_REPORTED.labels(verdict.value, "queued").inc()
        return verdict
