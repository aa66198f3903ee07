"""Gradual rollout of a model version: the evaluator's decisions on synthetic labelled feedback, and
the running service with two real model files (a new version lands while it runs, serves a share,
is scored beside the current one on every request, and is rolled back or promoted from feedback)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings
from llmesh.kit.policy import PolicyStore
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.services.classifier.app import ClassifierApp
from llmesh.services.classifier.complexity.model import load_model
from llmesh.services.classifier.complexity.registry import ModelRegistry
from llmesh.services.classifier.complexity.training import load_routing_data
from llmesh.services.classifier.convert import ROLLOUT_SUBJECT
from llmesh.services.classifier.feedback import LabelledRow
from llmesh.services.classifier.rollout import (
    EvaluatorConfig,
    ModelSelector,
    RolloutPlan,
    apgr,
    decide,
    parse_rollout,
    plan_from_policy,
    with_plan,
)
from llmesh.services.classifier.settings import ClassifierSettings
from prometheus_client import REGISTRY

from services.classifier.tests.conftest import DATA, new_version

pytestmark = pytest.mark.timeout(120)


def rows(n: int, *, candidate_noise: float, seed: int = 0) -> list[LabelledRow]:
    """Labels that follow the current version's score; the candidate's score is the current one plus
    noise (large noise: a worse ranking)."""
    rng = np.random.default_rng(seed)
    current = rng.random(n)
    pays_off = (current + rng.normal(0, 0.1, n) > 0.6).astype(int)
    candidate = current + rng.normal(0, candidate_noise, n)
    return [
        LabelledRow(f"r{i}", {"cur": float(current[i]), "cand": float(candidate[i])}, int(pays_off[i]))
        for i in range(n)
    ]


PLAN = RolloutPlan(current="cur", candidate="cand", share=0.1)
CONFIG = EvaluatorConfig(min_labels=30, promote_after=150, tolerance=0.02)


def test_apgr_of_a_perfect_a_reversed_and_a_one_label_ranking():
    y = np.array([0, 0, 0, 1, 1])
    # Perfect: the gap is recovered once the 2 of 5 that pay off go strong (1 - 0.4/2).
    assert apgr(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), y) == pytest.approx(0.8)
    assert apgr(np.array([0.9, 0.8, 0.7, 0.2, 0.1]), y) == pytest.approx(0.2)
    assert math.isnan(apgr(np.array([0.1, 0.2]), np.array([1, 1])))


def test_a_worse_candidate_is_rolled_back_a_holding_one_promoted_and_few_labels_wait():
    worse = decide(rows(120, candidate_noise=0.6), PLAN, "cur", CONFIG)
    assert worse.action == "rollback", worse.reason
    c = worse.comparison
    assert c.candidate_apgr < c.current_apgr and c.difference_high < 0 and c.labelled == 120

    holds = decide(rows(200, candidate_noise=0.01), PLAN, "cur", CONFIG)
    assert holds.action == "promote", holds.reason
    assert holds.comparison.difference_low > -CONFIG.tolerance

    # Holding, but not yet the sample promotion needs.
    assert decide(rows(100, candidate_noise=0.01), PLAN, "cur", CONFIG).action == "wait"
    assert decide(rows(10, candidate_noise=0.6), PLAN, "cur", CONFIG).action == "wait"


def test_the_plan_reads_and_writes_the_global_document_leniently():
    doc = {"tiers": {"1": "m"}, "classifier": {"tier_thresholds": [0.2, 0.8], "rollout": {"candidate": "v2"}}}
    plan = plan_from_policy(doc)
    assert plan == RolloutPlan(candidate="v2", share=0.1)
    assert plan_from_policy({"classifier": {"rollout": {"candidate": "v2", "share": 3}}}) is None
    with pytest.raises(ValueError, match="share"):
        parse_rollout({"candidate": "v2", "share": -0.1})
    written = with_plan(doc, RolloutPlan(current="v1"))
    assert written["classifier"] == {"tier_thresholds": [0.2, 0.8], "rollout": {"current": "v1"}}
    assert written["tiers"] == {"1": "m"} and "rollout" in doc["classifier"]  # a copy
    assert "classifier" not in with_plan({"classifier": {"rollout": {"current": "v1"}}}, None)


def test_the_candidate_serves_its_share_by_a_stable_hash(models_dir, packaged_model_dir):
    new_version(models_dir, packaged_model_dir, "29990101T000000Z-candidate", intercept_shift=0.5)
    registry = ModelRegistry(models_dir)
    registry.load_or_fail()
    plan = RolloutPlan(candidate="29990101T000000Z-candidate", share=0.25)
    selector = ModelSelector(registry, lambda: plan)
    serving = selector.serving()
    # No current named: the newest version other than the candidate.
    assert serving.current.version == packaged_model_dir.name
    picks = [selector.pick("t1", f"req-{i}") for i in range(2000)]
    on_candidate = sum(served.version == plan.candidate for served, _ in picks)
    assert 400 < on_candidate < 600
    assert all(other is not None and other.version != served.version for served, other in picks)
    assert [selector.pick("t1", f"req-{i}")[0].version for i in range(50)] == [p[0].version for p in picks[:50]]
    # No request id: never the candidate (it could not be rated).
    assert all(selector.pick("t1", "")[0].version == packaged_model_dir.name for _ in range(20))


# -- the running service ---------------------------------------------------------------------------


def prompts() -> list[str]:
    seen, out = set(), []
    for prompt in load_routing_data(DATA / "routing_sample.csv").prompts:
        if prompt not in seen:
            seen.add(prompt)
            out.append(prompt)
    return out


@pytest.fixture
async def rollout_service(nats_url, models_dir, tmp_path):
    bucket = unique("policy").replace("_", "-")
    settings = load_settings(
        ClassifierSettings,
        environ={},
        port=0,
        metrics_port=0,
        nats_url=nats_url,
        model_dir=str(models_dir),
        model_poll_s=0.1,
        feedback_db=str(tmp_path / "feedback.sqlite3"),
        feedback_flush_s=0.05,
        policy_bucket=bucket,
        # Every score in tiers 1-2, so every rating labels the routing decision.
        tier_thresholds="0.99,1.0",
        rollout_share=0.3,
        rollout_eval_s=0.2,
        rollout_min_labels=30,
        rollout_promote_after=60,
    )
    app = ClassifierApp(settings)
    bus = await Bus.connect(nats_url, "rollout-test")
    store = PolicyStore(bus, bucket=bucket)
    events: list[events_pb2.ClassifierRolloutChanged] = []

    async def on_event(msg):
        events.append(events_pb2.ClassifierRolloutChanged.FromString(msg.data))

    await bus.nc.subscribe(ROLLOUT_SUBJECT, cb=on_event)
    async with hosted(app, settings) as host:
        await store.start()
        async with open_channel(host.address) as channel:
            yield app, classifier_pb2_grpc.ClassifierServiceStub(channel), store, events
    await store.stop()
    await bus.close()


async def rollout_of(app, store, models_dir, packaged_model_dir, **change) -> str:
    """Lands a new version while the service runs; returns it once its rollout is in the policy."""
    version = "29990101T000000Z-candidate"
    new_version(models_dir, packaged_model_dir, version, **change)

    def started():
        rollout = (store.get("global") or {}).get("classifier", {}).get("rollout", {})
        assert rollout.get("candidate") == version and rollout.get("current") == packaged_model_dir.name
        assert rollout.get("share") == 0.3
        assert app.models.serving().candidate.version == version

    await assert_eventually(started, message="rollout started")
    return version


async def rate_traffic(stub, truth, tenant: str, n: int) -> dict[str, int]:
    """n classified and rated requests; the rating follows `truth` (a strong call pays off: bad)."""
    served: dict[str, int] = {}
    for prompt in prompts()[:n]:
        request_id = unique("req")
        r = await stub.Classify(
            classifier_pb2.ClassifyRequest(
                messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt)],
                tenant_id=tenant,
                request_id=request_id,
            )
        )
        served[r.model_version] = served.get(r.model_version, 0) + 1
        rating = -1 if truth.predict(prompt).score > 0.55 else 1
        await stub.Feedback(classifier_pb2.FeedbackRequest(request_id=request_id, rating=rating, tenant_id=tenant))
    return served


async def test_a_worse_version_serves_a_share_then_is_rolled_back_from_feedback(
    rollout_service, models_dir, packaged_model_dir
):
    app, stub, store, events = rollout_service
    # The new version ranks prompts in reverse: far worse on feedback that follows the current one.
    version = await rollout_of(app, store, models_dir, packaged_model_dir, coef_scale=-1.0)
    truth = load_model(packaged_model_dir)
    tenant = unique("tenant")
    served = await rate_traffic(stub, truth, tenant, 120)
    assert set(served) == {version, packaged_model_dir.name}, served

    # Both versions' scores are recorded with every request.
    labelled = app.feedback.labelled((packaged_model_dir.name, version))
    assert len(labelled) >= 30

    def rolled_back():
        rollout = store.get("global")["classifier"]["rollout"]
        assert rollout == {"current": packaged_model_dir.name}
        assert any(e.decision == "rolled_back" and e.candidate_version == version for e in events)

    await assert_eventually(rolled_back, message="rolled back", timeout_s=30)
    event = next(e for e in events if e.decision == "rolled_back")
    assert event.candidate_apgr < event.current_apgr and event.difference_high < 0 and event.labelled >= 30
    assert REGISTRY.get_sample_value("llmesh_classifier_rollout_decisions_total", {"decision": "rolled_back"}) >= 1
    # The rolled-back version, though newest, serves nothing now.
    again = await rate_traffic(stub, truth, tenant, 20)
    assert again == {packaged_model_dir.name: 20}


async def test_a_version_that_holds_is_promoted_after_the_minimum_sample(
    rollout_service, models_dir, packaged_model_dir
):
    app, stub, store, events = rollout_service
    # Same ranking as the current version (a shifted intercept): it holds.
    version = await rollout_of(app, store, models_dir, packaged_model_dir, intercept_shift=0.3)
    truth = load_model(packaged_model_dir)
    tenant = unique("tenant")
    await rate_traffic(stub, truth, tenant, 90)

    def promoted():
        assert store.get("global")["classifier"]["rollout"] == {"current": version}
        assert any(e.decision == "promoted" for e in events)

    await assert_eventually(promoted, message="promoted", timeout_s=30)
    assert await rate_traffic(stub, truth, tenant, 10) == {version: 10}
    assert app.models.serving().candidate is None
