"""`llmesh up --regions N`: N regions on one machine (ADR 0017). Each region is a whole local mesh
(its own supervisor, `$LLMESH_HOME/regions/<region>`, NATS, five services, LLMESH_REGION=<region>);
region a keeps the well-known ports, the others take free ones. In the foreground one command
holds the region supervisors and stops them on Ctrl-C; with --detach the supervisors run in the
background (each logs to `<region home>/logs/supervisor.log`) and `llmesh down` stops every region. The regions' nats-servers have
their own JetStream domains and are joined by leaf nodes (region a listens, the others dial it);
each cache's invalidation stream sources the other regions'; each router may fail a tier over to
another region's inference."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

from llmesh.kit import identity
from llmesh.kit.defaults import home
from llmesh.kit.nats_server import region_config
from llmesh.kit.testing import free_port
from llmesh.launcher import state as mesh_state
from llmesh.launcher.state import SERVICES

NAMES = "abcdefgh"


def regions_path() -> pathlib.Path:
    return home() / "regions.json"


def region_homes() -> dict[str, pathlib.Path]:
    """The regions of a running (or last) `llmesh up --regions`, else {}."""
    try:
        return {r: pathlib.Path(h) for r, h in json.loads(regions_path().read_text()).items()}
    except (FileNotFoundError, ValueError):
        return {}


def region_envs(count: int, root: pathlib.Path, base: dict[str, str]) -> dict[str, dict[str, str]]:
    """The environment of each region's supervisor."""
    if not 2 <= count <= len(NAMES):
        raise ValueError(f"--regions must be in 2..{len(NAMES)}")
    names = list(NAMES[:count])
    leaf = free_port()
    inference_ports = {r: free_port() for r in names}
    envs = {}
    for region in names:
        others = [r for r in names if r != region]
        region_home = root / "regions" / region
        region_home.mkdir(parents=True, exist_ok=True)
        config = region_home / "nats.conf"
        hub = region == names[0]
        config.write_text(
            region_config(region, leaf_listen_port=leaf)
            if hub
            else region_config(region, hub_leaf_urls=(f"nats-leaf://127.0.0.1:{leaf}",))
        )
        env = dict(base)
        env.pop("LLMESH_NATS_URL", None)
        env.update(
            {
                "LLMESH_HOME": str(region_home),
                "LLMESH_REGION": region,
                "LLMESH_NATS_CONFIG": str(config),
                "LLMESH_NATS_PEER_DOMAINS": ",".join(others),
                "LLMESH_INFERENCE_PORT": str(inference_ports[region]),
                "LLMESH_ROUTER_REGION_INFERENCE": ",".join(f"{o}=127.0.0.1:{inference_ports[o]}" for o in others),
            }
        )
        if not hub:  # region a keeps the well-known ports
            for service in SERVICES:
                if service != "inference":
                    env[f"LLMESH_{service.upper()}_PORT"] = "0"
        envs[region] = env
    return envs


def _supervisor_command(timeout_s: float) -> list[str]:
    return [sys.executable, "-m", "llmesh.launcher", "--foreground", "--no-table", "--timeout", str(timeout_s)]


@contextlib.contextmanager
def in_region(region_home: pathlib.Path) -> Iterator[None]:
    """LLMESH_HOME set to one region's home meanwhile: the single-mesh commands act on that region."""
    saved = os.environ.get("LLMESH_HOME")
    os.environ["LLMESH_HOME"] = str(region_home)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LLMESH_HOME", None)
        else:
            os.environ["LLMESH_HOME"] = saved


def _region_state(region_home: pathlib.Path) -> mesh_state.MeshState | None:
    with in_region(region_home):
        return mesh_state.load_state()


def start_regions_detached(count: int, timeout_s: float, progress: Callable[[str], None]) -> int:
    """Starts one background supervisor per region and returns once every region serves (0), or
    stops them all and returns 1 when one ends or the timeout passes first."""
    root = home()
    envs = region_envs(count, root, dict(os.environ))
    regions_path().write_text(json.dumps({r: env["LLMESH_HOME"] for r, env in envs.items()}))
    children: dict[str, subprocess.Popen] = {}
    for region, env in envs.items():
        log_path = pathlib.Path(env["LLMESH_HOME"]) / "logs" / "supervisor.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            children[region] = subprocess.Popen(
                _supervisor_command(timeout_s),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        progress(f"llmesh up: region {region} (home {env['LLMESH_HOME']}, supervisor pid {children[region].pid})")
    # Each supervisor's own timeout ends a slow start; this one only guards against a hung one.
    deadline = time.monotonic() + timeout_s + 60.0
    waiting = set(children)
    while waiting:
        for region in sorted(waiting):
            current = _region_state(pathlib.Path(envs[region]["LLMESH_HOME"]))
            if current is not None and current.supervisor_pid == children[region].pid:
                if current.phase == mesh_state.PHASE_UP:
                    waiting.discard(region)
                    progress(f"llmesh up: region {region} serves (router at {current.endpoints.get('router', '?')})")
        ended = {r: c.returncode for r, c in children.items() if c.poll() is not None}
        if ended or time.monotonic() > deadline:
            why = f"the supervisor of region(s) {sorted(ended)} ended ({ended})" if ended else "the timeout passed"
            progress(f"llmesh up: {why} before every region served; stopping them (logs in each region's home)")
            _stop(children)
            regions_path().unlink(missing_ok=True)
            return 1
        if waiting:
            time.sleep(0.5)
    progress("llmesh up: every region serves in the background; `llmesh status` shows them, `llmesh down` stops them")
    return 0


def _stop(children: dict[str, subprocess.Popen]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(120)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_regions(count: int, timeout_s: float, progress: Callable[[str], None]) -> int:
    """Runs one supervisor per region until SIGINT/SIGTERM; the exit code (0: stopped cleanly)."""
    root = home()
    # One set of keys for every region: a router calls the other regions' inference.
    base = dict(os.environ)
    base.setdefault("LLMESH_IDENTITY_DIR", str(root / "identity"))
    identity.provision(base["LLMESH_IDENTITY_DIR"])
    envs = region_envs(count, root, base)
    regions_path().write_text(json.dumps({r: env["LLMESH_HOME"] for r, env in envs.items()}))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    children: dict[str, subprocess.Popen] = {}
    try:
        for region, env in envs.items():
            children[region] = subprocess.Popen(_supervisor_command(timeout_s), env=env, start_new_session=True)
            progress(f"llmesh up: region {region} (home {env['LLMESH_HOME']}, supervisor pid {children[region].pid})")
        progress("llmesh up: `llmesh status` shows every region; Ctrl-C stops them")
        while not stop.wait(0.5):
            ended = {r: c.returncode for r, c in children.items() if c.poll() is not None}
            if ended:
                progress(f"llmesh up: the supervisor of region(s) {sorted(ended)} ended ({ended}); stopping")
                break
        return 0 if stop.is_set() else 1
    finally:
        _stop(children)
        regions_path().unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
