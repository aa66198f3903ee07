"""Candidate ordering and filtering: the tier's models, the fallback chain, sensitivity, the tenant's
clearance and data-access rules, regions and open breakers."""

from __future__ import annotations

import pytest
from llmesh.kit.errors import PermissionDenied, Unavailable
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.router.candidates import DataAccess, build, parse_data_access, parse_fallbacks
from llmesh.services.router.domain import ModelInfo
from llmesh.services.router.routing import Price, Router, RoutingPolicy, policy_from_document

P, I, C, R = Sensitivity.PUBLIC, Sensitivity.INTERNAL, Sensitivity.CONFIDENTIAL, Sensitivity.RESTRICTED
T1A = ModelInfo("t1-a", "triton", tiers=(1,), self_hosted=True, max_sensitivity=R, region="a")
T1B = ModelInfo("t1-b", "triton", tiers=(1,), self_hosted=True, max_sensitivity=R, region="b")
T2A = ModelInfo("t2-a", "triton", tiers=(2,), self_hosted=True, max_sensitivity=R, region="a")
API = ModelInfo("api", "openai", tiers=(3,), max_sensitivity=C, region="a")
OTHER = ModelInfo("other-api", "anthropic", tiers=(3,), max_sensitivity=C, region="a")
LAST = ModelInfo("last", "llama_cpp", tiers=(1, 2, 3), self_hosted=True, max_sensitivity=R, fallback=True, region="a")
CATALOG = [LAST, API, OTHER, T2A, T1B, T1A]


def names(
    tier=1,
    *,
    sensitivity=I,
    clearance=R,
    fallbacks=None,
    rules=DataAccess(),
    usable=lambda m: True,
    demoted=lambda m: False,
    home="a",
):
    found = build(
        tier=tier,
        sensitivity=sensitivity,
        clearance=clearance,
        tier_map={},
        fallbacks=fallbacks if fallbacks is not None else {1: ("tier:1@b", "tier:2", "tier:3"), 2: ("tier:3",)},
        rules=rules,
        available=CATALOG,
        default_model="",
        home_region=home,
        usable=usable,
        demoted=demoted,
    )
    return [(c.model.name, c.reason) for c in found.candidates], found


def test_the_tiers_models_come_first_then_the_chain_then_the_last_resort():
    order, _ = names()
    assert order == [
        ("t1-a", "tier"),  # home region first
        ("t1-b", "tier"),
        ("t2-a", "fallback"),
        ("api", "fallback"),
        ("other-api", "fallback"),
        ("last", "fallback"),  # the fallback of last resort after the whole chain
    ]
    order, _ = names(home="b")
    assert order[:2] == [("t1-b", "tier"), ("t1-a", "tier")]
    order, _ = names(3, fallbacks={})
    assert [n for n, _ in order] == ["api", "other-api", "last"]


def test_model_chain_entries_and_the_default_chain():
    order, _ = names(2, fallbacks={2: ("model:api",)})
    assert order == [("t2-a", "tier"), ("api", "fallback"), ("last", "fallback")]
    assert parse_fallbacks(None, {1: ("tier:2",)}) == {1: ("tier:2",)}
    chains = parse_fallbacks({"1": ["tier:1@b", "nonsense", 5], "9": ["tier:2"], "2": "tier:3"}, {})
    assert chains == {1: ("tier:1@b",)}


def test_sensitivity_never_goes_to_a_model_allowed_less():
    order, found = names(sensitivity=R)
    assert "api" not in [n for n, _ in order] and found.refused["api"] == "model_sensitivity"


def test_external_rules_providers_and_regions_filter_with_their_rule_named():
    rules = parse_data_access({"external": {"max_sensitivity": "public", "providers": ["openai"]}})
    order, found = names(rules=rules)
    assert "api" not in [n for n, _ in order] and found.refused["api"] == "data_access.external"
    order, found = names(sensitivity=P, rules=rules)
    assert "api" in [n for n, _ in order] and found.refused["other-api"] == "data_access.providers"
    order, found = names(rules=parse_data_access({"regions": ["b"]}))
    assert [n for n, _ in order] == ["t1-b"] and found.refused["t1-a"] == "data_access.regions"


