"""Dispatch before the classification (ADR 0038): after an exact miss the router starts the attempt
on the model the tenant's use case went to first lately, adopts it when the classification's plan
starts there too, and cancels it otherwise. Unit tests of the predictor, then the router against
the fake upstreams (a `[classify:N]` prompt makes the classifier take N ms)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llmesh.kit.streams import USAGE, usage_subject
from llmesh.kit.testing import assert_eventually, unique
from llmesh.kit.usage import usage_records
from llmesh.router.v1 import router_pb2
from llmesh.services.router import metrics
from llmesh.services.router.speculation import FirstChoices, SpeculationPolicy, parse_speculation

from services.router.tests.test_accounting import collect
from services.router.tests.test_speculation import Policies, attempts

pytestmark = pytest.mark.timeout(30)

BYPASS = router_pb2.CACHE_POLICY_BYPASS


# --- the predictor and the policy -----------------------------------------------------------------


def test_a_first_choice_is_predicted_after_two_plans_and_only_with_half_of_the_recent_weight():
    choices = FirstChoices()
    assert choices.predict("t", "chat") is None
    choices.record("t", "chat", "tiny-1", 1)
    assert choices.predict("t", "chat") is None, "one plan is no pattern"
    choices.record("t", "chat", "tiny-1", 1)
    assert choices.predict("t", "chat") == ("tiny-1", 1)
    assert choices.predict("t", "other use case") is None and choices.predict("u", "chat") is None
    # Recent plans weigh more: after a run of big-3 the prediction moves to it.
    for _ in range(3):
        choices.record("t", "chat", "big-3", 2)
    assert choices.predict("t", "chat") == ("big-3", 2)
    # A mix with no majority predicts nothing.
    mixed = FirstChoices(decay=1.0)
    for model in ("a", "b", "c", "a", "b", "c"):
        mixed.record("t", "chat", model, 1)
    assert mixed.predict("t", "chat") is None


def test_the_predictor_keeps_a_bounded_number_of_use_cases():
    choices = FirstChoices(size=2)
    for tenant in ("a", "b", "c"):
        choices.record(tenant, "chat", "tiny-1", 1)
        choices.record(tenant, "chat", "tiny-1", 1)
    assert choices.predict("a", "chat") is None, "the least recent key was dropped"
    assert choices.predict("c", "chat") == ("tiny-1", 1)
    assert FirstChoices(size=0).predict("a", "chat") is None


def test_the_policy_turns_early_dispatch_off_and_skips_bad_values():
    defaults = SpeculationPolicy()
    assert defaults.early is True
    assert parse_speculation({"early": False}, defaults).early is False
    assert parse_speculation({"early": "no"}, defaults) == defaults


# --- through the router ---------------------------------------------------------------------------


def outcome_count(outcome: str) -> float:
    return metrics.EARLY_DISPATCH.labels(outcome)._value.get()


async def warm(client, api_key: str, n: int = 2) -> None:
    """`n` answered requests of this key's use case, all planned to tiny-1 first."""
    for _ in range(n):
        _, summary = await client.generate(api_key, unique("warm-up question"), cache_policy=BYPASS)
        assert summary.model == "tiny-1"


@pytest.mark.parametrize("cache_policy", [router_pb2.CACHE_POLICY_UNSPECIFIED, BYPASS], ids=["miss", "bypass"])
async def test_the_attempt_starts_before_the_classification_answers_and_is_adopted(client, cache_policy):
    api_key, _, _ = client.new_key()
    await warm(client, api_key)
    adopted, discarded = outcome_count("adopted"), outcome_count("discarded")
    rid = unique("req")

    deltas, summary = await client.generate(
        api_key, unique("a fresh question [classify:200]"), request_id=rid, cache_policy=cache_policy
    )

    assert deltas == ["answer ", "to ", "the ", "question"]
    assert attempts(summary) == [("tiny-1", "ok")], "the early attempt is the request's one attempt"
    inference, classifier = client.upstreams.inference, client.upstreams.classifier
    assert inference.started[rid] < classifier.spans[rid].ended, "inference was called before the classifier answered"
    assert rid not in inference.cancelled and inference.sent[rid] == 4, "one call, not a second one"
    assert (outcome_count("adopted"), outcome_count("discarded")) == (adopted + 1, discarded)
    if cache_policy != BYPASS:
        # after the exact layer missed, never before it
        assert client.upstreams.cache.lookup_modes[rid][0] == "exact"


