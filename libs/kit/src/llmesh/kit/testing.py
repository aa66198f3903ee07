"""Test support shared by every package's tests (and the benchmarks): polling instead of sleeping,
unique names, free ports, in-process service hosts (started, or starting) and their health, and a
private redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import pathlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

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


_identity_dir: pathlib.Path | None = None


def ensure_identity() -> pathlib.Path | None:
    """Gives this process (a bench script, a test run without the root conftest) an identity of
    its own, the operator's, when it has none: the services it hosts verify with its keys and its
    calls carry the operator credential (docs/adr/0023). Returns the folder of the keys it made
    (for identity_env of the service processes it starts); None if the identity came from elsewhere."""
    import tempfile

    from llmesh.kit import identity

    global _identity_dir
    if identity.default() is not None:
        return _identity_dir
    _identity_dir = directory = identity.provision(tempfile.mkdtemp(prefix="llmesh-identity-"))
    operator = identity.load_provisioned(directory, identity.OPERATOR)
    signer = identity.Signer.from_file(directory / identity.TENANCY_KEY)
    identity.set_default(identity.Identity(operator.service, operator.credential, operator.verifier, signer))
    return directory


def identity_env(directory, service: str) -> dict[str, str]:
    """The environment that makes a service process `service` itself (see identity_settings)."""
    values = identity_settings(directory, service)
    env = {
        "LLMESH_IDENTITY_CREDENTIAL_FILE": values["identity_credential_file"],
        "LLMESH_IDENTITY_TRUST_FILE": values["identity_trust_file"],
    }
    if "token_key_file" in values:
        env["LLMESH_TENANCY_TOKEN_KEY_FILE"] = values["token_key_file"]
    return env


def identity_settings(directory, service: str) -> dict[str, str]:
    """The settings that make a hosted service `service` itself (its credential, the trust file,
    tenancy's token key) from a folder identity.provision made, for load_settings(...)."""
    from llmesh.kit import identity

    values = {
        "identity_credential_file": str(identity.credential_file(directory, service)),
        "identity_trust_file": str(pathlib.Path(directory) / identity.TRUST),
    }
    if service == "tenancy":
        values["token_key_file"] = str(pathlib.Path(directory) / identity.TENANCY_KEY)
    return values


@contextlib.asynccontextmanager
async def hosted(app: ServiceApp, settings, *, serve_metrics: bool = True) -> AsyncIterator[ServiceHost]:
    """Runs `app` on a real grpc.aio server in this event loop for the duration of the block."""
    ensure_identity()
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
    ensure_identity()
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


def _start_redis(binary: str, port: int, workdir: str) -> subprocess.Popen | None:
    """A running redis-server answering PING on `port`, or None when it did not come up."""
    import redis  # only the packages whose tests use Redis depend on it

    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                return process
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    process.kill()
    process.wait()
    return None


class RedisServer:
    """A private redis-server on a free port (no persistence) that a test can stop and start again
    on the same port: an outage of the store, as its clients see it. Raises RuntimeError when the
    binary is missing (`make setup` installs it) or it did not start."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Starts it (on its earlier port after a stop); returns its URL."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RuntimeError("redis-server not found: `make setup` installs it")
        # `--port 0` turns TCP off in redis-server, so pick a free port (again if another process won it).
        for _ in range(1 if self.port else 5):
            port = self.port or free_port()
            process = _start_redis(binary, port, self.workdir)
            if process is not None:
                self.port, self.process = port, process
                return self.url
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; a second call does nothing."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def redis_server(workdir: str) -> Iterator[str]:
    """A private redis-server on a free port (no persistence), stopped on exit: yields its URL.
    Raises RuntimeError when the binary is missing (`make setup` installs it) or it did not start."""
    server = RedisServer(workdir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


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
