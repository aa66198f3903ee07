"""The cache domain on the in-process LRU, a manual clock and the toy semantic index."""

from __future__ import annotations

import dataclasses

import pytest
from llmesh.kit.chat import Message, Sampling
from llmesh.kit.errors import NotFound
from llmesh.services.cache.analytics import Analytics, Outcome
from llmesh.services.cache.core import Cache, LookupQuery, StoreCommand
from llmesh.services.cache.entries import Answer
from llmesh.services.cache.invalidation import Invalidation
from llmesh.services.cache.keys import RequestKey
from llmesh.services.cache.lru import LruStore
from llmesh.services.cache.policy import CachePolicy, parse_cache_policy
from llmesh.services.cache.semantic.api import Decision
from llmesh.services.cache.semantic.disk import DiskFull

from services.cache.tests.toy_semantic import ToySemanticIndex

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(question: str, *, tenant="acme", use_case="support", system="Be brief.", **kw) -> RequestKey:
    return RequestKey(tenant, use_case, (Message("system", system), Message("user", question)), **kw)


def answer(text="Use the reset link.", tier=2) -> Answer:
    return Answer(content=text, model="m", backend="b", tier=tier, prompt_tokens=10, completion_tokens=20, cost_usd=0.5)


def make(policies: dict[str, CachePolicy] | None = None, semantic=True, max_entries=100):
    clock = Clock()
    index = ToySemanticIndex() if semantic else None
    policies = policies or {}
    cache = Cache(
        LruStore(max_entries),
        index,
        lambda tenant, use_case: policies.get(tenant, CachePolicy()),
        Analytics(),
        default_ttl_s=3600,
        clock=clock,
    )
    return cache, clock, index


QUESTION = "how do i reset my password"


async def test_exact_hit_after_store_and_ttl_expiry():
    cache, clock, _ = make()
    stored = await cache.store(StoreCommand(key(QUESTION), answer(), ttl_s=60))
    assert stored.entry is not None and stored.entry.expires_at == clock.now + 60 and stored.semantic_indexed
    hit = await cache.lookup(LookupQuery(key(QUESTION)))
    assert hit.outcome is Outcome.EXACT_HIT and hit.entry.answer.content == "Use the reset link."
    assert hit.entry.entry_id == stored.entry.entry_id
    clock.now += 61
    assert (await cache.lookup(LookupQuery(key(QUESTION)))).outcome is Outcome.MISS


async def test_ttl_from_the_content_class_policy_caps_the_request():
    policy = CachePolicy(ttl_by_class={"finance": 900, "faq": 86400})
    cache, clock, _ = make({"acme": policy})
    finance = await cache.store(StoreCommand(key("q1"), answer(), content_class="finance"))
    faq = await cache.store(StoreCommand(key("q2"), answer(), content_class="faq"))
    asked_long = await cache.store(StoreCommand(key("q3"), answer(), content_class="finance", ttl_s=86400))
    plain = await cache.store(StoreCommand(key("q4"), answer()))
    assert finance.entry.expires_at - clock.now == 900
    assert faq.entry.expires_at - clock.now == 86400
    assert asked_long.entry.expires_at - clock.now == 900
    assert plain.entry.expires_at - clock.now == 3600


def test_policy_documents_parse_leniently():
    p = parse_cache_policy(
        {"cache": {"ttl_by_class": {"finance": 900, "bad": -1, "worse": "x"}, "allow_restricted": True}}
    )
    assert p.ttl_by_class == {"finance": 900.0} and p.allow_restricted and p.semantic
    assert parse_cache_policy({}) == CachePolicy()
    assert parse_cache_policy({"cache": {"semantic": False}}).semantic is False


async def test_restricted_requests_are_not_cached_unless_policy_allows():
    cache, _, _ = make({"open": CachePolicy(allow_restricted=True)})
    refused = await cache.store(StoreCommand(key(QUESTION), answer(), restricted=True))
    assert refused.entry is None and "restricted" in refused.reason
    assert (await cache.lookup(LookupQuery(key(QUESTION), restricted=True))).outcome is Outcome.UNCACHEABLE
    allowed = await cache.store(StoreCommand(key(QUESTION, tenant="open"), answer(), restricted=True))
    assert allowed.entry is not None
    assert (await cache.lookup(LookupQuery(key(QUESTION, tenant="open"), restricted=True))).outcome is Outcome.EXACT_HIT


