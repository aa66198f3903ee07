"""Score drift: PSI of served scores against the training bins stored in model.json, and the
running service's llmesh_classifier_score_drift_psi."""

from __future__ import annotations

import json

import numpy as np
import pytest
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.services.classifier.app import ClassifierApp
from llmesh.services.classifier.complexity.model import (
    ModelFileError,
    ScoreBins,
    load_model,
    save_model,
)
from llmesh.services.classifier.drift import DriftMonitor
from llmesh.services.classifier.settings import ClassifierSettings
from prometheus_client import REGISTRY

pytestmark = pytest.mark.timeout(60)


def test_psi_is_near_zero_for_the_training_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(0)
    bins = ScoreBins.of(rng.random(20_000))
    assert bins.psi(rng.random(5000)) < 0.01
    assert bins.psi(rng.random(5000) * 0.3) > 1.0  # everything in the easiest three deciles
    assert 0.02 < bins.psi(rng.beta(1.3, 1.0, 5000)) < 0.25  # leaning harder: moving
    assert np.isnan(bins.psi([]))
    assert ScoreBins.uniform().psi(np.linspace(0, 1, 1001)) < 1e-3


def test_bins_round_trip_through_the_model_file_and_a_bad_one_is_refused(tmp_path, packaged_model_dir):
    model = load_model(packaged_model_dir)
    bins = ScoreBins.of([0.05, 0.15, 0.15, 0.95])
    scorer = model.scorer.__class__(**{**model.scorer.__dict__, "score_bins": bins})
    folder = save_model(
        tmp_path / "29990101T000000Z-bins", scorer, dict(model.metadata, version="29990101T000000Z-bins")
    )
    loaded = load_model(folder)
    assert loaded.score_bins.shares.tolist() == [0.25, 0.5] + [0.0] * 7 + [0.25]
    data = json.loads((folder / "model.json").read_text())
    data["score_bins"]["shares"][0] = 0.9
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="sum to 1"):
        load_model(folder)


def test_the_monitor_keeps_a_window_per_version_and_forgets_unloaded_ones(packaged_model_dir):
    model = load_model(packaged_model_dir)
    monitor = DriftMonitor(window=100, min_samples=50)
    for i in range(300):
        monitor.observe(model.version, 0.95)
    monitor.observe("gone", 0.5)
    assert len(monitor.recent(model.version)) == 100
    assert monitor.psi({model.version: model}.get) == {model.version: pytest.approx(model.score_bins.psi([0.95] * 100))}
    assert monitor.recent("gone") == []


async def test_the_service_exports_the_drift_of_its_recent_scores(nats_url, models_dir, tmp_path):
    settings = load_settings(
        ClassifierSettings,
        environ={},
        port=0,
        metrics_port=0,
        nats_url=nats_url,
        model_dir=str(models_dir),
        feedback_db=str(tmp_path / "feedback.sqlite3"),
        policy_bucket=unique("policy").replace("_", "-"),
        drift_min_samples=40,
        drift_eval_s=0.1,
    )
    app = ClassifierApp(settings)
    async with hosted(app, settings) as host, open_channel(host.address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        version = app.registry.model.version
        # Traffic of one kind only: short factual questions, far from the training mix.
        for i in range(40):
            await stub.Classify(
                classifier_pb2.ClassifyRequest(
                    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=f"Who wrote book {i}?")]
                )
            )

        def exported():
            value = REGISTRY.get_sample_value("llmesh_classifier_score_drift_psi", {"model_version": version})
            assert value is not None and value > 0.25

        await assert_eventually(exported, message="drift exported")
