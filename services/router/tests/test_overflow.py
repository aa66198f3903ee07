"""Overflow decisions: threshold and hysteresis, stale load, the deadline rule."""

from __future__ import annotations

import math

from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.router.domain import ModelInfo
from llmesh.services.router.load import LoadBoard, LoadSnapshot
from llmesh.services.router.overflow import OverflowGate, OverflowPolicy, expected_finish_s

R = Sensitivity.RESTRICTED
A = ModelInfo("pool-a", "triton", tiers=(1,), self_hosted=True, max_sensitivity=R, region="r")
B = ModelInfo("pool-b", "triton", tiers=(1,), self_hosted=True, max_sensitivity=R, region="r")
POLICY = OverflowPolicy()


def snapshot(model, active, capacity=10, queued=0, ttft_ms=100.0, tps=20.0):
    return LoadSnapshot(
        model, "r", "triton", active / capacity, active, queued, capacity, 10, ttft_ms, ttft_ms, tps, 0.0
    )


def gate():
    now = [0.0]
    load = LoadBoard(3.0, clock=lambda: now[0])
    return OverflowGate(load), load, now


def check(g, pool=(A, B), policy=POLICY, deadline=None, max_tokens=64):
    return g.check(tier=1, pool=list(pool), policy=policy, max_tokens=max_tokens, deadline_left_s=deadline)


def test_overflow_starts_at_the_threshold_and_stops_below_resume():
    g, load, _ = gate()
    load.record(snapshot("pool-a", 7))
    load.record(snapshot("pool-b", 8))
    assert check(g) is None, "0.75 < 0.80"
    load.record(snapshot("pool-a", 8))
    decision = check(g)
    assert decision is not None and decision.utilization == 0.8
    assert decision.reason == "utilization 0.80 >= 0.80 on tier 1"
    load.record(snapshot("pool-a", 6))
    load.record(snapshot("pool-b", 8))
    assert check(g) is not None, "0.70: still above resume_below (hysteresis)"
    load.record(snapshot("pool-b", 6))
    assert check(g) is None, "0.60 < 0.65: traffic returns"
    load.record(snapshot("pool-b", 8))
    assert check(g) is None, "0.70 < 0.80 again after stopping"


def test_stale_or_missing_load_is_unknown_and_does_not_overflow():
    g, load, now = gate()
    assert check(g) is None
    load.record(snapshot("pool-a", 10))
    load.record(snapshot("pool-b", 10))
    assert check(g) is not None
    now[0] += 5.0
    assert check(g) is None, "stale snapshots: unknown load"
    load.record(snapshot("pool-a", 10))
    assert check(g, pool=(A,)) is not None, "a fresh full model still counts on its own"


def test_a_queue_that_would_break_the_deadline_overflows_below_the_threshold():
    g, load, _ = gate()
    load.record(snapshot("pool-a", 4, capacity=5, queued=10, ttft_ms=100.0, tps=20.0))
    # service 0.1 + 64/20 = 3.3 s; 4 running + 10 queued on 5 slots: 2 waves before this one, 9.9 s
    assert math.isclose(expected_finish_s(load.current("pool-a", "r"), 64), 9.9)
    policy = OverflowPolicy(threshold=1.0, resume_below=1.0)
    assert check(g, pool=(A,), policy=policy, deadline=20.0) is None
    decision = check(g, pool=(A,), policy=policy, deadline=5.0)
    assert decision is not None and decision.reason.startswith("queue wait: expected to finish in 9.9 s > deadline 5.0")


def test_per_policy_thresholds_keep_their_own_state():
    g, load, _ = gate()
    load.record(snapshot("pool-a", 9))
    load.record(snapshot("pool-b", 9))
    assert check(g, policy=OverflowPolicy(threshold=0.95, resume_below=0.9)) is None
    assert check(g) is not None
