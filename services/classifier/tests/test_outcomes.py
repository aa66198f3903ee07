"""Routing outcomes (the router's quality-check verdicts) as labels: conversion from the event, the
feedback store, the rollout's labelled rows, and training that learns from them."""

from __future__ import annotations

import numpy as np
import pytest
from llmesh.events.v1 import events_pb2
from llmesh.services.classifier.complexity.features import FEATURE_NAMES, FEATURE_SET, prompt_features
from llmesh.services.classifier.complexity.model import load_model, version_folders
from llmesh.services.classifier.complexity.trainer import _outcome_lines, train
from llmesh.services.classifier.complexity.training import TrainConfig, load_routing_data, outcome_examples
from llmesh.services.classifier.convert import outcome_from_event
from llmesh.services.classifier.feedback import ClassificationRecord, FeedbackStore, Outcome

from services.classifier.tests.conftest import DATA

RoutingOutcome = events_pb2.RoutingOutcome


def record(request_id: str, tenant: str = "t1", created_at: float = 1000.0, features=None, scores=None):
    features = features or tuple(float(i) for i in range(len(FEATURE_NAMES)))
    return ClassificationRecord(
        request_id, tenant, "", created_at, FEATURE_SET, tuple(features), 0.2, 1, "v1", scores or {"v1": 0.2}
    )


def test_event_verdicts_become_sources_and_sample_rates_weights():
    escalated = outcome_from_event(
        RoutingOutcome(request_id="r1", tenant_id="t", verdict=RoutingOutcome.VERDICT_ESCALATED, quality_score=0.3)
    )
    assert escalated == Outcome("r1", "t", "escalation", 0.3, 1.0) and escalated.pays_off == 1
    passed = outcome_from_event(
        RoutingOutcome(
            request_id="r2", tenant_id="t", verdict=RoutingOutcome.VERDICT_PASSED, quality_score=1.0, sample_rate=0.25
        )
    )
    assert passed.source == "quality_pass" and passed.pays_off == 0 and passed.weight == pytest.approx(4.0)
    kept = outcome_from_event(RoutingOutcome(request_id="r3", verdict=RoutingOutcome.VERDICT_FAILED_KEPT))
    assert kept.source == "quality_fail" and kept.pays_off == 1
    for bad in (
        RoutingOutcome(verdict=RoutingOutcome.VERDICT_ESCALATED),  # no request id
        RoutingOutcome(request_id="r"),  # no verdict
        RoutingOutcome(request_id="r", verdict=RoutingOutcome.VERDICT_PASSED, sample_rate=1.5),
        RoutingOutcome(request_id="r", verdict=RoutingOutcome.VERDICT_PASSED, quality_score=float("nan")),
    ):
        with pytest.raises(ValueError):
            outcome_from_event(bad)
    with pytest.raises(ValueError, match="unknown outcome source"):
        Outcome("r", "t", "user", 1.0)


def test_the_store_keeps_outcomes_of_its_own_classifications_apart_from_ratings(tmp_path):
    path = tmp_path / "fb.sqlite3"
    store = FeedbackStore(path, clock=lambda: 2000.0)
    store.record(record("esc"))
    store.record(record("pass"))
    store.record(record("rated"))
    store.record(record("other-tenant", tenant="t2"))
    # Buffered classifications are written first, so an outcome right after Classify finds its request.
    assert store.add_outcome(Outcome("esc", "t1", "escalation", 0.2))
    assert store.add_outcome(Outcome("pass", "t1", "quality_pass", 1.0, weight=4.0))
    assert store.add_outcome(Outcome("rated", "t1", "quality_pass", 0.9))
    store.add_feedback("rated", "t1", -1, "wrong")  # the user's rating wins over the quality check
    assert not store.add_outcome(Outcome("unknown", "t1", "escalation", 0.1)), "classified elsewhere"
    assert not store.add_outcome(Outcome("other-tenant", "t1", "escalation", 0.1)), "another tenant's id"
    store.close()

    reopened = FeedbackStore(path)
    assert reopened.outcome("esc") == Outcome("esc", "t1", "escalation", 0.2, 1.0)
    assert reopened.outcome("unknown") is None and reopened.outcome("other-tenant") is None
    assert reopened.outcome_counts() == {"escalation": 1, "quality_pass": 2}
    rows = {r.request_id: r for r in reopened.outcome_labelled()}
    assert set(rows) == {"esc", "pass"}
    assert (rows["esc"].pays_off, rows["esc"].weight, rows["esc"].source) == (1, 1.0, "escalation")
    assert (rows["pass"].pays_off, rows["pass"].weight) == (0, 4.0)
    # What the rollout evaluator reads: the rating's label for "rated", the outcomes' for the others.
    labelled = {r.request_id: r.pays_off for r in reopened.labelled(("v1",))}
    assert labelled == {"rated": 1, "esc": 1, "pass": 0}
    assert reopened.labelled(("v1", "v2")) == [], "rows that the other version did not score are left out"
    reopened.close()


