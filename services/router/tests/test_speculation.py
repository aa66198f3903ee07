"""Speculative dispatch on an exact miss (ADR 0029): the semantic lookup and the first attempt run
together; a hit in time cancels the attempt, a miss streams the model's answer, a late hit is
ignored. Unit tests of the policy, then the router against the fake upstreams."""

from __future__ import annotations

import asyncio
import time

import pytest
from llmesh.cache.v1 import cache_pb2
from llmesh.common.v1 import common_pb2
from llmesh.kit.quota import counter_for
from llmesh.kit.streams import USAGE, usage_subject
from llmesh.kit.testing import assert_eventually, unique
from llmesh.kit.usage import usage_records
from llmesh.router.v1 import router_pb2
from llmesh.services.router import metrics
from llmesh.services.router.domain import CachedAnswer, ModelInfo, Usage
from llmesh.services.router.speculation import Speculation, SpeculationPolicy, parse_speculation

from services.router.tests.test_accounting import collect

pytestmark = pytest.mark.timeout(30)

CACHED = "the cached answer"
DEFAULTS = SpeculationPolicy()


# --- policy ---------------------------------------------------------------------------------------


def test_the_policy_section_overrides_the_defaults_and_skips_bad_values():
    assert parse_speculation(None, DEFAULTS) == DEFAULTS
    assert parse_speculation("on", DEFAULTS) == DEFAULTS
    assert parse_speculation({"enabled": False, "hold_ms": 40}, DEFAULTS) == SpeculationPolicy(False, False, 40.0)
    assert parse_speculation({"external": True}, DEFAULTS).external is True
    for bad in ({"enabled": "yes"}, {"hold_ms": -1}, {"hold_ms": True}, {"hold_ms": "5"}, {"hold_ms": 1e6}):
        assert parse_speculation(bad, DEFAULTS) == DEFAULTS, bad


def test_only_self_hosted_models_are_speculated_on_unless_the_policy_says_external():
    home = ModelInfo(name="m", backend="triton", self_hosted=True)
    api = ModelInfo(name="x", backend="openai", self_hosted=False)
    assert DEFAULTS.allows(home) and not DEFAULTS.allows(api)
    assert SpeculationPolicy(external=True).allows(api)
    assert not SpeculationPolicy(enabled=False).allows(home)


def outcome_count(outcome: str) -> float:
    return metrics.SPECULATION.labels(outcome)._value.get()


async def test_each_speculation_counts_one_outcome_and_a_hit_too_weak_for_the_tier_is_a_miss():
    answer = CachedAnswer(CACHED, "tiny-1", "llama_cpp", 1, Usage(3, 4), 0.1, semantic=True)

    async def found(cached):
        return cached

    won, lost, wasted = outcome_count("won"), outcome_count("lost"), outcome_count("wasted")
    weak = Speculation(asyncio.ensure_future(found(answer)), hold_s=0.0, needed_tier=2)
    weak.dispatched = True
    assert await weak.wait() is None and not weak.pending
    strong = Speculation(asyncio.ensure_future(found(answer)), hold_s=0.0, needed_tier=1)
    strong.dispatched = True
    assert await strong.wait() == answer
    assert (outcome_count("won"), outcome_count("lost")) == (won + 1, lost + 1)

    late = asyncio.get_running_loop().create_future()
    ignored = Speculation(late, hold_s=0.0, needed_tier=1)
    ignored.dispatched = True
    ignored.ignore()
    late.set_result(answer)
    await assert_eventually(lambda: outcome_count("wasted") == wasted + 1, message="a late hit counts as wasted")
    # Not dispatched (the first candidate may not be speculated on): waiting counts nothing.
    plain = Speculation(asyncio.ensure_future(found(None)), hold_s=0.0, needed_tier=1)
    await plain.wait()
    assert outcome_count("won") == won + 1


# --- through the router ---------------------------------------------------------------------------


def semantic_entry(client, text: str, *, delay_s: float, tier: int = common_pb2.TIER_2) -> None:
    """The fake cache answers a full lookup of `text` with a semantic hit after `delay_s`."""
    cache = client.upstreams.cache
    cache.semantic[text] = cache_pb2.CachedAnswer(
        entry_id="s1",
        content=CACHED,
        model="tiny-1",
        backend="llama_cpp",
        tier=tier,
        usage=common_pb2.Usage(prompt_tokens=7, completion_tokens=4),
        cost_usd=0.25,
    )
    cache.semantic_delay_s[text] = delay_s


