"""grpc.aio server bootstrap shared by every service.

Lifecycle: bind and start (health NOT_SERVING) → app.start() readies dependencies → SERVING →
on SIGTERM/SIGINT: NOT_SERVING, stop accepting, in-flight calls get `grace_s`, the app's background
tasks are cancelled and awaited, app.stop(), exit 0.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from llmesh.kit import identity as ident
from llmesh.kit import tls
from llmesh.kit.config import ConfigError, ServerSettings, load_settings
from llmesh.kit.interceptors import ServerInterceptor
from llmesh.kit.logging import configure_logging, get_logger
from llmesh.kit.metrics import ASYNCIO_TASKS, start_metrics_server
from llmesh.kit.tasks import BackgroundTasks
from llmesh.kit.tracing import configure as configure_tracing
from llmesh.kit.tracing import flush as flush_traces

log = get_logger("llmesh.server")

# How long an app's stop() may take before the host gives up on it and logs what still waits.
APP_STOP_TIMEOUT_S = 30.0
# How often the host sets llmesh_asyncio_tasks (the loop's live task count).
ASYNCIO_TASKS_INTERVAL_S = 5.0

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class ServiceApp(abc.ABC):
    """One service's domain side as the bootstrap sees it."""

    #: short name used in logs and metrics, e.g. "tenancy"
    name: str
    #: seconds the tasks started with `spawn` get to finish on stop before they are cancelled
    task_grace_s: float = 0.0
    #: who may call which RPC ("package.Service/Method" → service names, or identity.PUBLIC);
    #: an RPC not listed is the operator's only (docs/adr/0023)
    callers: ClassVar[Mapping[str, frozenset[str]]] = {}
    #: this service's identity, set by ServiceHost before `start()`: channels it opens carry it
    identity: ident.Identity | None = None

    @property
    def tasks(self) -> BackgroundTasks:
        """The app's background tasks, cancelled and awaited by ServiceHost before `stop()`."""
        tasks = self.__dict__.get("_background_tasks")
        if tasks is None:
            tasks = self.__dict__["_background_tasks"] = BackgroundTasks(self.name)
        return tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task:
        """Runs `coro` in the background until it ends or the service stops."""
        return self.tasks.spawn(coro, name=name)

    def every(
        self, interval_s: float, job: Callable[[], Awaitable[object] | object], *, name: str | None = None
    ) -> asyncio.Task:
        """Calls `job` (sync or async) every `interval_s` seconds until the service stops; a run
        that raises is logged and the next one happens as planned."""
        return self.tasks.every(interval_s, job, name=name)

    @abc.abstractmethod
    def register(self, server: grpc.aio.Server) -> Iterable[str]:
        """Adds the servicers to `server`; returns their full service names."""

    async def start(self) -> None:
        """Connects dependencies. The service reports SERVING once this returns."""

    async def stop(self) -> None:
        """Releases dependencies after the server stopped."""

    def ready_info(self) -> dict[str, Any]:
        """More for the ready file once SERVING, e.g. a port of another protocol ({"http_port": 8080})."""
        return {}


