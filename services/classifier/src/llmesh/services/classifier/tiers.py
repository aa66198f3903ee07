"""From complexity score to tier, with the thresholds of the routing policy."""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_THRESHOLDS = (0.3, 0.7)


@dataclass(frozen=True)
class TierThresholds:
    """score < low: tier 1; score > high: tier 3; otherwise tier 2."""

    low: float = DEFAULT_THRESHOLDS[0]
    high: float = DEFAULT_THRESHOLDS[1]

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0.0 <= self.low <= self.high <= 1.0):
            raise ValueError(f"tier thresholds must satisfy 0 <= low <= high <= 1 (got {self.low}, {self.high})")

    @classmethod
    def parse(cls, value) -> "TierThresholds":
        """From a policy value: a list of two numbers, or "low,high"."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"tier thresholds must be two numbers [low, high] (got {value!r})")
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"tier thresholds must be two numbers [low, high] (got {value!r})") from None
        return cls(low, high)


@dataclass(frozen=True)
class TierDecision:
    tier: int
    # 0.5 on a threshold, rising linearly to 1.0 at the point of the tier's range farthest from
    # any threshold: how far a change of the score would have to go to change the tier.
    confidence: float


def decide_tier(score: float, thresholds: TierThresholds) -> TierDecision:
    low, high = thresholds.low, thresholds.high
    if score < low:
        tier, margin, room = 1, low - score, low
    elif score > high:
        tier, margin, room = 3, score - high, 1.0 - high
    else:
        tier, margin, room = 2, min(score - low, high - score), (high - low) / 2
    confidence = 1.0 if room <= 0 else 0.5 + 0.5 * min(margin / room, 1.0)
    return TierDecision(tier, confidence)
