"""Hit rates and savings by tenant, business unit and use case: counted in this process (for the
Stats RPC) and in Prometheus (summed over replicas by the monitoring stack)."""

from __future__ import annotations

import dataclasses
import enum

from llmesh.kit.metrics import BUSINESS_UNIT, TENANT, USE_CASE
from llmesh.services.cache import metrics


class Outcome(enum.Enum):
    EXACT_HIT = "exact_hit"
    SEMANTIC_HIT = "semantic_hit"
    MISS = "miss"
    UNCACHEABLE = "uncacheable"


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    tenant_id: str
    business_unit: str
    use_case: str

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.tenant_id, self.business_unit, self.use_case)

    @property
    def metric_labels(self) -> tuple[str, str, str]:
        """Prometheus label values, each bounded per process (later ones fold into `other`)."""
        return (TENANT(self.tenant_id), BUSINESS_UNIT(self.business_unit), USE_CASE(self.use_case))


@dataclasses.dataclass
class Counts:
    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    gray_zone: int = 0
    misses: int = 0
    uncacheable: int = 0
    tokens_saved: int = 0
    cost_saved_usd: float = 0.0
    thumbs_up: int = 0
    thumbs_down: int = 0

    def add(self, other: "Counts") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    @staticmethod
    def _rate(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    @property
    def hit_rate(self) -> float:
        return self._rate(self.exact_hits + self.semantic_hits, self.lookups)

    @property
    def exact_hit_rate(self) -> float:
        return self._rate(self.exact_hits, self.lookups)

    @property
    def semantic_hit_rate(self) -> float:
        return self._rate(self.semantic_hits, self.lookups)

    @property
    def gray_zone_rate(self) -> float:
        return self._rate(self.gray_zone, self.lookups)


class Analytics:
    def __init__(self) -> None:
        # Touched only from the event loop: no lock needed.
        self._rows: dict[Scope, Counts] = {}

    def _row(self, scope: Scope) -> Counts:
        row = self._rows.get(scope)
        if row is None:
            row = self._rows[scope] = Counts()
        return row

    def record_lookup(
        self,
        scope: Scope,
        outcome: Outcome,
        *,
        gray_zone: str | None = None,
        tokens: int = 0,
        cost_usd: float = 0.0,
        count: int = 1,
    ) -> None:
        """`gray_zone` names the second stage's decision ("hit" or "miss") when the best semantic
        candidate fell between the thresholds; `count` lookups alike (tokens and cost are each one's)."""
        row = self._row(scope)
        if outcome is Outcome.UNCACHEABLE:
            row.uncacheable += count
        else:
            row.lookups += count
            if outcome is Outcome.EXACT_HIT:
                row.exact_hits += count
            elif outcome is Outcome.SEMANTIC_HIT:
                row.semantic_hits += count
            else:
                row.misses += count
            if gray_zone:
                row.gray_zone += count
            row.tokens_saved += tokens * count
            row.cost_saved_usd += cost_usd * count
        metrics.LOOKUPS.labels(*scope.metric_labels, outcome.value).inc(count)
        if gray_zone:
            metrics.GRAY_ZONE.labels(*scope.metric_labels, gray_zone).inc(count)
        if tokens:
            metrics.TOKENS_SAVED.labels(*scope.metric_labels).inc(tokens * count)
        if cost_usd:
            metrics.COST_SAVED.labels(*scope.metric_labels).inc(cost_usd * count)

    def record_feedback(self, scope: Scope, thumbs_up: bool) -> None:
        row = self._row(scope)
        if thumbs_up:
            row.thumbs_up += 1
        else:
            row.thumbs_down += 1
        metrics.FEEDBACK.labels(*scope.metric_labels, "thumbs_up" if thumbs_up else "thumbs_down").inc()

    def report(
        self, *, tenant_id: str = "", business_unit: str = "", use_case: str = ""
    ) -> tuple[list[tuple[Scope, Counts]], Counts]:
        """Rows matching the filters (empty matches all), sorted, and their total."""
        rows = [
            (scope, dataclasses.replace(counts))
            for scope, counts in self._rows.items()
            if (not tenant_id or scope.tenant_id == tenant_id)
            and (not business_unit or scope.business_unit == business_unit)
            and (not use_case or scope.use_case == use_case)
        ]
        rows.sort(key=lambda row: row[0].labels)
        total = Counts()
        for _, counts in rows:
            total.add(counts)
        return rows, total
