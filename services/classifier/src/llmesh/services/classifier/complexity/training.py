"""Training the complexity model from recorded answers of a weak and a strong model.

Target: strong_correct − weak_correct per prompt (1: only the strong model was right, −1: only the
weak one, 0: both or neither). Its expectation, P(strong right, weak wrong) − P(weak right, strong
wrong), is the accuracy a strong call adds, which is exactly what the RouteLLM curve accumulates;
in clean data the second term is small and the score follows P(weak wrong, strong right). The
binary label (weak wrong and strong right) is also measured in the report.

The model is a ridge regression over standardised prompt features, with the weights of the
reasoning-load features (length, sentences, numbers, digits, math symbols, variables, calculation,
quantity and step words) held non-negative: more work asked for never lowers the score. Without
that prior the model learns from the label artifact below that calculation looks easy; with it,
unseen-subject APGR moves by under 0.005 and the score keeps rising with the steps an open word
problem needs (math word problems are not in the training data).

Label noise: the answers were recorded with a single output token, and the strong model often
began calculation questions with reasoning instead of a letter, so it was marked wrong on questions
the weak model got right. Elsewhere that happens on fewer than 10% of weak-right questions. A
subject where it happens on half of them has no usable strong labels (high_school_mathematics:
strong 3%, weak 32%) and is left out of training; subjects between 20% and 50% are flagged as
suspect and kept as recorded, since their labels still rank multiple-choice questions (measured:
relabelling them lowered APGR on the reliable subjects), but they give no option-free copies: the
artifact belongs to the one-token multiple-choice format, and an open question does not carry it.
Every subject stays in every evaluation with its recorded labels.

Evaluation is leave-subjects-out cross-validation: plain stratified CV lets a model learn the
subject's base rate, which does not carry over to new subjects or task families. Leaving out one
subject still leaves its siblings in training (families.py), so models are chosen by
leave-one-family-out cross-validation (`cross_validate(..., groups=families(subjects))`).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from llmesh.services.classifier.complexity.evaluation import RoutingMetrics, routing_metrics
from llmesh.services.classifier.complexity.features import FEATURE_NAMES, FEATURE_SET, prompt_features, strip_options
from llmesh.services.classifier.complexity.model import LinearScorer, ScoreMap
from llmesh.services.classifier.feedback import FeedbackRow, OutcomeRow, label
from scipy.optimize import lsq_linear

# Share of the weak model's right answers that the strong model got wrong: below 0.10 in clean
# subjects. From SUSPECT on a subject is flagged; from UNUSABLE on it is left out of training.
SUSPECT_STRONG_FAILURE_RATE = 0.20
UNUSABLE_STRONG_FAILURE_RATE = 0.50
MIN_WEAK_RIGHT_FOR_NOISE_TEST = 20

# Features whose weight may not be negative (see the module docstring).
REASONING_LOAD_FEATURES = (
    "stem_chars_log",
    "stem_words_log",
    "sentences_log",
    "numbers_log",
    "distinct_numbers_log",
    "calculation_cues",
    "quantity_words_rate",
    "step_words_rate",
    "digit_share",
    "math_symbols_log",
    "variables_log",
)


@dataclass(frozen=True)
class RoutingData:
    prompts: tuple[str, ...]
    subjects: np.ndarray
    weak_correct: np.ndarray
    strong_correct: np.ndarray
    sha256: str
    source: str

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, mask: np.ndarray) -> "RoutingData":
        idx = np.nonzero(mask)[0]
        return RoutingData(
            tuple(self.prompts[i] for i in idx),
            self.subjects[idx],
            self.weak_correct[idx],
            self.strong_correct[idx],
            self.sha256,
            self.source,
        )


def _flag(value: str, column: str, line: int) -> bool:
    v = value.strip().lower()
    if v in ("1", "true"):
        return True
    if v in ("0", "false"):
        return False
    raise ValueError(f"line {line}: {column} must be 0/1 or true/false (got {value!r})")


def load_routing_data(path: str | pathlib.Path) -> RoutingData:
    """Reads a CSV with columns subject, prompt, weak_correct, strong_correct (others ignored)."""
    path = pathlib.Path(path)
    raw = path.read_bytes()
    reader = csv.DictReader(raw.decode("utf-8").splitlines(keepends=True))
    missing = {"subject", "prompt", "weak_correct", "strong_correct"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    prompts, subjects, weak, strong = [], [], [], []
    for line, row in enumerate(reader, start=2):
        if not row["prompt"].strip():
            continue
        prompts.append(row["prompt"])
        subjects.append(row["subject"])
        weak.append(_flag(row["weak_correct"], "weak_correct", line))
        strong.append(_flag(row["strong_correct"], "strong_correct", line))
    if not prompts:
        raise ValueError(f"{path}: no rows")
    return RoutingData(
        tuple(prompts), np.array(subjects), np.array(weak), np.array(strong), hashlib.sha256(raw).hexdigest(), str(path)
    )


@dataclass(frozen=True)
class SubjectStats:
    subject: str
    n: int
    weak_accuracy: float
    strong_accuracy: float
    strong_wrong_when_weak_right: float
    label_rate: float
    suspect: bool
    unusable: bool


def subject_stats(data: RoutingData) -> list[SubjectStats]:
    stats = []
    for subject in sorted(set(data.subjects.tolist())):
        k = data.subjects == subject
        w, s = data.weak_correct[k], data.strong_correct[k]
        weak_right = int(w.sum())
        failure = float((w & ~s).sum() / weak_right) if weak_right else 0.0
        testable = weak_right >= MIN_WEAK_RIGHT_FOR_NOISE_TEST
        stats.append(
            SubjectStats(
                subject=subject,
                n=int(k.sum()),
                weak_accuracy=float(w.mean()),
                strong_accuracy=float(s.mean()),
                strong_wrong_when_weak_right=failure,
                label_rate=float((~w & s).mean()),
                suspect=testable and failure >= SUSPECT_STRONG_FAILURE_RATE,
                unusable=testable and failure >= UNUSABLE_STRONG_FAILURE_RATE,
            )
        )
    return stats


def unusable_subjects(data: RoutingData) -> set[str]:
    return {s.subject for s in subject_stats(data) if s.unusable}


def suspect_subjects(data: RoutingData) -> set[str]:
    return {s.subject for s in subject_stats(data) if s.suspect}


def training_targets(data: RoutingData, target: str = "gain") -> np.ndarray:
    """ "gain": strong_correct − weak_correct; "binary": weak wrong and strong right."""
    if target == "binary":
        return ((~data.weak_correct) & data.strong_correct).astype(float)
    if target == "gain":
        return data.strong_correct.astype(float) - data.weak_correct.astype(float)
    raise ValueError(f"unknown target {target!r}")


def feedback_examples(rows: Iterable[FeedbackRow]) -> tuple[np.ndarray, np.ndarray, int]:
    """Feature rows and targets from rated answers: a bad answer from a cheap tier (1 or 2) says a
    strong call would have paid off (1); a good one says it would not (0). Neutral ratings and tier-3
    answers say nothing about the weak model and are skipped, as are rows of other feature sets.
    Returns (X, y, skipped)."""
    xs, ys, skipped = [], [], 0
    for row in rows:
        pays_off = label(row.tier, row.rating)
        if row.feature_set != FEATURE_SET or len(row.features) != len(FEATURE_NAMES) or pays_off is None:
            skipped += 1
            continue
        xs.append(row.features)
        ys.append(pays_off)
    X = np.array(xs, dtype=float).reshape(-1, len(FEATURE_NAMES))
    return X, np.array(ys, dtype=float), skipped


def outcome_examples(rows: Iterable[OutcomeRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int], int]:
    """Feature rows, targets and weights from the router's routing outcomes (ADR 0027): an
    escalation or a kept answer that failed the quality check says a strong call paid off (1), a
    pass that it did not (0); the weight is the requests a label stands for (1 / the sample rate of
    its kind). Rows of other feature sets are skipped. Returns (X, y, weight, used by source, skipped)."""
    xs, ys, ws, skipped = [], [], [], 0
    by_source: dict[str, int] = {}
    for row in rows:
        if row.feature_set != FEATURE_SET or len(row.features) != len(FEATURE_NAMES):
            skipped += 1
            continue
        xs.append(row.features)
        ys.append(row.pays_off)
        ws.append(row.weight)
        by_source[row.source] = by_source.get(row.source, 0) + 1
    X = np.array(xs, dtype=float).reshape(-1, len(FEATURE_NAMES))
    return X, np.array(ys, dtype=float), np.array(ws, dtype=float), dict(sorted(by_source.items())), skipped


# Weight of one routing-outcome label against one dev-data row (each dev prompt is a row, plus an
# option-free copy). The quality check sees surface failures only (empty answers, refusals, loops):
# a pass does not say the answer was right, so a label counts half a recorded answer pair.
DEFAULT_OUTCOME_WEIGHT = 0.5


@dataclass(frozen=True)
class TrainConfig:
    # Ridge penalty on the standardised weights (in units of training rows).
    ridge_alpha: float = 100.0
    target: str = "gain"
    # Each prompt is also trained on without its answer options, so open questions (chat turns,
    # math word problems) are scored by what they ask rather than by a missing option block.
    augment_without_options: bool = True
    feedback_weight: float = 1.0
    # Multiplies each routing-outcome label's own weight (1 / its sample rate).
    outcome_weight: float = DEFAULT_OUTCOME_WEIGHT


def feature_matrix(prompts: Iterable[str]) -> np.ndarray:
    return np.array([prompt_features(p) for p in prompts], dtype=float)


@dataclass
class TrainingSet:
    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    # Rows that stand for the data's own prompts (the score map is fitted on these).
    original: np.ndarray


def build_training_set(
    data: RoutingData,
    config: TrainConfig,
    *,
    X: np.ndarray | None = None,
    X_stem: np.ndarray | None = None,
    feedback: tuple[np.ndarray, np.ndarray] | None = None,
    suspect: set[str] = frozenset(),
    outcomes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> TrainingSet:
    """Rows of `data` (callers leave unusable subjects out), their option-free copies, feedback,
    routing outcomes (X, y, per-label weight; times config.outcome_weight).

    Suspect subjects give no option-free copies: their labels hold an artifact of the recorded
    multiple-choice format (one output token), which an open question does not have."""
    X = feature_matrix(data.prompts) if X is None else X
    y = training_targets(data, config.target)
    parts_X, parts_y, parts_w, parts_o = [X], [y], [np.ones(len(y))], [np.ones(len(y), dtype=bool)]
    if config.augment_without_options:
        X_stem = feature_matrix(strip_options(p) for p in data.prompts) if X_stem is None else X_stem
        copy = ~np.isin(data.subjects, sorted(suspect)) if suspect else np.ones(len(y), dtype=bool)
        parts_X.append(X_stem[copy])
        parts_y.append(y[copy])
        parts_w.append(np.ones(int(copy.sum())))
        parts_o.append(np.zeros(int(copy.sum()), dtype=bool))
    if feedback is not None and len(feedback[1]):
        parts_X.append(feedback[0])
        parts_y.append(feedback[1])
        parts_w.append(np.full(len(feedback[1]), config.feedback_weight))
        parts_o.append(np.zeros(len(feedback[1]), dtype=bool))
    if outcomes is not None and len(outcomes[1]):
        parts_X.append(outcomes[0])
        parts_y.append(outcomes[1])
        parts_w.append(config.outcome_weight * np.asarray(outcomes[2], dtype=float))
        parts_o.append(np.zeros(len(outcomes[1]), dtype=bool))
    return TrainingSet(np.vstack(parts_X), np.concatenate(parts_y), np.concatenate(parts_w), np.concatenate(parts_o))


def fit_scorer(training: TrainingSet, config: TrainConfig) -> LinearScorer:
    """Weighted ridge regression with non-negative weights on REASONING_LOAD_FEATURES."""
    mean = np.average(training.X, axis=0, weights=training.weight)
    scale = np.sqrt(np.average((training.X - mean) ** 2, axis=0, weights=training.weight))
    scale[scale < 1e-9] = 1.0
    Z = (training.X - mean) / scale
    n, d = Z.shape
    root_w = np.sqrt(training.weight)[:, None]
    # Least squares on [Z 1] with the penalty as extra rows; the intercept is not penalised.
    A = np.vstack(
        [
            np.hstack([Z, np.ones((n, 1))]) * root_w,
            np.hstack([np.sqrt(config.ridge_alpha) * np.eye(d), np.zeros((d, 1))]),
        ]
    )
    b = np.concatenate([training.y * root_w[:, 0], np.zeros(d)])
    lower = np.array([0.0 if name in REASONING_LOAD_FEATURES else -np.inf for name in FEATURE_NAMES] + [-np.inf])
    solution = lsq_linear(A, b, bounds=(lower, np.full(d + 1, np.inf)), method="bvls")
    coef, intercept = solution.x[:d].astype(float), float(solution.x[d])
    raw = intercept + Z[training.original] @ coef
    return LinearScorer(FEATURE_NAMES, mean, scale, coef, intercept, ScoreMap.fit(raw))


def subject_folds(subjects: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Test-row masks of `n_folds` folds, each holding whole subjects."""
    unique = np.array(sorted(set(subjects.tolist())))
    order = np.random.default_rng(seed).permutation(len(unique))
    assignment = {unique[i]: rank % n_folds for rank, i in enumerate(order)}
    fold_of_row = np.array([assignment[s] for s in subjects])
    return [fold_of_row == f for f in range(n_folds)]


