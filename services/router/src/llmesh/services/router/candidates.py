"""The ordered list of models a request may try, and the rules that take models off it.

Order: the tier's own models (the policy's or settings' mapping, then the catalog's models of the
tier, the router's region first), else the default model; then the tier's fallback chain from
policy `routing.fallbacks` (entries `tier:N`, `tier:N@region`, `model:NAME`); then the fallbacks
of last resort. Each model appears once, at its first place.

Filters, each with the name of the rule that refused a model:
  model_sensitivity        the model may not receive data this sensitive (catalog max_sensitivity)
  clearance                the request is more sensitive than the tenant's clearance (only with
                           policy data_access.enforce_clearance)
  data_access.external     an external model and data above data_access.external.max_sensitivity
  data_access.providers    an external model of a provider not in data_access.external.providers
  data_access.regions      a model in a region outside data_access.regions
  breaker_open             the model's circuit breaker is open (not a refusal: UNAVAILABLE)

A model `demoted` says to put last (on probation after a peer replica's ejection, docs/adr/0030)
stays on the list, after every other candidate.

When nothing is left, a request refused by a tenant rule is PERMISSION_DENIED naming the rule;
otherwise UNAVAILABLE.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from llmesh.kit.errors import PermissionDenied, Unavailable
from llmesh.kit.logging import get_logger
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.router.domain import TIERS, ModelInfo

log = get_logger("llmesh.router.candidates")

CHAIN_ENTRY = re.compile(r"^(?:tier:(?P<tier>[123])(?:@(?P<region>[A-Za-z0-9._-]{1,64}))?|model:(?P<model>\S{1,128}))$")
# Without a policy chain a failing tier falls back to the next stronger one.
DEFAULT_FALLBACKS: dict[int, tuple[str, ...]] = {1: ("tier:2",), 2: ("tier:3",), 3: ()}
TENANT_RULES = ("clearance", "data_access.external", "data_access.providers", "data_access.regions")


@dataclasses.dataclass(frozen=True)
class DataAccess:
    """A tenant's data-access rules (policy `data_access`)."""

    # The most sensitive data that may go to external (not self-hosted) models; None: no rule
    # beyond each model's own allowance.
    external_max_sensitivity: Sensitivity | None = None
    # Providers (the catalog's backend names, e.g. "openai") external models must belong to; None: any.
    external_providers: frozenset[str] | None = None
    # Regions whose models may process the data; None: any.
    regions: frozenset[str] | None = None
    # Refuse requests more sensitive than the principal's clearance.
    enforce_clearance: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    model: ModelInfo
    # "tier", "fallback", "overflow", "escalation", "pinned"
    reason: str
    # The tier the model was picked for.
    tier: int


