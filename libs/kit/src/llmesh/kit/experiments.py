"""Traffic splits by a stable hash of tenant and request: policy experiments (variants of a policy
document with traffic shares) and the classifier's gradual model rollout use this one assignment,
so a request lands in the same variant in every service and on every replica.

A policy document may hold

    {"experiments": {"<name>": {"variants": {"a": {"share": 0.5, "policy": {...}},
                                             "b": {"share": 0.5, "policy": {...}}}}}}

A request is hashed into [0, 1) with the experiment's name as salt; the variants take consecutive
slices of that range in the order of their names, each as wide as its share. Requests outside every
slice (when the shares add up to less than 1) get no variant and keep the document as it is. A
variant's `policy` is merged over the document like a more specific key (objects key by key).
The label of a variant, carried in summaries, metrics and usage events, is `<experiment>/<variant>`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmesh.kit.logging import get_logger

log = get_logger("llmesh.experiments")

EXPERIMENTS_FIELD = "experiments"


def stable_fraction(salt: str, tenant_id: str, request_id: str) -> float:
    """A number in [0, 1) fixed by (salt, tenant, request): the same everywhere, every time."""
    digest = hashlib.blake2b(f"{salt}\x1f{tenant_id}\x1f{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def variant_label(experiment: str, variant: str) -> str:
    return f"{experiment}/{variant}"


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: objects merge key by key, anything else replaces (the policy merge)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class Variant:
    name: str
    share: float
    policy: Mapping[str, Any]


@dataclass(frozen=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]  # sorted by name

    def choose(self, tenant_id: str, request_id: str) -> Variant | None:
        """The variant of this request, or None (outside every slice, or no request id to hash)."""
        if not request_id:
            return None
        point = stable_fraction(self.name, tenant_id, request_id)
        edge = 0.0
        for variant in self.variants:
            edge += variant.share
            if point < edge:
                return variant
        return None


def parse_experiments(doc: Mapping[str, Any]) -> tuple[Experiment, ...]:
    """The experiments of an effective policy document, sorted by name. Malformed entries are logged
    and skipped (the services read policy leniently; the schema is the strict check)."""
    section = doc.get(EXPERIMENTS_FIELD) or {}
    if not isinstance(section, Mapping):
        log.warning("policy_value_ignored", field=EXPERIMENTS_FIELD, error="must be an object")
        return ()
    found = []
    for name in sorted(section):
        try:
            found.append(_experiment(name, section[name]))
        except ValueError as exc:
            log.warning("policy_value_ignored", field=f"{EXPERIMENTS_FIELD}.{name}", error=str(exc))
    return tuple(found)


def _experiment(name: str, value: Any) -> Experiment:
    if not isinstance(value, Mapping) or not isinstance(value.get("variants"), Mapping) or not value["variants"]:
        raise ValueError("an experiment is an object with a non-empty `variants` object")
    variants = []
    for vname in sorted(value["variants"]):
        v = value["variants"][vname]
        if not isinstance(v, Mapping):
            raise ValueError(f"variant {vname!r} must be an object")
        share = v.get("share")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share):
            raise ValueError(f"variant {vname!r}: share must be a number in [0, 1]")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"variant {vname!r}: share must be a number in [0, 1]")
        policy = v.get("policy", {})
        if not isinstance(policy, Mapping) or EXPERIMENTS_FIELD in policy:
            raise ValueError(f"variant {vname!r}: policy must be an object without experiments")
        variants.append(Variant(str(vname), float(share), policy))
    if sum(v.share for v in variants) > 1.0 + 1e-9:
        raise ValueError("the variants' shares add up to more than 1")
    return Experiment(str(name), tuple(variants))


def resolve_variant(doc: Mapping[str, Any], tenant_id: str, request_id: str) -> tuple[dict[str, Any], str]:
    """The document a request runs under and its variant labels ('' when in no experiment; several
    experiments give labels joined by ','). Experiments apply in the order of their names."""
    effective = dict(doc)
    labels = []
    for experiment in parse_experiments(doc):
        variant = experiment.choose(tenant_id, request_id)
        if variant is not None:
            effective = merge(effective, variant.policy)
            labels.append(variant_label(experiment.name, variant.name))
    effective.pop(EXPERIMENTS_FIELD, None)
    return effective, ",".join(labels)


class VariantPolicies:
    """A service's parsed policy per variant, for use inside a CachedPolicy parser: built once per
    (tenant, use case) and revision from the effective document, then `pick(tenant, request)` per
    request without parsing again."""

    def __init__(self, doc: Mapping[str, Any], parse):
        base = dict(doc)
        base.pop(EXPERIMENTS_FIELD, None)
        self.default = parse(base)
        self._experiments = parse_experiments(doc)
        self._parsed: dict[tuple[str, ...], Any] = {}
        self._doc = doc
        self._parse = parse

    @property
    def experiments(self) -> tuple[Experiment, ...]:
        return self._experiments

    def pick(self, tenant_id: str, request_id: str):
        """(parsed policy, variant label) for one request."""
        if not self._experiments:
            return self.default, ""
        chosen = []
        for experiment in self._experiments:
            variant = experiment.choose(tenant_id, request_id)
            if variant is not None:
                chosen.append((experiment.name, variant.name))
        if not chosen:
            return self.default, ""
        key = tuple(f"{e}/{v}" for e, v in chosen)
        if key not in self._parsed:
            effective = dict(self._doc)
            effective.pop(EXPERIMENTS_FIELD, None)
            by_name = {e.name: e for e in self._experiments}
            for e, v in chosen:
                effective = merge(effective, next(x for x in by_name[e].variants if x.name == v).policy)
            self._parsed[key] = self._parse(effective)
        return self._parsed[key], ",".join(key)
