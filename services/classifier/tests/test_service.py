"""The classifier service over gRPC: a real server in-process, a real nats-server."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings
from llmesh.kit.experiments import resolve_variant
from llmesh.kit.policy import PolicyStore
from llmesh.kit.streams import CLASSIFIER_MODEL_SUBJECT
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.services.classifier.app import ClassifierApp
from llmesh.services.classifier.feedback import FeedbackStore
from llmesh.services.classifier.settings import ClassifierSettings
from prometheus_client import REGISTRY

from services.classifier.tests.conftest import new_version

pytestmark = pytest.mark.timeout(60)

USER = common_pb2.ROLE_USER
WORD_PROBLEM = (
    "A baker makes 3 batches of 24 muffins. She sells 2/3 of them at $2.50 each and gives away 10. "
    "How much money does she make, and how many muffins are left?"
)


def msg(content: str, role=USER) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content)


def request(content: str = "What is the capital of France?", **kw) -> classifier_pb2.ClassifyRequest:
    return classifier_pb2.ClassifyRequest(messages=[msg(content)], **kw)


@pytest.fixture
async def service(nats_url, models_dir, tmp_path):
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
        # A new version serves everything at once here; gradual rollouts: test_rollout.py.
        rollout_share=0.0,
    )
    app = ClassifierApp(settings)
    async with hosted(app, settings) as host:
        async with open_channel(host.address) as channel:
            yield app, classifier_pb2_grpc.ClassifierServiceStub(channel), channel


@pytest.fixture
async def policies(nats_url):
    bus = await Bus.connect(nats_url, "classifier-test")
    store = PolicyStore(bus)
    await store.start()
    yield store
    await store.stop()
    await bus.close()


async def test_classify_returns_score_tier_sensitivity_and_model(service, packaged_model_dir):
    app, stub, _ = service
    easy = await stub.Classify(request("Who wrote Hamlet?"))
    hard = await stub.Classify(request(WORD_PROBLEM))
    for r in (easy, hard):
        assert 0.0 < r.complexity_score < 1.0
        assert r.tier in (common_pb2.TIER_1, common_pb2.TIER_2, common_pb2.TIER_3)
        # The calibrated probability that the tier is the right call (complexity/model.py Calibration).
        assert 0.0 <= r.confidence <= 1.0
        assert r.sensitivity == common_pb2.SENSITIVITY_INTERNAL
        assert r.model_version == packaged_model_dir.name and r.model_name
    assert hard.complexity_score > easy.complexity_score

    pii = await stub.Classify(
        classifier_pb2.ClassifyRequest(
            messages=[msg("You are a support bot.", common_pb2.ROLE_SYSTEM), msg("my card is 4111 1111 1111 1111")]
        )
    )
    assert pii.sensitivity == common_pb2.SENSITIVITY_RESTRICTED
    (span,) = pii.pii
    assert (span.kind, span.message_index, span.detail) == (classifier_pb2.PII_KIND_PAYMENT_CARD, 1, "visa")
    assert "my card is 4111 1111 1111 1111"[span.start : span.end] == "4111 1111 1111 1111"

    metrics = REGISTRY.get_sample_value(
        "llmesh_classifier_tier_total", {"tier": str(hard.tier), "model_version": hard.model_version}
    )
    assert metrics and metrics >= 1
    assert REGISTRY.get_sample_value("llmesh_classifier_model_info", {"model_version": hard.model_version}) == 1


async def test_bad_input_on_every_rpc_is_invalid_argument_and_the_service_keeps_serving(service):
    _, stub, _ = service
    bad_classify = [
        (classifier_pb2.ClassifyRequest(), "messages is empty"),
        (classifier_pb2.ClassifyRequest(messages=[msg("x" * 70_000)]), "limit"),
        (classifier_pb2.ClassifyRequest(messages=[common_pb2.ChatMessage(role=42, content="hi")]), "role"),
        (classifier_pb2.ClassifyRequest(messages=[msg("   ")]), "content is empty"),
        (classifier_pb2.ClassifyRequest(messages=[msg("be brief", common_pb2.ROLE_SYSTEM)]), "no user message"),
        (request(tenant_id="bad tenant!"), "tenant_id"),
        (request(tenant_id="t", use_case="a b"), "use_case"),
        (request(use_case="support"), "needs a tenant_id"),
        (request(request_id="r" * 200), "request_id"),
    ]
    bad_feedback = [
        (classifier_pb2.FeedbackRequest(rating=1), "request_id is required"),
        (classifier_pb2.FeedbackRequest(request_id="r", rating=5), "rating"),
        (classifier_pb2.FeedbackRequest(request_id="r", rating=1, comment="x" * 5000), "comment"),
        (classifier_pb2.FeedbackRequest(request_id="r", rating=1, tenant_id="no spaces allowed"), "tenant_id"),
    ]
    for call, cases in ((stub.Classify, bad_classify), (stub.Feedback, bad_feedback)):
        for req, needle in cases:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await call(req)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (req, exc.value.details())
            assert needle in exc.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.Feedback(classifier_pb2.FeedbackRequest(request_id=unique("never-classified"), rating=1))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await stub.Classify(request())).model_version


async def test_a_use_case_the_router_accepts_is_classified(service):
    # The router forwards its callers' use cases (llmesh.kit.vocabulary.USE_CASE): a '.' among them
    # must not turn every such request into a degraded classification.
    _, stub, _ = service
    assert (await stub.Classify(request(tenant_id="t", use_case="support-bot.v2"))).model_version


async def test_feedback_is_stored_with_the_features_and_tier_of_the_request(service):
    app, stub, _ = service
    tenant, request_id = unique("tenant"), unique("req")
    classified = await stub.Classify(request(WORD_PROBLEM, tenant_id=tenant, request_id=request_id))
    await stub.Feedback(
        classifier_pb2.FeedbackRequest(request_id=request_id, rating=-1, comment="wrong total", tenant_id=tenant)
    )
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await stub.Feedback(classifier_pb2.FeedbackRequest(request_id=request_id, rating=1, tenant_id=unique("other")))
    assert foreign.value.code() == grpc.StatusCode.NOT_FOUND

    store = FeedbackStore(app.settings.feedback_db)
    try:
        assert store.feedback(request_id) == (-1, "wrong total")
        (row,) = [r for r in store.rated() if r.request_id == request_id]
        assert row.tier == int(classified.tier) and row.model_version == classified.model_version
        assert len(row.features) > 10
    finally:
        store.close()


async def test_policy_overrides_thresholds_per_tenant_and_use_case_and_adds_terms(service, policies):
    _, stub, _ = service
    tenant = unique("tenant")
    text = "Status of Project Falcon: can you summarise the plan?"
    base = await stub.Classify(request(text, tenant_id=tenant))
    assert base.sensitivity == common_pb2.SENSITIVITY_INTERNAL

    # Everything is tier 3 for this tenant, tier 1 for one of its use cases.
    await policies.put(
        f"tenant.{tenant}",
        {
            "classifier": {
                "tier_thresholds": [0.0, 0.0],
                "sensitive_terms": ["Project Falcon"],
                "sensitive_terms_level": "restricted",
            }
        },
    )
    await policies.put(f"use_case.{tenant}.faq", {"classifier": {"tier_thresholds": [1.0, 1.0]}})

    async def tenant_policy_applies():
        r = await stub.Classify(request(text, tenant_id=tenant))
        assert r.tier == common_pb2.TIER_3
        assert r.sensitivity == common_pb2.SENSITIVITY_RESTRICTED
        assert [p.kind for p in r.pii] == [classifier_pb2.PII_KIND_TENANT_TERM]

    await assert_eventually(tenant_policy_applies, message="tenant policy")

    async def use_case_policy_applies():
        r = await stub.Classify(request(text, tenant_id=tenant, use_case="faq"))
        assert r.tier == common_pb2.TIER_1
        assert r.sensitivity == common_pb2.SENSITIVITY_RESTRICTED  # terms come from the tenant document

    await assert_eventually(use_case_policy_applies, message="use-case policy")
    other = await stub.Classify(request(text, tenant_id=unique("tenant")))
    assert other.sensitivity == common_pb2.SENSITIVITY_INTERNAL and not other.pii

    await policies.delete(f"tenant.{tenant}")

    async def back_to_defaults():
        r = await stub.Classify(request(text, tenant_id=tenant))
        assert r.sensitivity == common_pb2.SENSITIVITY_INTERNAL and r.tier == base.tier

    await assert_eventually(back_to_defaults, message="policy removed")


async def test_a_new_model_version_is_picked_up_without_a_restart(service, models_dir, packaged_model_dir, nats_url):
    app, stub, _ = service
    # announced on NATS: the router's memo of classifications (docs/adr/0028) listens
    bus = await Bus.connect(nats_url, "classifier-model-test")
    loaded: list[events_pb2.ClassifierModelLoaded] = []

    async def on_loaded(msg):
        loaded.append(events_pb2.ClassifierModelLoaded.FromString(msg.data))

    await bus.nc.subscribe(CLASSIFIER_MODEL_SUBJECT, cb=on_loaded)
    await bus.nc.flush()
    before = await stub.Classify(request(WORD_PROBLEM))
    # A version that scores everything as hard: its intercept is far above the old outputs.
    version = "29991231T235959Z-hotswap"
    new_version(models_dir, packaged_model_dir, version, intercept_shift=50.0)

    async def swapped():
        r = await stub.Classify(request(WORD_PROBLEM))
        assert r.model_version == version
        assert r.tier == common_pb2.TIER_3 and r.complexity_score > before.complexity_score

    await assert_eventually(swapped, message="hot swap")
    await assert_eventually(lambda: [e.version for e in loaded] == [version], message="model-loaded event")
    assert loaded[0].event_id and loaded[0].occurred_at.seconds > 0
    await bus.close()
    assert REGISTRY.get_sample_value("llmesh_classifier_model_info", {"model_version": version}) == 1
    assert REGISTRY.get_sample_value("llmesh_classifier_model_info", {"model_version": before.model_version}) == 0


async def test_reflection_lists_the_service(service):
    _, _, channel = service
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        names = [s.name for s in response.list_services_response.service]
        assert "llmesh.classifier.v1.ClassifierService" in names
        break


async def test_a_policy_experiment_sets_thresholds_per_variant_and_records_it(service, policies):
    app, stub, _ = service
    tenant = unique("tenant")
    doc = {
        "classifier": {"tier_thresholds": [0.99, 1.0]},
        "experiments": {
            "strict": {
                "variants": {"all-strong": {"share": 0.5, "policy": {"classifier": {"tier_thresholds": [0.0, 0.0]}}}}
            }
        },
    }
    await policies.put(f"tenant.{tenant}", doc)

    async def tiers_by_variant():
        out = {}
        for i in range(30):
            request_id = unique("req")
            r = await stub.Classify(request("Who wrote Hamlet?", tenant_id=tenant, request_id=request_id))
            _, label = resolve_variant(doc, tenant, request_id)
            out.setdefault(label, set()).add(r.tier)
            await stub.Feedback(classifier_pb2.FeedbackRequest(request_id=request_id, rating=1, tenant_id=tenant))
        assert out == {"strict/all-strong": {common_pb2.TIER_3}, "": {common_pb2.TIER_1}}, out

    await assert_eventually(tiers_by_variant, message="the variant's thresholds apply")
    ratings = app.feedback.ratings_by_variant("strict")
    assert set(ratings) == {"all-strong"} and len(ratings["all-strong"]) >= 5
    assert REGISTRY.get_sample_value("llmesh_classifier_policy_variant_total", {"policy_variant": "strict/all-strong"})
