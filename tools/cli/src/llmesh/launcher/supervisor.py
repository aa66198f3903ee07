"""The local mesh supervisor behind `llmesh up`: starts NATS and the five services, waits until
every one is SERVING, records the mesh in $LLMESH_HOME/mesh.json, watches the services, and stops
everything in order on SIGTERM / Ctrl-C.

A service that dies stops the whole mesh (exit 1) rather than being restarted: a crash loop hidden
behind restarts is worse on a developer machine than a clear stop with the service's log tail.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable

from llmesh.kit.nats_server import NatsServerProcess
from llmesh.launcher import state as mesh_state
from llmesh.launcher.health import SERVING, health_status
from llmesh.launcher.processes import ServiceProcess, pid_alive, port_is_free, tail

UPSTREAMS = ("tenancy", "classifier", "cache", "inference")
DEFAULT_TIMEOUT_S = 180.0
# Services get LLMESH_GRACE_S (10 s by default) to drain; then a little longer before SIGKILL.
STOP_WAIT_S = 15.0
PROGRESS_EVERY_S = 10.0


class LaunchError(Exception):
    pass


class Interrupted(Exception):
    pass


def running_mesh() -> mesh_state.MeshState | None:
    """The state of a mesh whose supervisor still runs, else None."""
    current = mesh_state.load_state()
    if current is not None and pid_alive(current.supervisor_pid):
        return current
    return None


def endpoints_table(current: mesh_state.MeshState) -> str:
    home = mesh_state.home()
    rows = [("service", "gRPC address", "metrics", "pid", "log")]
    for name in mesh_state.SERVICES:
        rows.append(
            (
                name,
                current.endpoints.get(name, "-"),
                str(current.metrics_ports.get(name, "-")),
                str(current.pids.get(name, "-")),
                str(home / "logs" / f"{name}.log"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"NATS: {current.nats_url}")
    return "\n".join(lines)


class Supervisor:
    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        show_table: bool = True,
        progress: Callable[[str], None] | None = None,
    ):
        self.timeout_s = timeout_s
        self.show_table = show_table
        self._progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self.home = mesh_state.home()
        self.stop_requested = threading.Event()
        self.services: dict[str, ServiceProcess] = {}
        self.nats: NatsServerProcess | None = None
        self.state: mesh_state.MeshState | None = None

    # -- entry point -------------------------------------------------------------------------------

    def run(self) -> int:
        """Starts the mesh, serves until SIGTERM/SIGINT or a service dies, stops it; the exit code."""
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
        other = running_mesh()
        if other is not None and other.supervisor_pid != os.getpid():
            raise LaunchError(f"a mesh is already running (supervisor pid {other.supervisor_pid}); `llmesh down` first")
        (self.home / "logs").mkdir(parents=True, exist_ok=True)

        nats_url = os.environ.get("LLMESH_NATS_URL", "")
        if not nats_url:
            self.nats = NatsServerProcess(str(self.home / "nats"), log_path=str(self.home / "logs" / "nats.log"))
            try:
                self.nats.start()
            except (OSError, RuntimeError) as exc:
                raise LaunchError(f"cannot start nats-server: {exc}") from None
            nats_url = self.nats.url
            self._progress(f"  nats        running on {nats_url}")
        admin_token = os.environ.get("LLMESH_ADMIN_TOKEN") or secrets.token_urlsafe(32)
        base_env = dict(os.environ)
        base_env.update(
            {
                "LLMESH_NATS_URL": nats_url,
                "LLMESH_ADMIN_TOKEN": admin_token,
                "LLMESH_HOME": str(self.home),
            }
        )

        router_port = self._router_port()
        for name in UPSTREAMS:
            port = mesh_state.DEFAULT_PORTS[name]
            self._spawn(name, port if port_is_free(port) else 0, base_env)
        self._wait_serving([self.services[name] for name in UPSTREAMS], deadline, started)

        router_env = dict(base_env)
        for name in UPSTREAMS:
            router_env[f"LLMESH_{name.upper()}_ADDR"] = self.services[name].address
        self._spawn("router", router_port, router_env)
        self._wait_serving([self.services["router"]], deadline, started)

        self.state = mesh_state.MeshState(
            endpoints={name: p.address for name, p in self.services.items()},
            metrics_ports={name: p.metrics_port for name, p in self.services.items()},
            pids={name: p.pid for name, p in self.services.items()},
            nats_url=nats_url,
            admin_token=admin_token,
            supervisor_pid=os.getpid(),
        )
        mesh_state.save_state(self.state)
        self._progress(f"llmesh up: all services SERVING after {time.monotonic() - started:.1f} s")

    def _router_port(self) -> int:
        raw = os.environ.get("LLMESH_ROUTER_PORT", str(mesh_state.DEFAULT_PORTS["router"]))
        try:
            port = int(raw)
        except ValueError:
            raise LaunchError(f"LLMESH_ROUTER_PORT={raw!r} is not a port number") from None
        if not 0 <= port <= 65535:
            raise LaunchError(f"LLMESH_ROUTER_PORT={raw!r} is not a port number")
        if port and not port_is_free(port):
            raise LaunchError(f"the router's port {port} is taken; free it or set LLMESH_ROUTER_PORT (0: any port)")
        return port

    def _spawn(self, name: str, port: int, env: dict[str, str]) -> None:
        process = ServiceProcess(name, port=port, home=self.home, env=env)
        process.start()
        self.services[name] = process

    def _wait_serving(self, processes: list[ServiceProcess], deadline: float, started: float) -> None:
        pending = list(processes)
        last_report = time.monotonic()
        while pending:
            if self.stop_requested.is_set():
                raise Interrupted()
            for process in list(pending):
                code = process.exit_code()
                if code is not None:
                    raise LaunchError(
                        f"{process.name} exited with code {code} while starting; last lines of {process.log_path}:\n"
                        f"{tail(process.log_path)}"
                    )
                if process.read_ready_file() and health_status(process.address, timeout_s=1.0) == SERVING:
                    pending.remove(process)
                    self._progress(
                        f"  {process.name:<11} SERVING on {process.address} ({time.monotonic() - started:.1f} s)"
                    )
            if not pending:
                return
            now = time.monotonic()
            if now > deadline:
                details = "\n".join(f"--- {p.name} ({p.log_path}):\n{tail(p.log_path, 10)}" for p in pending)
                raise LaunchError(
                    f"timed out after {self.timeout_s:.0f} s waiting for {', '.join(p.name for p in pending)}:\n"
                    f"{details}"
                )
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                self._progress(f"  waiting for {', '.join(p.name for p in pending)} ({now - started:.0f} s)")
            self.stop_requested.wait(0.1)

    # -- run -----------------------------------------------------------------------------------------

    def monitor(self) -> int:
        while not self.stop_requested.wait(0.5):
            for process in self.services.values():
                code = process.exit_code()
                if code is not None:
                    self._progress(
                        f"llmesh: {process.name} exited unexpectedly with code {code}; stopping the mesh. "
                        f"Last lines of {process.log_path}:\n{tail(process.log_path)}"
                    )
                    return 1
        self._progress("llmesh: stopping the mesh")
        return 0

    # -- stop ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        # The front door first, so no new work reaches services that are going away.
        stages = [
            [self.services[n] for n in ("router",) if n in self.services],
            [p for n, p in self.services.items() if n != "router"],
        ]
        for stage in stages:
            for process in stage:
                process.terminate()
            for process in stage:
                if not process.wait(STOP_WAIT_S):
                    self._progress(f"llmesh: {process.name} did not stop within {STOP_WAIT_S:.0f} s; killing it")
                process.kill()
        self.services.clear()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        current = mesh_state.load_state()
        if current is not None and current.supervisor_pid == os.getpid():
            mesh_state.clear_state()
