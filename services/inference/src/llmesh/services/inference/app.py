"""Wiring of the inference service: the model catalog, one backend per (kind, endpoint) behind the
engine, and load snapshots on NATS."""

from __future__ import annotations

import asyncio
import os
import socket

import grpc
from llmesh.inference.v1 import inference_pb2_grpc
from llmesh.kit.bus import Bus
from llmesh.kit.errors import Unavailable
from llmesh.kit.forecast import LoadForecast, start_forecast
from llmesh.kit.logging import get_logger
from llmesh.kit.server import ServiceApp
from llmesh.services.inference import convert
from llmesh.services.inference.catalog import CatalogDefaults, load_catalog
from llmesh.services.inference.core import InferenceEngine, ModelStatus
from llmesh.services.inference.factory import build_backends
from llmesh.services.inference.llama_cpp_backend import LlamaCppBackend
from llmesh.services.inference.replay import ReplayStore
from llmesh.services.inference.reporting import LoadReporter, load_subject
from llmesh.services.inference.servicer import SERVICE_NAME, InferenceServicer
from llmesh.services.inference.settings import InferenceSettings

log = get_logger("llmesh.inference")

BUS_RETRY_MAX_S = 10.0


class InferenceApp(ServiceApp):
    name = "inference"
    # docs/adr/0023: the router generates (with the tenant's token); the edge lists the models.
    callers = {
        f"{SERVICE_NAME}/Generate": frozenset({"router"}),
        f"{SERVICE_NAME}/ListModels": frozenset({"router", "edge"}),
    }

    def __init__(self, settings: InferenceSettings):
        self.settings = settings
        # A bad catalog raises ConfigError here, before anything starts.
        self.catalog = load_catalog(
            settings.catalog,
            CatalogDefaults(
                region=settings.region,
                local_model_name=settings.model_name,
                context_length=settings.context_length,
                max_concurrency=settings.max_concurrency,
                max_queue=settings.max_queue,
            ),
        )
        self.backends = build_backends(self.catalog, settings)
        self.local_backend = next((b for b in self.backends if isinstance(b, LlamaCppBackend)), None)
        self.engine = InferenceEngine(
            self.backends,
            self.catalog,
            repeated_line_stop=settings.repeated_line_stop,
            load_window_s=settings.load_window_s,
            replay=ReplayStore(settings.replay_entries, settings.replay_ttl_s, settings.replay_max_chars),
        )
        self.bus: Bus | None = None
        #: this process in its load snapshots: replicas of inference each publish their own (docs/adr/0034)
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.forecast: LoadForecast | None = None
        self.reporter = LoadReporter(
            self.engine.models,
            self.engine.status,
            self.engine.utilization,
            self._publish_load,
            self.spawn,
            self.engine.latency,
        )
        self.engine.on_load_change = self.reporter.changed

    def register(self, server: grpc.aio.Server):
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(self.engine, coalesce=self.settings.coalesce_deltas), server
        )
        return [SERVICE_NAME]

    async def start(self) -> None:
        await self.engine.start()
        # Load events are best effort: generation never waits for NATS.
        self.spawn(self._connect_bus(), name="inference-bus")
        self.every(self.settings.load_interval_s, self.reporter.report_all, name="inference-load")

    async def _connect_bus(self) -> None:
        delay = 0.5
        while self.bus is None:
            try:
                self.bus = await Bus.connect(self.settings.nats_url, "llmesh-inference")
                log.info("load_events_connected", nats_url=self.settings.nats_url)
                self.forecast = await start_forecast(self, self.settings, self.bus)
            except Unavailable as exc:
                log.warning("load_events_unavailable", error=exc.message, retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BUS_RETRY_MAX_S)

    async def _publish_load(self, status: ModelStatus, crossed_percent: int) -> None:
        if self.bus is None:
            return
        region = status.entry.region if status.entry is not None else self.settings.region
        event = convert.model_load_to_proto(status, region, crossed_percent, instance=self.instance)
        await self.bus.publish_core(load_subject(region, status.info.name), event, msg_id=event.event_id)

    async def stop(self) -> None:
        await self.engine.close()
        if self.forecast is not None and self.bus is not None:
            await self.forecast.save()
        if self.bus is not None:
            await self.bus.close()
            self.bus = None
