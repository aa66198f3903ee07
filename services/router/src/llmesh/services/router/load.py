"""The latest load snapshot of every model, heard on llmesh.inference.load.<region>.<model>.

A snapshot older than `max_age_s` (by the router's clock at receipt) means the load is unknown,
never idle: the model's inference may be down or cut off. The overflow decisions of a later
issue read `current`; the metrics show the same view.

Replicas of inference (docs/adr/0034) each publish their own snapshots of a model, named by
`instance`: the board keeps the latest of each instance and `current` adds up the fresh ones
(active, queued, capacity; utilization over the sum), so two replicas neither overwrite each other's
view in turn nor count twice; a replica that stopped publishing drops out after `max_age_s`.
`instances` gives the fresh snapshots one by one (the router's queues size a pool from them,
docs/adr/0037)."""

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
    # the inference process that measured it ("": one not named; combined: "" as well)
    instance: str = ""


def combined(snapshots: list[LoadSnapshot]) -> LoadSnapshot:
    """One model's load over every instance that serves it: counts added up, utilization over the
    summed capacity (the mean where none is known), latency p50s and tokens/s averaged, p95 the worst."""
    if len(snapshots) == 1:
        return snapshots[0]
    first = snapshots[0]
    active = sum(s.active for s in snapshots)
    capacity = sum(s.capacity for s in snapshots)
    n = len(snapshots)
    return dataclasses.replace(
        first,
        utilization=active / capacity if capacity > 0 else sum(s.utilization for s in snapshots) / n,
        active=active,
        queued=sum(s.queued for s in snapshots),
        capacity=capacity,
        max_queue=sum(s.max_queue for s in snapshots),
        ttft_p50_ms=sum(s.ttft_p50_ms for s in snapshots) / n,
        ttft_p95_ms=max(s.ttft_p95_ms for s in snapshots),
        tokens_per_second_p50=sum(s.tokens_per_second_p50 for s in snapshots) / n,
        observed_at=max(s.observed_at for s in snapshots),
        crossed_percent=max(s.crossed_percent for s in snapshots),
        instance="",
    )


class LoadBoard:
    def __init__(self, max_age_s: float, *, clock: Callable[[], float] = time.monotonic):
        self.max_age_s = max_age_s
        self._clock = clock
        # (region, model) -> instance -> (receipt time, snapshot)
        self._latest: dict[tuple[str, str], dict[str, tuple[float, LoadSnapshot]]] = {}

    def record(self, snapshot: LoadSnapshot) -> None:
        key = (snapshot.region, snapshot.model)
        if key not in self._latest:
            metrics.MODEL_UTILIZATION.labels(*key).set_function(lambda k=key: self._utilization(k))
            metrics.MODEL_LOAD_KNOWN.labels(*key).set_function(lambda k=key: float(self._fresh(k) is not None))
            self._latest[key] = {}
        self._latest[key][snapshot.instance] = (self._clock(), snapshot)

    def current(self, model: str, region: str) -> LoadSnapshot | None:
        """The model's load over its instances, or None when unknown (never heard of, or every
        snapshot is stale)."""
        return self._fresh((region, model))

    def instances(self, model: str, region: str) -> list[LoadSnapshot]:
        """The fresh snapshot of each instance serving the model (none: load unknown)."""
        return [s for _, s in self._fresh_instances((region, model))]

    def known(self) -> list[LoadSnapshot]:
        """Every model's fresh load."""
        return [s for s in (self._fresh(k) for k in list(self._latest)) if s is not None]

    def _fresh(self, key: tuple[str, str]) -> LoadSnapshot | None:
        instances = self._fresh_instances(key)
        return combined([s for _, s in instances]) if instances else None

    def _fresh_instances(self, key: tuple[str, str]) -> list[tuple[float, LoadSnapshot]]:
        instances = self._latest.get(key)
        if not instances:
            return []
        now = self._clock()
        for name, (received, _) in list(instances.items()):
            if now - received > self.max_age_s:
                del instances[name]  # stale: a replica gone, or cut off
        return list(instances.values())

    def _utilization(self, key: tuple[str, str]) -> float:
        snapshot = self._fresh(key)
        return snapshot.utilization if snapshot is not None else math.nan