class Policies:
    """The router's policy bucket: `put` returns once the router has the document."""

    def __init__(self, router_host):
        self._store = router_host.app.policy

    async def put(self, key: str, doc: dict) -> None:
        await self._store.put(key, doc)
        await assert_eventually(lambda: self._store.get(key) == doc, message="the policy arrived")


def attempts(summary) -> list[tuple[str, str]]:
    return [(a.model, a.outcome) for a in summary.attempts]


async def test_a_semantic_hit_before_the_first_token_cancels_the_attempt_and_is_billed_as_a_hit(
    client, router_host, nats_url
):
    api_key, tenant, _ = client.new_key()
    await Policies(router_host).put(f"tenant.{tenant}", {"budgets": [{"name": "monthly-usd", "limit": 5.0}]})
    app = router_host.app
    await assert_eventually(lambda: app.accounting.policy(tenant, "default").budgets, message="budget applied")
    text = "what does the mesh do? [ttft:5000]"
    semantic_entry(client, text, delay_s=0.05)
    lost = outcome_count("lost")
    rid = unique("req")

    deltas, summary = await client.generate(api_key, text, request_id=rid)

    assert "".join(deltas) == CACHED
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_SEMANTIC_HIT
    assert summary.cost_usd == 0.0 and summary.model == "tiny-1"
    assert attempts(summary) == [("tiny-1", "CANCELLED")], "the summary names the cancelled attempt"
    assert summary.time_to_first_token_ms < 5000
    inference, cache = client.upstreams.inference, client.upstreams.cache
    assert rid in inference.requests, "the attempt was dispatched while the semantic lookup ran"
    await assert_eventually(lambda: rid in inference.cancelled, message="inference saw the cancel")
    assert cache.lookup_modes[rid] == ["exact", "semantic"], "exact layer beside the classifier, then the semantic"
    assert rid not in cache.stores, "a hit is not stored again"
    assert outcome_count("lost") == lost + 1

    # Billed once, as a hit: one usage record that costs nothing, and no budget held or spent.
    records = await collect(nats_url, USAGE, usage_subject(tenant), usage_records, count=1)
    assert [(r.request_id, r.cache_outcome, r.cost_usd) for r in records] == [(rid, "semantic_hit", 0.0)]
    assert records[0].cost_avoided_usd == pytest.approx(0.25)
    budget = app.accounting.policy(tenant, "default").budgets[0]
    counter = counter_for(tenant, budget, tenant, time.time())

    async def released():
        balance = await app.quota_store.balance(counter)
        assert (balance.reserved, balance.spent) == (0, 0)

    await assert_eventually(released, message="the attempt's budget hold was released, nothing spent")


async def test_tokens_that_arrive_while_the_lookup_runs_are_held_and_dropped_for_a_hit(client, router_host):
    api_key, tenant, _ = client.new_key()
    await Policies(router_host).put(f"tenant.{tenant}", {"speculation": {"hold_ms": 5000}})
    text = "a fast model, a slow embedding"
    semantic_entry(client, text, delay_s=0.3)
    rid = unique("req")

    deltas, summary = await client.generate(api_key, text, request_id=rid)

    assert "".join(deltas) == CACHED, "none of the model's held tokens reached the client"
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_SEMANTIC_HIT
    assert attempts(summary) == [("tiny-1", "CANCELLED")]
    assert client.upstreams.inference.sent[rid] >= 1, "the model had sent tokens before the hit"


async def test_a_semantic_miss_streams_the_model_answer_overlapped_with_the_lookup_and_stores_it(client):
    api_key, _, _ = client.new_key()
    text = "nothing like this was asked [ttft:300]"
    client.upstreams.cache.semantic_delay_s[text] = 0.2
    won = outcome_count("won")
    rid = unique("req")

    deltas, summary = await client.generate(api_key, text, request_id=rid)

    assert deltas == ["answer ", "to ", "the ", "question"]
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_MISS and attempts(summary) == [("tiny-1", "ok")]
    cache = client.upstreams.cache
    assert cache.lookup_modes[rid] == ["exact", "semantic"]
    # Inference started before the semantic lookup ended: the lookup's 200 ms hid under its 300 ms.
    assert client.upstreams.inference.started[rid] < cache.semantic_ended[rid]
    assert cache.stores[rid].content == "answer to the question", "stored afterwards, as without speculation"
    assert outcome_count("won") == won + 1