async def test_a_stronger_tier_answers_a_weaker_request_not_the_reverse():
    cache, _, _ = make()
    await cache.store(StoreCommand(key(QUESTION), answer(tier=2)))
    assert (await cache.lookup(LookupQuery(key(QUESTION), tier=1))).outcome is Outcome.EXACT_HIT
    assert (await cache.lookup(LookupQuery(key(QUESTION), tier=2))).outcome is Outcome.EXACT_HIT
    assert (await cache.lookup(LookupQuery(key(QUESTION), tier=3, exact_only=True))).outcome is Outcome.MISS
    assert (await cache.lookup(LookupQuery(key(QUESTION + " please"), tier=3))).outcome is Outcome.MISS


async def test_semantic_hit_requires_context_and_parameters_to_match():
    cache, _, index = make()
    await cache.store(StoreCommand(key(QUESTION), answer()))
    reworded = key("how do i reset my password please")  # 6 of 7 words shared: gray zone, stage two says same
    hit = await cache.lookup(LookupQuery(reworded))
    assert hit.outcome is Outcome.SEMANTIC_HIT and hit.decision is Decision.GRAY_HIT
    assert hit.entry.answer.content == "Use the reset link."
    assert (await cache.lookup(LookupQuery(reworded, exact_only=True))).outcome is Outcome.MISS
    other_context = key("how do i reset my password please", system="Be verbose.")
    assert (await cache.lookup(LookupQuery(other_context))).outcome is Outcome.MISS
    other_params = dataclasses.replace(reworded, sampling=Sampling(temperature=1.0))
    assert (await cache.lookup(LookupQuery(other_params))).outcome is Outcome.MISS
    other_tenant = key("how do i reset my password please", tenant="globex")
    assert (await cache.lookup(LookupQuery(other_tenant))).outcome is Outcome.MISS

    rows, total = cache.analytics.report(tenant_id="acme")
    assert total.semantic_hits == 1 and total.gray_zone == 1 and total.misses == 3 and total.tokens_saved == 30


async def test_gray_zone_miss_is_recorded_and_answers_nothing():
    cache, _, _ = make()
    await cache.store(StoreCommand(key(QUESTION), answer()))
    result = await cache.lookup(LookupQuery(key("how do i reset my router today")))  # 4 of 8 shared
    assert result.outcome is Outcome.MISS and result.decision is Decision.GRAY_MISS and result.entry is None
    assert 0.5 <= result.similarity < 0.8
    _, total = cache.analytics.report()
    assert total.gray_zone == 1 and total.misses == 1 and total.gray_zone_rate == 1.0


async def test_an_exact_only_miss_a_full_lookup_follows_is_counted_once():
    """The router's speculative dispatch looks up the exact layer alone, then the full cache on
    its miss: one request, one lookup in the analytics."""
    cache, _, _ = make()
    await cache.store(StoreCommand(key(QUESTION), answer()))
    fresh = key("what is the capital of france")
    first = await cache.lookup(LookupQuery(fresh, exact_only=True, lookup_follows=True))
    assert first.outcome is Outcome.MISS
    assert (await cache.lookup(LookupQuery(fresh))).outcome is Outcome.MISS
    hit = await cache.lookup(LookupQuery(key(QUESTION), exact_only=True, lookup_follows=True))
    assert hit.outcome is Outcome.EXACT_HIT  # a hit ends the request: counted here
    _, total = cache.analytics.report()
    assert total.lookups == 2 and total.misses == 1 and total.exact_hits == 1
    # Without lookup_follows an exact-only miss is a request's whole lookup, and counted.
    await cache.lookup(LookupQuery(fresh, exact_only=True))
    assert cache.analytics.report()[1].misses == 2


