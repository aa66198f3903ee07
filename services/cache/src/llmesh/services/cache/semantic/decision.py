"""The hit decision: a target false-hit rate per use case, not a bare threshold.

Calibration (see train.py) measured, for a ladder of target false-hit rates, the operating point
that meets each on held-out pairs: an upper similarity (at or above: a hit), a lower one (below: a
miss) and, between them, the second stage's threshold. A use case asks for a target rate (the
default, or its policy's); it gets the loosest calibrated point whose measured rate is within the
target. A thumbs-down halves that use case's target, down to the strictest point calibrated.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import threading

from .api import Decision


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    target_false_hit_rate: float
    lower: float  # below: a miss without asking the second stage
    upper: float  # at or above: a hit without asking the second stage
    stage2_threshold: float  # in the gray zone, a second-stage score at or above it is a hit

    def __post_init__(self):
        if not (-1.0 <= self.lower <= self.upper <= 1.0 + 1e-6):
            raise ValueError(f"need -1 <= lower <= upper <= 1, got {self.lower}, {self.upper}")
        if not 0 < self.target_false_hit_rate < 1:
            raise ValueError("a target false-hit rate is a fraction in (0, 1)")

    def first_stage(self, similarity: float) -> Decision | None:
        """HIT or MISS from the similarity alone; None in the gray zone (ask the second stage)."""
        if similarity >= self.upper:
            return Decision.HIT
        if similarity < self.lower:
            return Decision.MISS
        return None

    def second_stage(self, score: float) -> Decision:
        return Decision.GRAY_HIT if score >= self.stage2_threshold else Decision.GRAY_MISS


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Operating points for one embedding model (and second stage), strictest first."""

    embedder: str
    points: tuple[OperatingPoint, ...]
    stage2: str = ""  # the second stage's file name beside the calibration, "" when none

    def __post_init__(self):
        if not self.points:
            raise ValueError("a calibration needs at least one operating point")
        ordered = tuple(sorted(self.points, key=lambda p: p.target_false_hit_rate))
        object.__setattr__(self, "points", ordered)

    def point_for(self, target: float) -> OperatingPoint:
        within = [p for p in self.points if p.target_false_hit_rate <= target + 1e-12]
        return within[-1] if within else self.points[0]

    @property
    def strictest(self) -> float:
        return self.points[0].target_false_hit_rate

    def to_json(self) -> dict:
        return {
            "embedder": self.embedder,
            "stage2": self.stage2,
            "points": [dataclasses.asdict(p) for p in self.points],
        }

    @classmethod
    def from_json(cls, doc: dict) -> Calibration:
        return cls(
            embedder=doc["embedder"],
            stage2=doc.get("stage2", ""),
            points=tuple(OperatingPoint(**p) for p in doc["points"]),
        )

    @classmethod
    def load(cls, path: str | pathlib.Path) -> Calibration:
        return cls.from_json(json.loads(pathlib.Path(path).read_text()))


class HitPolicy:
    """Per (tenant, use case) target false-hit rates over one calibration. Thread-safe.

    The target is the use case's base (its policy's, else the default) times the tightening that
    thumbs-downs have accumulated, so a policy update keeps what feedback taught.
    """

    def __init__(self, calibration: Calibration, default_target: float = 0.01):
        if not 0 < default_target < 1:
            raise ValueError("a target false-hit rate is a fraction in (0, 1)")
        self.calibration = calibration
        self.default_target = default_target
        self._base: dict[tuple[str, str], float] = {}
        self._factor: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def _effective(self, key: tuple[str, str]) -> float:
        base = self._base.get(key, self.default_target)
        return max(base * self._factor.get(key, 1.0), min(base, self.calibration.strictest))

    def target(self, tenant_id: str, use_case: str) -> float:
        with self._lock:
            return self._effective((tenant_id, use_case))

    def set_target(self, tenant_id: str, use_case: str, rate: float) -> None:
        """The use case's policy sets its base target (e.g. 0.001 for a legal assistant)."""
        if not 0 < rate < 1:
            raise ValueError("a target false-hit rate is a fraction in (0, 1)")
        with self._lock:
            self._base[(tenant_id, use_case)] = rate

    def tighten(self, tenant_id: str, use_case: str) -> float:
        """Halves the use case's target, never below the strictest calibrated point; returns it."""
        key = (tenant_id, use_case)
        with self._lock:
            if self._effective(key) > self.calibration.strictest:
                self._factor[key] = self._factor.get(key, 1.0) / 2
            return self._effective(key)

    def point(self, tenant_id: str, use_case: str) -> OperatingPoint:
        return self.calibration.point_for(self.target(tenant_id, use_case))
