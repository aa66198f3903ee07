"""Test support shared by every package's tests (and the benchmarks): polling instead of sleeping,
unique names, free ports, in-process service hosts (started, or starting) and their health."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.kit.server import ServiceApp, ServiceHost


async def assert_eventually(check: Callable, *, timeout_s: float = 10.0, interval_s: float = 0.05, message: str = ""):
    """Polls `check` (sync or async; it asserts or returns truthy) until it passes or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result is None or result:
                return result
            last: BaseException = AssertionError(f"check returned {result!r}")
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s}s: {message} ({last})") from last
        await asyncio.sleep(interval_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for servers that cannot be told to pick port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def hosted(app: ServiceApp, settings, *, serve_metrics: bool = True) -> AsyncIterator[ServiceHost]:
    """Runs `app` on a real grpc.aio server in this event loop for the duration of the block."""
    host = ServiceHost(app, settings, serve_metrics=serve_metrics)
    try:
        await host.start()
    except BaseException:
        # A half-started server must still be stopped, or it outlives the event loop.
        await host.stop(0)
        raise
    try:
        yield host
    finally:
        await host.stop(0.5)


@contextlib.asynccontextmanager
async def starting(
    app: ServiceApp, settings, *, serve_metrics: bool = False
) -> AsyncIterator[tuple[ServiceHost, asyncio.Task]]:
    """A host whose start runs in the background, for tests of what happens before SERVING:
    yields (host, the start task) once the port is bound; stops the host on exit."""
    host = ServiceHost(app, settings, serve_metrics=serve_metrics)
    start = asyncio.create_task(host.start())
    try:
        await assert_eventually(lambda: host.port != 0 or start.done(), message="port bound")
        if start.done():
            start.result()  # a start that failed before binding raises here
        yield host, start
    finally:
        if not start.done():
            start.cancel()
        await asyncio.wait({start})
        if not start.cancelled():
            start.exception()  # its outcome is the test's business; retrieved so none goes unseen
        await host.stop(0)


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    """The standard health service's status of `service` ("" for the whole server)."""
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return response.status


def recording_spans():
    """An in-memory span exporter on this process's tracer provider (installing an SDK provider
    when none is set): `exporter.get_finished_spans()`; call `exporter.shutdown()` when done so
    later tests do not keep filling it."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
