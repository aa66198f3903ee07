"""Live load of the served models: TTFT and tokens/s percentiles over a sliding window, and the
utilization lines (50/80/95 %) whose crossing is reported at once. Domain code only."""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Collection, Sequence

import numpy as np

THRESHOLDS = (0.5, 0.8, 0.95)


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyStats:
    window_s: float
    samples: int = 0
    ttft_p50_ms: float = 0.0
    ttft_p95_ms: float = 0.0
    tokens_per_second_p50: float = 0.0


# From this many samples on, a partial sort in numpy beats sorting a list.
_PARTITION_FROM = 500


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of unsorted values; 0 for none."""
    return percentiles(values, (q,))[0]


def percentiles(values: Collection[float], qs: Sequence[float]) -> list[float]:
    """Nearest-rank percentiles (each q in 0..1) of unsorted values, 0 each for none: one partial
    sort for all of them (a window holds up to 10,000 samples; sorting them in Python for each
    percentile took milliseconds of the event loop at every load report)."""
    n = len(values)
    if not n:
        return [0.0] * len(qs)
    ranks = [max(0, math.ceil(q * n) - 1) for q in qs]
    if n <= _PARTITION_FROM:
        ordered = sorted(values)
        return [ordered[r] for r in ranks]
    ordered = np.partition(np.fromiter(values, dtype=np.float64, count=n), ranks)
    return [float(ordered[r]) for r in ranks]


class LatencyWindow:
    """Samples of the last `window_s` seconds."""

    def __init__(self, window_s: float, *, clock: Callable[[], float] = time.monotonic, max_samples: int = 10_000):
        self.window_s = window_s
        self._clock = clock
        # Times and values apart (same length): the values go to numpy as they are.
        self._ttft_at: collections.deque[float] = collections.deque(maxlen=max_samples)
        self._ttft: collections.deque[float] = collections.deque(maxlen=max_samples)
        self._tps_at: collections.deque[float] = collections.deque(maxlen=max_samples)
        self._tps: collections.deque[float] = collections.deque(maxlen=max_samples)

    def add(self, ttft_s: float, tokens_per_second: float | None) -> None:
        now = self._clock()
        self._ttft_at.append(now)
        self._ttft.append(ttft_s)
        if tokens_per_second is not None:
            self._tps_at.append(now)
            self._tps.append(tokens_per_second)

    def stats(self) -> LatencyStats:
        horizon = self._clock() - self.window_s
        for times, values in ((self._ttft_at, self._ttft), (self._tps_at, self._tps)):
            while times and times[0] < horizon:
                times.popleft()
                values.popleft()
        ttft_p50, ttft_p95 = percentiles(self._ttft, (0.5, 0.95))
        (tps_p50,) = percentiles(self._tps, (0.5,))
        return LatencyStats(
            window_s=self.window_s,
            samples=len(self._ttft),
            ttft_p50_ms=ttft_p50 * 1000,
            ttft_p95_ms=ttft_p95 * 1000,
            tokens_per_second_p50=tps_p50,
        )


def utilization(active: int, capacity: int) -> float:
    return active / capacity if capacity > 0 else 0.0


def band(value: float) -> int:
    """How many utilization lines `value` is at or above (0..3)."""
    return sum(value >= t for t in THRESHOLDS)


def crossed_percent(old_band: int, new_band: int) -> int:
    """The line crossed going from one band to the other (the highest one passed), 0 for none."""
    if new_band > old_band:
        return round(THRESHOLDS[new_band - 1] * 100)
    if new_band < old_band:
        return round(THRESHOLDS[new_band] * 100)
    return 0