def parse_fallbacks(section: Any, defaults: Mapping[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    chains = dict(defaults)
    if not isinstance(section, dict):
        if section is not None:
            log.warning("policy_entry_ignored", field="routing.fallbacks", key="")
        return chains
    for tier, entries in section.items():
        if str(tier) not in ("1", "2", "3") or not isinstance(entries, list):
            log.warning("policy_entry_ignored", field="routing.fallbacks", key=str(tier))
            continue
        good = tuple(e for e in entries if isinstance(e, str) and CHAIN_ENTRY.match(e))
        if len(good) != len(entries):
            log.warning("policy_entry_ignored", field=f"routing.fallbacks.{tier}", key="bad entries skipped")
        chains[int(tier)] = good
    return chains


def parse_data_access(section: Any) -> DataAccess:
    if not isinstance(section, dict):
        if section is not None:
            log.warning("policy_entry_ignored", field="data_access", key="")
        return DataAccess()
    external_max = providers = regions = None
    external = section.get("external")
    if isinstance(external, dict):
        level = external.get("max_sensitivity")
        if level is not None:
            try:
                external_max = Sensitivity.parse(level) if isinstance(level, str) else None
            except ValueError:
                external_max = None
            if external_max is None:
                # Unreadable: the strictest reading (nothing may leave) rather than the loosest.
                log.warning("policy_entry_ignored", field="data_access.external.max_sensitivity", key=str(level))
                external_max = Sensitivity.UNSPECIFIED
        names = external.get("providers")
        if isinstance(names, list):
            providers = frozenset(n for n in names if isinstance(n, str))
        elif names is not None:
            log.warning("policy_entry_ignored", field="data_access.external.providers", key="")
            providers = frozenset()
    names = section.get("regions")
    if isinstance(names, list):
        regions = frozenset(n for n in names if isinstance(n, str))
    elif names is not None:
        log.warning("policy_entry_ignored", field="data_access.regions", key="")
        regions = frozenset()
    return DataAccess(external_max, providers, regions, section.get("enforce_clearance") is True)


def refusal(model: ModelInfo, sensitivity: Sensitivity, clearance: Sensitivity, rules: DataAccess) -> str | None:
    """The rule that keeps the request off `model`, or None when it may go there."""
    if not model.allows(sensitivity):
        return "model_sensitivity"
    if rules.enforce_clearance and sensitivity > clearance:
        return "clearance"
    if not model.self_hosted:
        if rules.external_max_sensitivity is not None and sensitivity > rules.external_max_sensitivity:
            return "data_access.external"
        if rules.external_providers is not None and model.backend not in rules.external_providers:
            return "data_access.providers"
    if rules.regions is not None and model.region not in rules.regions:
        return "data_access.regions"
    return None


@dataclasses.dataclass
class CandidateList:
    candidates: list[Candidate]
    # model name → the rule that took it off the list
    refused: dict[str, str]

    def raise_if_empty(self, tier: int, sensitivity: Sensitivity) -> None:
        if self.candidates:
            return
        tenant_rules = sorted({r for r in self.refused.values() if r in TENANT_RULES})
        level = sensitivity.name.lower()
        if tenant_rules:
            raise PermissionDenied(
                f"no model allowed by the tenant's rules can serve this {level} request for tier {tier} "
                f"(refused by {', '.join(tenant_rules)}: "
                f"{', '.join(f'{m} ({r})' for m, r in self.refused.items())})"
            )
        if self.refused and all(r == "model_sensitivity" for r in self.refused.values()):
            raise Unavailable(f"no model for tier {tier} may receive {level} data (refused: {', '.join(self.refused)})")
        if self.refused:
            raise Unavailable(
                f"no healthy model for tier {tier} "
                f"({', '.join(f'{m}: {r}' for m, r in self.refused.items())}); try again shortly"
            )
        raise Unavailable(f"no model is available for tier {tier}")


def tier_models(
    tier: int, mapped: str | None, available: list[ModelInfo], home_region: str, region: str | None = None
) -> list[ModelInfo]:
    """The models of one tier: the mapped one, then the catalog's (home region first; not the
    fallbacks of last resort); only those of `region` when given."""
    by_name = {m.name: m for m in available}
    found: list[ModelInfo] = []
    if mapped:
        if mapped in by_name:
            found.append(by_name[mapped])
        else:
            log.warning("routed_model_not_served", tier=tier, model=mapped)
    # The fallbacks of last resort come after the whole chain (build appends them).
    found += sorted(
        (m for m in available if tier in m.tiers and not m.fallback),
        key=lambda m: bool(home_region) and m.region != home_region,
    )
    if region is not None:
        found = [m for m in found if m.region == region]
    return found


def build(
    *,
    tier: int,
    sensitivity: Sensitivity,
    clearance: Sensitivity,
    tier_map: Mapping[int, str],
    fallbacks: Mapping[int, tuple[str, ...]],
    rules: DataAccess,
    available: list[ModelInfo],
    default_model: str,
    home_region: str = "",
    usable: Callable[[ModelInfo], bool] = lambda model: True,
    demoted: Callable[[ModelInfo], bool] = lambda model: False,
) -> CandidateList:
    """The candidates for `tier`, in order, filtered; `usable` and `demoted` are the breakers' say."""
    if tier not in TIERS:
        raise ValueError(f"tier {tier} is not one of {TIERS}")
    by_name = {m.name: m for m in available}
    ordered: list[Candidate] = [
        Candidate(m, "tier", tier) for m in tier_models(tier, tier_map.get(tier), available, home_region)
    ]
    if not ordered:
        default = default_model or (available[0].name if available else "")
        if default in by_name:
            ordered.append(Candidate(by_name[default], "tier", tier))
    for entry in fallbacks.get(tier, ()):
        found = CHAIN_ENTRY.match(entry)
        if found is None:
            continue
        if found.group("model"):
            if found.group("model") in by_name:
                ordered.append(Candidate(by_name[found.group("model")], "fallback", tier))
            continue
        chain_tier = int(found.group("tier"))
        ordered += [
            Candidate(m, "fallback", chain_tier)
            for m in tier_models(chain_tier, tier_map.get(chain_tier), available, home_region, found.group("region"))
        ]
    ordered += [Candidate(m, "fallback", tier) for m in available if m.fallback]
    return filter_candidates(
        ordered, sensitivity=sensitivity, clearance=clearance, rules=rules, usable=usable, demoted=demoted
    )


def filter_candidates(
    ordered: list[Candidate],
    *,
    sensitivity: Sensitivity,
    clearance: Sensitivity,
    rules: DataAccess,
    usable: Callable[[ModelInfo], bool] = lambda model: True,
    demoted: Callable[[ModelInfo], bool] = lambda model: False,
) -> CandidateList:
    seen: set[str] = set()
    kept: list[Candidate] = []
    last: list[Candidate] = []
    refused: dict[str, str] = {}
    for candidate in ordered:
        name = candidate.model.name
        if name in seen:
            continue
        seen.add(name)
        rule = refusal(candidate.model, sensitivity, clearance, rules)
        if rule is None and not usable(candidate.model):
            rule = "breaker_open"
        if rule is not None:
            refused[name] = rule
        elif demoted(candidate.model):
            last.append(candidate)
        else:
            kept.append(candidate)
    return CandidateList(kept + last, refused)