class ServiceHost:
    """Runs one ServiceApp on a grpc.aio server, with health, reflection and metrics."""

    def __init__(self, app: ServiceApp, settings: ServerSettings, *, serve_metrics: bool = True):
        self.app = app
        self.settings = settings
        self._serve_metrics = serve_metrics
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._metrics_server = None
        self._service_names: list[str] = []
        self._stopped = False
        # The host's own periodic jobs (the task-count gauge), apart from the app's.
        self._housekeeping = BackgroundTasks(f"{app.name}-host")
        self.port: int = 0
        self.metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        configure_tracing(self.app.name)
        self.app.identity = identity = resolve_identity(self.app.name, self.settings)
        gate = ident.Gate(identity, self.app.callers) if identity is not None else None
        server = grpc.aio.server(
            interceptors=[ServerInterceptor(self.app.name, gate)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._server = server
        self._service_names = list(self.app.register(server))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = f"{self.settings.host}:{self.settings.port}"
        credentials = tls.server_credentials(self.settings, self.app.name)  # None: plaintext (docs/adr/0024)
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"could not bind {self.settings.host}:{self.settings.port}")
        await self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        if self._serve_metrics:
            self._metrics_server, self.metrics_port = start_metrics_server(
                self.settings.host, self.settings.metrics_port
            )
        log.info("starting", address=self.address, metrics_port=self.metrics_port, event_loop=event_loop_name())
        await self.app.start()
        self._sample_tasks()
        self._housekeeping.every(ASYNCIO_TASKS_INTERVAL_S, self._sample_tasks, name="asyncio_tasks_gauge")
        await self._set_status(health_pb2.HealthCheckResponse.SERVING)
        self._write_ready_file()
        log.info("serving", address=self.address, services=self._service_names)

    def _sample_tasks(self) -> None:
        ASYNCIO_TASKS.labels(self.app.name).set(len(asyncio.all_tasks()))

    async def _set_status(self, status) -> None:
        for name in ("", *self._service_names):
            await self._health.set(name, status)

    def _write_ready_file(self) -> None:
        path = self.settings.ready_file
        if not path:
            return
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(
                {
                    **self.app.ready_info(),
                    "port": self.port,
                    "metrics_port": self.metrics_port,
                    "pid": os.getpid(),
                    "event_loop": event_loop_name(),
                },
                f,
            )
        os.replace(tmp, path)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drains and stops the server, then the app; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_s if grace_s is None else grace_s
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        await self._housekeeping.stop()
        try:
            await self.app.tasks.stop(self.app.task_grace_s)
            try:
                # A dependency that never answers must not keep the process from exiting.
                await asyncio.wait_for(self.app.stop(), APP_STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("app_stop_timed_out", timeout_s=APP_STOP_TIMEOUT_S, pending=_pending_tasks())
        finally:
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
            flush_traces()
            log.info("stopped")


def _pending_tasks() -> list[str]:
    """Where each other task of the loop waits (for the log line of a stop that hung)."""
    current = asyncio.current_task()
    found = []
    for task in asyncio.all_tasks():
        if task is current:
            continue
        frames = task.get_stack(limit=1)
        where = f"{frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames else "?"
        found.append(f"{task.get_name()} at {where}")
    return found[:50]


def resolve_identity(service: str, settings: ServerSettings) -> ident.Identity | None:
    """The service's identity from its credential and trust files; else the process default (the
    identity tests install for the services they host in-process); else, only where
    LLMESH_IDENTITY_INSECURE_ANONYMOUS says so, none (no checks). Anything else stops the start."""
    if settings.identity_credential_file or settings.identity_trust_file:
        if not (settings.identity_credential_file and settings.identity_trust_file):
            raise ConfigError("LLMESH_IDENTITY_CREDENTIAL_FILE and LLMESH_IDENTITY_TRUST_FILE go together")
        try:
            return ident.Identity.from_files(service, settings.identity_credential_file, settings.identity_trust_file)
        except (ValueError, ident.Unauthenticated) as exc:
            raise ConfigError(f"service identity: {exc}") from None
    if ident.default() is not None:
        return ident.default()
    if settings.identity_insecure_anonymous:
        log.warning("identity_checks_off", reason="LLMESH_IDENTITY_INSECURE_ANONYMOUS is set")
        return None
    raise ConfigError(
        "service identity: set LLMESH_IDENTITY_CREDENTIAL_FILE and LLMESH_IDENTITY_TRUST_FILE "
        "(`llmesh up` writes them under $LLMESH_HOME/identity), or LLMESH_IDENTITY_INSECURE_ANONYMOUS=true "
        "for a development mesh without identity checks"
    )


S = TypeVar("S", bound=ServerSettings)


async def _serve(app: ServiceApp, settings: ServerSettings) -> int:
    host = ServiceHost(app, settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    starting = asyncio.create_task(host.start())
    stopping = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        log.error("start_failed", error=repr(starting.exception()))
        stopping.cancel()
        await host.stop(0)
        return 1
    await stopping
    log.info("draining", grace_s=settings.grace_s)
    if not starting.done():
        starting.cancel()
    await host.stop()
    return 0


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop LLMESH_EVENT_LOOP names: uvloop's when it is installed (grpc.aio runs on it,
    with less CPU per call than on asyncio's own), else None (asyncio's default loop)."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop_missing", note="LLMESH_EVENT_LOOP=uvloop but uvloop is not installed: asyncio's loop runs")
        return None
    return uvloop.new_event_loop


def event_loop_name() -> str:
    """ "uvloop" or "asyncio": the running loop's kind (for logs and the ready file)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def run_service(make_app: Callable[[S], ServiceApp], settings_cls: type[S]) -> None:
    """Entry point of a service process: load config, log, serve until SIGTERM, exit."""
    try:
        settings = load_settings(settings_cls)
        # Apps validate what settings cannot check alone (e.g. a file they name) as they are built.
        app = make_app(settings)
        resolve_identity(app.name, settings)  # a missing or bad identity stops here, exit code 2
    except ConfigError as exc:
        print(f"llmesh: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(app.name, settings.log_level)
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        code = runner.run(_serve(app, settings))
    sys.exit(code)