def test_prune_keeps_classifications_with_an_outcome(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite3", clock=lambda: 10_000.0)
    store.record(record("old-unlabelled", created_at=100.0))
    store.record(record("old-escalated", created_at=100.0))
    store.add_outcome(Outcome("old-escalated", "t1", "escalation", 0.1))
    assert store.prune(older_than_s=1000.0) == 1
    assert [r.request_id for r in store.outcome_labelled()] == ["old-escalated"]
    store.close()


def test_outcome_examples_skip_other_feature_sets(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    store.record(record("ok"))
    store.record(ClassificationRecord("old", "t1", "", 1.0, "older-set", (1.0, 2.0), 0.2, 1, "v0"))
    store.add_outcome(Outcome("ok", "t1", "quality_fail", 0.5, weight=2.0))
    store.add_outcome(Outcome("old", "t1", "escalation", 0.1))
    X, y, w, by_source, skipped = outcome_examples(store.outcome_labelled())
    store.close()
    assert X.shape == (1, len(FEATURE_NAMES)) and y.tolist() == [1.0] and w.tolist() == [2.0]
    assert by_source == {"quality_fail": 1} and skipped == 1


CODE_PROMPTS = [
    "Fix this: def f(x): return lambda y: x + y if x else None",
    "Why does printf crash on a null struct pointer in this const function?",
    "Rewrite the elif chain as a lambda table; def handle(event): ...",
    "What does println print for a null nullptr struct here?",
]
PLAIN_PROMPTS = [
    "Who wrote the novel Middlemarch?",
    "When was the city of Lisbon founded?",
    "Where is the river Danube?",
    "Who painted the ceiling of the Sistine Chapel?",
]


@pytest.mark.timeout(120)
def test_training_with_outcome_labels_shifts_the_model_toward_them(tmp_path):
    """A synthetic pattern: the router escalated every code question and passed every plain recall
    question. Training with those labels scores code questions higher than training without."""
    data = load_routing_data(DATA / "routing_sample.csv")
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    n = 0
    for round_ in range(40):
        for prompts, source in ((CODE_PROMPTS, "escalation"), (PLAIN_PROMPTS, "quality_pass")):
            for prompt in prompts:
                request_id = f"r{n}"
                n += 1
                store.record(record(request_id, features=prompt_features(f"{prompt} ({round_})")))
                store.add_outcome(Outcome(request_id, "t1", source, 0.2 if source == "escalation" else 1.0))
    outcomes = outcome_examples(store.outcome_labelled())
    store.close()
    assert outcomes[3] == {"escalation": 160, "quality_pass": 160}

    def trained(folder, **kwargs):
        result = train(
            data, models_dir=tmp_path / folder, report_dir=None, cross_validation=False, log=lambda *_: None, **kwargs
        )
        (path,) = version_folders(tmp_path / folder)
        return result, load_model(path)

    _, before = trained("without")
    result, after = trained("with", outcomes=outcomes, config=TrainConfig(outcome_weight=0.5))
    meta = result.metadata["routing_outcomes"]
    assert meta["used"] == 320 and meta["strong_needed"] == 160 and meta["weight"] == 0.5
    assert meta["by_source"] == {"escalation": 160, "quality_pass": 160}
    section = "\n".join(_outcome_lines(result.metadata))
    assert "This version: 320 outcome labels (escalation 160, quality_pass 160; 160 say a strong call" in section

    def mean_score(model, prompts):
        return float(np.mean([model.score_one(tuple(prompt_features(p))) for p in prompts]))

    probe_code = ["Explain what this lambda returns: def g(n): return lambda: n", "Is a null struct const here?"]
    probe_plain = ["Who discovered penicillin?", "When did the Berlin wall fall?"]
    gap_before = mean_score(before, probe_code) - mean_score(before, probe_plain)
    gap_after = mean_score(after, probe_code) - mean_score(after, probe_plain)
    assert gap_after > gap_before + 0.1, (gap_before, gap_after)

    # Weight 0: the labels are read but change nothing.
    _, ignored = trained("zero", outcomes=outcomes, config=TrainConfig(outcome_weight=0.0))
    gap_ignored = mean_score(ignored, probe_code) - mean_score(ignored, probe_plain)
    assert gap_ignored == pytest.approx(gap_before, abs=1e-9)
