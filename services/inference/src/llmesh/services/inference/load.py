"""Live load of the served models: TTFT and tokens/s percentiles over a sliding window, and the
utilization lines (50/80/95 %) whose crossing is reported at once. Domain code only."""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable

THRESHOLDS = (0.5, 0.8, 0.95)


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyStats:
    window_s: float
    samples: int = 0
    ttft_p50_ms: float = 0.0
    ttft_p95_ms: float = 0.0
    tokens_per_second_p50: float = 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of unsorted values; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class LatencyWindow:
    """Samples of the last `window_s` seconds."""

    def __init__(self, window_s: float, *, clock: Callable[[], float] = time.monotonic, max_samples: int = 10_000):
        self.window_s = window_s
        self._clock = clock
        self._ttft: collections.deque[tuple[float, float]] = collections.deque(maxlen=max_samples)
        self._tps: collections.deque[tuple[float, float]] = collections.deque(maxlen=max_samples)

    def add(self, ttft_s: float, tokens_per_second: float | None) -> None:
        now = self._clock()
        self._ttft.append((now, ttft_s))
        if tokens_per_second is not None:
            self._tps.append((now, tokens_per_second))

    def stats(self) -> LatencyStats:
        horizon = self._clock() - self.window_s
        for samples in (self._ttft, self._tps):
            while samples and samples[0][0] < horizon:
                samples.popleft()
        ttft = [v for _, v in self._ttft]
        tps = [v for _, v in self._tps]
        return LatencyStats(
            window_s=self.window_s,
            samples=len(ttft),
            ttft_p50_ms=percentile(ttft, 0.5) * 1000,
            ttft_p95_ms=percentile(ttft, 0.95) * 1000,
            tokens_per_second_p50=percentile(tps, 0.5),
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
