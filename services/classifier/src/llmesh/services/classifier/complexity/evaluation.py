"""Routing evaluation as RouteLLM does it: sweep the threshold over the share of requests sent to
the strong model and measure the accuracy of the routed answers.

PGR(c) = (accuracy with a share c of strong calls − weak-only accuracy) / (strong-only − weak-only);
APGR is the area under PGR(c) for c from 0 to 1 (a random router scores 0.5 in expectation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Price of one strong-model call in weak-model calls.
DEFAULT_COST_RATIO = 20.0


@dataclass(frozen=True)
class RoutingCurve:
    strong_share: np.ndarray  # 0 .. 1, one point per distinct threshold
    accuracy: np.ndarray  # accuracy of the routed answers at that share
    weak_accuracy: float
    strong_accuracy: float

    @property
    def pgr(self) -> np.ndarray:
        """NaN where the strong model is no better than the weak one: there is no gap to recover."""
        gap = self.strong_accuracy - self.weak_accuracy
        if gap <= 0:
            return np.full_like(self.accuracy, np.nan)
        return (self.accuracy - self.weak_accuracy) / gap

    def apgr(self) -> float:
        return float(np.trapezoid(self.pgr, self.strong_share))

    def share_for_pgr(self, target: float) -> float:
        """The smallest share of strong calls whose routed accuracy recovers `target` of the gap."""
        pgr = self.pgr
        if np.isnan(pgr).all():
            return float("nan")
        reached = np.nonzero(pgr >= target - 1e-12)[0]
        return float(self.strong_share[reached[0]]) if len(reached) else 1.0

    def share_for_accuracy(self, target: float) -> float:
        reached = np.nonzero(self.accuracy >= target - 1e-12)[0]
        return float(self.strong_share[reached[0]]) if len(reached) else 1.0


def routing_curve(scores: np.ndarray, weak_correct: np.ndarray, strong_correct: np.ndarray) -> RoutingCurve:
    """The curve of routing every prompt whose score is at or above a threshold to the strong model.

    Prompts with equal scores move together (a threshold cannot split them), as with a real router.
    """
    scores = np.asarray(scores, dtype=float)
    weak = np.asarray(weak_correct, dtype=float)
    strong = np.asarray(strong_correct, dtype=float)
    n = len(scores)
    if n == 0:
        raise ValueError("no prompts to evaluate")
    order = np.argsort(-scores, kind="stable")
    gain = (strong - weak)[order]
    cumulative = np.concatenate([[0.0], np.cumsum(gain)])
    sorted_scores = scores[order]
    # Cut points only where the score changes: the end of each run of equal scores.
    ends = np.nonzero(np.diff(sorted_scores) != 0)[0] + 1
    cuts = np.concatenate([[0], ends, [n]])
    weak_accuracy = float(weak.mean())
    return RoutingCurve(
        strong_share=cuts / n,
        accuracy=weak_accuracy + cumulative[cuts] / n,
        weak_accuracy=weak_accuracy,
        strong_accuracy=float(strong.mean()),
    )


def cost_saved(strong_share: float, cost_ratio: float = DEFAULT_COST_RATIO) -> float:
    """Share of the strong-only bill saved when `strong_share` of calls go to the strong model."""
    routed = strong_share * cost_ratio + (1.0 - strong_share)
    return 1.0 - routed / cost_ratio


@dataclass(frozen=True)
class RoutingMetrics:
    n: int
    apgr: float
    weak_accuracy: float
    strong_accuracy: float
    share_for_50_pgr: float
    share_for_80_pgr: float
    share_for_95_pgr: float
    # 95% of the strong model's accuracy (not of the gap): the looser reading of "95% quality".
    share_for_95_strong_accuracy: float
    cost_saved_at_95_pgr: float
    cost_saved_at_95_strong_accuracy: float

    def as_dict(self) -> dict[str, float | None]:
        """JSON-ready: None where a figure is undefined (no gap between the models)."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {k: None if isinstance(v, float) and v != v else v for k, v in values.items()}


def routing_metrics(
    scores: np.ndarray, weak_correct: np.ndarray, strong_correct: np.ndarray, cost_ratio: float = DEFAULT_COST_RATIO
) -> RoutingMetrics:
    curve = routing_curve(scores, weak_correct, strong_correct)
    share_95_pgr = curve.share_for_pgr(0.95)
    share_95_acc = curve.share_for_accuracy(0.95 * curve.strong_accuracy)
    return RoutingMetrics(
        n=len(scores),
        apgr=curve.apgr(),
        weak_accuracy=curve.weak_accuracy,
        strong_accuracy=curve.strong_accuracy,
        share_for_50_pgr=curve.share_for_pgr(0.5),
        share_for_80_pgr=curve.share_for_pgr(0.8),
        share_for_95_pgr=share_95_pgr,
        share_for_95_strong_accuracy=share_95_acc,
        cost_saved_at_95_pgr=cost_saved(share_95_pgr, cost_ratio),
        cost_saved_at_95_strong_accuracy=cost_saved(share_95_acc, cost_ratio),
    )
