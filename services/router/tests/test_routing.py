"""Model choice, prices, the routing policy document and the model catalog."""

from __future__ import annotations

import dataclasses
import math

import pytest
from llmesh.kit.errors import InvalidArgument, PermissionDenied, Unavailable
from llmesh.kit.policy import CachedPolicy
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.router.domain import ModelInfo, Usage
from llmesh.services.router.load import LoadBoard, LoadSnapshot
from llmesh.services.router.routing import (
    ModelCatalog,
    Price,
    Router,
    RoutingPolicy,
    policy_from_document,
)
from llmesh.services.router.settings import parse_prices, parse_tier_models
from prometheus_client import REGISTRY

R, I = Sensitivity.RESTRICTED, Sensitivity.INTERNAL
LOCAL = ModelInfo("small", "llama_cpp", self_hosted=True, max_sensitivity=R, fallback=True)
BIG = ModelInfo("big", "triton", self_hosted=True, max_sensitivity=R)
CLOUD = ModelInfo("cloud", "openai", max_sensitivity=I)
DEFAULTS = RoutingPolicy(tier_models={1: "small", 3: "big"}, prices={"small": Price(1.0, 2.0)})


def router(default_model: str = "") -> Router:
    return Router(
        DEFAULTS,
        default_model=default_model,
        default_price=Price(0.5, 0.5),
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
    with pytest.raises(PermissionDenied, match="restricted data; cloud .openai. may receive data up to internal"):
        choose(router(), 1, pinned=CLOUD, sensitivity=Sensitivity.RESTRICTED)
    assert choose(router(), 1, pinned=BIG, sensitivity=Sensitivity.RESTRICTED) == "big"


def test_restricted_data_stays_on_self_hosted_models():
    policy = RoutingPolicy({1: "cloud", 2: "cloud", 3: "cloud"}, {})
    assert choose(router("cloud"), 3, policy=policy) == "cloud"
    assert choose(router("cloud"), 3, policy=policy, sensitivity=Sensitivity.RESTRICTED) == "small"
    with pytest.raises(Unavailable, match="no model for tier 3 may receive restricted data .refused: cloud"):
        choose(router("cloud"), 3, policy=policy, sensitivity=Sensitivity.RESTRICTED, available=(CLOUD,))
    with pytest.raises(Unavailable, match="no model is available for tier 2"):
        choose(router(), 2, available=())


def test_the_catalog_maps_tiers_below_settings_and_policy():
    t12 = ModelInfo("t12", "triton", tiers=(1, 2), self_hosted=True, max_sensitivity=R)
    api = ModelInfo(
        "api", "openai", tiers=(3,), max_sensitivity=I, prompt_price_per_1k=2.0, completion_price_per_1k=4.0
    )
    last = ModelInfo("last", "llama_cpp", tiers=(1, 2, 3), self_hosted=True, max_sensitivity=R, fallback=True)
    catalog = (last, t12, api)
    bare = Router(RoutingPolicy({}, {}), default_model="", default_price=Price(0.5, 0.5))
    empty = RoutingPolicy({}, {})
    assert [choose(bare, t, policy=empty, available=catalog) for t in (1, 2, 3)] == ["t12", "t12", "api"]
    # Settings or policy mappings win over the catalog.
    assert choose(bare, 3, policy=RoutingPolicy({3: "t12"}, {}), available=catalog) == "t12"
    # A model whose allowed sensitivity is below the request's is skipped for the fallback.
    assert choose(bare, 3, policy=empty, available=catalog, sensitivity=Sensitivity.CONFIDENTIAL) == "last"
    assert choose(bare, 3, policy=empty, available=catalog, sensitivity=R) == "last"
    with pytest.raises(PermissionDenied):
        choose(bare, 3, policy=empty, available=catalog, sensitivity=R, pinned=api)
    # Prices: policy, else the catalog, else the default.
    usage = Usage(prompt_tokens=1000, completion_tokens=1000)
    assert bare.price("api", empty, api).cost(usage) == pytest.approx(6.0)
    assert bare.price("api", RoutingPolicy({}, {"api": Price(1.0, 1.0)}), api).cost(usage) == pytest.approx(2.0)
    assert bare.price("t12", empty, t12).cost(usage) == pytest.approx(1.0)


def test_load_snapshots_go_stale_into_unknown():
    now = [100.0]
    board = LoadBoard(3.0, clock=lambda: now[0])
    assert board.current("m", "local") is None
    board.record(LoadSnapshot("m", "local", "triton", 0.5, 1, 0, 2, 4, 10.0, 20.0, 30.0, 0.0))
    assert board.current("m", "local").utilization == 0.5 and board.current("m", "other") is None
    labels = {"region": "local", "model": "m"}
    assert REGISTRY.get_sample_value("llmesh_router_model_utilization_ratio", labels) == 0.5
    assert REGISTRY.get_sample_value("llmesh_router_model_load_known", labels) == 1.0
    now[0] += 3.5
    assert board.current("m", "local") is None and board.known() == []
    assert math.isnan(REGISTRY.get_sample_value("llmesh_router_model_utilization_ratio", labels))
    assert REGISTRY.get_sample_value("llmesh_router_model_load_known", labels) == 0.0


def test_two_inference_replicas_add_up_and_one_that_went_quiet_drops_out():
    """Each replica of inference publishes its own snapshots of a model (docs/adr/0034)."""
    now = [100.0]
    board = LoadBoard(3.0, clock=lambda: now[0])
    a = LoadSnapshot("r", "local", "llama_cpp", 1.0, 2, 3, 2, 4, 10.0, 20.0, 30.0, 1.0, instance="host-1")
    b = LoadSnapshot("r", "local", "llama_cpp", 0.0, 0, 0, 2, 4, 30.0, 50.0, 10.0, 2.0, instance="host-2")
    board.record(a)
    now[0] += 2.0
    board.record(b)
    board.record(dataclasses.replace(b, active=1, utilization=0.5))  # the newer of one instance replaces it
    both = board.current("r", "local")
    assert (both.active, both.queued, both.capacity, both.max_queue) == (3, 3, 4, 8)
    assert both.utilization == pytest.approx(0.75), "over the summed capacity, not the last one heard"
    assert (both.ttft_p50_ms, both.ttft_p95_ms, both.tokens_per_second_p50) == (20.0, 50.0, 20.0)
    assert both.observed_at == 2.0 and len(board.known()) == 1
    now[0] += 1.5  # host-1 last spoke 3.5 s ago: gone (killed), host-2 alone is the model's load
    alone = board.current("r", "local")
    assert (alone.active, alone.capacity, alone.utilization) == (1, 2, 0.5)


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
