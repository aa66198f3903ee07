"""The router's memo of classifications (memo.py, upstreams.MemoClassifier, docs/adr/0028): which
requests it answers, and everything that makes an entry stale."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.chat import Message, Sampling
from llmesh.kit.streams import CLASSIFIER_MODEL_SUBJECT
from llmesh.kit.testing import assert_eventually, unique
from llmesh.kit.vocabulary import Sensitivity
from llmesh.router.v1 import router_pb2
from llmesh.services.router.domain import CachedAnswer, CacheKey, Classification, GenerateCommand, Priority, Usage
from llmesh.services.router.memo import (
    ClassificationMemo,
    LookupOutcomes,
    MemoKey,
    classifier_rollout_running,
    content_digest,
)
from llmesh.services.router.upstreams import MemoClassifier, OutcomeReportingCache

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def command(text: str = "what is a mesh?", **fields) -> GenerateCommand:
    values = dict(
        messages=(Message("user", text),),
        max_tokens=50,
        sampling=Sampling(),
        use_case="",
        priority=Priority.INTERACTIVE,
        use_cache=True,
        pinned_model="",
    )
    values.update(fields)
    return GenerateCommand(**values)


def key_of(tenant_id: str, c: GenerateCommand) -> CacheKey:
    """As the pipeline builds it (core.run)."""
    return CacheKey(tenant_id, c.use_case, c.messages, c.pinned_model, c.sampling, c.max_tokens)


def classified(tier: int = 1, version: str = "v1", **fields) -> Classification:
    return Classification(tier, fields.pop("sensitivity", Sensitivity.INTERNAL), 0.9, model_version=version, **fields)


# --- the memo itself ---------------------------------------------------------------------------


def memo_key(tenant: str = "t1", revision: int = 1, text: str = "what is a mesh?") -> MemoKey:
    return MemoKey(tenant, "", revision, content_digest(tenant, command(text)))


def test_keeps_a_classification_of_the_current_model_version_until_its_ttl():
    clock = Clock()
    memo = ClassificationMemo(max_entries=10, ttl_s=5.0, clock=clock)
    memo.saw_version("v1")
    assert memo.put(memo_key(), classified())
    assert memo.get(memo_key()) == classified()
    clock.now += 4.9
    assert memo.get(memo_key()) == classified()
    clock.now += 0.2
    assert memo.get(memo_key()) is None and len(memo) == 0


def test_another_model_version_or_a_flush_drops_every_entry():
    memo = ClassificationMemo(max_entries=10, ttl_s=60.0)
    memo.saw_version("v1")
    memo.put(memo_key(), classified())
    memo.saw_version("v1")  # the same version again: nothing changes
    assert memo.get(memo_key()) is not None
    memo.saw_version("v2")
    assert memo.get(memo_key()) is None
    assert not memo.put(memo_key(), classified(version="v1")), "an answer of the old version is not kept"
    assert memo.put(memo_key(), classified(version="v2"))
    memo.clear()  # a model loaded (or rewritten in place): the version is unknown until the next answer
    assert memo.get(memo_key()) is None and memo.model_version == ""
    assert not memo.put(memo_key(), classified(version="v2"))


def test_never_keeps_a_degraded_restricted_or_unversioned_classification():
    memo = ClassificationMemo(max_entries=10, ttl_s=60.0)
    assert not memo.put(memo_key(), classified(version="")), "no version known yet"
    memo.saw_version("v1")
    assert not memo.put(memo_key(), classified(degraded=True))
    assert not memo.put(memo_key(), classified(sensitivity=Sensitivity.RESTRICTED))
    assert not memo.put(memo_key(), classified(tier=7))
    assert len(memo) == 0


def test_is_bounded_least_recently_used_first():
    memo = ClassificationMemo(max_entries=2, ttl_s=60.0)
    memo.saw_version("v1")
    a, b, c = (memo_key(text=t) for t in "abc")
    memo.put(a, classified())
    memo.put(b, classified())
    memo.get(a)
    memo.put(c, classified())
    assert memo.get(b) is None and memo.get(a) is not None and memo.get(c) is not None


def test_off_when_size_or_ttl_is_zero():
    for size, ttl in ((0, 10.0), (10, 0.0)):
        memo = ClassificationMemo(max_entries=size, ttl_s=ttl)
        memo.saw_version("v1")
        assert not memo.enabled and not memo.put(memo_key(), classified())


def test_keys_keep_tenants_policy_revisions_and_contents_apart():
    assert memo_key("t1") != memo_key("t2")
    assert memo_key(revision=1) != memo_key(revision=2)
    assert content_digest("t1", command()) != content_digest("t2", command())
    assert content_digest("t1", command()) != content_digest("t1", command(max_tokens=51))
    assert content_digest("t1", command()) != content_digest("t1", command(use_case="legal"))
    assert content_digest("t1", command()) != content_digest("t1", command(sampling=Sampling(temperature=0.5)))
    assert content_digest("t1", command("ab")) != content_digest(
        "t1", command("a", messages=(Message("user", "a"), Message("user", "b")))
    )
    # a command and the cache key built from it digest alike: the lookup answers the classify call
    c = command(use_case="legal", pinned_model="tiny-1", sampling=Sampling(seed=3))
    assert content_digest("t1", c) == content_digest("t1", key_of("t1", c))


def test_a_classifier_rollout_in_the_global_policy_is_seen():
    assert not classifier_rollout_running(None)
    assert not classifier_rollout_running({"classifier": {"tier_thresholds": [0.3, 0.7]}})
    assert not classifier_rollout_running({"classifier": {"rollout": {"current": "v1"}}})
    assert not classifier_rollout_running({"classifier": "nonsense"})
    assert classifier_rollout_running({"classifier": {"rollout": {"current": "v1", "candidate": "v2", "share": 0.1}}})


# --- the adapters, run as the pipeline runs them (classify ‖ lookup) ---------------------------


class StubClassifier:
    def __init__(self):
        self.calls: list[str] = []
        self.version = "v1"
        self.tier = 1
        self.sensitivity = Sensitivity.INTERNAL
        self.fail = False

    async def classify(self, command, *, tenant_id, request_id, timeout_s):
        self.calls.append(tenant_id)
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("classifier down")
        return Classification(self.tier, self.sensitivity, 0.9, model_version=self.version)


class StubCache:
    def __init__(self):
        self.entries: dict[CacheKey, CachedAnswer] = {}
        self.fail = False

    async def lookup(self, key, *, business_unit, timeout_s, exact_only=False, semantic_only=False):
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("cache down")
        return self.entries.get(key)

    def answer(self, key: CacheKey, tier: int = 1, semantic: bool = False) -> None:
        self.entries[key] = CachedAnswer("Paris", "tiny-1", "llama_cpp", tier, Usage(3, 1), 0.001, semantic=semantic)


@dataclasses.dataclass
class Setup:
    classifier: StubClassifier
    cache: StubCache
    memo: ClassificationMemo
    memoised: MemoClassifier
    reporting: OutcomeReportingCache
    revision: list[int]
    allowed: set[str]

    async def run(self, tenant: str, c: GenerateCommand) -> tuple[Classification, CachedAnswer | None]:
        """classify ‖ lookup, as GeneratePipeline._classify_and_lookup does."""

        async def lookup():
            try:
                return await self.reporting.lookup(key_of(tenant, c), business_unit="", timeout_s=1.0)
            except Exception:
                return None

        return await asyncio.gather(
            self.memoised.classify(c, tenant_id=tenant, request_id="r", timeout_s=1.0), lookup()
        )


@pytest.fixture
def setup() -> Setup:
    classifier, cache = StubClassifier(), StubCache()
    memo = ClassificationMemo(max_entries=100, ttl_s=60.0)
    outcomes = LookupOutcomes()
    revision = [1]
    blocked: set[str] = set()
    memoised = MemoClassifier(
        classifier,
        memo,
        outcomes,
        policy_revision=lambda: revision[0],
        allowed=lambda tenant, use_case: tenant not in blocked,
    )
    return Setup(classifier, cache, memo, memoised, OutcomeReportingCache(cache, outcomes), revision, blocked)


async def test_a_repeated_exact_hit_is_classified_once(setup):
    c = command()
    setup.cache.answer(key_of("t1", c))
    first, hit = await setup.run("t1", c)
    assert hit is not None and setup.classifier.calls == ["t1"]
    second, hit = await setup.run("t1", c)
    assert second == first and hit is not None
    assert setup.classifier.calls == ["t1"], "the second hit did not ask the classifier"


async def test_a_request_that_is_not_an_exact_hit_is_always_classified(setup):
    c = command()
    await setup.run("t1", c)
    await setup.run("t1", c)
    assert setup.classifier.calls == ["t1", "t1"], "a miss is never memoised (the classifier records it)"
    setup.cache.answer(key_of("t1", c), semantic=True)
    await setup.run("t1", c)
    await setup.run("t1", c)
    assert len(setup.classifier.calls) == 4, "nor a semantic hit"


async def test_an_entry_whose_hit_went_away_asks_the_classifier_again(setup):
    c = command()
    key = key_of("t1", c)
    setup.cache.answer(key)
    await setup.run("t1", c)
    del setup.cache.entries[key]  # invalidated or expired in the cache
    _, hit = await setup.run("t1", c)
    assert hit is None and len(setup.classifier.calls) == 2
    setup.cache.fail = True
    _, hit = await setup.run("t1", c)
    assert hit is None and len(setup.classifier.calls) == 3


async def test_a_hit_of_a_lower_tier_than_the_request_needs_is_classified(setup):
    c = command()
    setup.cache.answer(key_of("t1", c), tier=1)
    setup.classifier.tier = 2  # the hit will not be served: the request goes on to generation
    await setup.run("t1", c)
    await setup.run("t1", c)
    assert len(setup.classifier.calls) == 2


async def test_restricted_requests_are_always_classified(setup):
    c = command()
    setup.cache.answer(key_of("t1", c))
    setup.classifier.sensitivity = Sensitivity.RESTRICTED
    await setup.run("t1", c)
    await setup.run("t1", c)
    assert len(setup.classifier.calls) == 2


async def test_never_across_tenants(setup):
    c = command()
    setup.cache.answer(key_of("t1", c))
    setup.cache.answer(key_of("t2", c))
    await setup.run("t1", c)
    await setup.run("t1", c)
    await setup.run("t2", c)
    assert setup.classifier.calls == ["t1", "t2"]


async def test_a_policy_change_or_another_model_version_asks_the_classifier_again(setup):
    c = command()
    setup.cache.answer(key_of("t1", c))
    await setup.run("t1", c)
    setup.revision[0] = 2  # any policy document changed
    await setup.run("t1", c)
    assert len(setup.classifier.calls) == 2
    await setup.run("t1", c)
    assert len(setup.classifier.calls) == 2, "kept again under the new revision"

    # another request's answer reveals a new model version: the memo is dropped
    setup.classifier.version = "v2"
    other = command("something else")
    await setup.run("t1", other)
    await setup.run("t1", c)
    assert setup.classifier.calls.count("t1") == 4
    # a model loaded (event): the next request asks the classifier, whose answer names the version
    setup.memo.clear()
    await setup.run("t1", c)
    await setup.run("t1", c)
    assert setup.classifier.calls.count("t1") == 5


async def test_not_for_requests_that_skip_the_cache_or_may_vary_by_request_id(setup):
    for c in (command(use_cache=False), command(refresh_cache=True)):
        setup.cache.answer(key_of("t1", c))
        for _ in range(2):
            await setup.memoised.classify(c, tenant_id="t1", request_id="r", timeout_s=1.0)
    assert len(setup.classifier.calls) == 4
    setup.allowed.add("t1")  # a rollout or a policy experiment
    c = command()
    setup.cache.answer(key_of("t1", c))
    await setup.run("t1", c)
    await setup.run("t1", c)
    assert len(setup.classifier.calls) == 6


async def test_a_failed_classification_is_not_kept(setup):
    c = command()
    setup.cache.answer(key_of("t1", c))
    setup.classifier.fail = True
    with pytest.raises(RuntimeError):
        await setup.run("t1", c)
    setup.classifier.fail = False
    await setup.run("t1", c)
    assert len(setup.classifier.calls) == 2 and len(setup.memo) == 1


async def test_a_lookup_that_never_reports_costs_at_most_the_timeout(setup):
    c = command()
    setup.cache.answer(key_of("t1", c))
    await setup.run("t1", c)
    assert len(setup.memo) == 1
    # classify alone (no lookup beside it): the memo waits for the lookup until timeout_s, then asks
    result = await asyncio.wait_for(setup.memoised.classify(c, tenant_id="t1", request_id="r", timeout_s=0.05), 5)
    assert result.tier == 1 and len(setup.classifier.calls) == 2


async def test_concurrent_identical_requests_all_get_an_answer(setup):
    c = command()
    setup.cache.answer(key_of("t1", c))
    await setup.run("t1", c)
    results = await asyncio.gather(*(setup.run("t1", c) for _ in range(20)))
    assert all(r[0] == results[0][0] and r[1] is not None for r in results)
    assert setup.classifier.calls == ["t1"]


# --- through the router (fake upstreams on gRPC, a real nats-server) ---------------------------


async def _hit(client, api_key: str, text: str) -> router_pb2.GenerateSummary:
    """The answer's summary once the text is an exact hit (a miss stores it in the background)."""

    async def check():
        _, summary = await client.generate(api_key, text, max_tokens=50)
        assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT
        return summary

    return await assert_eventually(check, message="an exact hit")