def test_a_request_no_allowed_model_can_serve_is_permission_denied_naming_the_rule():
    _, found = names(3, fallbacks={}, rules=parse_data_access({"regions": ["nowhere"]}))
    with pytest.raises(PermissionDenied, match="data_access.regions"):
        found.raise_if_empty(3, I)
    rules = parse_data_access({"enforce_clearance": True})
    _, found = names(sensitivity=R, clearance=I, rules=rules)
    with pytest.raises(PermissionDenied, match="refused by clearance"):
        found.raise_if_empty(1, R)
    # Without enforce_clearance the clearance does not refuse anything.
    order, _ = names(sensitivity=R, clearance=I)
    assert order


def test_open_breakers_take_models_off_and_an_empty_list_is_unavailable():
    order, found = names(usable=lambda m: m.name != "t1-a")
    assert order[0][0] == "t1-b" and found.refused == {"t1-a": "breaker_open"}
    _, found = names(usable=lambda m: False)
    with pytest.raises(Unavailable, match="no healthy model for tier 1"):
        found.raise_if_empty(1, I)


def test_policy_documents_carry_the_new_sections_and_bad_ones_fall_back():
    defaults = RoutingPolicy({}, {})
    policy = policy_from_document(
        {
            "routing": {"fallbacks": {"1": ["tier:3"]}},
            "data_access": {"external": {"max_sensitivity": "public"}, "regions": ["a"]},
            "overflow": {"enabled": False, "threshold": 0.9, "resume_below": 0.5},
            "escalation": {"threshold": 0.5, "stream_mode": "hold", "hold_tokens": 8},
        },
        defaults,
    )
    assert policy.fallbacks[1] == ("tier:3",) and policy.fallbacks[2] == defaults.fallbacks[2]
    assert policy.data_access.external_max_sensitivity is P and policy.data_access.regions == {"a"}
    assert (policy.overflow.enabled, policy.overflow.threshold, policy.overflow.resume_below) == (False, 0.9, 0.5)
    assert policy.escalation.threshold == 0.5 and policy.escalation.hold_tokens == 8
    bad = policy_from_document(
        {
            "routing": "x",
            "data_access": {"external": {"max_sensitivity": "secret"}, "regions": "a"},
            "overflow": {"threshold": 7, "resume_below": 0.95, "enabled": "yes"},
            "escalation": {"threshold": "high", "stream_mode": "maybe", "hold_tokens": 0},
        },
        defaults,
    )
    assert bad.fallbacks == defaults.fallbacks and bad.overflow.enabled
    assert bad.overflow.threshold == 0.8 and bad.overflow.resume_below == 0.8, "resume_below capped at threshold"
    assert bad.escalation == defaults.escalation
    # An unreadable external level is read as the strictest: nothing leaves; unreadable regions: none.
    assert bad.data_access.external_max_sensitivity is Sensitivity.UNSPECIFIED
    assert bad.data_access.regions == frozenset()


def test_a_pinned_model_alone_and_refused_by_tenant_rules():
    router = Router(RoutingPolicy({}, {}), default_model="", default_price=Price(0, 0))
    policy = RoutingPolicy({}, {}, data_access=parse_data_access({"external": {"providers": []}}))
    with pytest.raises(PermissionDenied, match="data_access.providers"):
        router.candidates(tier=1, sensitivity=I, pinned=API, policy=policy, available=CATALOG)
    found = router.candidates(tier=1, sensitivity=I, pinned=T1B, policy=policy, available=CATALOG)
    assert [(c.model.name, c.reason) for c in found.candidates] == [("t1-b", "pinned")]


def test_a_demoted_model_stays_on_the_list_after_every_other_candidate():
    # on probation after a peer replica's ejection (docs/adr/0030): tried last, not refused
    order, found = names(demoted=lambda m: m.name == "t1-a")
    assert [n for n, _ in order] == ["t1-b", "t2-a", "api", "other-api", "last", "t1-a"]
    assert order[-1] == ("t1-a", "tier") and found.refused == {}
    order, found = names(usable=lambda m: m.name != "t1-a", demoted=lambda m: True)
    assert "t1-a" not in [n for n, _ in order] and found.refused == {"t1-a": "breaker_open"}, "an open breaker wins"
