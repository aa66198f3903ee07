"""The complexity model file and its evaluation at serving time.

A model version is a folder `<models>/<version>/` holding `model.json` (the weights, written and
read by this module only: plain numbers, no pickled objects, so loading a file cannot run code)
and `metadata.json` (how it was trained and how it scored in cross-validation). Version names
start with the UTC training time, so the newest sorts last.

The model is linear over standardised prompt features; its raw output estimates the accuracy a
strong-model call adds over the weak model for this prompt. The raw output is mapped to
`complexity_score` through the distribution of the training prompts' outputs: a score of 0.7 means
the prompt looks harder than 70% of the training prompts. The map is strictly increasing, so the
score is monotone in the estimate, and a tier threshold reads as a share of traffic.
"""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import dataclass

import numpy as np
from llmesh.services.classifier.complexity.features import FEATURE_NAMES, FEATURE_SET, prompt_features

# The file format's name (from when the model was called a router): files keep it.
MODEL_FORMAT = "llmesh-router-linear/1"
MODEL_FILE = "model.json"
METADATA_FILE = "metadata.json"

# Share of the score range outside the training outputs' range, kept for unseen extremes.
_TAIL = 0.005


class ModelFileError(Exception):
    """A model folder is missing, incomplete or not in a format this code reads."""


