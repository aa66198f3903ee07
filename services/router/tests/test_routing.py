"""Model choice, prices, the routing policy document and the model catalog."""

from __future__ import annotations

import pytest
from llmesh.kit.errors import InvalidArgument, PermissionDenied, Unavailable
from llmesh.kit.policy import CachedPolicy
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.router.domain import ModelInfo, Usage
from llmesh.services.router.routing import (
    ModelCatalog,
    Price,
    Router,
    RoutingPolicy,
    policy_from_document,
)
from llmesh.services.router.settings import parse_prices, parse_tier_models

LOCAL = ModelInfo("small", "llama_cpp")
BIG = ModelInfo("big", "triton")
CLOUD = ModelInfo("cloud", "openai")
DEFAULTS = RoutingPolicy(tier_models={1: "small", 3: "big"}, prices={"small": Price(1.0, 2.0)})


def router(default_model: str = "") -> Router:
    return Router(
        DEFAULTS,
        default_model=default_model,
        default_price=Price(0.5, 0.5),
        self_hosted_backends=["llama_cpp", "triton"],
    )


def choose(
    r: Router,
    tier: int,
    *,
    sensitivity=Sensitivity.INTERNAL,
    pinned=None,
    policy=DEFAULTS,
    available=(LOCAL, BIG, CLOUD),
) -> str:
    return r.choose(tier=tier, sensitivity=sensitivity, pinned=pinned, policy=policy, available=list(available)).name


def test_tiers_map_to_models_and_unmapped_tiers_take_the_default():
    assert choose(router(), 1) == "small" and choose(router(), 3) == "big"
    assert choose(router(), 2) == "small", "no default model set: the first listed"
    assert choose(router("cloud"), 2) == "cloud"
    assert choose(router("cloud"), 3, available=(LOCAL, CLOUD)) == "cloud", "big is not served: the default"


def test_a_pinned_model_wins_unless_the_data_is_restricted():
    assert choose(router(), 1, pinned=CLOUD) == "cloud"
    with pytest.raises(PermissionDenied, match="self-hosted"):
        choose(router(), 1, pinned=CLOUD, sensitivity=Sensitivity.RESTRICTED)
    assert choose(router(), 1, pinned=BIG, sensitivity=Sensitivity.RESTRICTED) == "big"


def test_restricted_data_stays_on_self_hosted_models():
    policy = RoutingPolicy({1: "cloud", 2: "cloud", 3: "cloud"}, {})
    assert choose(router("cloud"), 3, policy=policy) == "cloud"
    assert choose(router("cloud"), 3, policy=policy, sensitivity=Sensitivity.RESTRICTED) == "small"
    with pytest.raises(Unavailable, match="no self-hosted model"):
        choose(router("cloud"), 3, policy=policy, sensitivity=Sensitivity.RESTRICTED, available=(CLOUD,))
    with pytest.raises(Unavailable, match="no model is available for tier 2"):
        choose(router(), 2, available=())


def test_cost_uses_the_price_table_or_the_default_price():
    usage = Usage(prompt_tokens=1500, completion_tokens=500)
    assert router().price("small", DEFAULTS).cost(usage) == pytest.approx(1.5 * 1.0 + 0.5 * 2.0)
    assert router().price("unknown", DEFAULTS).cost(usage) == pytest.approx(2.0 * 0.5)


def test_policy_documents_override_the_defaults_and_bad_entries_are_skipped():
    policy = policy_from_document(
        {
            "tiers": {"2": "cloud", "7": "x", "3": 5},
            "prices": {
                "cloud": {"prompt_per_1k": 3, "completion_per_1k": 4},
                "bad": {"prompt_per_1k": -1, "completion_per_1k": 1},
                "worse": "free",
            },
        },
        DEFAULTS,
    )
    assert policy.tier_models == {1: "small", 2: "cloud", 3: "big"}
    assert policy.prices == {"small": Price(1.0, 2.0), "cloud": Price(3.0, 4.0)}
    assert policy_from_document({"tiers": "nonsense"}, DEFAULTS) == DEFAULTS


def test_policy_cache_reparses_when_the_revision_moves():
    docs = {"t1": {"tiers": {"1": "cloud"}}}
    revision = [1]
    cache = CachedPolicy(
        lambda tenant, use_case: docs.get(tenant, {}),
        lambda: revision[0],
        lambda doc: policy_from_document(doc, DEFAULTS),
    )
    assert cache.get("t1", "default").tier_models[1] == "cloud"
    docs["t1"] = {"tiers": {"1": "big"}}
    assert cache.get("t1", "default").tier_models[1] == "cloud", "same revision: parsed once"
    revision[0] = 2
    assert cache.get("t1", "default").tier_models[1] == "big"
    assert cache.get("t2", "default") == DEFAULTS


async def test_catalog_refreshes_once_before_rejecting_an_unknown_model():
    served = [[LOCAL]]
    fetches = []
    clock = [0.0]

    async def fetch():
        fetches.append(clock[0])
        return served[-1]

    catalog = ModelCatalog(fetch, refresh_s=30, clock=lambda: clock[0])
    await catalog.refresh()
    assert (await catalog.require("small")) == LOCAL and len(fetches) == 1
    served.append([LOCAL, BIG])
    clock[0] = 5.0
    assert (await catalog.require("big")) == BIG and len(fetches) == 2
    with pytest.raises(InvalidArgument, match="unknown model 'nope'; available: big, small"):
        await catalog.require("nope")
    assert len(fetches) == 2, "refreshed under a second ago: no second fetch"


async def test_catalog_keeps_the_last_list_when_a_refresh_fails():
    calls = []

    async def fetch():
        calls.append(1)
        if len(calls) > 1:
            raise Unavailable("inference is unavailable")
        return [LOCAL]

    clock = [0.0]
    catalog = ModelCatalog(fetch, refresh_s=1, clock=lambda: clock[0])
    await catalog.refresh_if_stale()
    clock[0] = 10.0
    await catalog.refresh_if_stale()
    assert catalog.models == [LOCAL] and len(calls) == 2


def test_settings_parsers():
    assert parse_tier_models(" 1=a, 3=b ") == {1: "a", 3: "b"}
    with pytest.raises(ValueError):
        parse_tier_models("4=a")
    assert parse_prices('{"a": {"prompt_per_1k": 1, "completion_per_1k": 2}}') == {"a": (1.0, 2.0)}
    for bad in ("[1]", '{"a": {"prompt_per_1k": 1}}', '{"a": {"prompt_per_1k": -1, "completion_per_1k": 0}}', "{"):
        with pytest.raises(ValueError):
            parse_prices(bad)
