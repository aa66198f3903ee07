"""The classifier's learning loop end to end (ADR 0027): the real router and the real classifier
over a real nats-server. Tenancy, cache and inference are the router tests' in-process fakes (over
real gRPC), because the test must make tier 1 answer badly: a refusal from the tier-1 model is held,
scored low and escalated to tier 2, and the classifier receives the escalation as a label for the
request id it classified; a good tier-1 answer becomes a "weak sufficed" label. Training with
--with-feedback folds the labels in and writes a new version, the running classifier rolls it out
to a share of traffic, and the rollout's evaluation counts the outcome labels of the requests both
versions scored."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.router.v1 import router_pb2
from llmesh.services.classifier import metrics as classifier_metrics
from llmesh.services.classifier.app import ClassifierApp
from llmesh.services.classifier.complexity.model import load_model, version_folders
from llmesh.services.classifier.settings import PACKAGED_MODELS_DIR, ClassifierSettings
from llmesh.services.router.app import RouterApp

from services.classifier.tests.conftest import DATA
from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import FakeUpstreams

pytestmark = pytest.mark.timeout(180)

REGION = unique("learn").replace("-", "_")
SELF = inference_pb2.HOSTING_SELF_HOSTED
R = common_pb2.SENSITIVITY_RESTRICTED
CATALOG = [
    inference_pb2.ModelInfo(name="small", backend="triton", tiers=[1], hosting=SELF, max_sensitivity=R, region=REGION),
    inference_pb2.ModelInfo(name="large", backend="triton", tiers=[2], hosting=SELF, max_sensitivity=R, region=REGION),
]
BYPASS = router_pb2.CACHE_POLICY_BYPASS
REFUSAL = ["I'm ", "sorry, ", "I ", "cannot ", "help ", "with ", "that."]
GOOD = ["Paris ", "is ", "the ", "capital ", "of ", "France."]


@pytest.fixture
async def loop(nats_url, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    packaged = version_folders(PACKAGED_MODELS_DIR)[-1]
    shutil.copytree(packaged, models / packaged.name)
    fakes = FakeUpstreams(CATALOG)
    classifier_settings = load_settings(
        ClassifierSettings,
        environ={},
        port=0,
        metrics_port=0,
        nats_url=nats_url,
        model_dir=str(models),
        model_poll_s=0.2,
        feedback_db=str(tmp_path / "feedback.sqlite3"),
        feedback_flush_s=0.1,
        # Every request is tier 1, so that each answer is judged.
        tier_thresholds="0.999,0.9999",
        policy_bucket=unique("policy"),
        replica_id=unique("replica"),
        rollout_share=0.5,
        rollout_eval_s=3600.0,  # evaluated by the test
        rollout_min_labels=2,
    )
    classifier = ClassifierApp(classifier_settings)
    async with (
        hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as upstream,
        hosted(classifier, classifier_settings) as classifier_host,
    ):
        router = RouterApp(
            router_settings(
                nats_url,
                upstream.address,
                classifier_addr=classifier_host.address,
                tier_models="",
                default_model="",
                region=REGION,
                # A refusal is held and scored before anything reaches the caller, then escalated.
                escalation_stream_mode="hold",
                escalation_hold_tokens=4,
            )
        )
        async with hosted(router, router.settings) as router_host, open_channel(router_host.address) as channel:
            yield classifier, RouterClient(channel, fakes), models


async def answered(client: RouterClient, api_key: str, words: list[str], text: str) -> router_pb2.GenerateSummary:
    client.upstreams.inference.answers["small"] = words
    request_id = unique("req")
    deltas, summary = await client.generate(api_key, text, request_id=request_id, cache_policy=BYPASS)
    assert summary.request_id == request_id and deltas
    return summary


async def test_escalations_and_passes_become_labels_training_folds_them_in_and_the_rollout_counts_them(loop):
    classifier, client, models = loop
    api_key, tenant, _ = client.new_key()
    store = classifier.feedback

    escalated = await answered(client, api_key, REFUSAL, "Explain the refund rules for orders abroad.")
    assert escalated.model == "large" and escalated.escalation.from_model == "small"
    assert escalated.escalation.quality_score < 0.7
    passed = await answered(client, api_key, GOOD, "What is the capital of France?")
    assert passed.model == "small" and not passed.HasField("escalation")

    def labels_arrived():
        got = store.outcome(escalated.request_id)
        assert got is not None, "the escalation label reached the classifier's store"
        assert (got.source, got.tenant_id, got.pays_off) == ("escalation", tenant, 1)
        assert got.quality_score == pytest.approx(escalated.escalation.quality_score)
        ok = store.outcome(passed.request_id)
        assert ok is not None and (ok.source, ok.pays_off) == ("quality_pass", 0)

    await assert_eventually(labels_arrived, timeout_s=15.0)
    assert classifier_metrics.OUTCOMES.labels("escalation", "stored")._value.get() >= 1
    (row,) = [r for r in store.outcome_labelled() if r.request_id == escalated.request_id]
    assert row.pays_off == 1 and row.features, "the label carries the features recorded at Classify"

    # Training with the labels writes a new version into the running classifier's models folder.
    from llmesh.cli.main import main as llmesh

    before = {p.name for p in version_folders(models)}
    argv = [
        "classifier",
        "train",
        "--data",
        str(DATA / "routing_sample.csv"),
        "--with-feedback",
        "--feedback-db",
        classifier.settings.feedback_db,
        "--out",
        str(models),
        "--no-cv",
    ]
    assert await asyncio.to_thread(llmesh, argv) == 0
    (new,) = [p for p in version_folders(models) if p.name not in before]
    used = load_model(new).metadata["routing_outcomes"]
    assert used["used"] >= 2 and used["by_source"]["escalation"] >= 1 and used["by_source"]["quality_pass"] >= 1

    # The classifier finds it and rolls it out to a share of the traffic.
    def rolled_out():
        assert classifier.rollout_plan().candidate == new.name

    await assert_eventually(rolled_out, timeout_s=15.0)
    current = classifier.models.serving().current.version

    # Requests scored by both versions, labelled by the router's outcomes: what the rollout
    # evaluation compares the versions on.
    later = [
        await answered(client, api_key, REFUSAL, "Summarise the contract's termination clause."),
        await answered(client, api_key, GOOD, "Name the capital of France."),
        await answered(client, api_key, REFUSAL, "Draft a reply to an angry customer about a late parcel."),
        await answered(client, api_key, GOOD, "Which city is the capital of France?"),
    ]

    def counted():
        rows = store.labelled((current, new.name), since=classifier.rollout_plan().started_at)
        assert {r.request_id for r in rows} >= {s.request_id for s in later}

    await assert_eventually(counted, timeout_s=15.0)
    decision = await classifier.evaluate_rollout()
    assert decision is not None and decision.comparison is not None
    assert decision.comparison.labelled >= 4
