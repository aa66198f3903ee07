"""Wires the classifier service: complexity model (hot-swapped from the models folder), policy from
NATS KV, the sensitivity scanner, and the feedback store."""

from __future__ import annotations

import contextlib
import pathlib

import grpc
from llmesh.classifier.v1 import classifier_pb2_grpc
from llmesh.kit.bus import Bus
from llmesh.kit.defaults import home
from llmesh.kit.errors import Unavailable
from llmesh.kit.logging import get_logger
from llmesh.kit.policy import PolicyStore
from llmesh.kit.server import ServiceApp
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.classifier import metrics
from llmesh.services.classifier.classify import Classifier
from llmesh.services.classifier.complexity.model import ComplexityModel, ModelFileError
from llmesh.services.classifier.complexity.registry import ModelRegistry
from llmesh.services.classifier.core import ClassifierService
from llmesh.services.classifier.feedback import FeedbackStore
from llmesh.services.classifier.policy import ClassifierPolicy, parse_policy
from llmesh.services.classifier.sensitivity.scanner import SensitivityPolicy, SensitivityScanner
from llmesh.services.classifier.servicer import SERVICE_NAME, ClassifierServicer
from llmesh.services.classifier.settings import ClassifierSettings
from llmesh.services.classifier.tiers import TierThresholds

log = get_logger("llmesh.classifier")

_PRUNE_EVERY_S = 3600.0


def _threads() -> None:
    # Five services share two cores (docs/adr/0003): the model is numpy only, kept to one thread.
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


class ClassifierApp(ServiceApp):
    name = "classifier"

    def __init__(self, settings: ClassifierSettings):
        self.settings = settings
        self.registry = ModelRegistry(pathlib.Path(settings.model_dir), on_change=self._on_model_change)
        self.service: ClassifierService | None = None
        self.bus: Bus | None = None
        self.policies: PolicyStore | None = None
        self.feedback: FeedbackStore | None = None
        self._shown_version: str | None = None

    def register(self, server: grpc.aio.Server) -> list[str]:
        classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(ClassifierServicer(self._service), server)
        return [SERVICE_NAME]

    def _service(self) -> ClassifierService:
        if self.service is None:
            raise Unavailable("the classifier is starting", retry_after_s=1.0)
        return self.service

    def _on_model_change(self, model: ComplexityModel) -> None:
        if self._shown_version is not None:
            metrics.MODEL_INFO.labels(self._shown_version).set(0)
        metrics.MODEL_INFO.labels(model.version).set(1)
        metrics.MODEL_LOADS.inc()
        self._shown_version = model.version

    def _feedback_path(self) -> str:
        return self.settings.feedback_db or str(home() / "classifier" / "feedback.sqlite3")

    async def start(self) -> None:
        s = self.settings
        _threads()
        try:
            self.registry.load_or_fail()
        except ModelFileError as exc:
            raise Unavailable(f"no usable complexity model in {s.model_dir}: {exc}") from exc
        self.bus = await Bus.connect(s.nats_url, "llmesh-classifier")
        self.policies = PolicyStore(self.bus)
        await self.policies.start()
        self.feedback = FeedbackStore(self._feedback_path())
        defaults = ClassifierPolicy(
            TierThresholds.parse(s.tier_thresholds),
            SensitivityPolicy(default_level=Sensitivity.parse(s.default_sensitivity)),
        )
        self.service = ClassifierService(
            Classifier(self.registry, SensitivityScanner(s.phone_region)),
            self.policies.parsed(lambda doc: parse_policy(doc, defaults)),
            self.feedback,
        )
        # Folder scans are cheap (a few stat calls), so they run inline. A failed flush keeps the
        # records in the buffer for the next one: the disk may come back.
        self.every(s.model_poll_s, self.registry.refresh, name="classifier-model-watch")
        self.every(s.feedback_flush_s, self.feedback.flush, name="classifier-feedback-flush")
        if s.feedback_retention_days:
            self.every(_PRUNE_EVERY_S, self._prune_feedback, name="classifier-feedback-prune")
        log.info("classifier_ready", model_version=self.registry.model.version, feedback_db=self._feedback_path())

    def _prune_feedback(self) -> None:
        self.feedback.prune(self.settings.feedback_retention_days * 86400)

    async def stop(self) -> None:
        self.service = None
        if self.feedback is not None:
            self.feedback.close()
            self.feedback = None
        if self.policies is not None:
            await self.policies.stop()
        if self.bus is not None:
            await self.bus.close()
