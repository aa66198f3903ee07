"""`llmesh up | down | status`: the local mesh on one machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from llmesh.launcher import state as mesh_state
from llmesh.launcher.certificates import TLS_VARIABLE
from llmesh.launcher.health import SERVING, UNREACHABLE, health_of_all
from llmesh.launcher.processes import same_process
from llmesh.launcher.regions import in_region, region_homes, regions_path, run_regions, start_regions_detached
from llmesh.launcher.supervisor import (
    DEFAULT_TIMEOUT_S,
    REPLICAS_VARIABLE,
    LaunchError,
    Supervisor,
    endpoints_table,
    replica_counts,
    running_mesh,
    stop_leftovers,
    supervisor_alive,
)

DOWN_WAIT_S = 90.0
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def register(subparsers) -> None:
    up = subparsers.add_parser("up", help="start NATS and the five services on this machine")
    up.add_argument("--detach", action="store_true", help="run the mesh in the background and return once it serves")
    up.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for every service to serve (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    up.add_argument(
        "--no-backends",
        action="store_true",
        help="do not start Triton and the OpenAI-compatible stand-in (as LLMESH_UP_BACKENDS=0): "
        "inference serves the in-process llama.cpp model",
    )
    up.add_argument(
        "--regions",
        type=int,
        default=1,
        help="run this many regions on this machine (ADR 0017; region a on the usual ports); --detach: in the background",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS between the services (as LLMESH_UP_TLS=1): a private CA and certificates under "
        "$LLMESH_HOME/tls, which the llmesh commands use",
    )
    up.add_argument(
        "--replicas",
        default=None,
        metavar="SERVICE=N,...",
        help=f"processes of each stateless service (as {REPLICAS_VARIABLE}), e.g. router=2,inference=2: each on "
        "its own ports, restarted on its own; their clients round-robin over all of them (default one each)",
    )
    up.set_defaults(func=up_command)

    down = subparsers.add_parser("down", help="stop the mesh started with `llmesh up --detach`")
    down.set_defaults(func=down_command)

    status = subparsers.add_parser(
        "status", help="state of NATS and every service: pid, restarts, last exit, uptime (exit 0 only when all serve)"
    )
    status.add_argument("--timeout", type=float, default=1.0, help="health check deadline in seconds (default 1)")
    status.set_defaults(func=status_command)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def up_command(args) -> int:
    if getattr(args, "replicas", None) is not None:
        os.environ[REPLICAS_VARIABLE] = args.replicas  # the detached supervisor inherits it
    try:
        replica_counts(os.environ.get(REPLICAS_VARIABLE, ""))
    except LaunchError as exc:
        _err(f"llmesh up: {exc}")
        return 2
    if getattr(args, "regions", 1) > 1:
        if getattr(args, "tls", False):
            _err("llmesh up: --regions runs without TLS (no --tls yet)")
            return 2
        if running_mesh() is not None or region_homes():
            _err("llmesh up: a mesh is already running; `llmesh down` (or Ctrl-C in its terminal) first")
            return 1
        if args.detach:
            return start_regions_detached(args.regions, args.timeout, _err)
        return run_regions(args.regions, args.timeout, _err)
    running = running_mesh()
    if running is not None:
        _err(
            f"llmesh up: a mesh is already running (supervisor pid {running.supervisor_pid}, router at "
            f"{running.endpoints.get('router', '?')}); stop it with `llmesh down`"
        )
        return 1
    if args.no_backends:
        os.environ["LLMESH_UP_BACKENDS"] = "0"  # the detached supervisor inherits it
    if getattr(args, "tls", False):
        os.environ[TLS_VARIABLE] = "1"
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
            if (
                current is not None
                and current.supervisor_pid == supervisor.pid
                and current.phase == mesh_state.PHASE_UP
            ):
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
    regions = region_homes()  # `llmesh up --regions N`: every region stops
    if regions:
        codes = []
        for region, region_home in regions.items():
            print(f"== region {region} ({region_home})")
            with in_region(region_home):
                codes.append(_down_one_mesh())
        regions_path().unlink(missing_ok=True)
        return max(codes)
    return _down_one_mesh()


def _down_one_mesh() -> int:
    current = mesh_state.load_state()
    if current is None:
        print("no mesh is running")
        return 0
    pid = current.supervisor_pid
    if not supervisor_alive(current):
        stopped = stop_leftovers(current, _err)
        mesh_state.clear_state()
        if stopped:
            print(
                f"no mesh is running; stopped what its supervisor (pid {pid}, gone) left running: {', '.join(stopped)}"
            )
        else:
            print("no mesh is running (removed the state of one that ended without cleaning up)")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DOWN_WAIT_S
    while supervisor_alive(current):
        if time.monotonic() > deadline:
            _err(f"llmesh down: the supervisor (pid {pid}) did not stop within {DOWN_WAIT_S:.0f} s; killing the mesh")
            os.kill(pid, signal.SIGKILL)
            stop_leftovers(mesh_state.load_state() or current, _err)
            mesh_state.clear_state()
            return 1
        time.sleep(0.2)
    print("mesh stopped")
    return 0


# What `llmesh status` calls a process.
SERVING_STATE = "serving"
NOT_SERVING_STATE = "not serving"
RESTARTING_STATE = "restarting"
STARTING_STATE = "starting"
DOWN_STATE = "down"


def process_state(record: mesh_state.ProcessRecord | None, health: str, supervised: bool) -> str:
    """serving / not serving / restarting / starting / down, from what the supervisor recorded and
    the live health check."""
    by_health = SERVING_STATE if health == SERVING else DOWN_STATE if health == UNREACHABLE else NOT_SERVING_STATE
    if record is None:
        return by_health
    alive = same_process(record.pid, record.start_ticks)
    if not supervised:
        # Left behind by a supervisor that is gone: only what still runs and answers counts.
        return by_health if alive else DOWN_STATE
    if record.state == mesh_state.BACKOFF:
        return RESTARTING_STATE
    if record.state == mesh_state.STARTING:
        return RESTARTING_STATE if record.restarts else STARTING_STATE
    if record.state == mesh_state.STOPPED or not alive:
        return DOWN_STATE
    return NOT_SERVING_STATE if by_health == DOWN_STATE else by_health


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "-"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return str(code)


def status_command(args) -> int:
    regions = region_homes()  # `llmesh up --regions N` shows every region
    if regions:
        codes = []
        for region, region_home in regions.items():
            print(f"== region {region} ({region_home})")
            with in_region(region_home):
                codes.append(_status_of_one_mesh(args))
        return max(codes)
    return _status_of_one_mesh(args)


def _status_of_one_mesh(args) -> int:
    current = mesh_state.load_state()
    # Every process of the mesh is checked on its own address (each replica of a service too).
    endpoints = {}
    for service in mesh_state.SERVICES:
        names = mesh_state.replicas_of(current, service) if current else [service]
        for name in names:
            record = current.processes.get(name) if current else None
            single = len(names) == 1
            endpoints[name] = mesh_state.endpoint(service) if single or not record else record.address
    nats_url = (current.nats_url if current else "") or os.environ.get("LLMESH_NATS_URL") or DEFAULT_NATS_URL
    health_urls = current.health_urls if current else {}
    health = health_of_all(endpoints, timeout_s=args.timeout, nats_url=nats_url, http_urls=health_urls)
    supervised = current is not None and supervisor_alive(current)
    now = time.time()
    rows = [("", "state", "pid", "restarts", "last exit", "uptime", "address", "metrics")]
    states = {}
    for name in ("nats", *health_urls, *endpoints):
        record = current.processes.get(name) if current else None
        state = states[name] = process_state(record, health[name], supervised)
        up = state in (SERVING_STATE, NOT_SERVING_STATE) and record is not None and record.started_at
        rows.append(
            (
                name,
                state,
                str(record.pid) if record and record.pid else "-",
                str(record.restarts) if record else "-",
                _exit_text(record.last_exit_code) if record else "-",
                _duration(now - record.started_at) if up else "-",
                nats_url if name == "nats" else endpoints.get(name) or (record.address if record else "-"),
                str(current.metrics_ports.get(name, "-")) if current and name in endpoints else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if current is None:
        print(f"no local mesh state in {mesh_state.home()}; checked the configured addresses")
    elif supervised:
        print(f"supervisor pid {current.supervisor_pid} (mesh {current.phase}); logs in {mesh_state.home() / 'logs'}")
        for name, record in current.processes.items():
            if record.state == mesh_state.BACKOFF and record.retry_at:
                print(f"{name}: next start in {max(0.0, record.retry_at - now):.1f} s")
            if record.note:
                print(f"{name}: {record.note}")
    else:
        print(
            f"the supervisor (pid {current.supervisor_pid}) is gone; `llmesh down` stops what it left running "
            "(`llmesh up` does so too before it starts)"
        )
    healthy = all(state == SERVING_STATE for state in states.values()) and (current is None or supervised)
    return 0 if healthy else 1