async def test_a_semantic_only_lookup_skips_the_exact_layer_and_counts_the_request():
    """The router's second lookup after an exact miss asks the semantic layer alone."""
    cache, _, _ = make()
    await cache.store(StoreCommand(key(QUESTION), answer()))
    only_exact = key("what is the capital of france")
    await cache.store(StoreCommand(only_exact, answer("Paris."), exact_only=True))

    reworded = key("how do i reset my password please")
    miss = await cache.lookup(LookupQuery(reworded, exact_only=True, lookup_follows=True))
    assert miss.outcome is Outcome.MISS
    hit = await cache.lookup(LookupQuery(reworded, semantic_only=True))
    assert hit.outcome is Outcome.SEMANTIC_HIT and hit.entry.answer.content == "Use the reset link."
    # The exact layer has this one, the index does not: semantic_only does not look there.
    assert (await cache.lookup(LookupQuery(only_exact, semantic_only=True))).outcome is Outcome.MISS
    assert (await cache.lookup(LookupQuery(only_exact))).outcome is Outcome.EXACT_HIT
    _, total = cache.analytics.report()
    assert (total.lookups, total.semantic_hits, total.misses, total.exact_hits) == (3, 1, 1, 1), (
        "the exact-only miss a lookup follows is not counted"
    )


async def test_semantic_policy_off_and_semantic_failure_fall_back_to_exact():
    cache, _, index = make({"quiet": CachePolicy(semantic=False)})
    await cache.store(StoreCommand(key(QUESTION, tenant="quiet"), answer()))
    assert not index.entries, "not indexed when the policy turns the semantic layer off"
    assert (await cache.lookup(LookupQuery(key(QUESTION + " please", tenant="quiet")))).outcome is Outcome.MISS
    assert index.lookups == 0

    index.fail = True
    failed = await cache.store(StoreCommand(key(QUESTION), answer()))
    assert failed.entry is not None and not failed.semantic_indexed
    assert (await cache.lookup(LookupQuery(key(QUESTION)))).outcome is Outcome.EXACT_HIT
    assert (await cache.lookup(LookupQuery(key(QUESTION + " please")))).outcome is Outcome.MISS


async def test_a_refusal_of_the_semantic_index_is_the_store_s_reason_and_the_exact_layer_keeps_the_answer():
    cache, _, index = make()

    async def disk_full(entries):
        raise DiskFull("the semantic store's disk is full: 3 MiB free")

    index.add_many = disk_full
    results = await cache.store_many([StoreCommand(key(QUESTION), answer()), StoreCommand(key("other"), answer())])
    for result in results:
        assert result.entry is not None and not result.semantic_indexed
        assert result.reason == "stored for exact matches only: the semantic store's disk is full: 3 MiB free"
    assert (await cache.lookup(LookupQuery(key(QUESTION)))).outcome is Outcome.EXACT_HIT
    exact_only = await cache.store(StoreCommand(key("third"), answer(), exact_only=True))
    assert exact_only.entry is not None and exact_only.reason == "", "nothing was asked of the index"


async def test_a_semantic_match_outside_the_request_scope_is_refused():
    cache, _, index = make()
    await cache.store(StoreCommand(key(QUESTION, tenant="globex"), answer()))
    # A broken index that ignores the tenant filter must still not leak globex's answer to acme.
    leaked = next(iter(index.entries.values()))
    index.entries[("acme", leaked.entry_id)] = dataclasses.replace(leaked, tenant_id="acme")
    result = await cache.lookup(LookupQuery(key(QUESTION + " please", tenant="acme")))
    assert result.outcome is Outcome.MISS


async def test_warm_batches_embed_once_per_batch():
    cache, _, index = make()
    results = await cache.store_many([StoreCommand(key(f"question {i}"), answer()) for i in range(5)])
    assert all(r.entry is not None and r.semantic_indexed for r in results)
    assert index.added_batches == [5]


