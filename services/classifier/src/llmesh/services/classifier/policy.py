"""The classifier's part of the routing policy (the `classifier` object of the documents in the
`llmesh-policy` KV bucket), resolved per tenant and use case:

    {"classifier": {"tier_thresholds": [0.3, 0.7],
                    "sensitive_terms": ["Project Falcon", "Globex"],
                    "sensitive_terms_level": "confidential",
                    "default_sensitivity": "internal"}}

A malformed value is logged and replaced by the default, so a bad policy edit degrades one
setting instead of failing requests. llmesh.kit.policy.CachedPolicy runs the parser once per
tenant, use case and policy revision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmesh.kit.logging import get_logger
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.classifier.sensitivity.scanner import SensitivityPolicy
from llmesh.services.classifier.tiers import TierThresholds

log = get_logger("llmesh.classifier.policy")

MAX_TERMS = 1000
MAX_TERM_CHARS = 200


@dataclass(frozen=True)
class ClassifierPolicy:
    thresholds: TierThresholds = TierThresholds()
    sensitivity: SensitivityPolicy = SensitivityPolicy()


def _terms(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError("sensitive_terms must be a list of strings")
    terms = tuple(t.strip() for t in value if t.strip())
    if len(terms) > MAX_TERMS or any(len(t) > MAX_TERM_CHARS for t in terms):
        raise ValueError(f"sensitive_terms: at most {MAX_TERMS} terms of at most {MAX_TERM_CHARS} characters")
    return terms


def parse_policy(doc: Mapping[str, Any], defaults: ClassifierPolicy) -> ClassifierPolicy:
    section = doc.get("classifier") or {}
    if not isinstance(section, dict):
        log.warning("policy_value_ignored", field="classifier", error="must be an object")
        return defaults
    thresholds = defaults.thresholds
    sensitivity = defaults.sensitivity

    def set_thresholds(v):
        nonlocal thresholds
        thresholds = TierThresholds.parse(v)

    def set_terms(v):
        nonlocal sensitivity
        sensitivity = SensitivityPolicy(_terms(v), sensitivity.terms_level, sensitivity.default_level)

    def set_terms_level(v):
        nonlocal sensitivity
        sensitivity = SensitivityPolicy(sensitivity.terms, Sensitivity.parse(str(v)), sensitivity.default_level)

    def set_default_level(v):
        nonlocal sensitivity
        sensitivity = SensitivityPolicy(sensitivity.terms, sensitivity.terms_level, Sensitivity.parse(str(v)))

    fields: dict[str, Callable[[Any], None]] = {
        "tier_thresholds": set_thresholds,
        "sensitive_terms": set_terms,
        "sensitive_terms_level": set_terms_level,
        "default_sensitivity": set_default_level,
    }
    for name, apply in fields.items():
        if name in section:
            try:
                apply(section[name])
            except ValueError as exc:
                log.warning("policy_value_ignored", field=f"classifier.{name}", error=str(exc))
    return ClassifierPolicy(thresholds, sensitivity)