async def test_a_classification_that_plans_another_model_cancels_the_early_attempt(client, nats_url):
    api_key, tenant, _ = client.new_key()
    await warm(client, api_key)
    discarded = outcome_count("discarded")
    rid = unique("req")
    inference = client.upstreams.inference
    inference.token_delay_s["tiny-1"] = 2.0  # still generating when the classification is known
    try:
        deltas, summary = await client.generate(
            api_key, unique("a hard question [tier:3] [classify:100]"), request_id=rid, cache_policy=BYPASS
        )
    finally:
        del inference.token_delay_s["tiny-1"]

    # tier 3 goes to big-3 in these tests' settings
    assert summary.model == "big-3" and attempts(summary) == [("big-3", "ok")]
    assert summary.time_to_first_token_ms < 2000
    await assert_eventually(lambda: rid in inference.cancelled, message="the early call to tiny-1 was cancelled")
    assert inference.sent[rid] == 4, "only big-3's deltas were generated for it"
    assert outcome_count("discarded") == discarded + 1
    # Billed once, for the model that answered.
    records = await collect(nats_url, USAGE, usage_subject(tenant), usage_records, count=3)
    assert [r.model for r in records if r.request_id == rid] == ["big-3"]


async def test_an_exact_hit_never_dispatches(client):
    api_key, _, _ = client.new_key()
    await warm(client, api_key)
    text = unique("asked twice [classify:100]")
    await client.generate(api_key, text)
    await assert_eventually(lambda: len(client.upstreams.cache.stores) > 0, message="the first answer was stored")
    rid = unique("req")

    deltas, summary = await client.generate(api_key, text, request_id=rid)

    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT
    assert client.upstreams.cache.lookup_modes[rid] == ["exact"], "answered by the cache's exact layer"
    assert rid not in client.upstreams.inference.requests


async def test_without_a_pattern_or_with_the_policy_off_the_classification_comes_first(client, router_host):
    api_key, tenant, _ = client.new_key()
    inference, classifier = client.upstreams.inference, client.upstreams.classifier
    cold = unique("req")
    await client.generate(api_key, unique("first question [classify:50]"), request_id=cold, cache_policy=BYPASS)
    assert inference.started[cold] >= classifier.spans[cold].ended, "no pattern yet: nothing dispatched early"

    await Policies(router_host).put(f"tenant.{tenant}", {"speculation": {"early": False}})
    await warm(client, api_key, 3)
    rid = unique("req")
    await client.generate(api_key, unique("a question [classify:50]"), request_id=rid, cache_policy=BYPASS)
    assert inference.started[rid] >= classifier.spans[rid].ended


async def test_keys_whose_clearance_is_enforced_below_restricted_are_not_dispatched_early(client, router_host):
    api_key, tenant, _ = client.new_key()
    await Policies(router_host).put(f"tenant.{tenant}", {"data_access": {"enforce_clearance": True}})
    await warm(client, api_key)
    rid = unique("req")

    _, summary = await client.generate(api_key, unique("a question [classify:50]"), request_id=rid, cache_policy=BYPASS)

    assert summary.model == "tiny-1"
    inference, classifier = client.upstreams.inference, client.upstreams.classifier
    assert inference.started[rid] >= classifier.spans[rid].ended, "a restricted prompt could not have gone there"


async def test_a_client_leaving_during_the_classification_cancels_the_early_attempt(client):
    api_key, _, _ = client.new_key()
    await warm(client, api_key)
    discarded = outcome_count("discarded")
    rid = unique("req")
    call = client.call(
        api_key, client.request(unique("left [classify:300] [ttft:5000]"), cache_policy=BYPASS), request_id=rid
    )
    inference = client.upstreams.inference
    await assert_eventually(lambda: rid in inference.started, message="dispatched early")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    await assert_eventually(lambda: rid in inference.cancelled, message="inference saw the cancel")
    await assert_eventually(lambda: outcome_count("discarded") == discarded + 1, message="counted as discarded")


async def test_an_early_attempt_that_fails_moves_on_like_any_first_attempt(client):
    api_key, _, _ = client.new_key()
    await warm(client, api_key)
    client.upstreams.inference.down.add("tiny-1")
    try:
        rid = unique("req")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await client.generate(api_key, unique("down [classify:50]"), request_id=rid, cache_policy=BYPASS)
    finally:
        client.upstreams.inference.down.discard("tiny-1")
    # tiny-1 is the only model of its tiers: the failure is the request's, reported as always.
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "tiny-1 UNAVAILABLE" in failed.value.details()
