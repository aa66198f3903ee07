"""The local mesh supervisor behind `llmesh up`: starts NATS and the services (the edge last), waits until
every one is SERVING, then watches them like a process manager until SIGTERM / Ctrl-C, when it
stops everything in order (router, the other services, NATS last).

A process that exits is started again on the same ports (NATS: the same port and JetStream store)
after an exponential backoff (launcher/backoff.py); the others keep serving meanwhile. A crash loop
is reported with the log's last lines and retried at the backoff's cap for as long as the mesh
runs. The supervisor records every process (pid, state, restarts, last exit code, start time) in
$LLMESH_HOME/mesh.json, which `llmesh status` reads (docs/adr/0009-local-launcher-supervision.md).

A service that fails while the mesh is first coming up still stops `llmesh up` with its log tail:
that is a broken setup to fix, not a crash to ride out.

LLMESH_UP_REPLICAS (`llmesh up --replicas router=2,inference=2`) runs several processes of a
stateless service, each on its own ports, supervised and restarted on its own; the services that
call it get every replica's address in one target, which their channels round-robin over
(docs/adr/0034-replicas-and-safe-retries.md).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from llmesh.kit import identity
from llmesh.kit.defaults import EDGE_HTTP_PORT
from llmesh.launcher import backends, certificates
from llmesh.launcher import state as mesh_state
from llmesh.launcher.backoff import RestartPolicy
from llmesh.launcher.health import SERVING, health_status
from llmesh.launcher.processes import (
    NatsProcess,
    ServiceProcess,
    pid_alive,
    port_is_free,
    process_start_ticks,
    same_process,
    tail,
)

UPSTREAMS = ("tenancy", "classifier", "cache", "inference")
# What clients call: stopped first.
FRONT_DOORS = ("router", "edge")
EDGE_HTTP_PORT_VARIABLE = "LLMESH_EDGE_HTTP_PORT"
# The model servers the supervisor runs (launcher/backends.py); stopped after the services, before NATS.
BACKENDS = ("triton", "openai")
# Services that may run as several processes on one machine: the stateless ones. Tenancy (one SQLite
# file), the cache (its embedded semantic store, its in-process exact layer), the classifier (its
# feedback store and the durable consumer named after the host, ADR 0027) and the edge (one HTTP
# port) run once.
REPLICABLE = ("router", "inference")
REPLICAS_VARIABLE = "LLMESH_UP_REPLICAS"
MAX_REPLICAS = 8
DEFAULT_TIMEOUT_S = 180.0
# Services get LLMESH_GRACE_S (10 s by default) to drain; then a little longer before SIGKILL.
STOP_WAIT_S = 15.0
PROGRESS_EVERY_S = 10.0
# How often the running mesh is checked for processes that exited.
TICK_S = 0.2


class LaunchError(Exception):
    pass


class Interrupted(Exception):
    pass


def replica_counts(raw: str) -> dict[str, int]:
    """How many processes of each service LLMESH_UP_REPLICAS (`router=2,inference=2`) asks for; one
    of every service not named. LaunchError names what is wrong with a bad value."""
    counts = dict.fromkeys(mesh_state.SERVICES, 1)
    named: set[str] = set()
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not name:
            raise LaunchError(f"{REPLICAS_VARIABLE}: {part!r} is not SERVICE=COUNT (e.g. router=2,inference=2)")
        if name not in mesh_state.SERVICES:
            raise LaunchError(f"{REPLICAS_VARIABLE}: unknown service {name!r}; replicable: {', '.join(REPLICABLE)}")
        if name in named:
            raise LaunchError(f"{REPLICAS_VARIABLE}: {name} is named twice")
        named.add(name)
        try:
            count = int(value)
        except ValueError:
            raise LaunchError(f"{REPLICAS_VARIABLE}: {name}={value!r} is not a whole number") from None
        if not 1 <= count <= MAX_REPLICAS:
            raise LaunchError(f"{REPLICAS_VARIABLE}: {name}={count} is out of range (1 to {MAX_REPLICAS})")
        if count > 1 and name not in REPLICABLE:
            raise LaunchError(
                f"{REPLICAS_VARIABLE}: {name} runs as one process (its state is local to it); "
                f"replicable: {', '.join(REPLICABLE)}"
            )
        counts[name] = count
    return counts


def router_replicas_setting(replicas: dict[str, int]) -> str:
    """LLMESH_ROUTER_REPLICAS for each router: the number of routers. Each router sizes its queues
    from the inference replicas' load snapshots and the routers it hears on NATS; the setting
    stands in for the latter while it hears none (docs/adr/0037). The inference count plays no
    part (it did in ADR 0034's ⌈routers / inference⌉)."""
    return str(replicas["router"])


def supervisor_alive(current: mesh_state.MeshState) -> bool:
    return same_process(current.supervisor_pid, current.supervisor_start_ticks)


def running_mesh() -> mesh_state.MeshState | None:
    """The state of a mesh whose supervisor still runs, else None."""
    current = mesh_state.load_state()
    if current is not None and supervisor_alive(current):
        return current
    return None


def stop_leftovers(current: mesh_state.MeshState, progress: Callable[[str], None]) -> list[str]:
    """Stops the processes a supervisor that is gone left running (services first, NATS last) and
    returns their names. Only a process whose start time matches the record is touched: a pid that
    was reused since belongs to someone else."""
    stopped = []
    stages = [
        [n for n in current.processes if n not in ("nats", *BACKENDS)],
        [n for n in current.processes if n in BACKENDS],
        [n for n in current.processes if n == "nats"],
    ]
    for stage in stages:
        targets = {}
        for name in stage:
            record = current.processes[name]
            if record.pid and record.start_ticks is not None and same_process(record.pid, record.start_ticks):
                targets[name] = record.pid
            elif record.pid and record.start_ticks is None and pid_alive(record.pid):
                progress(f"  {name} (pid {record.pid}) may be left running: its start time is unknown, not stopping it")
        for pid in targets.values():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while any(pid_alive(pid) for pid in targets.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for name, pid in targets.items():
            if pid_alive(pid):
                progress(f"  {name} (pid {pid}) did not stop within {STOP_WAIT_S:.0f} s; killing it")
                _signal(pid, signal.SIGKILL)
            stopped.append(name)
    return stopped


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def endpoints_table(current: mesh_state.MeshState) -> str:
    home = mesh_state.home()
    rows = [("service", "gRPC address", "metrics", "pid", "log")]
    replicated = []
    for service in mesh_state.SERVICES:
        names = mesh_state.replicas_of(current, service)
        if len(names) > 1:
            replicated.append(
                f"{service}: {len(names)} replicas; its clients call {current.endpoints.get(service, '-')}"
            )
        for name in names:
            record = current.processes.get(name)
            rows.append(
                (
                    name,
                    record.address if record and record.address else current.endpoints.get(name, "-"),
                    str(current.metrics_ports.get(name, "-")),
                    str(current.pids.get(name, "-")),
                    str(home / "logs" / f"{name}.log"),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.extend(replicated)
    lines.append(f"NATS: {current.nats_url}")
    if current.http_urls.get("edge"):
        lines.append(f"OpenAI-compatible API (edge): {current.http_urls['edge']}")
    return "\n".join(lines)


@dataclasses.dataclass
class Supervised:
    """A child process and what the supervisor knows of its history."""

    process: ServiceProcess | NatsProcess | backends.TritonUnit | backends.StandInUnit
    state: str = mesh_state.STARTING
    restarts: int = 0
    #: crashes in a row (RestartPolicy.crashes_in_a_row)
    crashes: int = 0
    last_exit_code: int | None = None
    started_mono: float = 0.0
    started_wall: float | None = None
    start_ticks: int | None = None
    retry_at_mono: float = 0.0
    retry_at_wall: float | None = None
    note: str = ""

    @property
    def name(self) -> str:
        return self.process.name

    def mark_started(self) -> None:
        self.started_mono, self.started_wall = time.monotonic(), time.time()
        self.start_ticks = process_start_ticks(self.process.pid)
        self.retry_at_wall = None

    def record(self) -> mesh_state.ProcessRecord:
        return mesh_state.ProcessRecord(
            pid=self.process.pid,
            start_ticks=self.start_ticks,
            state=self.state,
            restarts=self.restarts,
            last_exit_code=self.last_exit_code,
            started_at=self.started_wall,
            retry_at=self.retry_at_wall if self.state == mesh_state.BACKOFF else None,
            address=self.process.address if self.process.port else "",
            note=self.note,
        )


class Supervisor:
    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        show_table: bool = True,
        progress: Callable[[str], None] | None = None,
        policy: RestartPolicy | None = None,
    ):
        self.timeout_s = timeout_s
        self.show_table = show_table
        self.policy = policy or RestartPolicy()
        self._progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self.home = mesh_state.home()
        self.stop_requested = threading.Event()
        self.units: dict[str, Supervised] = {}
        self.nats_url = ""
        self.admin_token = ""
        self.identity_dir = mesh_state.identity_dir()
        self.phase = mesh_state.PHASE_STARTING
        self.state: mesh_state.MeshState | None = None
        #: how `llmesh status` checks each backend server (HTTP URL)
        self.health_urls: dict[str, str] = {}
        #: the mesh's CA and certificates under `llmesh up --tls`
        self.tls: certificates.MeshTLS | None = None
        #: processes of each service (LLMESH_UP_REPLICAS), read by start()
        self.replicas: dict[str, int] = dict.fromkeys(mesh_state.SERVICES, 1)

    # -- entry point -------------------------------------------------------------------------------

    def run(self) -> int:
        """Starts the mesh, supervises it until SIGTERM/SIGINT, stops it; the exit code."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                self.start()
            except Interrupted:
                self._progress("llmesh up: interrupted while starting; stopping")
                return 130
            except LaunchError as exc:
                self._progress(f"llmesh up: {exc}")
                return 1
            if self.show_table:
                print(endpoints_table(self.state), flush=True)
                print("mesh is up; Ctrl-C (or `llmesh down`) stops it", flush=True)
            return self.monitor()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested.set()

    # -- start ---------------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        deadline = started + self.timeout_s
        self.replicas = replica_counts(os.environ.get(REPLICAS_VARIABLE, ""))
        self._take_over_home()
        ports = {name: self._port(name) for name in mesh_state.SERVICES}
        if certificates.tls_requested():
            self.tls = certificates.prepare(self.home)
            # The supervisor's own health checks (and the services' channels) use the CLI's certificate.
            os.environ.update(self.tls.files(certificates.CLIENT))
            self._progress(f"  tls         mutual TLS, CA and certificates in {self.tls.folder}")
        (self.home / "logs").mkdir(parents=True, exist_ok=True)

        self.nats_url = os.environ.get("LLMESH_NATS_URL", "")
        if not self.nats_url:
            nats = NatsProcess(self.home)
            unit = Supervised(nats)
            self.units["nats"] = unit
            try:
                nats.start()
            except (OSError, RuntimeError) as exc:
                raise LaunchError(f"cannot start nats-server: {exc}; see {nats.log_path}") from None
            unit.mark_started()
            unit.state = mesh_state.RUNNING
            self.nats_url = nats.url
            self._progress(f"  nats        running on {self.nats_url}")
        self.admin_token = os.environ.get("LLMESH_ADMIN_TOKEN") or secrets.token_urlsafe(32)
        # Keys made once per home (kept across restarts), credentials signed afresh (docs/adr/0023).
        self.identity_dir = identity.provision(mesh_state.identity_dir())
        base_env = dict(os.environ)
        base_env.update(
            {
                "LLMESH_NATS_URL": self.nats_url,
                "LLMESH_ADMIN_TOKEN": self.admin_token,
                "LLMESH_HOME": str(self.home),
            }
        )

        inference_env = dict(base_env)
        if backends.backends_enabled() and not os.environ.get("LLMESH_INFERENCE_CATALOG"):
            inference_env.update(self._start_backends())
        for name in UPSTREAMS:
            self._spawn_replicas(name, ports[name], inference_env if name == "inference" else base_env)
        self._save()
        self._wait_serving([u for name in UPSTREAMS for u in self._replicas_of(name)], deadline, started)

        router_env = dict(base_env)
        for name in UPSTREAMS:
            # LLMESH_ROUTER_<UPSTREAM>_ADDR puts something between the router and that service (the
            # chaos harness's fault proxy, bench/chaos.py); unset: the router dials the service
            # (every replica of it).
            router_env[f"LLMESH_{name.upper()}_ADDR"] = os.environ.get(
                f"LLMESH_ROUTER_{name.upper()}_ADDR"
            ) or self._target(name)
        # How many routers share the models, until they hear each other (unless told otherwise).
        router_env.setdefault("LLMESH_ROUTER_REPLICAS", router_replicas_setting(self.replicas))
        self._spawn_replicas("router", ports["router"], router_env)
        self._save()
        self._wait_serving(self._replicas_of("router"), deadline, started)

        edge_env = dict(base_env)
        for name in ("router", "tenancy", "inference"):
            edge_env[f"LLMESH_{name.upper()}_ADDR"] = self._target(name)
        edge_env[EDGE_HTTP_PORT_VARIABLE] = str(self._http_port())
        self._spawn("edge", ports["edge"], edge_env, http_port_variable=EDGE_HTTP_PORT_VARIABLE)
        self._save()
        self._wait_serving([self.units["edge"]], deadline, started)

        self.phase = mesh_state.PHASE_UP
        self._save()
        self._progress(f"llmesh up: all services SERVING after {time.monotonic() - started:.1f} s")

    def _start_backends(self) -> dict[str, str]:
        """Starts Triton (when its environment exists) and the OpenAI-compatible stand-in, writes
        $LLMESH_HOME/catalog.json pointing at them; the environment inference needs for it."""
        try:
            gguf = backends.model_path()
        except (OSError, subprocess.SubprocessError) as exc:
            raise LaunchError(f"cannot resolve the local model file: {exc}") from None
        standin = backends.standin_entry()
        api_key = secrets.token_urlsafe(32)
        triton_address = None
        reason = backends.triton_unavailable_reason()
        if reason:
            self._progress(
                f"  triton      not started: {reason}; the self-hosted tier runs on the in-process llama.cpp engine"
            )
        else:
            triton = backends.TritonUnit(self.home, gguf)
            self._start_backend(triton)
            triton_address = triton.address
            self.health_urls["triton"] = f"{triton.http_url}/v2/health/ready"
        openai = backends.StandInUnit(self.home, gguf, standin["remote_model"], api_key)
        self._start_backend(openai)
        self.health_urls["openai"] = f"{openai.address}/models"
        catalog_path = self.home / "catalog.json"
        backends.write_catalog(catalog_path, triton_address=triton_address, standin_url=openai.address)
        self._progress(f"  catalog     {catalog_path}")
        env = {"LLMESH_INFERENCE_CATALOG": str(catalog_path)}
        if standin.get("api_key_env"):
            env[standin["api_key_env"]] = api_key
        return env

    def _start_backend(self, process) -> None:
        unit = Supervised(process)
        self.units[process.name] = unit
        try:
            process.start()
        except (OSError, RuntimeError) as exc:
            raise LaunchError(
                f"cannot start {process.name}: {exc}; last lines of {process.log_path}:\n{tail(process.log_path)}"
            ) from None
        unit.mark_started()
        unit.state = mesh_state.RUNNING
        self._save()
        self._progress(f"  {process.name:<11} serving on {process.address}")

    def _take_over_home(self) -> None:
        """Refuses to start next to a live mesh of the same LLMESH_HOME; cleans up after a dead one."""
        other = mesh_state.load_state()
        if other is None:
            return
        if supervisor_alive(other):
            if other.supervisor_pid != os.getpid():
                raise LaunchError(
                    f"a mesh is already running (supervisor pid {other.supervisor_pid}); `llmesh down` first"
                )
            return
        self._progress(
            f"llmesh up: the supervisor of the last mesh (pid {other.supervisor_pid}) is gone; "
            "stopping what it left running"
        )
        stopped = stop_leftovers(other, self._progress)
        if stopped:
            self._progress(f"  stopped {', '.join(stopped)}")
        mesh_state.clear_state()

    def _port(self, name: str) -> int:
        """LLMESH_<SERVICE>_PORT (0: any free port); unset: the well-known port, which the router
        insists on (it is the front door) and the others leave for a free one when it is taken."""
        variable = f"LLMESH_{name.upper()}_PORT"
        raw = os.environ.get(variable, "")
        if not raw:
            port = mesh_state.DEFAULT_PORTS[name]
            if port_is_free(port):
                return port
            if name == "router":
                raise LaunchError(f"the router's port {port} is taken; free it or set {variable} (0: any port)")
            return 0
        try:
            port = int(raw)
        except ValueError:
            raise LaunchError(f"{variable}={raw!r} is not a port number") from None
        if not 0 <= port <= 65535:
            raise LaunchError(f"{variable}={raw!r} is not a port number")
        if port and not port_is_free(port):
            raise LaunchError(f"{name}'s port {port} ({variable}) is taken; free it or set {variable}=0 (any port)")
        return port

    def _http_port(self) -> int:
        """LLMESH_EDGE_HTTP_PORT (0: any free port); unset: 8080 when free, else any free port."""
        raw = os.environ.get(EDGE_HTTP_PORT_VARIABLE, "")
        if not raw:
            return EDGE_HTTP_PORT if port_is_free(EDGE_HTTP_PORT) else 0
        try:
            port = int(raw)
        except ValueError:
            raise LaunchError(f"{EDGE_HTTP_PORT_VARIABLE}={raw!r} is not a port number") from None
        if not 0 <= port <= 65535 or (port and not port_is_free(port)):
            raise LaunchError(f"{EDGE_HTTP_PORT_VARIABLE}={raw!r}: not a free port; set it to 0 (any port)")
        return port

    def _replicas_of(self, service: str) -> list[Supervised]:
        return [self.units[mesh_state.replica_name(service, i)] for i in range(1, self.replicas[service] + 1)]

    def _target(self, service: str) -> str:
        """The gRPC target of every replica of `service` (started, so their ports are known)."""
        return mesh_state.multi_address_target([u.process.address for u in self._replicas_of(service)])

    def _spawn_replicas(self, service: str, port: int, env: dict[str, str]) -> None:
        """The service's processes: the first on `port`, the others on free ports of their own."""
        for i in range(1, self.replicas[service] + 1):
            self._spawn(mesh_state.replica_name(service, i), port if i == 1 else 0, env, service=service)

    def _spawn(
        self,
        name: str,
        port: int,
        env: dict[str, str],
        *,
        http_port_variable: str | None = None,
        service: str | None = None,
    ) -> None:
        service = service or name
        env = {
            **env,
            "LLMESH_IDENTITY_CREDENTIAL_FILE": str(identity.credential_file(self.identity_dir, service)),
            "LLMESH_IDENTITY_TRUST_FILE": str(self.identity_dir / identity.TRUST),
        }
        if service == "tenancy":
            env["LLMESH_TENANCY_TOKEN_KEY_FILE"] = str(self.identity_dir / identity.TENANCY_KEY)
        if self.tls is not None:
            env = {**env, **self.tls.files(service)}
        process = ServiceProcess(
            name, port=port, home=self.home, env=env, http_port_variable=http_port_variable, service=service
        )
        unit = Supervised(process)
        self.units[name] = unit
        process.start()
        unit.mark_started()

    def _wait_serving(self, units: list[Supervised], deadline: float, started: float) -> None:
        pending = list(units)
        last_report = time.monotonic()
        while pending:
            if self.stop_requested.is_set():
                raise Interrupted()
            for unit in list(pending):
                process = unit.process
                code = process.exit_code()
                if code is not None:
                    raise LaunchError(
                        f"{process.name} exited with code {code} while starting; last lines of {process.log_path}:\n"
                        f"{tail(process.log_path)}"
                    )
                if process.ready() and health_status(process.address, timeout_s=1.0) == SERVING:
                    pending.remove(unit)
                    unit.state = mesh_state.RUNNING
                    self._progress(
                        f"  {process.name:<11} SERVING on {process.address} ({time.monotonic() - started:.1f} s)"
                    )
            if not pending:
                return
            now = time.monotonic()
            if now > deadline:
                details = "\n".join(
                    f"--- {u.name} ({u.process.log_path}):\n{tail(u.process.log_path, 10)}" for u in pending
                )
                raise LaunchError(
                    f"timed out after {self.timeout_s:.0f} s waiting for {', '.join(u.name for u in pending)}:\n"
                    f"{details}"
                )
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                self._progress(f"  waiting for {', '.join(u.name for u in pending)} ({now - started:.0f} s)")
            self.stop_requested.wait(0.1)

    # -- run -----------------------------------------------------------------------------------------

    def monitor(self) -> int:
        """Restarts what exits until SIGTERM/SIGINT; then 0 (`stop` does the stopping)."""
        while not self.stop_requested.wait(TICK_S):
            changed = False
            for unit in self.units.values():
                if self.stop_requested.is_set():
                    break
                changed |= self.supervise(unit)
            if changed:
                self._save()
        self._progress("llmesh: stopping the mesh")
        return 0

    def supervise(self, unit: Supervised) -> bool:
        """One look at one process; True when its record changed."""
        process = unit.process
        now = time.monotonic()
        if unit.state in (mesh_state.STARTING, mesh_state.RUNNING):
            code = process.exit_code()
            if code is not None:
                self._crashed(unit, code, "exited")
                return True
            if unit.state == mesh_state.RUNNING:
                if unit.crashes and self.policy.recovered(now - unit.started_mono):
                    unit.crashes, unit.note = 0, ""
                    return True
                return False
            if process.ready():
                unit.state = mesh_state.RUNNING
                self._progress(
                    f"llmesh: {unit.name} is back on {process.address} (pid {process.pid}, "
                    f"restart {unit.restarts}, {now - unit.started_mono:.1f} s after it started)"
                )
                return True
            timeout_s = getattr(process, "start_timeout_s", self.timeout_s)
            if now - unit.started_mono > timeout_s:
                process.kill()
                self._crashed(unit, process.exit_code(), f"did not serve within {timeout_s:.0f} s and was killed")
                return True
            return False
        if unit.state == mesh_state.BACKOFF and now >= unit.retry_at_mono:
            self._restart(unit)
            return True
        return False

    def _crashed(self, unit: Supervised, code: int | None, what: str) -> None:
        uptime = time.monotonic() - unit.started_mono
        unit.last_exit_code = code
        unit.crashes = self.policy.crashes_in_a_row(unit.crashes, uptime)
        delay = self.policy.delay_s(unit.crashes)
        unit.state = mesh_state.BACKOFF
        unit.retry_at_mono = time.monotonic() + delay
        unit.retry_at_wall = time.time() + delay
        log_path = unit.process.log_path
        line = (
            f"llmesh: {unit.name} (pid {unit.process.pid}) {what} with {describe_exit(code)} after {uptime:.1f} s; "
            f"restarting it in {delay:.1f} s"
        )
        if self.policy.in_crash_loop(unit.crashes) and not self.policy.in_crash_loop(unit.crashes - 1):
            unit.note = (
                f"crash loop: {unit.crashes} exits in a row, each within {self.policy.reset_after_s:.0f} s of its "
                f"start; retried every {self.policy.max_s:.0f} s at most while the mesh runs; see {log_path}"
            )
            self._progress(f"{line}\nllmesh: {unit.name} is in a {unit.note}. Last lines:\n{tail(log_path)}")
        elif unit.crashes == 1:
            self._progress(f"{line}. Last lines of {log_path}:\n{tail(log_path)}")
        else:
            self._progress(f"{line} ({unit.crashes} exits in a row)")

    def _restart(self, unit: Supervised) -> None:
        unit.restarts += 1
        process = unit.process
        try:
            if isinstance(process, backends.ServerUnit):
                # A model server loads its models for tens of seconds: launched, then polled for
                # readiness by supervise() while the other processes stay watched.
                process.launch()
            else:
                process.start()
        except (OSError, RuntimeError) as exc:
            # Only nats-server is waited for in start(); a service's failures show as its exit.
            unit.started_mono = time.monotonic()
            self._crashed(unit, process.exit_code(), f"failed to start ({exc})")
            return
        unit.mark_started()
        if isinstance(process, NatsProcess):
            # start() waited until it serves
            unit.state = mesh_state.RUNNING
            self._progress(
                f"llmesh: {unit.name} is back on {process.address} (pid {process.pid}, restart {unit.restarts})"
            )
        else:
            unit.state = mesh_state.STARTING
            self._progress(f"llmesh: restarting {unit.name} on port {process.port} (restart {unit.restarts})")

    # -- state ---------------------------------------------------------------------------------------

    def _save(self) -> None:
        services = {name: unit for name, unit in self.units.items() if name not in ("nats", *BACKENDS)}
        addresses: dict[str, list[str]] = {}
        for name, unit in services.items():
            if unit.process.port:
                addresses.setdefault(mesh_state.service_of(name), []).append(unit.process.address)
        self.state = mesh_state.MeshState(
            endpoints={
                service: mesh_state.multi_address_target(found)
                for service, found in addresses.items()
                if len(found) == self.replicas.get(service, 1)
            },
            metrics_ports={name: u.process.metrics_port for name, u in services.items() if u.process.metrics_port},
            pids={name: u.process.pid for name, u in services.items() if u.process.pid},
            nats_url=self.nats_url,
            admin_token=self.admin_token,
            identity_dir=str(self.identity_dir),
            supervisor_pid=os.getpid(),
            supervisor_start_ticks=process_start_ticks(os.getpid()),
            phase=self.phase,
            processes={name: unit.record() for name, unit in self.units.items()},
            health_urls=dict(self.health_urls),
            tls=self.tls.record() if self.tls is not None else {},
            http_urls={
                name: f"http://127.0.0.1:{u.process.http_port}/v1"
                for name, u in services.items()
                if getattr(u.process, "http_port", None)
            },
        )
        mesh_state.save_state(self.state)

    # -- stop ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        if self.units:
            self.phase = mesh_state.PHASE_STOPPING
            self._save()
        # The front doors first, so no new work reaches services that are going away; NATS last.
        stages = [
            [u for n, u in self.units.items() if mesh_state.service_of(n) in FRONT_DOORS],
            [
                u
                for n, u in self.units.items()
                if mesh_state.service_of(n) not in FRONT_DOORS and n not in ("nats", *BACKENDS)
            ],
            [u for n, u in self.units.items() if n in BACKENDS],
            [u for n, u in self.units.items() if n == "nats"],
        ]
        outcomes = []
        for stage in stages:
            running = [u for u in stage if u.process.pid and u.process.exit_code() is None]
            for unit in running:
                unit.process.terminate()
            for unit in stage:
                if unit not in running:
                    outcomes.append(f"{unit.name} (was not running)")
                    continue
                if not unit.process.wait(STOP_WAIT_S):
                    self._progress(f"llmesh: {unit.name} did not stop within {STOP_WAIT_S:.0f} s; killing it")
                unit.process.kill()
                unit.state = mesh_state.STOPPED
                outcomes.append(f"{unit.name} ({describe_exit(unit.process.exit_code())})")
        if outcomes:
            self._progress(f"llmesh: stopped {', '.join(outcomes)}")
        self.units.clear()
        current = mesh_state.load_state()
        if current is not None and current.supervisor_pid == os.getpid():
            mesh_state.clear_state()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
