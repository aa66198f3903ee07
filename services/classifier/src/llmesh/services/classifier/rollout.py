"""Gradual rollout of a complexity model version, with automatic rollback and promotion.

The state is the `rollout` object of the classifier section of the `global` policy document:

    {"classifier": {"rollout": {"current": "<version>", "candidate": "<version>", "share": 0.1}}}

`current` serves every request the candidate does not (absent: the newest version other than the
candidate); `candidate` serves `share` of the requests, chosen by the kit's stable hash of tenant
and request id (llmesh.kit.experiments), so a retried request gets the same version. While a
candidate is out, every request is scored by both versions (the features, the costly part, are
computed once) and both scores are recorded in the feedback store, so the evaluator compares the
two versions on the same labelled requests: paired, which needs far fewer labels than comparing
two disjoint traffic slices.

The evaluator takes the labelled requests since the rollout started (a rated answer from a cheap
tier: bad, a strong call would have paid off; good, it would not; and the router's routing
outcomes of tier-1 answers: escalated or failed the quality check, it would have; passed, it would
not; ADR 0027; a rating wins over an outcome) and computes each version's APGR on
them (RouteLLM's area under the performance-gap-recovered curve, with the label as the gain of a
strong call), and a bootstrap 90 % confidence interval of candidate minus current:

- rollback when its upper end is below 0 (the candidate is worse, beyond noise), after at least
  `min_labels` labelled requests;
- promotion when at least `promote_after` labelled requests show its lower end above
  -tolerance (the candidate holds);
- otherwise keep collecting.

Nothing here knows gRPC or NATS: the app feeds in the policy, writes decisions back and publishes
the event.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from llmesh.kit.experiments import stable_fraction
from llmesh.kit.logging import get_logger
from llmesh.services.classifier.complexity.evaluation import routing_curve
from llmesh.services.classifier.complexity.model import ComplexityModel
from llmesh.services.classifier.complexity.registry import ModelRegistry
from llmesh.services.classifier.feedback import LabelledRow

log = get_logger("llmesh.classifier.rollout")

ROLLOUT_SALT = "classifier-rollout"


@dataclass(frozen=True)
class RolloutPlan:
    current: str = ""  # "": the newest version other than the candidate
    candidate: str = ""  # "": no rollout in progress
    share: float = 0.0
    started_at: float = 0.0  # epoch seconds; feedback before it is not evaluated

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.current:
            out["current"] = self.current
        if self.candidate:
            out["candidate"] = self.candidate
            out["share"] = self.share
            if self.started_at:
                out["started_at"] = self.started_at
        return out


def parse_rollout(value: Any) -> RolloutPlan:
    """The plan from the policy's `classifier.rollout` value; ValueError when malformed."""
    if not isinstance(value, Mapping):
        raise ValueError("rollout must be an object")
    current, candidate = value.get("current", ""), value.get("candidate", "")
    if not isinstance(current, str) or not isinstance(candidate, str):
        raise ValueError("rollout.current and rollout.candidate must be version names")
    share = value.get("share", 0.1 if candidate else 0.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f"rollout.share must be a number in [0, 1] (got {share!r})")
    started_at = value.get("started_at", 0.0)
    if isinstance(started_at, bool) or not isinstance(started_at, (int, float)) or not math.isfinite(started_at):
        raise ValueError("rollout.started_at must be epoch seconds")
    return RolloutPlan(current, candidate, float(share), float(started_at))


def apgr(scores: np.ndarray, pays_off: np.ndarray) -> float:
    """APGR with the label as the strong call's gain (weak right where a strong call would not pay
    off, strong always right): a ranking score, 0.5 for a random order, 1 for a perfect one.
    NaN when the labels are all equal (no gap to recover)."""
    pays_off = np.asarray(pays_off, dtype=float)
    if len(pays_off) == 0 or pays_off.min() == pays_off.max():
        return float("nan")
    return routing_curve(np.asarray(scores, dtype=float), 1.0 - pays_off, np.ones_like(pays_off)).apgr()


@dataclass(frozen=True)
class Comparison:
    labelled: int
    current_apgr: float
    candidate_apgr: float
    difference_low: float  # 90 % bootstrap interval of candidate - current
    difference_high: float


