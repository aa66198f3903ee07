"""Operating points from labelled validation pairs: for each target false-hit rate, the
thresholds that serve the most true paraphrases without exceeding it.

The thresholds are fitted on validation pairs and later judged on held-out pairs, so each target
is met on validation with a margin (`margin` × target) to absorb the estimate's noise: with
~1,500 negatives a 1 % rate rests on ~15 false hits.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .decision import OperatingPoint

TARGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What an operating point does to labelled pairs."""

    recall: float  # share of true paraphrases served
    false_hit_rate: float  # share of non-paraphrases served
    precision: float
    gray_share: float  # share of pairs that asked the second stage
    served: int
    false_hits: int


def outcome(
    point: OperatingPoint,
    similarity: np.ndarray,
    stage2: np.ndarray | None,
    y: np.ndarray,
    vetoed: np.ndarray | None = None,
) -> Outcome:
    """`vetoed` pairs (features.veto) are never served, as in a lookup."""
    y = y.astype(bool)
    hit = similarity >= point.upper
    gray = (similarity >= point.lower) & ~hit
    if stage2 is not None:
        hit = hit | (gray & (stage2 >= point.stage2_threshold))
    else:
        gray = np.zeros_like(hit)
    if vetoed is not None:
        hit = hit & ~vetoed
    served = int(hit.sum())
    false_hits = int((hit & ~y).sum())
    return Outcome(
        recall=float((hit & y).sum() / max(1, y.sum())),
        false_hit_rate=float(false_hits / max(1, (~y).sum())),
        precision=float((hit & y).sum() / served) if served else 1.0,
        gray_share=float(gray.mean()),
        served=served,
        false_hits=false_hits,
    )


def _without_vetoed(scores: np.ndarray, vetoed: np.ndarray | None) -> np.ndarray:
    """Vetoed pairs can never be served: they spend no false-hit budget."""
    if vetoed is None:
        return scores
    return np.where(vetoed, -np.inf, scores)


def _threshold_for(scores: np.ndarray, negatives: np.ndarray, allowed: int) -> float:
    """The lowest threshold that lets at most `allowed` of the negative scores reach it."""
    ordered = np.sort(scores[negatives & np.isfinite(scores)])[::-1]
    if allowed >= len(ordered):
        finite = scores[np.isfinite(scores)]
        return float(np.min(finite)) if len(finite) else 1.0
    # Just above the (allowed+1)-th highest negative: that one and all below it fail.
    return float(np.nextafter(np.float32(ordered[allowed]), np.float32(np.inf)))


def similarity_only(
    similarity: np.ndarray, y: np.ndarray, target: float, margin: float = 0.7, vetoed: np.ndarray | None = None
) -> OperatingPoint:
    similarity = _without_vetoed(similarity, vetoed)
    negatives = ~y.astype(bool)
    allowed = int(np.floor(target * margin * negatives.sum()))
    upper = _threshold_for(similarity, negatives, allowed)
    return OperatingPoint(target, lower=upper, upper=upper, stage2_threshold=1.0)


def two_stage(
    similarity: np.ndarray,
    stage2: np.ndarray,
    y: np.ndarray,
    target: float,
    *,
    margin: float = 0.7,
    sure_share: float = 0.25,
    gray_floor_recall: float = 0.99,
    vetoed: np.ndarray | None = None,
) -> OperatingPoint:
    """One free threshold per target, to keep the fit on validation honest:

    - upper: similarity alone spends at most `sure_share` of the false-hit budget;
    - lower: the similarity that keeps `gray_floor_recall` of the true paraphrases above it
      (below it the second stage is not asked: saves its cost where it cannot help);
    - the second stage's threshold spends the rest of the budget on the gray zone.
    """
    y = y.astype(bool)
    similarity = _without_vetoed(similarity, vetoed)
    stage2 = _without_vetoed(stage2, vetoed)
    negatives = ~y
    budget = int(np.floor(target * margin * negatives.sum()))
    upper = _threshold_for(similarity, negatives, int(np.floor(budget * sure_share)))
    lower = float(min(upper, np.quantile(similarity[y & (similarity > -np.inf)], 1 - gray_floor_recall)))
    sure_false = int(((similarity >= upper) & negatives).sum())
    gray = (similarity >= lower) & (similarity < upper)
    if gray.any():
        threshold = _threshold_for(stage2[gray], negatives[gray], max(0, budget - sure_false))
    else:
        threshold = float(np.max(stage2)) + 1.0
    return OperatingPoint(target, lower=lower, upper=upper, stage2_threshold=float(threshold))
