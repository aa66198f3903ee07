"""The routing-outcome reporter: verdicts, sampled passes, and never a failure for the caller."""

from __future__ import annotations

import pytest
from llmesh.events.v1 import events_pb2
from llmesh.services.router.outcomes import OutcomeReporter, Verdict, verdict_of

RoutingOutcome = events_pb2.RoutingOutcome


class Recorder:
    """Stands in for the outbox: what was queued."""

    def __init__(self, fail: bool = False):
        self.events: list[tuple[str, RoutingOutcome, str]] = []
        self.fail = fail

    def put(self, subject, message, *, msg_id):
        if self.fail:
            raise RuntimeError("outbox broken")
        self.events.append((subject, message, msg_id))


def report(reporter: OutcomeReporter, request_id: str, *, score: float, escalated: bool = False):
    return reporter.report(
        request_id=request_id,
        tenant_id="acme",
        use_case="support",
        classified_tier=1,
        first_model="small",
        answered_tier=2 if escalated else 1,
        answered_model="big" if escalated else "small",
        quality_score=score,
        threshold=0.7,
        escalated=escalated,
    )


def test_verdicts():
    assert verdict_of(escalated=True, score=0.1, threshold=0.7) is Verdict.ESCALATED
    assert verdict_of(escalated=False, score=0.7, threshold=0.7) is Verdict.PASSED
    assert verdict_of(escalated=False, score=0.4, threshold=0.7) is Verdict.FAILED_KEPT


def test_each_verdict_is_queued_on_the_region_subject_with_the_request_id():
    outbox = Recorder()
    reporter = OutcomeReporter(outbox, region="eu-1")
    assert report(reporter, "r1", score=0.2, escalated=True) is Verdict.ESCALATED
    assert report(reporter, "r2", score=0.95) is Verdict.PASSED
    assert report(reporter, "r3", score=0.5) is Verdict.FAILED_KEPT
    subjects = {subject for subject, _, _ in outbox.events}
    assert subjects == {"llmesh.classifier.outcome.eu-1"}
    assert [msg_id for _, _, msg_id in outbox.events] == ["outcome-r1", "outcome-r2", "outcome-r3"]
    first = outbox.events[0][1]
    assert first.verdict == RoutingOutcome.VERDICT_ESCALATED and first.request_id == "r1"
    assert (first.tenant_id, first.use_case, first.region) == ("acme", "support", "eu-1")
    assert (first.classified_tier, first.answered_tier) == (1, 2)
    assert (first.first_model, first.answered_model) == ("small", "big")
    assert first.quality_score == pytest.approx(0.2) and first.threshold == pytest.approx(0.7)
    assert first.sample_rate == 1.0 and first.HasField("occurred_at")


def test_passes_are_sampled_and_carry_their_rate_escalations_never_are():
    draws = iter([0.1, 0.9, 0.99, 0.2])
    outbox = Recorder()
    reporter = OutcomeReporter(outbox, region="local", pass_sample=0.25, random_fraction=lambda: next(draws))
    assert report(reporter, "kept", score=1.0) is Verdict.PASSED  # draw 0.1 < 0.25
    assert report(reporter, "dropped", score=1.0) is None  # draw 0.9
    assert report(reporter, "esc", score=0.1, escalated=True) is Verdict.ESCALATED  # no draw
    assert report(reporter, "fail", score=0.3) is Verdict.FAILED_KEPT  # no draw
    rates = {event.request_id: event.sample_rate for _, event, _ in outbox.events}
    assert rates == {"kept": 0.25, "esc": 1.0, "fail": 1.0}
    none = OutcomeReporter(Recorder(), region="local", pass_sample=0.0)
    assert report(none, "x", score=1.0) is None


def test_a_broken_outbox_never_reaches_the_caller():
    reporter = OutcomeReporter(Recorder(fail=True), region="local")
    assert report(reporter, "r1", score=0.1, escalated=True) is None
    with pytest.raises(ValueError):
        OutcomeReporter(Recorder(), region="local", pass_sample=1.5)
    with pytest.raises(ValueError):
        OutcomeReporter(Recorder(), region="not.a.token")
