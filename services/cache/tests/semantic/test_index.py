"""The index's own logic (matching, decisions, feedback, validation, TTL) on the embedded store,
with a word-hash embedder: meaning is the real model's business (test_real_embedding.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from llmesh.kit import errors
from llmesh.kit.testing import assert_eventually, unique
from llmesh.services.cache.semantic import Calibration, Decision, OperatingPoint, open_semantic_index
from llmesh.services.cache.semantic.config import SemanticConfig
from llmesh.services.cache.semantic.index import MAX_AHEAD

from .fakes import HashEmbedder, entry, query

pytestmark = pytest.mark.timeout(30)


class WordOverlapStage:
    """A second stage that is easy to reason about in a test: the share of shared words."""

    name = "overlap"

    def __init__(self):
        self.asked = 0

    async def score(self, query_text: str, candidate_text: str, similarity: float) -> float:
        self.asked += 1
        a, b = set(query_text.lower().split()), set(candidate_text.lower().split())
        return len(a & b) / len(a | b)


CALIBRATION = Calibration(
    embedder=HashEmbedder.model_id,
    points=(
        OperatingPoint(0.01, lower=0.5, upper=0.99, stage2_threshold=0.6),
        OperatingPoint(0.005, lower=0.5, upper=0.999, stage2_threshold=0.8),
        OperatingPoint(0.001, lower=0.5, upper=0.9999, stage2_threshold=0.95),
    ),
)


async def open_index(tmp_path, stage2=None, **config):
    settings = SemanticConfig(**({"store_path": str(tmp_path / "store"), "purge_interval_s": 0} | config))
    return await open_semantic_index(settings, embedder=HashEmbedder(), calibration=CALIBRATION, stage2=stage2)


@pytest.fixture
async def index(tmp_path):
    opened = await open_index(tmp_path, stage2=WordOverlapStage())
    yield opened
    await opened.close()


async def test_same_question_hits_and_an_unrelated_one_misses(index):
    t = unique("tenant")
    await index.add(entry(t, "e1", "how do I reset my password"))
    hit = await index.lookup(query(t, "How do I reset my password?"))
    assert hit.decision is Decision.HIT
    assert hit.entry.entry_id == "e1" and hit.similarity == pytest.approx(1.0, abs=1e-5)
    miss = await index.lookup(query(t, "what is the weather in Paris"))
    assert miss.decision is Decision.MISS
    empty = await index.lookup(query(unique("tenant"), "how do I reset my password"))
    assert (empty.decision, empty.entry, empty.similarity) == (Decision.MISS, None, 0.0)


async def test_gray_zone_goes_to_the_second_stage_and_is_recorded(index):
    t = unique("tenant")
    await index.add(entry(t, "e1", "how do I reset my password on the website today"))
    match = await index.lookup(query(t, "how do I reset my password on the app today"))
    assert match.decision in (Decision.GRAY_HIT, Decision.GRAY_MISS)
    assert match.stage2_score == pytest.approx(9 / 11)
    assert match.decision is Decision.GRAY_HIT
    record = index.gray_zone[-1]
    assert (record.tenant_id, record.entry_id, record.decision) == (t, "e1", Decision.GRAY_HIT)
    assert record.candidate_text == "how do I reset my password on the website today"


async def test_thumbs_down_evicts_the_entry_and_tightens_the_use_case(index):
    t = unique("tenant")
    await index.add(entry(t, "e1", "how do I reset my password on the website today"))
    await index.add(entry(t, "e2", "how do I reset my password on the website today please"))
    gray = query(t, "how do I reset my password on the app today")
    assert (await index.lookup(gray)).decision is Decision.GRAY_HIT
    assert await index.thumbs_down(t, "support", "e1") == 1
    # Stricter now: the same kind of near match no longer passes the second stage.
    after = await index.lookup(gray)
    assert after.entry.entry_id == "e2" and after.decision is Decision.GRAY_MISS
    assert index.policy.target(t, "support") == pytest.approx(0.005)
    assert index.policy.target(t, "other-use-case") == pytest.approx(0.01)


async def test_use_case_policy_target(index):
    t = unique("tenant")
    index.set_target(t, "support", 0.001)
    await index.add(entry(t, "e1", "how do I reset my password on the website today"))
    assert (await index.lookup(query(t, "how do I reset my password on the app today"))).decision is Decision.GRAY_MISS
    with pytest.raises(errors.InvalidArgument):
        index.set_target(t, "support", 0)


async def test_storing_after_a_lookup_does_not_embed_again(index):
    t = unique("tenant")
    text = f"a question never seen before {unique('q')}"
    before = index.embedder.texts_embedded
    await index.lookup(query(t, text))
    await index.add(entry(t, "e1", text))
    assert index.embedder.texts_embedded == before + 1


class GatedEmbedder(HashEmbedder):
    """Each call waits for `release`; `fail_next` makes the next call fail."""

    def __init__(self):
        super().__init__()
        self.release = asyncio.Event()
        self.fail_next = False
        self.started = 0

    async def embed(self, texts: list[str]):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("embedder down")
        self.started += 1
        await self.release.wait()
        return await super().embed(texts)


@pytest.fixture
async def gated(tmp_path):
    embedder = GatedEmbedder()
    settings = SemanticConfig(store_path=str(tmp_path / "store"), purge_interval_s=0)
    opened = await open_semantic_index(settings, embedder=embedder, calibration=CALIBRATION)
    yield opened, embedder
    embedder.release.set()
    await opened.close()


async def test_an_embedding_started_ahead_is_the_one_the_lookup_that_follows_takes(gated):
    index, embedder = gated
    t = unique("tenant")
    embedder.release.set()
    await index.add(entry(t, "e1", "how do I reset my password"))
    embedder.release.clear()
    embedded, started = embedder.texts_embedded, embedder.started

    index.embed_ahead("How do I reset my password?")
    index.embed_ahead("How do I reset my password?")  # once per text
    await assert_eventually(lambda: embedder.started == started + 1, message="the embedding started without a lookup")
    lookup = asyncio.create_task(index.lookup(query(t, "How do I reset my password?")))
    await asyncio.sleep(0.05)
    assert not lookup.done(), "the lookup waits for the embedding under way"
    embedder.release.set()
    match = await lookup
    assert match.decision is Decision.HIT and match.entry.entry_id == "e1"
    assert embedder.texts_embedded == embedded + 1, "embedded once, ahead of the lookup"
    # The same vector as a lookup that embeds the text itself.
    assert match.similarity == pytest.approx((await index.lookup(query(t, "how do i reset my PASSWORD"))).similarity)


async def test_a_failed_or_abandoned_embedding_ahead_costs_the_lookup_nothing(gated):
    index, embedder = gated
    t = unique("tenant")
    embedder.release.set()
    await index.add(entry(t, "e1", "where is the invoice for march"))
    embedder.fail_next = True
    index.embed_ahead("Where is the invoice for March")
    await assert_eventually(lambda: not embedder.fail_next, message="the embedding ahead failed")
    assert (await index.lookup(query(t, "Where is the invoice for March"))).decision is Decision.HIT

    # A lookup cancelled while it waits (its caller gave up) leaves the embedding to finish.
    embedder.release.clear()
    index.embed_ahead("where is the invoice for april")
    waiting = asyncio.create_task(index.lookup(query(t, "where is the invoice for april")))
    await asyncio.sleep(0.05)
    waiting.cancel()
    embedded = embedder.texts_embedded
    embedder.release.set()
    await assert_eventually(lambda: embedder.texts_embedded == embedded + 1, message="the embedding finished")
    await index.lookup(query(t, "where is the invoice for april"))
    assert embedder.texts_embedded == embedded + 1, "its vector was kept for the next lookup"

    # Texts a lookup would not embed are not embedded ahead either, nor more than MAX_AHEAD at once.
    index.embed_ahead("   ")
    index.embed_ahead("x" * 2000)
    await asyncio.sleep(0.01)
    assert embedder.texts_embedded == embedded + 1
    embedder.release.clear()
    started = embedder.started
    for i in range(MAX_AHEAD + 5):
        index.embed_ahead(f"question number {i}")
    await assert_eventually(lambda: embedder.started == started + MAX_AHEAD, message="the first ones started")
    await asyncio.sleep(0.05)
    assert embedder.started == started + MAX_AHEAD
    embedder.release.set()


async def test_a_lookup_with_nothing_in_its_scope_misses_without_waiting_for_the_embedding(gated):
    """A new context (a conversation's later turn, a new system prompt) cannot match: the lookup
    answers at once, and the embedding it started goes on for the store of the answer."""
    index, embedder = gated
    t = unique("tenant")
    embedder.release.set()
    await index.add(entry(t, "e1", "how do I reset my password"))
    embedder.release.clear()
    embedded = embedder.texts_embedded

    match = await asyncio.wait_for(index.lookup(query(t, "how do I change my password", context_hash="new")), 5)
    assert (match.decision, match.similarity, match.entry) == (Decision.MISS, 0.0, None)
    assert embedder.texts_embedded == embedded, "answered before the embedding was done"
    embedder.release.set()
    await index.add(entry(t, "e2", "how do I change my password", context_hash="new"))
    assert embedder.texts_embedded == embedded + 1, "the store took the lookup's embedding"
    again = await index.lookup(query(t, "How do I change my password?", context_hash="new"))
    assert again.decision is Decision.HIT and again.entry.entry_id == "e2"


async def test_texts_past_the_embedder_window_are_never_compared(tmp_path):
    index = await open_index(tmp_path, max_chars=50)
    try:
        t = unique("tenant")
        long_text = "explain " + "this clause " * 20
        await index.add(entry(t, "long", long_text))
        assert await index.count(t) == 0
        assert (await index.lookup(query(t, long_text))).decision is Decision.MISS
    finally:
        await index.close()


async def test_content_version_invalidation_and_use_case_flush(index):
    t = unique("tenant")
    await index.add_many(
        [
            entry(t, "v1", "what is the refund policy", content_versions={"policy-doc": 1}),
            entry(t, "v2", "what is the shipping policy", content_versions={"policy-doc": 2}),
            entry(t, "other", "who are you", use_case="chat"),
        ]
    )
    assert await index.delete_matching(t, document_id="policy-doc", older_than_version=2) == 1
    assert (await index.lookup(query(t, "what is the refund policy"))).entry.entry_id == "v2"
    assert await index.delete_matching(t, use_case="chat") == 1
    assert await index.count(t) == 1


async def test_expired_entries_miss_and_the_background_purge_removes_them(tmp_path):
    index = await open_index(tmp_path, purge_interval_s=0.05)
    try:
        t = unique("tenant")
        now = time.time()
        await index.add(entry(t, "soon", "what time is it", created_at=now - 10, expires_at=now + 0.3))
        assert (await index.lookup(query(t, "what time is it", now=now))).decision is Decision.HIT
        assert (await index.lookup(query(t, "what time is it", now=now + 1))).decision is Decision.MISS

        async def purged():
            assert await index.count(t) == 0

        await assert_eventually(purged, timeout_s=5)
    finally:
        await index.close()


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"tenant_id": ""}, "tenant_id"),
        ({"text": "   "}, "text"),
        ({"tier": 4}, "tier"),
        ({"tier": -1}, "tier"),
    ],
)
async def test_bad_queries_are_invalid_arguments(index, bad, field):
    with pytest.raises(errors.InvalidArgument) as caught:
        await index.lookup(dataclasses.replace(query("t", "q"), **bad))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"tenant_id": ""}, "tenant_id"),
        ({"entry_id": ""}, "entry_id"),
        ({"text": ""}, "text"),
        ({"tier": 0}, "tier"),
        ({"expires_at": 0.0}, "expires_at"),
    ],
)
async def test_bad_entries_are_invalid_arguments_and_nothing_is_stored(index, bad, field):
    t = unique("tenant")
    with pytest.raises(errors.InvalidArgument) as caught:
        await index.add_many([entry(t, "good", "fine"), dataclasses.replace(entry(t, "bad", "q"), **bad)])
    assert caught.value.field == field
    assert await index.count(t) == 0


async def test_tenant_scoped_calls_need_a_tenant(index):
    with pytest.raises(errors.InvalidArgument):
        await index.delete("", ["e"])
    with pytest.raises(errors.InvalidArgument):
        await index.delete_matching("", use_case="x")


async def test_a_negated_renumbered_or_swapped_question_is_vetoed_however_close(index):
    t = unique("tenant")
    await index.add(entry(t, "cancel", "can I cancel my order from 2023"))
    await index.add(entry(t, "convert", "convert celsius to fahrenheit"))
    for text, reason in (
        ("can I not cancel my order from 2023", "negation"),
        ("can I cancel my order from 2024", "number"),
        ("convert fahrenheit to celsius", "order"),
    ):
        match = await index.lookup(query(t, text))
        assert match.decision is Decision.GRAY_MISS and match.stage2_score == 0.0
        assert index.gray_zone[-1].veto == reason
    assert (await index.lookup(query(t, "Can I cancel my order from 2023?"))).decision is Decision.HIT
