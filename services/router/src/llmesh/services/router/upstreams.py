"""gRPC adapters to tenancy, classifier, cache and inference: they call the upstream services with
the messages convert.py builds, and turn upstream status codes into llmesh.kit.errors (so the
router answers with a clear status of its own)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

import grpc
from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.classifier.v1 import classifier_pb2_grpc
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit import errors
from llmesh.kit.client import retry_after_s
from llmesh.kit.tracing import annotate, traced
from llmesh.kit.vocabulary import Principal, Sensitivity
from llmesh.services.router import convert, metrics
from llmesh.services.router.domain import (
    AnswerToStore,
    CachedAnswer,
    CacheKey,
    Classification,
    Completion,
    Delta,
    GenerateCommand,
    HotEntries,
    ModelInfo,
)
from llmesh.services.router.exact_l1 import ExactL1, HitReports, L1Key
from llmesh.services.router.memo import ClassificationMemo, LookupOutcomes, MemoKey, content_digest
from llmesh.services.router.ports import Cache, Classifier
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc


def upstream_error(service: str, exc: grpc.aio.AioRpcError) -> errors.LlmeshError:
    """The router's own error for an upstream failure, naming the service that failed."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return errors.Unauthenticated(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument(f"{service} rejected the request: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDenied(f"{service}: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.ResourceExhausted(f"{service} is at capacity: {details}", retry_after_s=retry_after_s(exc))
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(f"{service} did not answer in time")
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.Unavailable(f"{service} is unavailable: {details}", retry_after_s=retry_after_s(exc))
    return errors.Unavailable(f"{service} failed ({code.name}): {details}")


