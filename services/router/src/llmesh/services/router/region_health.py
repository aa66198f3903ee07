"""Region health on NATS (ADR 0017): every router publishes what it saw of its region's models on
llmesh.region.health.<region> once a second (core NATS: only the latest report matters) and
records every region's reports in a RegionBoard; the reports of its own region count the router
replicas there (RouterCensus, docs/adr/0037). Wire form ↔ domain, and the periodic glue."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing

from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.errors import DeadlineExceeded, Unavailable
from llmesh.kit.logging import get_logger
from llmesh.kit.streams import REGION_HEALTH_SUBJECT_PREFIX, region_health_subject
from llmesh.services.router.domain import Completion
from llmesh.services.router.regions import (
    Failover,
    ModelHealth,
    OutcomeWindow,
    RegionBoard,
    RegionHealthReport,
    RouterCensus,
)

log = get_logger("llmesh.router.regions")

_OPEN = events_pb2.BreakerStateChanged.STATE_OPEN


def report_to_proto(report: RegionHealthReport) -> events_pb2.RegionHealth:
    event = events_pb2.RegionHealth(region=report.region, router_replica=report.replica)
    event.observed_at.FromMicroseconds(int(report.observed_at * 1e6))
    for m in report.models:
        event.models.add(
            model=m.model,
            tier=m.tier,
            error_rate=m.error_rate,
            time_to_first_token_p95_ms=m.ttft_p95_ms,
            utilization=m.utilization,
            # No breaker module yet: UNSPECIFIED unless the report knows the breaker is open.
            breaker_state=_OPEN if m.breaker_open else events_pb2.BreakerStateChanged.STATE_UNSPECIFIED,
            requests_in_window=m.requests,
        )
    return event


def report_from_proto(event: events_pb2.RegionHealth) -> RegionHealthReport:
    models = tuple(
        ModelHealth(
            model=m.model,
            tier=int(m.tier),
            error_rate=m.error_rate,
            ttft_p95_ms=m.time_to_first_token_p95_ms,
            utilization=m.utilization,
            requests=m.requests_in_window,
            breaker_open=m.breaker_state == _OPEN,
        )
        for m in event.models
    )
    return RegionHealthReport(event.region, event.router_replica, models, event.observed_at.ToMicroseconds() / 1e6)


class RegionHealthLink:
    """Publishes this router's report every second and hears every region's."""

    def __init__(
        self,
        bus: Bus,
        region: str,
        replica: str,
        window: OutcomeWindow,
        board: RegionBoard,
        failover: Failover,
        utilization: Callable[[str], float],
        census: RouterCensus | None = None,
    ):
        self._bus = bus
        self.census = census
        self.region = region
        self.replica = replica
        self.window = window
        self.board = board
        self.failover = failover
        self._utilization = utilization

    async def start(self) -> None:
        await self._bus.subscribe(f"{REGION_HEALTH_SUBJECT_PREFIX}.>", self._on_report)

    async def tick(self) -> None:
        """One second's work: note the local health (hysteresis), publish the report."""
        report = self.window.report(self.region, self.replica, utilization=self._utilization, now=time.time())
        self.failover.observe(sorted({m.tier for m in report.models}))
        await self._bus.publish_core(region_health_subject(self.region), report_to_proto(report))

    async def _on_report(self, data: bytes) -> None:
        report = report_from_proto(events_pb2.RegionHealth.FromString(data))
        if report.region != self.region:  # the local region's health is what this router saw itself
            self.board.record(report)
        elif self.census is not None and report.replica:
            self.census.heard(report.replica)  # a router of this region, this one included


def load_utilization(
    current: Callable[[str, str], object], region: str, model_regions: dict[str, str]
) -> Callable[[str], float]:
    """Utilisation of a local model from the ModelLoad board (NaN: unknown). Inference labels a
    model's loads with its catalog region, else its LLMESH_REGION: `model_regions` holds the former."""

    def utilization(model: str) -> float:
        snapshot = current(model, model_regions.get(model) or region)
        return snapshot.utilization if snapshot is not None else math.nan

    return utilization


def parse_region_addrs(value: str) -> dict[str, str]:
    """`b=host:port,c=host:port` → {"b": "host:port", ...} (LLMESH_ROUTER_REGION_INFERENCE)."""
    found: dict[str, str] = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        region, sep, addr = part.partition("=")
        if not sep or not region.strip() or not addr.strip():
            raise ValueError(f"{part!r} is not region=host:port")
        found[region.strip()] = addr.strip()
    return found


class RegionRouting:
    """The pipeline's one hook: which inference serves a tier now (this region's, or a healthy
    other region's while the local one is down), and what each generation's outcome was."""

    def __init__(
        self,
        local: object,
        remote: dict[str, object],
        window: OutcomeWindow,
        failover: Failover,
        model_regions: dict[str, str] | None = None,
    ):
        self._model_regions = model_regions if model_regions is not None else {}
        self._local = local
        self._remote = remote
        self.window = window
        self.failover = failover

    def know(self, models: Iterable) -> None:
        """The local catalog's models (domain Model: name, tiers, region)."""
        for model in models:
            if model.region:
                self._model_regions[model.name] = model.region
            for tier in model.tiers:
                self.window.know(model.name, tier)

    def route(self, tier: int, model: str, *, allowed_regions: frozenset[str] | None = None) -> tuple[object, str]:
        self.window.know(model, tier)
        decision = self.failover.choose(tier, allowed_regions=allowed_regions)
        if decision.failed_over and decision.region in self._remote:
            log.info("region_failover", tier=tier, region=decision.region, reason=decision.reason)
            return self._remote[decision.region], decision.region
        return self._local, self.failover.local_region

    def record(self, region: str, model: str, tier: int, *, ok: bool, ttft_ms: float = math.nan) -> None:
        """Only what the local region served feeds the local health."""
        if region == self.failover.local_region:
            self.window.record(model, tier, ok=ok, ttft_ms=ttft_ms)

    async def observed(
        self, stream: AsyncIterator, region: str, model: str, tier: int, started: float
    ) -> AsyncIterator:
        """`stream` as it is, recording its outcome: failed (UNAVAILABLE, DEADLINE_EXCEEDED, or
        no completion), or answered with its time to first token (`started`: time.perf_counter)."""
        first_at: float | None = None
        completed = False
        try:
            async with aclosing(stream):
                async for event in stream:
                    if isinstance(event, Completion):
                        completed = True
                    elif first_at is None and event.text:
                        first_at = time.perf_counter()
                    yield event
        except (Unavailable, DeadlineExceeded):
            self.record(region, model, tier, ok=False)
            raise
        if completed:
            ttft_ms = ((first_at or time.perf_counter()) - started) * 1000.0
            self.record(region, model, tier, ok=True, ttft_ms=ttft_ms)
        else:
            self.record(region, model, tier, ok=False)
