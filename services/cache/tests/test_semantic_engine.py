"""The cache service with the real semantic engine (MiniLM embeddings, embedded Qdrant): the
service's side of the contract end to end. Slow: it loads the embedding model."""

from __future__ import annotations

import pytest
from llmesh.cache.v1 import cache_pb2
from llmesh.kit.testing import assert_eventually, unique

from services.cache.tests.builders import lookup, store
from services.cache.tests.hosting import cache_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SEMANTIC_HIT = cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT
MISS = cache_pb2.LOOKUP_OUTCOME_MISS


async def test_paraphrases_hit_and_unrelated_or_foreign_questions_miss(nats_url, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    async with cache_service(nats_url, semantic=True) as (_, stub, _):
        tenant, other = unique("acme"), unique("globex")
        stored = await stub.Store(
            store(tenant, "How do I reset my password?", "Use the reset link on the sign-in page.")
        )
        assert stored.stored and stored.semantic_indexed

        hit = await stub.Lookup(lookup(tenant, "How can I reset my password?"))
        assert hit.outcome == SEMANTIC_HIT, hit
        assert hit.answer.entry_id == stored.entry_id and hit.similarity > 0.8
        assert (await stub.Lookup(lookup(tenant, "What is the capital of France?"))).outcome == MISS
        assert (await stub.Lookup(lookup(other, "How can I reset my password?"))).outcome == MISS
        different_context = lookup(
            tenant, "How can I reset my password?", key_kw={"system_prompt": "Answer in French."}
        )
        assert (await stub.Lookup(different_context)).outcome == MISS

        await stub.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant, all=True))

        async def flushed():
            return (await stub.Lookup(lookup(tenant, "How can I reset my password?"))).outcome == MISS

        await assert_eventually(flushed, timeout_s=20)
