"""The quality scorer's signals."""

from __future__ import annotations

import pytest
from llmesh.kit.vocabulary import FinishReason
from llmesh.services.router.quality import repetition_ratio, score

GOOD = "Paris is the capital of France, on the Seine, with about two million inhabitants."


def test_a_clean_answer_scores_high_and_confidence_weighs_in():
    assert score(GOOD, finish_reason=FinishReason.STOP).score == 1.0
    assert score(GOOD, finish_reason=FinishReason.STOP, classifier_confidence=0.9).score == pytest.approx(0.975)
    assert score(GOOD, classifier_confidence=0.0).score == pytest.approx(0.75)


def test_empty_refusal_repetition_and_truncation_lower_it():
    assert score("  \n", finish_reason=FinishReason.STOP).score == 0.0
    refusal = score("I'm sorry, but I cannot help with that request.", finish_reason=FinishReason.STOP)
    assert refusal.score == pytest.approx(0.4) and refusal.signals == ("refusal",)
    loop = "the cat sat on the mat " * 10
    assert repetition_ratio(loop) > 0.7
    assert score(loop, finish_reason=FinishReason.STOP).score < 0.3
    truncated = score(GOOD, finish_reason=FinishReason.LENGTH)
    assert truncated.score == pytest.approx(0.85) and "truncated" in truncated.signals


def test_the_default_threshold_separates_them():
    threshold = 0.7
    assert score(GOOD, classifier_confidence=0.9).score >= threshold
    assert score(GOOD, finish_reason=FinishReason.LENGTH, classifier_confidence=0.9).score >= threshold
    assert score("As an AI language model I can't do that.").score < threshold
    assert score("yes yes yes yes yes yes yes yes yes yes yes yes").score < threshold
    assert repetition_ratio("a b c") == 0.0, "too short to judge"
