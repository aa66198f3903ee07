"""Tiers from scores, and the classifier's part of the routing policy."""

from __future__ import annotations

import pytest
from llmesh.kit.policy import CachedPolicy
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.classifier.policy import ClassifierPolicy, parse_policy
from llmesh.services.classifier.tiers import TierThresholds, decide_tier


@pytest.mark.parametrize("score, tier", [(0.0, 1), (0.29, 1), (0.3, 2), (0.5, 2), (0.7, 2), (0.71, 3), (1.0, 3)])
def test_default_thresholds(score, tier):
    assert decide_tier(score, TierThresholds()).tier == tier


def test_confidence_is_half_at_a_threshold_and_one_far_from_it():
    t = TierThresholds(0.3, 0.7)
    assert decide_tier(0.3, t).confidence == pytest.approx(0.5)
    assert decide_tier(0.5, t).confidence == pytest.approx(1.0)
    assert decide_tier(0.0, t).confidence == pytest.approx(1.0)
    assert decide_tier(1.0, t).confidence == pytest.approx(1.0)
    assert 0.5 < decide_tier(0.8, t).confidence < 1.0


@pytest.mark.parametrize("bad", [[0.8, 0.2], [0.1], "x,y", [-0.1, 0.5], [0.2, 1.5], None])
def test_bad_thresholds_are_rejected(bad):
    with pytest.raises(ValueError):
        TierThresholds.parse(bad)


def test_policy_document_overrides_and_bad_values_fall_back():
    defaults = ClassifierPolicy()
    policy = parse_policy(
        {
            "classifier": {
                "tier_thresholds": [0.1, 0.2],
                "sensitive_terms": ["Project Falcon"],
                "sensitive_terms_level": "restricted",
                "default_sensitivity": "public",
            }
        },
        defaults,
    )
    assert policy.thresholds == TierThresholds(0.1, 0.2)
    assert policy.sensitivity.terms == ("Project Falcon",)
    assert policy.sensitivity.terms_level is Sensitivity.RESTRICTED
    assert policy.sensitivity.default_level is Sensitivity.PUBLIC

    broken = parse_policy(
        {
            "classifier": {
                "tier_thresholds": [0.9, 0.1],
                "sensitive_terms": "not a list",
                "default_sensitivity": "secret",
            }
        },
        defaults,
    )
    assert broken == defaults
    assert parse_policy({"classifier": "nonsense"}, defaults) == defaults
    assert parse_policy({}, defaults) == defaults


def test_resolver_reparses_only_after_a_policy_change():
    docs = {"classifier": {"tier_thresholds": [0.2, 0.8]}}
    calls = []
    revision = [1]

    def resolve(tenant, use_case):
        calls.append((tenant, use_case))
        return docs

    resolver = CachedPolicy(resolve, lambda: revision[0], lambda doc: parse_policy(doc, ClassifierPolicy()))
    assert resolver("t", "").thresholds == TierThresholds(0.2, 0.8)
    resolver("t", "")
    assert len(calls) == 1
    docs = {"classifier": {"tier_thresholds": [0.4, 0.6]}}
    revision[0] = 2
    assert resolver("t", "").thresholds == TierThresholds(0.4, 0.6)
