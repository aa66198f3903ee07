"""The latest load snapshot of every model, heard on llmesh.inference.load.<region>.<model>.

A snapshot older than `max_age_s` (by the router's clock at receipt) means the load is unknown,
never idle: the model's inference may be down or cut off. The overflow decisions of a later
issue read `current`; the metrics show the same view."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

from llmesh.services.router import metrics


@dataclasses.dataclass(frozen=True, slots=True)
class LoadSnapshot:
    model: str
    region: str
    backend: str
    utilization: float
    active: int
    queued: int
    capacity: int
    max_queue: int
    ttft_p50_ms: float
    ttft_p95_ms: float
    tokens_per_second_p50: float
    observed_at: float  # publisher's wall clock, seconds since the epoch
    crossed_percent: int = 0


class LoadBoard:
    def __init__(self, max_age_s: float, *, clock: Callable[[], float] = time.monotonic):
        self.max_age_s = max_age_s
        self._clock = clock
        self._latest: dict[tuple[str, str], tuple[float, LoadSnapshot]] = {}

    def record(self, snapshot: LoadSnapshot) -> None:
        key = (snapshot.region, snapshot.model)
        if key not in self._latest:
            metrics.MODEL_UTILIZATION.labels(*key).set_function(lambda k=key: self._utilization(k))
            metrics.MODEL_LOAD_KNOWN.labels(*key).set_function(lambda k=key: float(self._fresh(k) is not None))
        self._latest[key] = (self._clock(), snapshot)

    def current(self, model: str, region: str) -> LoadSnapshot | None:
        """The model's load, or None when unknown (never heard of, or the last snapshot is stale)."""
        return self._fresh((region, model))

    def known(self) -> list[LoadSnapshot]:
        """Every fresh snapshot."""
        return [s for s in (self._fresh(k) for k in list(self._latest)) if s is not None]

    def _fresh(self, key: tuple[str, str]) -> LoadSnapshot | None:
        found = self._latest.get(key)
        if found is None or self._clock() - found[0] > self.max_age_s:
            return None
        return found[1]

    def _utilization(self, key: tuple[str, str]) -> float:
        snapshot = self._fresh(key)
        return snapshot.utilization if snapshot is not None else math.nan
