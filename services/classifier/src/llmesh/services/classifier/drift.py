"""Drift of the served complexity scores against the training distribution: the last `window`
scores of each model version, compared with the score bins its model.json stores, as a population
stability index (PSI; exported as llmesh_classifier_score_drift_psi). A PSI above about 0.25 says
traffic no longer looks like what the model was trained and calibrated on: its tiers move share
and its confidence means less, so it is time to look at the feedback and retrain."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from llmesh.services.classifier.complexity.model import ComplexityModel


class DriftMonitor:
    def __init__(self, window: int = 5000, min_samples: int = 200):
        self._window = window
        self._min_samples = min_samples
        self._scores: dict[str, deque[float]] = {}

    def observe(self, version: str, score: float) -> None:
        scores = self._scores.get(version)
        if scores is None:
            scores = self._scores[version] = deque(maxlen=self._window)
        scores.append(score)

    def recent(self, version: str) -> list[float]:
        return list(self._scores.get(version, ()))

    def psi(self, get_model: Callable[[str], ComplexityModel | None]) -> dict[str, float]:
        """PSI per version with enough recent scores whose model is still loaded (others forgotten)."""
        out = {}
        for version in list(self._scores):
            model = get_model(version)
            if model is None:
                del self._scores[version]
                continue
            scores = self._scores[version]
            if len(scores) >= self._min_samples:
                out[version] = model.score_bins.psi(list(scores))
        return out
