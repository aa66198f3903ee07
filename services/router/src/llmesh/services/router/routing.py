"""Which model answers a request, and what it costs.

The routing policy is a JSON document (kit.policy, key "global", overridable per tenant and use
case) such as::

    {"tiers": {"1": "gemma-3-270m", "2": "...", "3": "..."},
     "prices": {"gemma-3-270m": {"prompt_per_1k": 0.0001, "completion_per_1k": 0.0004}}}

Settings give the defaults the policy overrides, and inference's model catalog (ListModels) gives
the defaults below those: the models serving each tier, each model's hosting and highest allowed
sensitivity, and its price. llmesh.kit.policy.CachedPolicy runs the parser once per tenant, use
case and policy revision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from llmesh.kit.errors import InvalidArgument, PermissionDenied, Unavailable
from llmesh.kit.logging import get_logger
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.router.domain import TIERS, ModelInfo, Usage

log = get_logger("llmesh.router.routing")


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    prompt_per_1k: float
    completion_per_1k: float

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.prompt_per_1k + usage.completion_tokens * self.completion_per_1k) / 1000.0


@dataclasses.dataclass(frozen=True)
class RoutingPolicy:
    tier_models: dict[int, str]
    prices: dict[str, Price]
    # The cache's policy key `cache.allow_restricted`: restricted requests may use the cache.
    cache_restricted: bool = False


def policy_from_document(doc: Mapping[str, Any], defaults: RoutingPolicy) -> RoutingPolicy:
    """Applies a policy document over the defaults, skipping (and logging) malformed entries so a
    bad edit in the KV bucket never takes the router down."""
    tier_models = dict(defaults.tier_models)
    tiers = doc.get("tiers", {})
    if isinstance(tiers, dict):
        for tier, model in tiers.items():
            if str(tier) in ("1", "2", "3") and isinstance(model, str) and model:
                tier_models[int(tier)] = model
            else:
                log.warning("policy_entry_ignored", field="tiers", key=str(tier))
    prices = dict(defaults.prices)
    price_doc = doc.get("prices", {})
    if isinstance(price_doc, dict):
        for model, entry in price_doc.items():
            try:
                price = Price(float(entry["prompt_per_1k"]), float(entry["completion_per_1k"]))
                if price.prompt_per_1k < 0 or price.completion_per_1k < 0:
                    raise ValueError("negative price")
            except (TypeError, KeyError, ValueError):
                log.warning("policy_entry_ignored", field="prices", key=str(model))
                continue
            prices[model] = price
    cache_section = doc.get("cache")
    cache_restricted = isinstance(cache_section, dict) and cache_section.get("allow_restricted") is True
    return RoutingPolicy(tier_models, prices, cache_restricted)


class ModelCatalog:
    """The models inference serves, refreshed now and then; single-flight refreshes."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list[ModelInfo]]],
        refresh_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._fetch = fetch
        self._refresh_s = refresh_s
        self._clock = clock
        self._models: dict[str, ModelInfo] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def models(self) -> list[ModelInfo]:
        return list(self._models.values())

    def get(self, name: str) -> ModelInfo | None:
        return self._models.get(name)

    async def refresh(self) -> None:
        """Fetches the list now; raises when inference cannot answer."""
        async with self._lock:
            models = await self._fetch()
            self._models = {m.name: m for m in models}
            self._fetched_at = self._clock()

    async def refresh_if_stale(self, max_age_s: float | None = None) -> None:
        """Refreshes when older than `max_age_s`; a failure keeps the list already known."""
        age_limit = self._refresh_s if max_age_s is None else max_age_s
        if self._fetched_at is not None and self._clock() - self._fetched_at < age_limit:
            return
        try:
            await self.refresh()
        except Exception as exc:
            if self._fetched_at is None:
                raise
            log.warning("model_list_refresh_failed", error=repr(exc))

    async def require(self, name: str) -> ModelInfo:
        """The pinned model `name`; an unknown name gets one fresh look before it is rejected."""
        await self.refresh_if_stale()
        model = self.get(name)
        if model is None:
            await self.refresh_if_stale(max_age_s=1.0)
            model = self.get(name)
        if model is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise InvalidArgument(f"unknown model {name!r}; available: {known}", field="model")
        return model


class Router:
    """Picks the model for a tier, honouring a pinned model and each model's highest allowed
    sensitivity (restricted data never leaves self-hosted models: the catalog refuses an external
    model restricted data)."""

    def __init__(self, defaults: RoutingPolicy, *, default_model: str, default_price: Price):
        self.defaults = defaults
        self._default_model = default_model
        self._default_price = default_price

    @staticmethod
    def _refusal(model: ModelInfo, sensitivity: Sensitivity) -> str:
        return (
            f"the request holds {sensitivity.name.lower()} data; {model.name} ({model.backend}) may receive "
            f"data up to {model.max_sensitivity.name.lower()} only"
        )

    def choose(
        self,
        *,
        tier: int,
        sensitivity: Sensitivity,
        pinned: ModelInfo | None,
        policy: RoutingPolicy,
        available: list[ModelInfo],
    ) -> ModelInfo:
        """The model for `tier`: the policy's (or settings') mapping, else the catalog's models for
        the tier (fallbacks of last resort after the others), else the default model; the first
        of these allowed the request's sensitivity, else any allowed fallback of last resort."""
        if tier not in TIERS:
            raise ValueError(f"tier {tier} is not one of {TIERS}")
        if pinned is not None:
            if not pinned.allows(sensitivity):
                raise PermissionDenied(self._refusal(pinned, sensitivity))
            return pinned
        by_name = {m.name: m for m in available}
        catalog_tier = sorted((m for m in available if tier in m.tiers), key=lambda m: m.fallback)
        wanted: list[ModelInfo] = []
        for name in filter(None, [policy.tier_models.get(tier)]):
            if name in by_name:
                wanted.append(by_name[name])
            else:
                log.warning("routed_model_not_served", tier=tier, model=name)
        wanted += catalog_tier
        default = self._default_model or (available[0].name if available and not catalog_tier else "")
        if default in by_name:
            wanted.append(by_name[default])
        wanted += [m for m in available if m.fallback]
        refused: list[ModelInfo] = []
        for model in wanted:
            if model.allows(sensitivity):
                return model
            refused.append(model)
        if refused:
            raise Unavailable(
                f"no model for tier {tier} may receive {sensitivity.name.lower()} data "
                f"(refused: {', '.join(dict.fromkeys(m.name for m in refused))})"
            )
        raise Unavailable(f"no model is available for tier {tier}")

    def price(self, model: str, policy: RoutingPolicy, info: ModelInfo | None = None) -> Price:
        """The policy's (or settings') price, else the catalog's, else the default price."""
        if model in policy.prices:
            return policy.prices[model]
        if info is not None and info.prompt_price_per_1k is not None and info.completion_price_per_1k is not None:
            return Price(info.prompt_price_per_1k, info.completion_price_per_1k)
        return self._default_price