async def test_a_semantic_hit_after_the_hold_budget_is_ignored(client, router_host):
    api_key, tenant, _ = client.new_key()
    await Policies(router_host).put(f"tenant.{tenant}", {"speculation": {"hold_ms": 10}})
    text = "the cache is slow today"
    semantic_entry(client, text, delay_s=0.5)
    wasted = outcome_count("wasted")
    rid = unique("req")

    deltas, summary = await client.generate(api_key, text, request_id=rid)

    assert deltas == ["answer ", "to ", "the ", "question"], "the model's answer, released after 10 ms"
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_MISS and attempts(summary) == [("tiny-1", "ok")]
    assert summary.time_to_first_token_ms < 500
    assert rid not in client.upstreams.inference.cancelled
    await assert_eventually(lambda: outcome_count("wasted") == wasted + 1, message="the late hit counts as wasted")


async def test_with_speculation_off_the_lookup_completes_before_any_dispatch(client, router_host):
    api_key, tenant, _ = client.new_key()
    await Policies(router_host).put(f"tenant.{tenant}", {"speculation": {"enabled": False}})
    text = "sequential as before"
    semantic_entry(client, text, delay_s=0.05)
    rid = unique("req")

    deltas, summary = await client.generate(api_key, text, request_id=rid)

    assert "".join(deltas) == CACHED and summary.cache_outcome == router_pb2.CACHE_OUTCOME_SEMANTIC_HIT
    assert list(summary.attempts) == []
    assert client.upstreams.cache.lookup_modes[rid] == ["full"], "one full lookup beside the classifier"
    assert rid not in client.upstreams.inference.requests

    miss_text = "sequential miss"
    client.upstreams.cache.semantic_delay_s[miss_text] = 0.1
    miss_rid = unique("req")
    _, miss = await client.generate(api_key, miss_text, request_id=miss_rid)
    assert miss.cache_outcome == router_pb2.CACHE_OUTCOME_MISS
    assert client.upstreams.inference.started[miss_rid] >= client.upstreams.cache.semantic_ended[miss_rid]


async def test_an_external_first_candidate_is_called_only_after_the_semantic_lookup(client, router_host):
    api_key, tenant, _ = client.new_key()
    await Policies(router_host).put(f"tenant.{tenant}", {"tiers": {"1": "cloud-x"}})
    hit_text, miss_text = "ask the cloud", "ask the cloud something new"
    semantic_entry(client, hit_text, delay_s=0.05, tier=common_pb2.TIER_3)
    client.upstreams.cache.semantic_delay_s[miss_text] = 0.1

    async def routed_to_cloud():
        _, summary = await client.generate(api_key, "policy check", cache_policy=router_pb2.CACHE_POLICY_BYPASS)
        assert summary.model == "cloud-x"

    await assert_eventually(routed_to_cloud, message="the tenant's policy applies")
    rid = unique("req")
    deltas, summary = await client.generate(api_key, hit_text, request_id=rid)
    assert "".join(deltas) == CACHED and summary.cache_outcome == router_pb2.CACHE_OUTCOME_SEMANTIC_HIT
    assert rid not in client.upstreams.inference.requests, "an external API bills even a cancelled prompt"

    miss_rid = unique("req")
    _, miss = await client.generate(api_key, miss_text, request_id=miss_rid)
    assert miss.model == "cloud-x" and miss.cache_outcome == router_pb2.CACHE_OUTCOME_MISS
    assert client.upstreams.inference.started[miss_rid] >= client.upstreams.cache.semantic_ended[miss_rid]


async def test_a_client_leaving_while_the_answer_is_held_cancels_the_attempt_and_the_lookup(client, router_host):
    api_key, tenant, _ = client.new_key()
    await Policies(router_host).put(f"tenant.{tenant}", {"speculation": {"hold_ms": 5000}})
    text = "an embedding that takes its time [hang]"
    client.upstreams.cache.semantic_delay_s[text] = 5.0
    rid = unique("req")
    call = client.call(api_key, client.request(text), request_id=rid)
    inference = client.upstreams.inference
    await assert_eventually(lambda: inference.sent[rid] == 1, message="the model sent its first delta (held)")
    cancelled_at = time.monotonic()
    call.cancel()
    cache = client.upstreams.cache
    await assert_eventually(lambda: rid in inference.cancelled, message="inference saw the cancel")
    await assert_eventually(lambda: rid in cache.cancelled, message="the cache saw the cancel")
    # at once, not when the lookup's own deadline (upstream_timeout_s, 1 s here) ran out
    assert cache.cancelled[rid] - cancelled_at < 0.5
