"""The hit decision: operating points, calibration lookup and feedback tightening."""

from __future__ import annotations

import json

import pytest
from llmesh.services.cache.semantic.api import Decision
from llmesh.services.cache.semantic.decision import Calibration, HitPolicy, OperatingPoint


def calibration() -> Calibration:
    return Calibration(
        embedder="test",
        points=(
            OperatingPoint(0.01, lower=0.80, upper=0.95, stage2_threshold=0.5),
            OperatingPoint(0.001, lower=0.90, upper=0.99, stage2_threshold=0.9),
            OperatingPoint(0.005, lower=0.85, upper=0.97, stage2_threshold=0.7),
        ),
    )


@pytest.mark.parametrize(
    ("similarity", "expected"),
    [
        (0.96, Decision.HIT),
        (0.95, Decision.HIT),
        (0.79, Decision.MISS),
        (-1.0, Decision.MISS),
        (0.9, None),
        (0.8, None),
    ],
)
def test_first_stage_zones(similarity, expected):
    assert OperatingPoint(0.01, 0.80, 0.95, 0.5).first_stage(similarity) is expected


def test_second_stage_threshold():
    point = OperatingPoint(0.01, 0.80, 0.95, 0.5)
    assert point.second_stage(0.5) is Decision.GRAY_HIT
    assert point.second_stage(0.49) is Decision.GRAY_MISS


def test_operating_points_are_validated():
    with pytest.raises(ValueError):
        OperatingPoint(0.01, lower=0.9, upper=0.8, stage2_threshold=0.5)
    with pytest.raises(ValueError):
        OperatingPoint(0.0, lower=0.8, upper=0.9, stage2_threshold=0.5)
    with pytest.raises(ValueError):
        Calibration(embedder="x", points=())


def test_a_target_gets_the_loosest_point_within_it():
    cal = calibration()
    assert cal.point_for(0.01).target_false_hit_rate == 0.01
    assert cal.point_for(0.02).target_false_hit_rate == 0.01
    assert cal.point_for(0.007).target_false_hit_rate == 0.005
    # Stricter than anything calibrated: the strictest point, never a looser one.
    assert cal.point_for(0.0001).target_false_hit_rate == 0.001


def test_calibration_round_trips_through_json(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibration().to_json()))
    assert Calibration.load(path) == calibration()


def test_thumbs_down_tightens_only_that_use_case_down_to_the_strictest_point():
    policy = HitPolicy(calibration(), default_target=0.01)
    assert policy.point("t", "support").upper == 0.95
    assert policy.tighten("t", "support") == pytest.approx(0.005)
    assert policy.point("t", "support").upper == 0.97
    assert policy.point("t", "sales").upper == 0.95
    assert policy.point("other", "support").upper == 0.95
    for _ in range(10):
        policy.tighten("t", "support")
    assert policy.target("t", "support") == pytest.approx(0.001)
    assert policy.point("t", "support").upper == 0.99


def test_a_policy_target_keeps_the_tightening_feedback_taught():
    policy = HitPolicy(calibration(), default_target=0.01)
    policy.tighten("t", "support")
    policy.set_target("t", "support", 0.02)
    assert policy.target("t", "support") == pytest.approx(0.01)
    policy.set_target("t", "legal", 0.0005)
    assert policy.target("t", "legal") == pytest.approx(0.0005)
    assert policy.point("t", "legal").target_false_hit_rate == 0.001
    with pytest.raises(ValueError):
        policy.set_target("t", "x", 1.5)