@dataclass
class CrossValidation:
    """Out-of-fold scores from leave-one-subject-out CV, plus the spread over k-fold repetitions."""

    scores: np.ndarray
    stem_scores: np.ndarray  # the same prompts without their answer options
    # complexity_score of each prompt under its fold's model (the raw output through its score map)
    percentiles: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fold_apgr: list[float] = field(default_factory=list)

    def metrics(self, data: RoutingData, mask: np.ndarray | None = None) -> RoutingMetrics:
        mask = np.ones(len(data), dtype=bool) if mask is None else mask
        return routing_metrics(self.scores[mask], data.weak_correct[mask], data.strong_correct[mask])


def cross_validate(
    data: RoutingData,
    unusable: set[str],
    suspect: set[str],
    config: TrainConfig,
    *,
    X: np.ndarray,
    X_stem: np.ndarray,
    groups: np.ndarray | None = None,
    spread_folds: int = 5,
    spread_repeats: int = 3,
) -> CrossValidation:
    """Out-of-fold scores, each group of rows (default: each subject) scored by a model trained on
    the others; `groups=families(data.subjects)` leaves out whole task families."""
    trainable = ~np.isin(data.subjects, sorted(unusable))
    groups = data.subjects if groups is None else np.asarray(groups)

    def fit_without(test: np.ndarray) -> LinearScorer:
        keep = ~test & trainable
        training = build_training_set(data.subset(keep), config, X=X[keep], X_stem=X_stem[keep], suspect=suspect)
        return fit_scorer(training, config)

    scores = np.zeros(len(data))
    stem_scores = np.zeros(len(data))
    percentiles = np.zeros(len(data))
    for group in sorted(set(groups.tolist())):
        test = groups == group
        scorer = fit_without(test)
        scores[test] = scorer.raw_score(X[test])
        stem_scores[test] = scorer.raw_score(X_stem[test])
        percentiles[test] = [scorer.score_map(float(x)) for x in scores[test]]
    fold_apgr = []
    for seed in range(spread_repeats):
        for test in subject_folds(groups, spread_folds, seed):
            scorer = fit_without(test)
            fold_apgr.append(
                routing_metrics(scorer.raw_score(X[test]), data.weak_correct[test], data.strong_correct[test]).apgr
            )
    return CrossValidation(scores, stem_scores, percentiles, fold_apgr)


def new_version(now: dt.datetime | None = None, data_sha256: str = "") -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{data_sha256[:8] or 'nodata'}"