def compare(
    rows: Sequence[LabelledRow], current: str, candidate: str, *, resamples: int = 400, seed: int = 0
) -> Comparison:
    """Both versions' APGR on the same labelled requests, with a paired bootstrap interval."""
    y = np.array([r.pays_off for r in rows], dtype=float)
    a = np.array([r.scores[current] for r in rows], dtype=float)
    b = np.array([r.scores[candidate] for r in rows], dtype=float)
    base, cand = apgr(a, y), apgr(b, y)
    if math.isnan(base) or math.isnan(cand):
        return Comparison(len(rows), base, cand, float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        pick = rng.integers(0, len(y), len(y))
        d = apgr(b[pick], y[pick]) - apgr(a[pick], y[pick])
        if not math.isnan(d):
            diffs.append(d)
    low, high = np.quantile(diffs, [0.05, 0.95]) if diffs else (float("nan"), float("nan"))
    return Comparison(len(rows), base, cand, float(low), float(high))


@dataclass(frozen=True)
class EvaluatorConfig:
    min_labels: int = 30  # before any decision
    promote_after: int = 200  # labelled requests before a candidate that holds is promoted
    tolerance: float = 0.02  # how much worse (APGR) a promoted candidate may be at the interval's low end


@dataclass(frozen=True)
class Decision:
    action: str  # "rollback", "promote", "wait"
    reason: str
    comparison: Comparison | None


def decide(rows: Sequence[LabelledRow], plan: RolloutPlan, current: str, config: EvaluatorConfig) -> Decision:
    if len(rows) < config.min_labels:
        return Decision("wait", f"{len(rows)} labelled requests, {config.min_labels} needed", None)
    c = compare(rows, current, plan.candidate)
    if math.isnan(c.difference_high):
        return Decision("wait", "the labels are all alike: nothing to rank yet", c)
    if c.difference_high < 0:
        return Decision(
            "rollback",
            f"candidate APGR {c.candidate_apgr:.3f} < current {c.current_apgr:.3f} "
            f"(90% CI of the difference {c.difference_low:+.3f}..{c.difference_high:+.3f}, n={c.labelled})",
            c,
        )
    if c.labelled >= config.promote_after and c.difference_low > -config.tolerance:
        return Decision(
            "promote",
            f"candidate APGR {c.candidate_apgr:.3f} holds against current {c.current_apgr:.3f} "
            f"(90% CI of the difference {c.difference_low:+.3f}..{c.difference_high:+.3f}, n={c.labelled})",
            c,
        )
    return Decision("wait", f"undecided at n={c.labelled}", c)


def plan_from_policy(doc: Mapping[str, Any]) -> RolloutPlan | None:
    """The plan in a `global` policy document, None when it has none (or a malformed one, logged)."""
    section = doc.get("classifier") if isinstance(doc, Mapping) else None
    if not isinstance(section, Mapping) or "rollout" not in section:
        return None
    try:
        return parse_rollout(section["rollout"])
    except ValueError as exc:
        log.warning("policy_value_ignored", field="classifier.rollout", error=str(exc))
        return None


def with_plan(doc: Mapping[str, Any] | None, plan: RolloutPlan | None) -> dict[str, Any]:
    """A copy of a `global` policy document with its rollout replaced (None: removed)."""
    out = dict(doc or {})
    section = dict(out.get("classifier") or {})
    if plan is None or not plan.to_json():
        section.pop("rollout", None)
    else:
        section["rollout"] = plan.to_json()
    if section:
        out["classifier"] = section
    else:
        out.pop("classifier", None)
    return out


@dataclass(frozen=True)
class Serving:
    current: ComplexityModel
    candidate: ComplexityModel | None
    share: float


class ModelSelector:
    """Which loaded version serves a request, under the rollout plan `plan()` returns."""

    def __init__(self, registry: ModelRegistry, plan: Callable[[], RolloutPlan]):
        self._registry = registry
        self._plan = plan

    def serving(self) -> Serving:
        plan = self._plan()
        registry = self._registry
        candidate = registry.get(plan.candidate) if plan.candidate else None
        current = registry.get(plan.current) if plan.current else None
        if current is None:
            others = [v for v in registry.versions() if v != plan.candidate]
            current = registry.get(others[-1]) if others else registry.model
        if candidate is not None and candidate.version == current.version:
            candidate = None
        return Serving(current, candidate, plan.share if candidate is not None else 0.0)

    def pick(self, tenant_id: str, request_id: str) -> tuple[ComplexityModel, ComplexityModel | None]:
        """(the version that serves this request, the other one scoring it too, or None)."""
        s = self.serving()
        if s.candidate is None:
            return s.current, None
        if bool(request_id) and stable_fraction(ROLLOUT_SALT, tenant_id, request_id) < s.share:
            return s.candidate, s.current
        return s.current, s.candidate
