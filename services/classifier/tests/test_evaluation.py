"""Router evaluation: APGR, shares for a part of the gap, cost saved."""

from __future__ import annotations

import numpy as np
import pytest
from llmesh.services.classifier.complexity.evaluation import cost_saved, routing_curve, routing_metrics


def make(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    weak = rng.random(n) < 0.65
    strong = weak | (rng.random(n) < 0.4)
    return weak, strong


def test_random_scores_give_about_half_and_an_oracle_more():
    weak, strong = make()
    rng = np.random.default_rng(1)
    assert routing_metrics(rng.random(len(weak)), weak, strong).apgr == pytest.approx(0.5, abs=0.05)
    oracle = routing_metrics(strong.astype(float) - weak, weak, strong)
    assert oracle.apgr > 0.9
    assert oracle.share_for_95_pgr < 0.3
    assert oracle.cost_saved_at_95_pgr > 0.6


def test_constant_scores_route_all_or_nothing():
    weak, strong = make(200)
    curve = routing_curve(np.zeros(200), weak, strong)
    assert curve.strong_share.tolist() == [0.0, 1.0]
    assert curve.apgr() == pytest.approx(0.5)


def test_curve_runs_from_weak_only_to_strong_only():
    weak, strong = make(500)
    curve = routing_curve(np.arange(500.0), weak, strong)
    assert curve.accuracy[0] == pytest.approx(weak.mean())
    assert curve.accuracy[-1] == pytest.approx(strong.mean())
    assert curve.share_for_pgr(0.0) == 0.0
    assert curve.share_for_pgr(1.0) <= 1.0


def test_cost_saved():
    assert cost_saved(1.0) == pytest.approx(0.0)
    assert cost_saved(0.0) == pytest.approx(0.95)
    assert cost_saved(0.5, cost_ratio=20) == pytest.approx(1 - (10 + 0.5) / 20)
