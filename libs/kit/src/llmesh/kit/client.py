"""Client channels to other llmesh services: every call gets a deadline (a default when the caller
sets none) and carries the current request_id and trace context. And the reading of a failed call's google.rpc error
details (grpcio-status), the counterpart of what the server interceptor sends."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from llmesh.kit import identity as ident
from llmesh.kit import tls, tracing
from llmesh.kit.config import TLSSettings
from llmesh.kit.interceptors import REQUEST_ID_KEY
from llmesh.kit.logging import get_contextvars

DEFAULT_TIMEOUT_S = 5.0
# A router Generate that failed UNAVAILABLE before any response message is tried again under the
# same request id after about these waits (docs/adr/0034): at most two more tries.
UNSERVED_RETRY_BACKOFF_S = (0.1, 0.4)

# RPCs that may run twice without harm (reads, and writes that converge): retried on UNAVAILABLE
# by the channel. Never a Generate (router or inference) here: a stream that sent text cannot be
# replayed; one that sent nothing is tried again by its callers' own rule instead (docs/adr/0034:
# retrying_unserved below, the router's retry on another inference replica). Nor the creations
# (CreateTenant, CreateApiKey), Feedback (it would count twice) or Warm (a client stream).
IDEMPOTENT_METHODS: dict[str, tuple[str, ...]] = {
    "llmesh.tenancy.v1.TenancyService": (
        "Authenticate",
        "RenewTenantToken",
        "IssueAdminToken",
        "GetTenant",
        "ListTenants",
        "RevokeApiKey",
    ),
    "llmesh.classifier.v1.ClassifierService": ("Classify",),
    "llmesh.cache.v1.CacheService": ("Lookup", "Store", "Invalidate", "PinEntry", "DeleteEntry", "Stats"),
    "llmesh.inference.v1.InferenceService": ("ListModels",),
    "grpc.health.v1.Health": ("Check",),
}


def service_config() -> dict:
    """The gRPC service config of every channel (docs/adr/0020): round robin over all the
    addresses the name resolves to (a headless Service's pods), up to 3 attempts on UNAVAILABLE for
    the idempotent RPCs, with retry throttling: once more than half of a channel's 10 tokens are
    spent (each failure costs 1, each success gives 0.1 back), no call is retried."""
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for method in methods],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
            for service, methods in IDEMPOTENT_METHODS.items()
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }


_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(service_config())),
]


def _with_defaults(
    details: grpc.aio.ClientCallDetails, default_timeout_s: float | None, identity: ident.Identity | None = None
) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    # Who calls (docs/adr/0023): the channel's service credential, and the tenant token of the
    # tenant the call is made for, if any (identity.act_for).
    identity = identity or ident.default()
    if identity is not None and ident.SERVICE_METADATA_KEY not in metadata:
        metadata.add(ident.SERVICE_METADATA_KEY, identity.credential)
    tenant_token = ident.acting_for()
    if tenant_token and ident.TENANT_TOKEN_METADATA_KEY not in metadata:
        metadata.add(ident.TENANT_TOKEN_METADATA_KEY, tenant_token)
    if REQUEST_ID_KEY not in metadata:
        request_id = get_contextvars().get("request_id")
        if request_id:
            metadata.add(REQUEST_ID_KEY, request_id)
    # W3C trace context (traceparent, tracestate): the callee's server span continues this trace.
    for key, value in tracing.inject({}).items():
        if key not in metadata:
            metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout if details.timeout is not None else default_timeout_s,  # None: no deadline
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


# grpc.aio files an interceptor under the first of its kinds only (if/elif on the class), so
# each kind has its own class: one deriving from both would never see streaming calls.
class _UnaryDefaults(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, default_timeout_s: float, identity: ident.Identity | None = None):
        self._timeout = default_timeout_s
        self._identity = identity

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(_with_defaults(client_call_details, self._timeout, self._identity), request)


class _StreamDefaults(grpc.aio.UnaryStreamClientInterceptor):
    """Request id, trace context and credentials only: a streaming call sets its own deadline."""

    def __init__(self, identity: ident.Identity | None = None):
        self._identity = identity

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(_with_defaults(client_call_details, None, self._identity), request)


class _StreamStreamDefaults(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, identity: ident.Identity | None = None):
        self._identity = identity

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(_with_defaults(client_call_details, None, self._identity), request_iterator)


def open_channel(
    target: str,
    *,
    default_timeout_s: float = DEFAULT_TIMEOUT_S,
    identity: ident.Identity | None = None,
    tls_settings: TLSSettings | None = None,
) -> grpc.aio.Channel:
    """A channel to a mesh service (loopback or inside the cluster network), with the kit's service
    config: round robin over every address of `target` (a DNS name with several records, or
    `ipv4:host:port,host:port`), retries of idempotent RPCs, keepalive.

    TLS (docs/adr/0024) when `tls_settings`, else the process's LLMESH_TLS_* variables, name a CA
    file: the channel trusts that CA, presents the process's certificate (mutual TLS) and re-opens
    when the files change. Otherwise the channel is plaintext.

    Calls that set no timeout get `default_timeout_s`; streaming calls should set their own.
    Every call carries `identity`'s service credential (the process default where None).
    """
    interceptors = [
        _UnaryDefaults(default_timeout_s, identity),
        _StreamDefaults(identity),
        _StreamStreamDefaults(identity),
    ]
    tls_settings = tls_settings if tls_settings is not None else tls.client_settings()
    if tls_settings is not None and tls_settings.tls_ca_file:
        return tls.open_tls_channel(target, tls_settings, options=_CHANNEL_OPTIONS, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS, interceptors=interceptors)


def rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a failed call carries, if any (and if it agrees with the call's code
    and message: details that do not are not trusted)."""
    try:
        return rpc_status.from_call(error)
    except ValueError:
        return None


def retry_after_s(error: grpc.RpcError) -> float | None:
    """The delay a failed call's google.rpc.RetryInfo suggests, if it carries one."""
    status = rich_status(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def error_reason(error: grpc.RpcError) -> str | None:
    """The google.rpc.ErrorInfo reason of a failed call (e.g. INVALID_ARGUMENT, or a service's
    own such as BUDGET_EXHAUSTED), if it carries one."""
    status = rich_status(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return None


def unserved_retry_delay(
    error: grpc.RpcError, *, received: bool, retries_done: int, deadline: float | None
) -> float | None:
    """How long to wait before trying a router Generate again, or None when it must not be tried again.

    The rule (docs/adr/0034): only UNAVAILABLE, only when not one response message arrived (nothing
    was served, so nothing can be served twice), at most len(UNSERVED_RETRY_BACKOFF_S) more tries,
    and only when the wait ends before `deadline` (time.monotonic()). The caller sends the retry
    with the same x-request-id: the usage ledger is keyed by it, so the request is billed at most
    once whichever try answers."""
    if received or retries_done >= len(UNSERVED_RETRY_BACKOFF_S):
        return None
    if not callable(getattr(error, "code", None)) or error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    delay = UNSERVED_RETRY_BACKOFF_S[retries_done] * random.uniform(0.75, 1.25)
    if deadline is not None and time.monotonic() + delay >= deadline:
        return None
    return delay


async def retrying_unserved(
    start: Callable[[float | None], grpc.aio.UnaryStreamCall],
    *,
    timeout_s: float | None,
    on_retry: Callable[[grpc.RpcError], None] | None = None,
) -> AsyncIterator:
    """The messages of a router Generate, tried again per `unserved_retry_delay`. `start(timeout)`
    starts one try with what is left of the deadline (the same request, metadata and x-request-id
    each time); closing the iterator cancels the try in flight."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    retries = 0
    while True:
        call = start(None if deadline is None else max(0.001, deadline - time.monotonic()))
        received = False
        try:
            async for message in call:
                received = True
                yield message
            return
        except grpc.aio.AioRpcError as exc:
            delay = unserved_retry_delay(exc, received=received, retries_done=retries, deadline=deadline)
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(exc)
        finally:
            call.cancel()  # a no-op once the call ended; frees it when the caller left early
        retries += 1
        await asyncio.sleep(delay)
