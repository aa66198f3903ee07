"""The cache's part of the tenant policy (kit.policy documents, key "cache"):

    {"cache": {"ttl_by_class": {"finance": 900, "faq": 86400},
               "allow_restricted": false,
               "semantic": true,
               "target_false_hit_rate": 0.01}}

Unknown or malformed values fall back to the defaults rather than failing requests: a policy
typo must not take the cache down, and the policy editor validates documents on the way in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from llmesh.kit.logging import get_logger

log = get_logger("llmesh.cache.policy")

MAX_TTL_S = 30 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class CachePolicy:
    ttl_by_class: Mapping[str, float] = dataclasses.field(default_factory=dict)
    # Restricted-sensitivity requests are neither read from nor written to the cache unless allowed.
    allow_restricted: bool = False
    # The semantic layer answers this tenant's / use case's requests.
    semantic: bool = True
    # The semantic false-hit rate the use case accepts; None: the engine's default.
    target_false_hit_rate: float | None = None

    def class_ttl(self, content_class: str) -> float | None:
        return self.ttl_by_class.get(content_class) if content_class else None

    def ttl_for(self, requested_s: float, content_class: str, default_s: float) -> float:
        """The request's TTL, else the class's, else the default; never longer than the class's."""
        class_ttl = self.class_ttl(content_class)
        ttl = requested_s or class_ttl or default_s
        return min(ttl, class_ttl) if class_ttl else ttl


def _ttls(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    result = {}
    for name, value in raw.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            result[str(name)] = float(min(value, MAX_TTL_S))
        else:
            log.warning("policy_ttl_ignored", content_class=name, value=repr(value))
    return result


def _rate(raw: Any) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 < raw < 1:
        return float(raw)
    log.warning("policy_false_hit_rate_ignored", value=repr(raw))
    return None


def parse_cache_policy(doc: Mapping[str, Any]) -> CachePolicy:
    section = doc.get("cache")
    if not isinstance(section, dict):
        return CachePolicy()
    return CachePolicy(
        ttl_by_class=_ttls(section.get("ttl_by_class")),
        allow_restricted=section.get("allow_restricted") is True,
        semantic=section.get("semantic") is not False,
        target_false_hit_rate=_rate(section.get("target_false_hit_rate")),
    )


# What the cache asks for a (tenant, use case): llmesh.kit.policy.CachedPolicy over parse_cache_policy.
PolicyResolver = Callable[[str, str], CachePolicy]
