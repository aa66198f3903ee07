"""The edge's gRPC calls: Generate at the router over one pool of channels, and what `/v1/models`
needs (tenancy authenticates the key, inference lists its catalog). A failed call becomes the
OpenAI-shaped error of its status, with its google.rpc details (BadRequest → param, RetryInfo →
Retry-After)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from google.rpc import error_details_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit.client import open_channel, retry_after_s, retrying_unserved, rich_status
from llmesh.kit.identity import Identity
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from llmesh.services.edge.convert import router_param
from llmesh.services.edge.core import EdgeError, error_for_status
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc


def edge_error(exc: grpc.RpcError, *, service: str = "router") -> EdgeError:
    """The OpenAI-shaped error of a failed gRPC call."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    message = (exc.details() if callable(getattr(exc, "details", None)) else None) or f"{service} call failed"
    param = None
    status = rich_status(exc)
    for detail in status.details if status is not None else ():
        violations = error_details_pb2.BadRequest()
        if detail.Unpack(violations) and violations.field_violations:
            param = router_param(violations.field_violations[0].field)
    if code == grpc.StatusCode.UNAVAILABLE and service != "router" and "unavailable" not in message:
        message = f"{service} is unavailable: {message}"
    return error_for_status(code.name, message, param=param, retry_after_s=retry_after_s(exc))


class ChannelPool:
    """A few channels (HTTP/2 connections) to one service, used in turn."""

    def __init__(self, target: str, size: int, *, default_timeout_s: float, identity: Identity | None = None):
        self.channels = [
            open_channel(target, default_timeout_s=default_timeout_s, identity=identity) for _ in range(size)
        ]
        self._next = itertools.cycle(self.channels)

    def next(self) -> grpc.aio.Channel:
        return next(self._next)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class RouterClient:
    def __init__(self, pool: ChannelPool):
        self._stubs = itertools.cycle([router_pb2_grpc.RouterServiceStub(c) for c in pool.channels])

    def generate(
        self, request: router_pb2.GenerateRequest, *, authorization: str, request_id: str, timeout_s: float
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        """The router's stream; a try that failed UNAVAILABLE before any message (a router replica
        gone) is made again under the same request id (llmesh.kit.client.retrying_unserved)."""
        metadata = (("authorization", authorization), ("x-request-id", request_id))

        def start(timeout: float | None) -> grpc.aio.UnaryStreamCall:
            return next(self._stubs).Generate(request, metadata=metadata, timeout=timeout)

        return retrying_unserved(start, timeout_s=timeout_s)


class CatalogClient:
    """What `GET /v1/models` asks: is the key valid (tenancy), which models are there (inference)."""

    def __init__(self, tenancy: grpc.aio.Channel, inference: grpc.aio.Channel, timeout_s: float):
        self._tenancy = tenancy_pb2_grpc.TenancyServiceStub(tenancy)
        self._inference = inference_pb2_grpc.InferenceServiceStub(inference)
        self._timeout_s = timeout_s

    async def authenticate(self, api_key: str, request_id: str) -> None:
        try:
            await self._tenancy.Authenticate(
                tenancy_pb2.AuthenticateRequest(api_key=api_key),
                timeout=self._timeout_s,
                metadata=(("x-request-id", request_id),),
            )
        except grpc.RpcError as exc:
            raise edge_error(exc, service="tenancy") from None

    async def models(self) -> list[inference_pb2.ModelInfo]:
        try:
            response = await self._inference.ListModels(inference_pb2.ListModelsRequest(), timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise edge_error(exc, service="inference") from None
        return list(response.models)


async def events(stream: AsyncIterator[router_pb2.GenerateResponse]) -> AsyncIterator[router_pb2.GenerateResponse]:
    """The router's stream (RouterClient.generate); a failure raises its EdgeError. Closing this
    closes the stream, which cancels the router's call."""
    try:
        async with aclosing(stream):
            async for response in stream:
                yield response
    except grpc.RpcError as exc:
        raise edge_error(exc) from None
