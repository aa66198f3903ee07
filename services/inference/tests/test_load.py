"""Latency percentiles of the load reports: nearest-rank, the same from a list sort or numpy's
partial sort, over a window that forgets old samples."""

from __future__ import annotations

import math
import random

import pytest
from llmesh.services.inference.load import LatencyWindow, percentile, percentiles


def nearest_rank(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 19, 20, 21, 499, 500, 501, 2000])
def test_percentiles_are_nearest_rank_for_any_number_of_samples(n):
    rng = random.Random(n)
    # Repeated values too: ties must not move the rank.
    values = [rng.choice([rng.random(), 1.0, 2.0]) for _ in range(n)]
    qs = (0.0, 0.01, 0.5, 0.95, 0.99, 1.0)
    expected = [nearest_rank(values, q) for q in qs]
    assert percentiles(values, qs) == expected
    assert [percentile(values, q) for q in qs] == expected
    assert all(type(v) is float for v in percentiles(values, qs))


def test_the_window_reports_only_samples_within_it():
    now = [0.0]
    window = LatencyWindow(10.0, clock=lambda: now[0])
    for second in range(30):
        now[0] = float(second)
        # A tokens/s figure only every third generation (one token or none decoded otherwise).
        window.add(second / 1000, float(second) if second % 3 == 0 else None)
    now[0] = 35.0
    stats = window.stats()
    assert stats.samples == 5  # seconds 25..29
    assert stats.ttft_p50_ms == pytest.approx(27.0)
    assert stats.ttft_p95_ms == pytest.approx(29.0)
    assert stats.tokens_per_second_p50 == 27.0  # 27 is the only one in the window
    now[0] = 100.0
    assert window.stats().samples == 0
    assert window.stats().ttft_p50_ms == 0.0


def test_a_full_window_keeps_the_latest_samples():
    window = LatencyWindow(60.0, clock=lambda: 0.0, max_samples=600)
    for i in range(1000):
        window.add(i / 1000, float(i))
    stats = window.stats()
    assert stats.samples == 600
    assert stats.ttft_p50_ms == pytest.approx(699.0)  # of 0.400..0.999 s
    assert stats.tokens_per_second_p50 == 699.0
