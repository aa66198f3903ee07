"""Policy experiments: the stable assignment of a request to a variant, shared by every service."""

from __future__ import annotations

import pytest
from llmesh.kit.experiments import (
    VariantPolicies,
    parse_experiments,
    resolve_variant,
    stable_fraction,
)
from structlog.testing import capture_logs

DOC = {
    "tiers": {"1": "small", "2": "mid"},
    "classifier": {"tier_thresholds": [0.3, 0.7]},
    "experiments": {
        "cheap": {
            "variants": {
                "control": {"share": 0.3, "policy": {}},
                "cheaper": {
                    "share": 0.2,
                    "policy": {"tiers": {"2": "small"}, "classifier": {"tier_thresholds": [0.5, 0.9]}},
                },
            }
        }
    },
}


def test_the_fraction_is_stable_in_range_and_depends_on_each_part():
    a = stable_fraction("exp", "t1", "req-1")
    assert a == stable_fraction("exp", "t1", "req-1") and 0.0 <= a < 1.0
    assert len({a, stable_fraction("exp2", "t1", "req-1"), stable_fraction("exp", "t2", "req-1")}) == 3
    # Not a hash of the concatenation: the parts cannot slide into each other.
    assert stable_fraction("ab", "c", "r") != stable_fraction("a", "bc", "r")


def test_variants_take_their_shares_and_the_rest_keeps_the_document():
    (experiment,) = parse_experiments(DOC)
    picks = [experiment.choose("t1", f"req-{i}") for i in range(10_000)]
    counts = {name: sum(1 for p in picks if p is not None and p.name == name) for name in ("control", "cheaper")}
    assert 2800 < counts["control"] < 3200 and 1800 < counts["cheaper"] < 2200
    assert 4800 < sum(p is None for p in picks) < 5200
    assert experiment.choose("t1", "") is None  # nothing to hash: no variant


def test_a_variant_merges_over_the_document_and_is_labelled():
    seen = {}
    for i in range(200):
        doc, label = resolve_variant(DOC, "t1", f"req-{i}")
        seen[label] = doc
        assert "experiments" not in doc
    assert set(seen) == {"", "cheap/control", "cheap/cheaper"}
    assert seen["cheap/cheaper"]["tiers"] == {"1": "small", "2": "small"}
    assert seen["cheap/cheaper"]["classifier"]["tier_thresholds"] == [0.5, 0.9]
    assert seen["cheap/control"]["tiers"] == DOC["tiers"] == seen[""]["tiers"]


def test_variant_policies_parse_once_per_variant_and_agree_with_resolve():
    parsed = []

    def parse(doc):
        parsed.append(doc)
        return doc["tiers"]["2"]

    policies = VariantPolicies(DOC, parse)
    for i in range(300):
        value, label = policies.pick("t1", f"req-{i}")
        doc, expected = resolve_variant(DOC, "t1", f"req-{i}")
        assert label == expected and value == doc["tiers"]["2"]
    assert len(parsed) == 3  # the document, then each variant once


@pytest.mark.parametrize(
    ("experiments", "needle"),
    [
        ({"x": {"variants": {"a": {"share": 0.7}, "b": {"share": 0.6}}}}, "more than 1"),
        ({"x": {"variants": {"a": {"share": "half"}}}}, "share must be"),
        ({"x": {"variants": {}}}, "non-empty"),
        ({"x": {"variants": {"a": {"share": 0.5, "policy": {"experiments": {}}}}}}, "without experiments"),
    ],
)
def test_a_malformed_experiment_is_logged_and_skipped(experiments, needle):
    with capture_logs() as logs:
        assert parse_experiments({"experiments": experiments}) == ()
    assert any(needle in entry.get("error", "") for entry in logs)
