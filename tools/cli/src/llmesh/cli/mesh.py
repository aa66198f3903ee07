"""`llmesh up | down | status`: the local mesh on one machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from llmesh.launcher import state as mesh_state
from llmesh.launcher.health import SERVING, health_of_all
from llmesh.launcher.processes import pid_alive
from llmesh.launcher.supervisor import DEFAULT_TIMEOUT_S, Supervisor, endpoints_table, running_mesh

DOWN_WAIT_S = 90.0


def register(subparsers) -> None:
    up = subparsers.add_parser("up", help="start NATS and the five services on this machine")
    up.add_argument("--detach", action="store_true", help="run the mesh in the background and return once it serves")
    up.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for every service to serve (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    up.set_defaults(func=up_command)

    down = subparsers.add_parser("down", help="stop the mesh started with `llmesh up --detach`")
    down.set_defaults(func=down_command)

    status = subparsers.add_parser("status", help="health of every service (exit 0 only when all serve)")
    status.add_argument("--timeout", type=float, default=1.0, help="health check deadline in seconds (default 1)")
    status.set_defaults(func=status_command)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def up_command(args) -> int:
    running = running_mesh()
    if running is not None:
        _err(
            f"llmesh up: a mesh is already running (supervisor pid {running.supervisor_pid}, router at "
            f"{running.endpoints.get('router', '?')}); stop it with `llmesh down`"
        )
        return 1
    if not args.detach:
        return Supervisor(timeout_s=args.timeout).run()
    return _up_detached(args.timeout)


def _up_detached(timeout_s: float) -> int:
    log_path = mesh_state.home() / "logs" / "supervisor.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        offset = log.tell()
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "llmesh.launcher", "--foreground", "--no-table", "--timeout", str(timeout_s)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # The supervisor's own timeout ends a slow start; this one only guards against a hung supervisor.
    deadline = time.monotonic() + timeout_s + 60.0
    with open(log_path, "rb") as progress:
        progress.seek(offset)

        def relay() -> None:
            chunk = progress.read()
            if chunk:
                sys.stderr.write(chunk.decode("utf-8", "replace"))
                sys.stderr.flush()

        while True:
            relay()
            current = mesh_state.load_state()
            if current is not None and current.supervisor_pid == supervisor.pid:
                print(endpoints_table(current))
                print(
                    f"mesh is up in the background (supervisor pid {supervisor.pid}, log {log_path}); "
                    "`llmesh down` stops it"
                )
                return 0
            code = supervisor.poll()
            if code is not None:
                relay()
                _err(f"llmesh up: the mesh did not start (supervisor exit code {code}; log {log_path})")
                return 1
            if time.monotonic() > deadline:
                supervisor.terminate()
                supervisor.wait(30)
                relay()
                _err(f"llmesh up: the supervisor did not report within {timeout_s + 60:.0f} s; stopped it")
                return 1
            time.sleep(0.2)


def down_command(args) -> int:
    current = mesh_state.load_state()
    if current is None:
        print("no mesh is running")
        return 0
    pid = current.supervisor_pid
    if not pid_alive(pid):
        mesh_state.clear_state()
        print("no mesh is running (removed the state of one that ended without cleaning up)")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DOWN_WAIT_S
    while pid_alive(pid):
        if time.monotonic() > deadline:
            _err(f"llmesh down: the supervisor (pid {pid}) did not stop within {DOWN_WAIT_S:.0f} s; killing the mesh")
            for target in (pid, *current.pids.values()):
                if pid_alive(target):
                    os.kill(target, signal.SIGKILL)
            mesh_state.clear_state()
            return 1
        time.sleep(0.2)
    print("mesh stopped")
    return 0


def status_command(args) -> int:
    current = mesh_state.load_state()
    endpoints = {name: mesh_state.endpoint(name) for name in mesh_state.SERVICES}
    health = health_of_all(endpoints, timeout_s=args.timeout)
    rows = [("service", "address", "health", "metrics")]
    for name in mesh_state.SERVICES:
        metrics = str(current.metrics_ports.get(name, "-")) if current else "-"
        rows.append((name, endpoints[name], health[name], metrics))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if current is None:
        print(f"no local mesh state in {mesh_state.home()}; checked the configured addresses")
    elif pid_alive(current.supervisor_pid):
        print(f"supervisor pid {current.supervisor_pid}; NATS {current.nats_url}")
    else:
        print(f"the supervisor (pid {current.supervisor_pid}) is gone; `llmesh down` cleans up")
    return 0 if all(status == SERVING for status in health.values()) else 1
