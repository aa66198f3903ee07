"""gRPC adapters to tenancy, classifier, cache and inference: proto ↔ router domain, and upstream
status codes → llmesh.kit.errors (so the router answers with a clear status of its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit import errors
from llmesh.kit.chat import messages_to_proto, sampling_to_proto
from llmesh.kit.client import retry_after_s
from llmesh.kit.vocabulary import FinishReason, Sensitivity
from llmesh.services.router.domain import (
    AnswerToStore,
    CachedAnswer,
    CacheKey,
    Classification,
    Completion,
    Delta,
    GenerateCommand,
    ModelInfo,
    Principal,
    Usage,
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
        p = response.principal
        if not p.tenant_id:
            raise errors.Unavailable("tenancy answered without a principal")
        clearance = Sensitivity.from_proto(p.clearance, unknown=Sensitivity.UNSPECIFIED)
        return Principal(p.tenant_id, p.tenant_name, p.business_unit, clearance, p.key_id)


class ClassifierClient:
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = classifier_pb2_grpc.ClassifierServiceStub(channel)

    async def classify(
        self, command: GenerateCommand, *, tenant_id: str, request_id: str, timeout_s: float
    ) -> Classification:
        request = classifier_pb2.ClassifyRequest(
            messages=messages_to_proto(command.messages),
            tenant_id=tenant_id,
            use_case=command.use_case,
            request_id=request_id,
        )
        try:
            response = await self._stub.Classify(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("classifier", exc) from None
        sensitivity = Sensitivity.from_proto(response.sensitivity, unknown=Sensitivity.RESTRICTED)
        if sensitivity is Sensitivity.UNSPECIFIED:
            # An unlabeled answer is treated as the most sensitive.
            sensitivity = Sensitivity.RESTRICTED
        return Classification(int(response.tier), sensitivity, response.confidence)


def cache_key_to_proto(key: CacheKey) -> cache_pb2.CacheKey:
    return cache_pb2.CacheKey(
        tenant_id=key.tenant_id,
        use_case=key.use_case,
        messages=messages_to_proto(key.messages),
        model=key.pinned_model,
        sampling=sampling_to_proto(key.sampling),
        max_tokens=key.max_tokens,
    )


def _usage(usage: common_pb2.Usage) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens)


class CacheClient:
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = cache_pb2_grpc.CacheServiceStub(channel)

    async def lookup(self, key: CacheKey, *, business_unit: str, timeout_s: float) -> CachedAnswer | None:
        # Sent before the classifier answered: no tier or sensitivity yet, so the router applies
        # the tier rule and the restricted-data policy to whatever comes back.
        request = cache_pb2.LookupRequest(key=cache_key_to_proto(key), business_unit=business_unit)
        try:
            response = await self._stub.Lookup(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("cache", exc) from None
        if response.outcome not in (cache_pb2.LOOKUP_OUTCOME_EXACT_HIT, cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT):
            return None
        answer = response.answer
        return CachedAnswer(
            content=answer.content,
            model=answer.model,
            backend=answer.backend,
            tier=int(answer.tier),
            usage=_usage(answer.usage),
            cost_usd=answer.cost_usd,
            semantic=response.outcome == cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT,
        )

    async def store(
        self, key: CacheKey, answer: AnswerToStore, *, business_unit: str, sensitivity: Sensitivity, timeout_s: float
    ) -> str | None:
        proto_key = cache_key_to_proto(key)
        proto_key.sensitivity = sensitivity.to_proto()
        request = cache_pb2.StoreRequest(
            key=proto_key,
            business_unit=business_unit,
            content=answer.content,
            model=answer.model,
            backend=answer.backend,
            tier=answer.tier,
            usage=common_pb2.Usage(
                prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens
            ),
            cost_usd=answer.cost_usd,
        )
        try:
            response = await self._stub.Store(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("cache", exc) from None
        if response.stored:
            return None
        return response.reason or "the cache declined the answer"


class InferenceClient:
    def __init__(self, channel: grpc.aio.Channel):
        self._stub = inference_pb2_grpc.InferenceServiceStub(channel)

    async def list_models(self, *, timeout_s: float) -> list[ModelInfo]:
        try:
            response = await self._stub.ListModels(inference_pb2.ListModelsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("inference", exc) from None
        return [ModelInfo(m.name, m.backend) for m in response.models]

    async def generate(
        self, model: str, command: GenerateCommand, *, request_id: str, timeout_s: float
    ) -> AsyncIterator[Delta | Completion]:
        request = inference_pb2.GenerateRequest(
            model=model,
            messages=messages_to_proto(command.messages),
            max_tokens=command.max_tokens,
            sampling=sampling_to_proto(command.sampling),
            request_id=request_id,
        )
        call = self._stub.Generate(request, timeout=timeout_s)
        try:
            async for response in call:
                if response.HasField("completion"):
                    c = response.completion
                    yield Completion(
                        usage=_usage(c.usage),
                        finish_reason=FinishReason.from_proto(c.finish_reason),
                        model=c.model,
                        backend=c.backend,
                    )
                else:
                    yield Delta(response.delta)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("inference", exc) from None
        finally:
            # Reached early when the client went away (cancel, deadline) or the router stopped
            # reading: free the model's slot at once. A no-op once the call has finished.
            call.cancel()