async def test_through_the_router_a_repeated_hit_skips_the_classifier_until_the_model_or_policy_changes(
    client, router_host, nats_url
):
    classifier, app = client.upstreams.classifier, router_host.app
    classifier.model_version = "v1"
    api_key, tenant, _ = client.new_key()
    other_key, other_tenant, _ = client.new_key()
    text = unique("what is a mesh")
    first = await _hit(client, api_key, text)
    asked = classifier.classified[tenant]
    for _ in range(3):
        summary = await _hit(client, api_key, text)
        assert (summary.tier, summary.model, summary.usage) == (first.tier, first.model, first.usage)
    assert classifier.classified[tenant] == asked, "hits served with the memoised classification"

    # the same text from another tenant: its own classification
    await _hit(client, other_key, text)
    await _hit(client, other_key, text)
    assert classifier.classified[other_tenant] >= 1

    # a classifier model loaded (or rewritten in place): the router hears it and asks again
    bus = await Bus.connect(nats_url, "test-classifier-model")
    try:
        event = events_pb2.ClassifierModelLoaded(event_id=unique("ev"), version="v1")
        await bus.publish_core(CLASSIFIER_MODEL_SUBJECT, event, msg_id=event.event_id)
        await assert_eventually(lambda: len(app.memo) == 0, message="memo flushed")
    finally:
        await bus.close()
    await _hit(client, api_key, text)
    assert classifier.classified[tenant] == asked + 1
    await _hit(client, api_key, text)
    assert classifier.classified[tenant] == asked + 1

    # a policy change (any document): the next request is classified under it
    revision = app.policy.revision
    await app.policy.put(f"tenant.{tenant}", {"classifier": {"tier_thresholds": [0.2, 0.6]}})
    await assert_eventually(lambda: app.policy.revision > revision, message="policy seen")
    await _hit(client, api_key, text)
    assert classifier.classified[tenant] == asked + 2
    await _hit(client, api_key, text)
    assert classifier.classified[tenant] == asked + 2


async def test_through_the_router_a_rollout_turns_the_memo_off(client, router_host):
    classifier, app = client.upstreams.classifier, router_host.app
    classifier.model_version = "v1"
    api_key, tenant, _ = client.new_key()
    text = unique("roll me out")
    await _hit(client, api_key, text)
    await _hit(client, api_key, text)
    asked = classifier.classified[tenant]
    doc = app.policy.get("global") or {}
    rollout = {"classifier": {"rollout": {"current": "v1", "candidate": "v2", "share": 0.5}}}
    await app.policy.put("global", doc | rollout)
    try:
        await assert_eventually(lambda: classifier_rollout_running(app.policy.get("global")), message="rollout seen")
        await _hit(client, api_key, text)
        await _hit(client, api_key, text)
        assert classifier.classified[tenant] == asked + 2, "every request classified while a rollout is out"
    finally:
        await app.policy.put("global", doc)