async def test_invalidation_removes_older_entries_in_both_layers():
    cache, clock, index = make()
    await cache.store(StoreCommand(key("q handbook"), answer(), content_versions={"handbook": 1}))
    await cache.store(StoreCommand(key("q other"), answer(), content_versions={"handbook": 2}))
    event = Invalidation.new("acme", document_id="handbook", version=2, now=clock.now + 1)
    clock.now += 2
    await cache.store(StoreCommand(key("q sales", use_case="sales"), answer()))
    assert await cache.apply_invalidation(event) == 1
    assert (await cache.lookup(LookupQuery(key("q handbook")))).outcome is Outcome.MISS
    assert (await cache.lookup(LookupQuery(key("q other")))).outcome is Outcome.EXACT_HIT
    assert len(index.entries) == 2

    late = await cache.store(StoreCommand(key("q late"), answer(), content_versions={"handbook": 1}))
    assert late.entry is None and "version 2 is current" in late.reason

    flush = Invalidation.new("acme", now=clock.now - 1)  # issued before "q sales" was stored
    await cache.apply_invalidation(flush)
    assert (await cache.lookup(LookupQuery(key("q sales", use_case="sales")))).outcome is Outcome.EXACT_HIT
    assert (await cache.lookup(LookupQuery(key("q other")))).outcome is Outcome.MISS
    await cache.apply_invalidation(Invalidation.new("acme", use_case="sales", now=clock.now + 1))
    assert (await cache.lookup(LookupQuery(key("q sales", use_case="sales")))).outcome is Outcome.MISS
    assert not index.entries


async def test_thumbs_down_evicts_and_tightens_unless_pinned():
    cache, _, index = make()
    stored = (await cache.store(StoreCommand(key(QUESTION), answer()))).entry
    up = await cache.feedback("acme", stored.entry_id, thumbs_up=True)
    assert not up.evicted and not index.tightened

    exact_down = await cache.feedback("acme", stored.entry_id, thumbs_up=False, served_as=Outcome.EXACT_HIT)
    assert exact_down.evicted and not exact_down.tightened
    assert (await cache.lookup(LookupQuery(key(QUESTION)))).outcome is Outcome.MISS
    assert not index.entries

    stored = (await cache.store(StoreCommand(key(QUESTION), answer()))).entry
    await cache.set_pinned("acme", stored.entry_id, True)
    down = await cache.feedback("acme", stored.entry_id, thumbs_up=False, served_as=Outcome.SEMANTIC_HIT)
    assert not down.evicted and down.tightened and index.tightened == [("acme", "support")]
    assert (await cache.lookup(LookupQuery(key(QUESTION)))).outcome is Outcome.EXACT_HIT
    _, total = cache.analytics.report()
    assert total.thumbs_up == 1 and total.thumbs_down == 2


async def test_pinned_entries_outlive_their_ttl_until_unpinned():
    cache, clock, index = make()
    stored = (await cache.store(StoreCommand(key(QUESTION), answer(), ttl_s=60))).entry
    pinned = await cache.set_pinned("acme", stored.entry_id, True)
    assert pinned.pinned and index.entries[("acme", stored.entry_id)].expires_at > clock.now + 10**9
    clock.now += 120
    assert (await cache.lookup(LookupQuery(key(QUESTION)))).outcome is Outcome.EXACT_HIT
    assert (await cache.lookup(LookupQuery(key(QUESTION + " please")))).outcome is Outcome.SEMANTIC_HIT
    unpinned = await cache.set_pinned("acme", stored.entry_id, False)
    assert not unpinned.pinned and unpinned.expires_at == clock.now + 3600
    assert await cache.delete_entry("acme", stored.entry_id)
    assert not await cache.delete_entry("acme", stored.entry_id)
    with pytest.raises(NotFound):
        await cache.set_pinned("acme", stored.entry_id, True)


async def test_the_policy_false_hit_rate_reaches_the_index_only_when_it_changes():
    policies = {"acme": CachePolicy(target_false_hit_rate=0.01)}
    cache, _, index = make(policies)
    await cache.lookup(LookupQuery(key("a question")))
    await cache.lookup(LookupQuery(key("another question")))
    assert index.targets == [("acme", "support", 0.01)]
    policies["acme"] = CachePolicy(target_false_hit_rate=0.005)
    await cache.lookup(LookupQuery(key("a question")))
    policies["acme"] = CachePolicy(target_false_hit_rate=0.0001)  # the index refuses it: lookups go on
    assert (await cache.lookup(LookupQuery(key("a question")))).outcome is Outcome.MISS
    assert index.targets == [("acme", "support", 0.01), ("acme", "support", 0.005)]
    assert parse_cache_policy({"cache": {"target_false_hit_rate": 2}}).target_false_hit_rate is None
