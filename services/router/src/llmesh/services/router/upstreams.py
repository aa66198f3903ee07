"""gRPC adapters to tenancy, classifier, cache and inference: they call the upstream services with
the messages convert.py builds, and turn upstream status codes into llmesh.kit.errors (so the
router answers with a clear status of its own)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc
from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.classifier.v1 import classifier_pb2_grpc
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit import errors
from llmesh.kit.client import retry_after_s
from llmesh.kit.tracing import annotate, traced
from llmesh.kit.vocabulary import Principal, Sensitivity
from llmesh.services.router import convert
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


class CacheClient:
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = cache_pb2_grpc.CacheServiceStub(channel)

    async def lookup(
        self, key: CacheKey, *, business_unit: str, timeout_s: float, exact_only: bool = False
    ) -> CachedAnswer | None:
        # Sent before the classifier answered: no tier or sensitivity yet, so the router applies
        # the tier rule and the restricted-data policy to whatever comes back.
        request = convert.lookup_request_to_proto(key, business_unit=business_unit, exact_only=exact_only)
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


class InferenceClient:
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = inference_pb2_grpc.InferenceServiceStub(channel)

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
