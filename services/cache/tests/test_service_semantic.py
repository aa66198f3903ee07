"""The service side of the semantic cache over gRPC, with a small in-test SemanticIndex: lookups
fall through to it, stores feed it, invalidation and feedback reach it, and the tenant policy
sets TTLs per content class and whether restricted requests are cached."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from llmesh.cache.v1 import cache_pb2
from llmesh.common.v1 import common_pb2
from llmesh.kit import identity
from llmesh.kit.bus import Bus
from llmesh.kit.policy import PolicyStore
from llmesh.kit.testing import assert_eventually, unique

from services.cache.tests.builders import lookup, store
from services.cache.tests.hosting import cache_service
from services.cache.tests.toy_semantic import ToySemanticIndex

pytestmark = pytest.mark.timeout(60)

QUESTION = "how do i reset my password"
REWORDED = "how do i reset my password please"


@pytest.fixture
async def service(nats_url):
    index = ToySemanticIndex()
    async with cache_service(nats_url, semantic_index=index) as (_, stub, _):
        yield stub, index


@pytest.fixture
async def policies(nats_url):
    bus = await Bus.connect(nats_url, "test-policy-editor")
    store = PolicyStore(bus)
    await store.start()
    written: list[str] = []

    async def put(key: str, doc: dict) -> None:
        written.append(key)
        await store.put(key, doc)

    yield put
    for key in written:
        await store.delete(key)
    await store.stop()
    await bus.close()


async def test_semantic_hit_after_exact_miss_with_the_decision_reported(service):
    stub, index = service
    tenant = unique("acme")
    stored = await stub.Store(store(tenant, QUESTION, "Use the reset link."))
    assert stored.semantic_indexed and (tenant, stored.entry_id) in index.entries

    hit = await stub.Lookup(lookup(tenant, REWORDED))
    assert hit.outcome == cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT
    assert hit.semantic_decision == cache_pb2.SEMANTIC_DECISION_GRAY_HIT and 0.8 < hit.similarity < 0.9
    assert hit.answer.entry_id == stored.entry_id and hit.answer.content == "Use the reset link."

    gray_miss = await stub.Lookup(lookup(tenant, "how do i reset my router today"))
    assert gray_miss.outcome == cache_pb2.LOOKUP_OUTCOME_MISS
    assert gray_miss.semantic_decision == cache_pb2.SEMANTIC_DECISION_GRAY_MISS and not gray_miss.HasField("answer")

    exact_only = await stub.Lookup(lookup(tenant, REWORDED, exact_only=True))
    assert exact_only.outcome == cache_pb2.LOOKUP_OUTCOME_MISS
    assert exact_only.semantic_decision == cache_pb2.SEMANTIC_DECISION_UNSPECIFIED
    assert (await stub.Lookup(lookup(unique("globex"), REWORDED))).outcome == cache_pb2.LOOKUP_OUTCOME_MISS
    assert (
        await stub.Lookup(lookup(tenant, REWORDED, tier=common_pb2.TIER_3))
    ).outcome == cache_pb2.LOOKUP_OUTCOME_MISS

    stats = (await stub.Stats(cache_pb2.StatsRequest(tenant_id=tenant))).total
    assert (stats.lookups, stats.semantic_hits, stats.gray_zone, stats.misses) == (4, 1, 2, 3)
    assert stats.semantic_hit_rate == pytest.approx(0.25) and stats.gray_zone_rate == pytest.approx(0.5)


async def test_the_routers_exact_then_semantic_only_pair_is_one_lookup(service):
    """The router's speculative pair (docs/adr/0029, 0039): an exact-only lookup that a lookup
    follows, then a semantic_only one that skips the exact layer."""
    stub, index = service
    tenant = unique("acme")
    await stub.Store(store(tenant, QUESTION, "Use the reset link."))
    exact_miss = await stub.Lookup(lookup(tenant, REWORDED, exact_only=True, lookup_follows=True))
    assert exact_miss.outcome == cache_pb2.LOOKUP_OUTCOME_MISS and index.lookups == 0
    hit = await stub.Lookup(lookup(tenant, REWORDED, semantic_only=True))
    assert hit.outcome == cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT and hit.answer.content == "Use the reset link."
    exact_stored = store(tenant, "what is the capital of france", "Paris.", exact_only=True)
    assert (await stub.Store(exact_stored)).stored
    asked = lookup(tenant, "what is the capital of france", semantic_only=True)
    assert (await stub.Lookup(asked)).outcome == cache_pb2.LOOKUP_OUTCOME_MISS, "the exact layer is not asked"
    stats = (await stub.Stats(cache_pb2.StatsRequest(tenant_id=tenant))).total
    assert (stats.lookups, stats.semantic_hits, stats.misses) == (2, 1, 1)

    with pytest.raises(grpc.aio.AioRpcError) as both:
        await stub.Lookup(lookup(tenant, REWORDED, exact_only=True, semantic_only=True))
    assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "semantic_only" in both.value.details()


async def test_thumbs_down_on_a_semantic_hit_evicts_and_tightens(service):
    stub, index = service
    tenant = unique("acme")
    entry_id = (await stub.Store(store(tenant, QUESTION, "a"))).entry_id
    down = await stub.Feedback(
        cache_pb2.FeedbackRequest(
            tenant_id=tenant,
            entry_id=entry_id,
            rating=cache_pb2.RATING_THUMBS_DOWN,
            served_as=cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT,
        )
    )
    assert down.evicted and down.tightened
    assert index.tightened == [(tenant, "support")] and (tenant, entry_id) not in index.entries
    assert (await stub.Lookup(lookup(tenant, QUESTION))).outcome == cache_pb2.LOOKUP_OUTCOME_MISS


async def test_invalidation_reaches_the_semantic_index(service):
    stub, index = service
    tenant = unique("acme")
    await stub.Store(
        store(tenant, QUESTION, "a", content_versions=[common_pb2.ContentVersion(document_id="kb", version=4)])
    )
    await stub.Invalidate(
        cache_pb2.InvalidateRequest(
            tenant_id=tenant, content_version=common_pb2.ContentVersion(document_id="kb", version=5)
        )
    )
    await assert_eventually(lambda: not any(t == tenant for t, _ in index.entries))
    assert (await stub.Lookup(lookup(tenant, REWORDED))).outcome == cache_pb2.LOOKUP_OUTCOME_MISS


async def test_policy_sets_ttl_by_content_class_and_allows_restricted_caching(service, policies):
    stub, index = service
    tenant = unique("acme")
    restricted = {"sensitivity": common_pb2.SENSITIVITY_RESTRICTED}
    refused = await stub.Store(store(tenant, "salary of bob", "secret", key_kw=restricted))
    assert not refused.stored and "restricted" in refused.reason
    assert (await stub.Lookup(lookup(tenant, "salary of bob", key_kw=restricted))).uncacheable

    await policies(
        f"tenant.{tenant}", {"cache": {"ttl_by_class": {"finance": 900, "faq": 86400}, "allow_restricted": True}}
    )

    async def finance_ttl_applied():
        response = await stub.Store(store(tenant, "q3 revenue", "up 4%", content_class="finance", ttl_seconds=7200))
        return (
            response.expires_at.seconds - (await stub.Lookup(lookup(tenant, "q3 revenue"))).answer.created_at.seconds
            == 900
        )

    await assert_eventually(finance_ttl_applied, message="the policy change reached the service")
    faq = await stub.Store(store(tenant, "opening hours", "9-5", content_class="faq"))
    answer = (await stub.Lookup(lookup(tenant, "opening hours"))).answer
    assert answer.expires_at.seconds - answer.created_at.seconds == 86400 and answer.content_class == "faq"
    assert index.entries[(tenant, faq.entry_id)].expires_at == pytest.approx(answer.expires_at.ToNanoseconds() / 1e9)

    allowed = await stub.Store(store(tenant, "salary of bob", "secret", key_kw=restricted))
    assert allowed.stored
    hit = await stub.Lookup(lookup(tenant, "salary of bob", key_kw=restricted))
    assert hit.outcome == cache_pb2.LOOKUP_OUTCOME_EXACT_HIT and not hit.uncacheable

    await policies(f"use_case.{tenant}.support", {"cache": {"semantic": False}})

    async def semantic_off():
        return (
            await stub.Lookup(lookup(tenant, "opening hours please"))
        ).semantic_decision == cache_pb2.SEMANTIC_DECISION_UNSPECIFIED

    await assert_eventually(semantic_off, message="the use case policy turned the semantic layer off")


async def test_an_answer_of_unknown_tier_is_indexed_as_the_weakest(service):
    stub, index = service
    tenant = unique("acme")
    stored = await stub.Store(store(tenant, QUESTION, "a", tier=common_pb2.TIER_UNSPECIFIED))
    assert stored.semantic_indexed and index.entries[(tenant, stored.entry_id)].tier == 1
    assert (await stub.Lookup(lookup(tenant, QUESTION))).answer.tier == common_pb2.TIER_1
    assert (
        await stub.Lookup(lookup(tenant, REWORDED, tier=common_pb2.TIER_1))
    ).outcome == cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT
    assert (
        await stub.Lookup(lookup(tenant, REWORDED, tier=common_pb2.TIER_2))
    ).outcome == cache_pb2.LOOKUP_OUTCOME_MISS


def _reflection_client_round(address: str, tenant: str, other: str) -> list[str]:
    """What a client that has no generated code sees: descriptors from server reflection, messages
    built from them, Store then Lookup by the method's full name, one tenant per stored question.
    Like every caller it presents a credential (the operator's, docs/adr/0023)."""
    credential = ((identity.SERVICE_METADATA_KEY, identity.default().credential),)
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("llmesh.cache.v1.CacheService")

        def call(method_name: str, body: dict) -> dict:
            method = service.FindMethodByName(method_name)
            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            rpc = channel.unary_unary(
                f"/{service.full_name}/{method_name}",
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            reply = rpc(json_format.ParseDict(body, request_class()), timeout=10, metadata=credential)
            return json_format.MessageToDict(reply, preserving_proto_field_name=True)

        def key(tenant_id: str, text: str) -> dict:
            return {"tenant_id": tenant_id, "use_case": "support", "messages": [{"role": "ROLE_USER", "content": text}]}

        stored = call("Store", {"key": key(tenant, QUESTION), "content": "Use the reset link.", "tier": "TIER_2"})
        assert stored["stored"] and stored["semantic_indexed"], stored
        return [
            call("Lookup", {"key": key(t, text)})["outcome"]
            for t, text in ((tenant, QUESTION), (tenant, REWORDED), (other, REWORDED))
        ]


async def test_a_client_built_from_reflection_alone_stores_and_looks_up(nats_url):
    async with cache_service(nats_url, semantic_index=ToySemanticIndex()) as (_, _, address):
        tenant, other = unique("acme"), unique("globex")
        outcomes = await asyncio.to_thread(_reflection_client_round, address, tenant, other)
    assert outcomes == ["LOOKUP_OUTCOME_EXACT_HIT", "LOOKUP_OUTCOME_SEMANTIC_HIT", "LOOKUP_OUTCOME_MISS"]