@dataclass(frozen=True)
class ScoreMap:
    """Strictly increasing map from the model's raw output to [0, 1] (the training outputs' CDF)."""

    raw: np.ndarray  # increasing
    scores: np.ndarray  # increasing, in [_TAIL, 1 - _TAIL]

    @classmethod
    def fit(cls, raw: np.ndarray, points: int = 201) -> "ScoreMap":
        quantiles = np.quantile(np.asarray(raw, dtype=float), np.linspace(0.0, 1.0, points))
        knots, index = np.unique(quantiles, return_index=True)
        if len(knots) < 2:
            raise ValueError("the training outputs are constant: nothing to map")
        shares = np.linspace(0.0, 1.0, points)[index]
        return cls(knots, _TAIL + (1 - 2 * _TAIL) * shares)

    def __call__(self, raw: float) -> float:
        lo, hi = self.raw[0], self.raw[-1]
        # Hyperbolic tails: they approach 0 and 1 slowly enough that far outputs stay distinct in
        # floating point (an exponential tail would round them all to 1.0 and tie them).
        if raw < lo:
            return float(self.scores[0] / (1.0 + (lo - raw)))
        if raw > hi:
            return float(1.0 - (1.0 - self.scores[-1]) / (1.0 + (raw - hi)))
        return float(np.interp(raw, self.raw, self.scores))

    def to_json(self) -> dict:
        return {"raw": self.raw.tolist(), "scores": self.scores.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "ScoreMap":
        raw = np.asarray(data["raw"], dtype=float)
        scores = np.asarray(data["scores"], dtype=float)
        if len(raw) < 2 or len(raw) != len(scores) or np.any(np.diff(raw) <= 0) or np.any(np.diff(scores) <= 0):
            raise ModelFileError("score map must be two strictly increasing lists of equal length")
        if not (np.all(np.isfinite(raw)) and scores[0] > 0 and scores[-1] < 1):
            raise ModelFileError("score map must be finite, with scores inside (0, 1)")
        return cls(raw, scores)


@dataclass(frozen=True)
class Calibration:
    """P(a strong call pays off: the weak model fails where the strong one succeeds) as a
    non-decreasing step function of complexity_score, fitted by isotonic regression on scores of
    prompts from task families the scoring model had not seen (leave-one-family-out)."""

    scores: np.ndarray  # increasing: the left edge of each step
    probability: np.ndarray  # non-decreasing, in [0, 1]

    def __call__(self, score: float) -> float:
        i = int(np.searchsorted(self.scores, score, side="right")) - 1
        return float(self.probability[max(i, 0)])

    def confidence(self, score: float, strong: bool) -> float:
        """How likely the decision is right: a strong call (tier 3) is right when it pays off, a
        cheaper tier is right when it would not have."""
        p = self(score)
        return p if strong else 1.0 - p

    def to_json(self) -> dict:
        return {"scores": self.scores.tolist(), "probability": self.probability.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        scores = np.asarray(data["scores"], dtype=float)
        probability = np.asarray(data["probability"], dtype=float)
        if len(scores) < 1 or len(scores) != len(probability) or np.any(np.diff(scores) <= 0):
            raise ModelFileError("calibration must be increasing scores with one probability each")
        if np.any(np.diff(probability) < 0) or probability.min() < 0 or probability.max() > 1:
            raise ModelFileError("calibration probabilities must be non-decreasing and in [0, 1]")
        return cls(scores, probability)

    @classmethod
    def fit(cls, scores: np.ndarray, pays_off: np.ndarray) -> "Calibration":
        from scipy.optimize import isotonic_regression

        order = np.argsort(scores, kind="stable")
        s, y = np.asarray(scores, dtype=float)[order], np.asarray(pays_off, dtype=float)[order]
        fitted = np.clip(isotonic_regression(y, increasing=True).x, 0.0, 1.0)
        starts = np.concatenate([[0], np.nonzero(np.diff(fitted) > 1e-12)[0] + 1])
        sizes = np.diff(np.concatenate([starts, [len(s)]]))
        # Each step shrunk toward the overall rate by `prior` pseudo-prompts: a step of a handful of
        # prompts at an end says 0% or 100% where the data cannot (then pooled again, weighted by
        # size, where the shrinking broke the order).
        prior = 20.0
        shrunk = (fitted[starts] * sizes + prior * y.mean()) / (sizes + prior)
        probability = isotonic_regression(shrunk, weights=sizes.astype(float), increasing=True).x
        edges = s[starts]
        edges[0] = 0.0
        keep = np.concatenate([[True], np.diff(edges) > 0])
        return cls(edges[keep], probability[keep])


# Bins of the drift measure: deciles of the score. The score is the training outputs' CDF, so the
# training prompts fill them about evenly; what lands in them now says how far traffic has moved.
DRIFT_EDGES = tuple(i / 10 for i in range(11))
# A share below this is taken as this in PSI (an empty bin would make it infinite).
_PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class ScoreBins:
    """The share of the training prompts' scores in each bin, stored at training time: the reference
    the served scores' drift is measured against (population stability index)."""

    edges: np.ndarray  # increasing, from 0 to 1
    shares: np.ndarray  # one per bin, summing to 1

    @classmethod
    def of(cls, scores, edges=DRIFT_EDGES) -> "ScoreBins":
        edges = np.asarray(edges, dtype=float)
        return cls(edges, histogram_shares(scores, edges))

    @classmethod
    def uniform(cls) -> "ScoreBins":
        """For a model file without bins: its score map makes the training scores about uniform."""
        edges = np.asarray(DRIFT_EDGES)
        return cls(edges, np.full(len(edges) - 1, 1.0 / (len(edges) - 1)))

    def psi(self, scores) -> float:
        """Population stability index of `scores` against the training shares (NaN: no scores).
        Rule of thumb: < 0.1 stable, 0.1-0.25 moving, > 0.25 shifted."""
        return psi(self.shares, histogram_shares(scores, self.edges))

    def to_json(self) -> dict:
        return {"edges": self.edges.tolist(), "shares": self.shares.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "ScoreBins":
        edges = np.asarray(data["edges"], dtype=float)
        shares = np.asarray(data["shares"], dtype=float)
        if len(edges) < 2 or len(shares) != len(edges) - 1 or np.any(np.diff(edges) <= 0):
            raise ModelFileError("score bins must be increasing edges with one share per bin")
        if shares.min() < 0 or abs(shares.sum() - 1.0) > 1e-6:
            raise ModelFileError("score bin shares must be non-negative and sum to 1")
        return cls(edges, shares)


def histogram_shares(scores, edges) -> np.ndarray:
    scores = np.clip(np.asarray(scores, dtype=float), edges[0], edges[-1])
    counts, _ = np.histogram(scores, bins=edges)
    total = counts.sum()
    return counts / total if total else np.full(len(counts), np.nan)


def psi(expected, actual) -> float:
    expected, actual = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    if np.isnan(actual).any() or np.isnan(expected).any():
        return float("nan")
    e, a = np.maximum(expected, _PSI_FLOOR), np.maximum(actual, _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class LinearScorer:
    """raw = intercept + coef · (features − mean) / scale."""

    feature_names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    score_map: ScoreMap
    calibration: Calibration | None = None
    score_bins: ScoreBins | None = None

    def raw_score(self, features: np.ndarray) -> np.ndarray:
        return self.intercept + ((np.asarray(features, dtype=float) - self.mean) / self.scale) @ self.coef

    def to_json(self) -> dict:
        return {
            "format": MODEL_FORMAT,
            "feature_set": FEATURE_SET,
            "feature_names": list(self.feature_names),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "score_map": self.score_map.to_json(),
            **({"calibration": self.calibration.to_json()} if self.calibration is not None else {}),
            **({"score_bins": self.score_bins.to_json()} if self.score_bins is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> "LinearScorer":
        if data.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"unknown model format {data.get('format')!r} (this code reads {MODEL_FORMAT})")
        if data.get("feature_set") != FEATURE_SET or tuple(data.get("feature_names", ())) != FEATURE_NAMES:
            raise ModelFileError(
                f"model was trained on features {data.get('feature_set')!r}; this code computes {FEATURE_SET!r}"
            )
        n = len(FEATURE_NAMES)
        arrays = {}
        for key in ("mean", "scale", "coef"):
            values = np.asarray(data[key], dtype=float)
            if values.shape != (n,) or not np.all(np.isfinite(values)):
                raise ModelFileError(f"{key} must be {n} finite numbers")
            arrays[key] = values
        if np.any(arrays["scale"] <= 0):
            raise ModelFileError("scale must be positive")
        intercept = float(data["intercept"])
        if not math.isfinite(intercept):
            raise ModelFileError("intercept must be finite")
        return cls(
            FEATURE_NAMES,
            arrays["mean"],
            arrays["scale"],
            arrays["coef"],
            intercept,
            ScoreMap.from_json(data["score_map"]),
            Calibration.from_json(data["calibration"]) if "calibration" in data else None,
            ScoreBins.from_json(data["score_bins"]) if "score_bins" in data else None,
        )


@dataclass(frozen=True)
class Prediction:
    score: float  # complexity_score in [0, 1]
    # Estimated accuracy gain of a strong call: P(strong right, weak wrong) − P(weak right, strong wrong).
    expected_gain: float
    features: tuple[float, ...]


@dataclass(frozen=True)
class ComplexityModel:
    name: str
    version: str
    scorer: LinearScorer
    metadata: dict
    path: pathlib.Path

    def predict(self, text: str) -> Prediction:
        features = prompt_features(text)
        raw = float(self.scorer.raw_score(np.asarray(features)))
        return Prediction(self.scorer.score_map(raw), raw, tuple(features))

    @property
    def score_bins(self) -> ScoreBins:
        """The training score distribution (uniform deciles for a file written before it was stored)."""
        return self.scorer.score_bins or ScoreBins.uniform()

    def score_one(self, features: tuple[float, ...]) -> float:
        """The score of already computed features (a second version scoring the same request)."""
        return self.scorer.score_map(float(self.scorer.raw_score(np.asarray(features))))

    def confidence(self, score: float, tier: int) -> float | None:
        """The calibrated probability that the tier is the right call (None: the file has no
        calibration)."""
        calibration = self.scorer.calibration
        return None if calibration is None else calibration.confidence(score, strong=tier >= 3)

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """Scores of many feature rows at once (training, evaluation)."""
        return np.array([self.scorer.score_map(float(x)) for x in self.scorer.raw_score(features)])


def load_model(path: pathlib.Path) -> ComplexityModel:
    path = pathlib.Path(path)
    try:
        data = json.loads((path / MODEL_FILE).read_text())
        metadata = json.loads((path / METADATA_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read model at {path}: {exc}") from exc
    try:
        scorer = LinearScorer.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"model at {path} is malformed: {exc!r}") from exc
    version = str(metadata.get("version") or path.name)
    if version != path.name:
        raise ModelFileError(f"model folder {path.name} holds version {version}")
    return ComplexityModel(
        name=str(metadata.get("name", "complexity-router")),
        version=version,
        scorer=scorer,
        metadata=metadata,
        path=path,
    )


def save_model(folder: pathlib.Path, scorer: LinearScorer, metadata: dict) -> pathlib.Path:
    """Writes a version folder atomically: a reader sees it complete or not at all."""
    folder = pathlib.Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.tmp"
    staging.mkdir(exist_ok=False)
    (staging / MODEL_FILE).write_text(json.dumps(scorer.to_json(), indent=1) + "\n")
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    staging.rename(folder)
    return folder


def version_folders(models_dir: pathlib.Path) -> list[pathlib.Path]:
    """Complete version folders, oldest first (names start with the UTC training time)."""
    models_dir = pathlib.Path(models_dir)
    if not models_dir.is_dir():
        return []
    found = [
        p
        for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MODEL_FILE).is_file() and (p / METADATA_FILE).is_file()
    ]
    return sorted(found, key=lambda p: p.name)
