"""Which model answers a request, and what it costs.

The routing policy is a JSON document (kit.policy, key "global", overridable per tenant and use
case) such as::

    {"tiers": {"1": "gemma-3-270m", "2": "...", "3": "..."},
     "prices": {"gemma-3-270m": {"prompt_per_1k": 0.0001, "completion_per_1k": 0.0004}},
     "routing": {"fallbacks": {"1": ["tier:1@region-b", "tier:2"]}},
     "data_access": {"external": {"max_sensitivity": "internal", "providers": ["openai"]}},
     "overflow": {"enabled": true, "threshold": 0.8, "resume_below": 0.65},
     "escalation": {"threshold": 0.7, "stream_mode": "hold", "hold_tokens": 32},
     "speculation": {"enabled": true, "external": false, "hold_ms": 25, "early": true}}

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

from llmesh.kit.errors import InvalidArgument, PermissionDenied
from llmesh.kit.logging import get_logger
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.router import candidates
from llmesh.services.router.candidates import DEFAULT_FALLBACKS, Candidate, CandidateList, DataAccess
from llmesh.services.router.domain import ModelInfo, Usage
from llmesh.services.router.overflow import OverflowPolicy, parse_overflow
from llmesh.services.router.quality import EscalationPolicy, parse_escalation
from llmesh.services.router.speculation import SpeculationPolicy, parse_speculation

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
    # routing.fallbacks: tier → chain entries ("tier:N", "tier:N@region", "model:NAME")
    fallbacks: dict[int, tuple[str, ...]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_FALLBACKS))
    data_access: DataAccess = DataAccess()
    overflow: OverflowPolicy = OverflowPolicy()
    escalation: EscalationPolicy = EscalationPolicy()
    # dispatch on an exact miss while the semantic lookup runs (speculation.py, ADR 0029)
    speculation: SpeculationPolicy = SpeculationPolicy()


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
    routing = doc.get("routing")
    if routing is not None and not isinstance(routing, dict):
        log.warning("policy_entry_ignored", field="routing", key="")
        routing = None
    return RoutingPolicy(
        tier_models,
        prices,
        cache_restricted,
        fallbacks=candidates.parse_fallbacks((routing or {}).get("fallbacks"), defaults.fallbacks),
        data_access=candidates.parse_data_access(doc.get("data_access"))
        if "data_access" in doc
        else defaults.data_access,
        overflow=parse_overflow(doc.get("overflow"), defaults.overflow),
        escalation=parse_escalation(doc.get("escalation"), defaults.escalation),
        speculation=parse_speculation(doc.get("speculation"), defaults.speculation),
    )


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
    """Builds a request's ordered candidate list (candidates.py) and prices models. Restricted data
    never leaves self-hosted models: the catalog refuses an external model restricted data."""

    def __init__(
        self,
        defaults: RoutingPolicy,
        *,
        default_model: str,
        default_price: Price,
        home_region: str = "",
        demoted: Callable[[ModelInfo], bool] = lambda model: False,
    ):
        self.defaults = defaults
        # models to put last on every list (the breakers' probation after a peer's ejection)
        self._demoted = demoted
        self._default_model = default_model
        self._default_price = default_price
        self.home_region = home_region

    @staticmethod
    def _refusal(model: ModelInfo, sensitivity: Sensitivity, rule: str) -> str:
        if rule == "model_sensitivity":
            return (
                f"the request holds {sensitivity.name.lower()} data; {model.name} ({model.backend}) may receive "
                f"data up to {model.max_sensitivity.name.lower()} only"
            )
        return f"the tenant's rule {rule} does not allow {sensitivity.name.lower()} data on {model.name}"

    def candidates(
        self,
        *,
        tier: int,
        sensitivity: Sensitivity,
        pinned: ModelInfo | None,
        policy: RoutingPolicy,
        available: list[ModelInfo],
        clearance: Sensitivity = Sensitivity.RESTRICTED,
        usable: Callable[[ModelInfo], bool] = lambda model: True,
    ) -> CandidateList:
        """The models to try, in order: a pinned model alone, else the tier's models, its fallback
        chain and the fallbacks of last resort, each allowed the request's data."""
        if pinned is not None:
            rule = candidates.refusal(pinned, sensitivity, clearance, policy.data_access)
            if rule is not None:
                raise PermissionDenied(self._refusal(pinned, sensitivity, rule))
            return CandidateList([Candidate(pinned, "pinned", tier)], {})
        return candidates.build(
            tier=tier,
            sensitivity=sensitivity,
            clearance=clearance,
            tier_map=policy.tier_models,
            fallbacks=policy.fallbacks,
            rules=policy.data_access,
            available=available,
            default_model=self._default_model,
            home_region=self.home_region,
            usable=usable,
            demoted=self._demoted,
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
        """The first candidate (or the reason there is none)."""
        found = self.candidates(tier=tier, sensitivity=sensitivity, pinned=pinned, policy=policy, available=available)
        found.raise_if_empty(tier, sensitivity)
        return found.candidates[0].model

    def price(self, model: str, policy: RoutingPolicy, info: ModelInfo | None = None) -> Price:
        """The policy's (or settings') price, else the catalog's, else the default price."""
        if model in policy.prices:
            return policy.prices[model]
        if info is not None and info.prompt_price_per_1k is not None and info.completion_price_per_1k is not None:
            return Price(info.prompt_price_per_1k, info.completion_price_per_1k)
        return self._default_price
