"""The Generate pipeline: authenticate → (classify ‖ cache lookup) → route → stream → settle."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from typing import Any

from llmesh.kit.auth import bearer_token
from llmesh.kit.errors import DeadlineExceeded, Unauthenticated, Unavailable
from llmesh.kit.logging import bind_contextvars, get_logger
from llmesh.kit.policy import CachedPolicy
from llmesh.kit.vocabulary import FinishReason, Principal, Sensitivity
from llmesh.services.router import metrics
from llmesh.services.router.domain import (
    TIERS,
    AnswerToStore,
    CachedAnswer,
    CacheKey,
    CacheOutcome,
    Classification,
    Completion,
    Delta,
    GenerateCommand,
    Summary,
)
from llmesh.services.router.ports import Cache, Classifier, Inference, Tenancy
from llmesh.services.router.principals import PrincipalCache
from llmesh.services.router.routing import ModelCatalog, Router, RoutingPolicy

log = get_logger("llmesh.router")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    upstream_timeout_s: float
    generate_timeout_s: float
    fallback_tier: int
    hit_chunk_chars: int


def _remaining(limit_s: float, deadline: float | None) -> float:
    """`limit_s`, shortened to what is left of the caller's deadline (monotonic seconds)."""
    if deadline is None:
        return limit_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the request's deadline passed before the router could finish")
    return min(limit_s, left)


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class GeneratePipeline:
    def __init__(
        self,
        *,
        tenancy: Tenancy,
        classifier: Classifier,
        cache: Cache,
        inference: Inference,
        principals: PrincipalCache,
        catalog: ModelCatalog,
        router: Router,
        policies: CachedPolicy[RoutingPolicy],
        config: PipelineConfig,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task],
        regions: Any = None,  # regions12: RegionRouting (multi-region failover, ADR 0012)
    ):
        self._tenancy = tenancy
        self._classifier = classifier
        self._cache = cache
        self._inference = inference
        self._principals = principals
        self._catalog = catalog
        self._router = router
        self._policies = policies
        self._config = config
        # Starts work that outlives the response (cache stores); the app awaits it on shutdown.
        self._spawn = spawn
        self._regions = regions  # regions12

    async def authenticate(self, authorization: str | None, *, deadline: float | None = None) -> Principal:
        api_key = bearer_token(authorization)
        principal = self._principals.get(api_key)
        if principal is not None:
            metrics.PRINCIPAL_CACHE.labels("hit").inc()
            return principal
        metrics.PRINCIPAL_CACHE.labels("miss").inc()
        epoch = self._principals.epoch
        try:
            principal = await self._tenancy.authenticate(
                api_key, timeout_s=_remaining(self._config.upstream_timeout_s, deadline)
            )
        except Unauthenticated as exc:
            raise Unauthenticated(f"API key rejected: {exc.message}") from None
        except DeadlineExceeded:
            raise Unavailable("tenancy did not answer in time; try again") from None
        self._principals.put(api_key, principal, epoch=epoch)
        return principal

    async def run(
        self,
        principal: Principal,
        command: GenerateCommand,
        *,
        request_id: str,
        started: float,
        deadline: float | None = None,
    ) -> AsyncIterator[Delta | Summary]:
        """Streams the answer's deltas, then one Summary. `started` is the request's arrival
        (time.perf_counter) so the reported times cover authentication too."""
        bind_contextvars(tenant=principal.tenant_id)
        pinned = await self._catalog.require(command.pinned_model) if command.pinned_model else None
        key = CacheKey(
            tenant_id=principal.tenant_id,
            use_case=command.use_case,
            messages=command.messages,
            pinned_model=command.pinned_model,
            sampling=command.sampling,
            max_tokens=command.max_tokens,
        )
        classification, cached = await self._classify_and_lookup(command, key, principal, request_id, deadline)
        policy = self._policies.get(principal.tenant_id, command.use_case)
        # The cache's rule, applied here because the lookup ran before the sensitivity was known:
        # restricted requests stay out of the cache unless the tenant's policy lets them in.
        use_cache = command.use_cache and (
            classification.sensitivity < Sensitivity.RESTRICTED or policy.cache_restricted
        )
        if cached is not None and not use_cache:
            log.info("cache_hit_not_served", reason="restricted")
            cached = None

        if cached is not None and cached.tier >= classification.tier:
            async for event in self._serve_cached(cached, principal, request_id, started):
                yield event
            return
        if cached is not None:
            metrics.CACHE_TIER_REJECTED.inc()
            log.info("cache_hit_tier_too_low", cached_tier=cached.tier, needed_tier=classification.tier)

        await self._catalog.refresh_if_stale()
        model = self._router.choose(
            tier=classification.tier,
            sensitivity=classification.sensitivity,
            pinned=pinned,
            policy=policy,
            available=self._catalog.models,
        )
        outcome = CacheOutcome.MISS if use_cache else CacheOutcome.BYPASSED
        bind_contextvars(tier=classification.tier, model=model.name)

        parts: list[str] = []
        first_delta_at: float | None = None
        completion: Completion | None = None
        # regions12: the tier's traffic goes to another region while this one cannot serve it.
        inference, region = (
            self._regions.route(classification.tier, model.name) if self._regions else (self._inference, "")
        )
        stream = inference.generate(
            model.name,
            command,
            request_id=request_id,
            timeout_s=_remaining(self._config.generate_timeout_s, deadline),
        )
        if self._regions:  # regions12: what the region's inference did feeds its health
            stream = self._regions.observed(stream, region, model.name, classification.tier, started)
        async with aclosing(stream):
            async for event in stream:
                if isinstance(event, Completion):
                    completion = event
                    continue
                if not event.text:
                    continue
                if first_delta_at is None:
                    first_delta_at = time.perf_counter()
                    metrics.TIME_TO_FIRST_TOKEN.labels(outcome.value).observe(first_delta_at - started)
                parts.append(event.text)
                yield event
        if completion is None:
            raise Unavailable(f"inference ended the stream for {model.name} without a completion")

        served_model = completion.model or model.name
        cost = self._router.price(served_model, policy, self._catalog.get(served_model)).cost(completion.usage)
        store = None
        if use_cache and completion.finish_reason.complete:
            answer = AnswerToStore(
                content="".join(parts),
                model=served_model,
                backend=completion.backend or model.backend,
                tier=classification.tier,
                usage=completion.usage,
                cost_usd=cost,
            )
            store = self._spawn(self._store(key, answer, principal, classification.sensitivity))
        finished = time.perf_counter()
        metrics.REQUESTS.labels(str(classification.tier), served_model, outcome.value).inc()
        metrics.COST.labels(principal.tenant_id).inc(cost)
        summary = Summary(
            request_id=request_id,
            tier=classification.tier,
            model=served_model,
            backend=completion.backend or model.backend,
            cache_outcome=outcome,
            usage=completion.usage,
            cost_usd=cost,
            time_to_first_token_ms=((first_delta_at or finished) - started) * 1000.0,
            total_time_ms=(finished - started) * 1000.0,
            finish_reason=completion.finish_reason,
            region=region,  # regions12
        )
        log.info(
            "generated",
            cache_outcome=outcome.value,
            finish_reason=completion.finish_reason.value,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            ttft_ms=round(summary.time_to_first_token_ms, 2),
            total_ms=round(summary.total_time_ms, 2),
        )
        yield summary
        if store is not None:
            # The summary is already on its way; the call ends once the answer is stored, so a
            # client that repeats the request after this call completed finds it in the cache.
            # shield: a client leaving now must not cancel the store (the task is tracked).
            await asyncio.shield(store)

    async def _classify_and_lookup(
        self, command: GenerateCommand, key: CacheKey, principal: Principal, request_id: str, deadline: float | None
    ) -> tuple[Classification, CachedAnswer | None]:
        async def classify() -> Classification:
            try:
                result = await self._classifier.classify(
                    command,
                    tenant_id=principal.tenant_id,
                    request_id=request_id,
                    timeout_s=_remaining(self._config.upstream_timeout_s, deadline),
                )
                if result.tier not in TIERS:
                    raise ValueError(f"classifier returned tier {result.tier}")
                return result
            except Exception as exc:
                metrics.DEGRADED.labels("classifier", "classify").inc()
                log.warning("classifier_degraded", error=repr(exc), fallback_tier=self._config.fallback_tier)
                # Unknown sensitivity is treated as the most sensitive: it stays on self-hosted models.
                return Classification(self._config.fallback_tier, Sensitivity.RESTRICTED, 0.0, degraded=True)

        async def lookup() -> CachedAnswer | None:
            try:
                return await self._cache.lookup(
                    key,
                    business_unit=principal.business_unit,
                    timeout_s=_remaining(self._config.upstream_timeout_s, deadline),
                )
            except Exception as exc:
                metrics.DEGRADED.labels("cache", "lookup").inc()
                log.warning("cache_degraded", operation="lookup", error=repr(exc))
                return None

        if not command.use_cache:
            return await classify(), None
        classification, cached = await asyncio.gather(classify(), lookup())
        return classification, cached

    async def _serve_cached(
        self, cached: CachedAnswer, principal: Principal, request_id: str, started: float
    ) -> AsyncIterator[Delta | Summary]:
        outcome = CacheOutcome.SEMANTIC_HIT if cached.semantic else CacheOutcome.EXACT_HIT
        first_delta_at: float | None = None
        for piece in chunks(cached.content, self._config.hit_chunk_chars):
            if first_delta_at is None:
                first_delta_at = time.perf_counter()
                metrics.TIME_TO_FIRST_TOKEN.labels(outcome.value).observe(first_delta_at - started)
            yield Delta(piece)
        finished = time.perf_counter()
        metrics.REQUESTS.labels(str(cached.tier), cached.model, outcome.value).inc()
        log.info("served_from_cache", cache_outcome=outcome.value, tier=cached.tier, model=cached.model)
        yield Summary(
            request_id=request_id,
            tier=cached.tier,
            model=cached.model,
            backend=cached.backend,
            cache_outcome=outcome,
            usage=cached.usage,
            cost_usd=0.0,
            time_to_first_token_ms=((first_delta_at or finished) - started) * 1000.0,
            total_time_ms=(finished - started) * 1000.0,
            # The cache does not record why the original generation stopped.
            finish_reason=FinishReason.UNSPECIFIED,
        )

    async def _store(
        self, key: CacheKey, answer: AnswerToStore, principal: Principal, sensitivity: Sensitivity
    ) -> None:
        try:
            declined = await self._cache.store(
                key,
                answer,
                business_unit=principal.business_unit,
                sensitivity=sensitivity,
                timeout_s=self._config.upstream_timeout_s,
            )
        except Exception as exc:
            metrics.DEGRADED.labels("cache", "store").inc()
            log.warning("cache_degraded", operation="store", error=repr(exc))
            return
        if declined:
            log.info("cache_store_declined", reason=declined)