class TenancyClient:
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = tenancy_pb2_grpc.TenancyServiceStub(channel)

    async def authenticate(self, api_key: str, *, timeout_s: float) -> Principal:
        try:
            response = await self._stub.Authenticate(
                tenancy_pb2.AuthenticateRequest(api_key=api_key), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("tenancy", exc) from None
        return _principal_with_token(response)

    async def renew(self, key_id: str, *, timeout_s: float) -> Principal:
        """The principal of a key authenticated before, with a fresh tenant token."""
        try:
            response = await self._stub.RenewTenantToken(
                tenancy_pb2.RenewTenantTokenRequest(key_id=key_id), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("tenancy", exc) from None
        return _principal_with_token(response)


def _principal_with_token(
    response: tenancy_pb2.AuthenticateResponse | tenancy_pb2.RenewTenantTokenResponse,
) -> Principal:
    if not response.principal.tenant_id:
        raise errors.Unavailable("tenancy answered without a principal")
    principal = Principal.from_proto(response.principal)
    if not response.tenant_token:
        return principal
    return dataclasses.replace(
        principal,
        tenant_token=response.tenant_token,
        tenant_token_expires_at=response.tenant_token_expires_at.ToSeconds(),
    )


class ClassifierClient:
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = classifier_pb2_grpc.ClassifierServiceStub(channel)

    async def classify(
        self, command: GenerateCommand, *, tenant_id: str, request_id: str, timeout_s: float
    ) -> Classification:
        request = convert.classify_request_to_proto(command, tenant_id=tenant_id, request_id=request_id)
        try:
            response = await self._stub.Classify(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("classifier", exc) from None
        return convert.classification_from_proto(response)


class MemoClassifier:
    """The classifier behind the router's memo of classifications (memo.py, docs/adr/0028). A
    request that looks the cache up gets the memoised classification of its content when its own
    exact lookup (running beside, reported through `outcomes`) hits an answer it may be served;
    every other request is classified by the classifier, and the answer is kept when the lookup
    beside it hit (waiting for that lookup costs nothing: the pipeline waits for it anyway).

    `policy_revision()` is the routing policy's KV revision (the classifier's policy lives in the
    same documents); `allowed(tenant, use_case)` says no when the classification of a request may
    depend on its request id (a classifier rollout, a policy experiment)."""

    def __init__(
        self,
        classifier: Classifier,
        memo: ClassificationMemo,
        outcomes: LookupOutcomes,
        *,
        policy_revision: Callable[[], int],
        allowed: Callable[[str, str], bool],
    ):
        self._classifier = classifier
        self._memo = memo
        self._outcomes = outcomes
        self._policy_revision = policy_revision
        self._allowed = allowed

    async def classify(
        self, command: GenerateCommand, *, tenant_id: str, request_id: str, timeout_s: float
    ) -> Classification:
        memo = self._memo
        if not (
            memo.enabled
            and command.use_cache
            and not command.refresh_cache
            and tenant_id
            and self._allowed(tenant_id, command.use_case)
        ):
            metrics.MEMO_OFF.inc()
            return await self._ask(command, tenant_id, request_id, timeout_s)
        started = time.monotonic()
        digest = content_digest(tenant_id, command)
        key = MemoKey(tenant_id, command.use_case, self._policy_revision(), digest)
        outcome = self._outcomes.expect(digest)
        try:
            known = memo.get(key)
            if known is not None:
                if _servable(await _hit_tier(outcome, timeout_s), known):
                    metrics.MEMO_HIT.inc()
                    return known
                metrics.MEMO_STALE.inc()
                memo.drop(key)
            else:
                metrics.MEMO_MISS.inc()
            result = await self._ask(command, tenant_id, request_id, timeout_s - (time.monotonic() - started))
            if key.policy_revision == self._policy_revision() and _servable(
                await _hit_tier(outcome, timeout_s - (time.monotonic() - started)), result
            ):
                memo.put(key, result)
            return result
        finally:
            self._outcomes.forget(digest, outcome)

    async def _ask(self, command: GenerateCommand, tenant_id: str, request_id: str, timeout_s: float):
        result = await self._classifier.classify(
            command, tenant_id=tenant_id, request_id=request_id, timeout_s=max(timeout_s, 0.001)
        )
        self._memo.saw_version(result.model_version)
        return result


async def _hit_tier(outcome: asyncio.Future[int | None], timeout_s: float) -> int | None:
    """The tier of the exact hit the lookup found (None: no exact hit, or no answer in time)."""
    if not outcome.done():
        # The lookup beside runs first: an answer from the router's L1 (docs/adr/0033) is in by
        # then, without the timeout and shield below (about 6 µs a hit).
        await asyncio.sleep(0)
    if not outcome.done():
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await asyncio.shield(outcome)  # a timeout leaves the outcome for a second wait
        except TimeoutError:
            return None
    return outcome.result()


def _servable(hit_tier: int | None, classification: Classification) -> bool:
    """Whether the pipeline serves an exact hit of `hit_tier` to a request so classified: the tier
    rule, and restricted requests (which a tenant's policy may keep out of the cache) left to the
    classifier every time."""
    return (
        hit_tier is not None and hit_tier >= classification.tier and classification.sensitivity < Sensitivity.RESTRICTED
    )


class OutcomeReportingCache:
    """The cache, telling `outcomes` the tier of each exact hit (None for anything else) for the
    MemoClassifier beside it."""

    def __init__(self, cache: Cache, outcomes: LookupOutcomes):
        self._cache = cache
        self._outcomes = outcomes

    async def lookup(
        self,
        key: CacheKey,
        *,
        business_unit: str,
        timeout_s: float,
        exact_only: bool = False,
        semantic_only: bool = False,
    ) -> CachedAnswer | None:
        tier = None
        try:
            answer = await self._cache.lookup(
                key,
                business_unit=business_unit,
                timeout_s=timeout_s,
                exact_only=exact_only,
                semantic_only=semantic_only,
            )
            if answer is not None and not answer.semantic:
                tier = answer.tier
            return answer
        finally:
            if self._outcomes:  # someone waits: this request's classify call, or a concurrent one's
                self._outcomes.report(content_digest(key.tenant_id, key), tier)

    def store(
        self, key: CacheKey, answer: AnswerToStore, *, business_unit: str, sensitivity: Sensitivity, timeout_s: float
    ):
        return self._cache.store(key, answer, business_unit=business_unit, sensitivity=sensitivity, timeout_s=timeout_s)

    def hot_entries(
        self, tenant_id: str, use_case: str, min_hits: int, expiring_within_s: float, limit: int, *, timeout_s: float
    ):
        return self._cache.hot_entries(tenant_id, use_case, min_hits, expiring_within_s, limit, timeout_s=timeout_s)


class L1Cache:
    """The cache behind the router's L1 of exact answers (exact_l1.py, docs/adr/0033): a lookup of
    content whose exact hit is kept is answered here, and the hit is counted in `reports` for the
    cache's analytics (`report_due` is called when a batch is full); any other lookup goes to the
    cache, and an exact hit it answers is kept. `policy_revision()` is the policy KV revision."""

    def __init__(
        self,
        cache: Cache,
        l1: ExactL1,
        reports: HitReports,
        *,
        policy_revision: Callable[[], int],
        report_due: Callable[[], None],
        batch_hits: int = 256,
        clock: Callable[[], float] = time.time,
    ):
        self._cache = cache
        self._l1 = l1
        self._reports = reports
        self._policy_revision = policy_revision
        self._report_due = report_due
        self._batch_hits = batch_hits
        self._clock = clock

    async def lookup(
        self,
        key: CacheKey,
        *,
        business_unit: str,
        timeout_s: float,
        exact_only: bool = False,
        semantic_only: bool = False,
    ) -> CachedAnswer | None:
        if semantic_only:  # the L1 keeps exact answers, and the exact lookup just missed
            return await self._cache.lookup(key, business_unit=business_unit, timeout_s=timeout_s, semantic_only=True)
        l1 = self._l1
        if not (l1.live and l1.enabled):
            metrics.L1_OFF.inc()
            return await self._cache.lookup(
                key, business_unit=business_unit, timeout_s=timeout_s, exact_only=exact_only
            )
        l1_key = L1Key(key.tenant_id, key.use_case, self._policy_revision(), content_digest(key.tenant_id, key))
        kept, stale = l1.get(l1_key)
        if kept is not None:
            metrics.L1_HIT.inc()
            if (
                self._reports.record(key.tenant_id, business_unit, key.use_case, kept, self._clock())
                >= self._batch_hits
            ):
                self._report_due()
            return kept
        (metrics.L1_STALE if stale else metrics.L1_MISS).inc()
        token = l1.token()
        answer = await self._cache.lookup(key, business_unit=business_unit, timeout_s=timeout_s, exact_only=exact_only)
        if answer is not None and not answer.semantic:
            l1.put(l1_key, answer, token)
        return answer

    def store(
        self, key: CacheKey, answer: AnswerToStore, *, business_unit: str, sensitivity: Sensitivity, timeout_s: float
    ):
        # A new answer for the content (a cache refresh): this router's copy of the old one goes.
        self._l1.drop(L1Key(key.tenant_id, key.use_case, self._policy_revision(), content_digest(key.tenant_id, key)))
        return self._cache.store(key, answer, business_unit=business_unit, sensitivity=sensitivity, timeout_s=timeout_s)

    def hot_entries(
        self, tenant_id: str, use_case: str, min_hits: int, expiring_within_s: float, limit: int, *, timeout_s: float
    ):
        return self._cache.hot_entries(tenant_id, use_case, min_hits, expiring_within_s, limit, timeout_s=timeout_s)


class CacheClient:
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = cache_pb2_grpc.CacheServiceStub(channel)

    async def lookup(
        self,
        key: CacheKey,
        *,
        business_unit: str,
        timeout_s: float,
        exact_only: bool = False,
        semantic_only: bool = False,
    ) -> CachedAnswer | None:
        # Sent before the classifier answered: no tier or sensitivity yet, so the router applies
        # the tier rule and the restricted-data policy to whatever comes back.
        request = convert.lookup_request_to_proto(
            key, business_unit=business_unit, exact_only=exact_only, semantic_only=semantic_only
        )
        try:
            response = await self._stub.Lookup(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("cache", exc) from None
        return convert.cached_answer_from_proto(response)

    async def store(
        self, key: CacheKey, answer: AnswerToStore, *, business_unit: str, sensitivity: Sensitivity, timeout_s: float
    ) -> str | None:
        request = convert.store_request_to_proto(key, answer, business_unit=business_unit, sensitivity=sensitivity)
        try:
            response = await self._stub.Store(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("cache", exc) from None
        if response.stored:
            return None
        return response.reason or "the cache declined the answer"

    async def hot_entries(
        self, tenant_id: str, use_case: str, min_hits: int, expiring_within_s: float, limit: int, *, timeout_s: float
    ) -> HotEntries:
        request = cache_pb2.ListHotEntriesRequest(
            tenant_id=tenant_id,
            use_case=use_case,
            min_hits=min_hits,
            expiring_within_seconds=expiring_within_s,
            limit=limit,
        )
        try:
            response = await self._stub.ListHotEntries(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("cache", exc) from None
        return convert.hot_entries_from_proto(response)


def lists_several_addresses(target: str) -> bool:
    """Whether a gRPC target names more than one address (`ipv4:a:1,a:2`, `ipv6:[::1]:1,[::1]:2`)."""
    scheme, sep, rest = target.partition(":")
    return bool(sep) and scheme in ("ipv4", "ipv6") and "," in rest


class InferenceClient:
    def __init__(self, channel: grpc.aio.Channel, *, replicated: bool = False):
        self._stub = inference_pb2_grpc.InferenceServiceStub(channel)
        #: the channel's target has several inference replicas behind it: a Generate that failed
        #: before its first token may be tried once more on the same model (docs/adr/0034)
        self.replicated = replicated

    async def list_models(self, *, timeout_s: float) -> list[ModelInfo]:
        try:
            response = await self._stub.ListModels(inference_pb2.ListModelsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("inference", exc) from None
        return [convert.model_info_from_proto(m) for m in response.models]

    @traced("router.attempt")
    async def generate(
        self, model: str, command: GenerateCommand, *, request_id: str, timeout_s: float
    ) -> AsyncIterator[Delta | Completion]:
        annotate(model=model)
        request = convert.generate_request_to_proto(model, command, request_id=request_id)
        call = self._stub.Generate(request, timeout=timeout_s)
        try:
            async for response in call:
                event = convert.generate_event_from_proto(response)
                if isinstance(event, Completion):
                    annotate(
                        backend=event.backend,
                        finish_reason=event.finish_reason.value,
                        prompt_tokens=event.usage.prompt_tokens,
                        completion_tokens=event.usage.completion_tokens,
                    )
                yield event
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("inference", exc) from None
        finally:
            # Reached early when the client went away (cancel, deadline) or the router stopped
            # reading: free the model's slot at once. A no-op once the call has finished.
            call.cancel()
