"""Wires the classifier service: complexity model (hot-swapped from the models folder), policy from
NATS KV, the sensitivity scanner, the feedback store, and the router's routing outcomes (labels)
from JetStream."""

from __future__ import annotations

import contextlib
import pathlib
import time

import grpc
from google.protobuf.message import DecodeError
from llmesh.classifier.v1 import classifier_pb2_grpc
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.defaults import home
from llmesh.kit.errors import AlreadyExists, FailedPrecondition, Unavailable
from llmesh.kit.experiments import VariantPolicies
from llmesh.kit.forecast import LoadForecast, start_forecast
from llmesh.kit.logging import get_logger
from llmesh.kit.policy import PolicyStore
from llmesh.kit.server import ServiceApp
from llmesh.kit.streams import CLASSIFIER_MODEL_SUBJECT, CLASSIFIER_OUTCOME, CLASSIFIER_OUTCOME_SUBJECTS
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.classifier import metrics
from llmesh.services.classifier.classify import Classifier
from llmesh.services.classifier.complexity.model import ComplexityModel, ModelFileError
from llmesh.services.classifier.complexity.registry import ModelRegistry
from llmesh.services.classifier.convert import ROLLOUT_SUBJECT, model_loaded_event, outcome_from_event, rollout_event
from llmesh.services.classifier.core import ClassifierService
from llmesh.services.classifier.drift import DriftMonitor
from llmesh.services.classifier.feedback import FeedbackStore
from llmesh.services.classifier.policy import ClassifierPolicy, parse_policy
from llmesh.services.classifier.rollout import (
    Decision,
    EvaluatorConfig,
    ModelSelector,
    RolloutPlan,
    decide,
    plan_from_policy,
    with_plan,
)
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
    # docs/adr/0023: the router, for a tenant whose token it forwards (servicer.py).
    callers = {f"{SERVICE_NAME}/Classify": frozenset({"router"}), f"{SERVICE_NAME}/Feedback": frozenset({"router"})}

    def __init__(self, settings: ClassifierSettings):
        self.settings = settings
        self.registry = ModelRegistry(pathlib.Path(settings.model_dir), on_change=self._on_model_change)
        self.service: ClassifierService | None = None
        self.bus: Bus | None = None
        self.policies: PolicyStore | None = None
        self.forecast: LoadForecast | None = None
        self.feedback: FeedbackStore | None = None
        self._shown_version: str | None = None
        self.models = ModelSelector(self.registry, self.rollout_plan)
        self.drift = DriftMonitor(settings.drift_window, settings.drift_min_samples)
        # The plan when the policy has none: what this process decided itself (written to the
        # policy as well, so that a restart and the other replicas follow it).
        self._local_plan = RolloutPlan()
        self._shown_candidate = ""
        self._plan_cache: tuple[int, RolloutPlan | None] = (-1, None)
        self._evaluator = EvaluatorConfig(
            settings.rollout_min_labels, settings.rollout_promote_after, settings.rollout_tolerance
        )

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
        previous, self._shown_version = self._shown_version, model.version
        if self.bus is not None:  # the router's memo of classifications is stale (docs/adr/0028)
            event = model_loaded_event(model.version)
            self.spawn(self.bus.publish_core(CLASSIFIER_MODEL_SUBJECT, event, msg_id=event.event_id))
        if self.service is None or previous is None or self.settings.rollout_share <= 0:
            return  # at start, or rollouts off: the newest version serves everything
        plan = self.rollout_plan()
        if model.version == (plan.current or previous):
            return  # the current version rewritten in place: swapped, nothing to roll out
        if plan.candidate:
            log.warning("rollout_busy", waiting=model.version, candidate=plan.candidate)
            return
        started = RolloutPlan(
            current=plan.current or previous,
            candidate=model.version,
            share=self.settings.rollout_share,
            started_at=time.time(),
        )
        self.spawn(self._set_plan(started, "started", reason="a new version was found"), name="classifier-rollout")

    def rollout_plan(self) -> RolloutPlan:
        """The rollout in force: the `global` policy's, else this process's own."""
        if self.policies is None:
            return self._local_plan
        revision = self.policies.revision
        if self._plan_cache[0] != revision:
            self._plan_cache = (revision, plan_from_policy(self.policies.get("global") or {}))
        return self._plan_cache[1] or self._local_plan

    async def _set_plan(
        self, plan: RolloutPlan, decision: str, *, reason: str, decided: Decision | None = None
    ) -> None:
        before = self.models.serving()
        self._local_plan = plan
        if self.policies is not None:
            self._plan_cache = (-1, None)
            await self.policies.put("global", with_plan(self.policies.get("global"), plan))
        candidate = plan.candidate or (before.candidate.version if before.candidate else "")
        metrics.ROLLOUT_DECISIONS.labels(decision).inc()
        log.info(
            "rollout_" + decision,
            current=plan.current or before.current.version,
            candidate=candidate,
            share=plan.share,
            reason=reason,
        )
        if self.bus is not None:
            await self.bus.publish_core(
                ROLLOUT_SUBJECT,
                rollout_event(
                    decision,
                    current=plan.current or before.current.version,
                    candidate=candidate,
                    share=plan.share,
                    comparison=decided.comparison if decided else None,
                    reason=reason,
                ),
            )

    async def evaluate_rollout(self) -> Decision | None:
        """One evaluation of the rollout in progress on the labelled feedback since it started;
        rolls back or promotes when the evidence says so."""
        serving = self.models.serving()
        shown = serving.candidate.version if serving.candidate else ""
        if self._shown_candidate and self._shown_candidate != shown:
            metrics.ROLLOUT_SHARE.labels(self._shown_candidate).set(0)
        self._shown_candidate = shown
        if serving.candidate is None or self.feedback is None:
            return None
        plan = self.rollout_plan()
        current, candidate = serving.current.version, serving.candidate.version
        metrics.ROLLOUT_SHARE.labels(candidate).set(serving.share)
        rows = self.feedback.labelled((current, candidate), since=plan.started_at)
        decided = decide(rows, plan, current, self._evaluator)
        metrics.ROLLOUT_LABELLED.set(len(rows))
        if decided.comparison is not None:
            metrics.ROLLOUT_APGR.labels(current, "current").set(decided.comparison.current_apgr)
            metrics.ROLLOUT_APGR.labels(candidate, "candidate").set(decided.comparison.candidate_apgr)
        if decided.action == "rollback":
            await self._set_plan(RolloutPlan(current=current), "rolled_back", reason=decided.reason, decided=decided)
        elif decided.action == "promote":
            await self._set_plan(RolloutPlan(current=candidate), "promoted", reason=decided.reason, decided=decided)
        return decided

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
        self.policies = PolicyStore(self.bus, bucket=s.policy_bucket)
        await self.policies.start()
        self.forecast = await start_forecast(self, s, self.bus)
        self.feedback = FeedbackStore(self._feedback_path())
        defaults = ClassifierPolicy(
            TierThresholds.parse(s.tier_thresholds),
            SensitivityPolicy(default_level=Sensitivity.parse(s.default_sensitivity)),
        )
        self.service = ClassifierService(
            Classifier(self.models, SensitivityScanner(s.phone_region), self.drift),
            self.policies.parsed(lambda doc: VariantPolicies(doc, lambda d: parse_policy(d, defaults))),
            self.feedback,
        )
        # Folder scans are cheap (a few stat calls), so they run inline. A failed flush keeps the
        # records in the buffer for the next one: the disk may come back.
        self.every(s.model_poll_s, self.registry.refresh, name="classifier-model-watch")
        self.every(s.feedback_flush_s, self.feedback.flush, name="classifier-feedback-flush")
        self.every(s.rollout_eval_s, self.evaluate_rollout, name="classifier-rollout-evaluate")
        self.every(s.drift_eval_s, self.export_drift, name="classifier-drift")
        if s.feedback_retention_days:
            self.every(_PRUNE_EVERY_S, self._prune_feedback, name="classifier-feedback-prune")
        # The router's quality-check verdicts, also those published while this process was down.
        await self.bus.ensure_stream(CLASSIFIER_OUTCOME)
        try:
            await self.bus.consume_durable(
                CLASSIFIER_OUTCOME, CLASSIFIER_OUTCOME_SUBJECTS, s.outcome_consumer, self._on_outcome
            )
        except AlreadyExists as exc:
            # Two replicas sharing the consumer would each store only part of the outcomes.
            raise FailedPrecondition(
                f"a running classifier replica already uses the consumer {s.outcome_consumer!r}; give each "
                "replica its own LLMESH_CLASSIFIER_REPLICA_ID"
            ) from exc
        serving = self.models.serving()
        log.info(
            "classifier_ready",
            model_version=serving.current.version,
            candidate=serving.candidate.version if serving.candidate else None,
            feedback_db=self._feedback_path(),
        )

    async def _on_outcome(self, data: bytes) -> None:
        """One RoutingOutcome into the feedback store. A malformed one is counted and acknowledged
        (a redelivery would not mend it); one the store fails to write raises, so it comes again."""
        try:
            outcome = outcome_from_event(events_pb2.RoutingOutcome.FromString(data))
        except (ValueError, DecodeError) as exc:
            metrics.OUTCOMES.labels("unknown", "invalid").inc()
            log.warning("outcome_ignored", error=str(exc))
            return
        self._service().outcome(outcome)  # Unavailable while stopping: redelivered later

    def export_drift(self) -> dict[str, float]:
        drift = self.drift.psi(self.registry.get)
        for version, value in drift.items():
            metrics.SCORE_DRIFT_PSI.labels(version).set(value)
        return drift

    def _prune_feedback(self) -> None:
        self.feedback.prune(self.settings.feedback_retention_days * 86400)

    async def stop(self) -> None:
        self.service = None
        if self.feedback is not None:
            self.feedback.close()
            self.feedback = None
        if self.policies is not None:
            await self.policies.stop()
        if self.forecast is not None:
            await self.forecast.save()
        if self.bus is not None:
            await self.bus.close()
