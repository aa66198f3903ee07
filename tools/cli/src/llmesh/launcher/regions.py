"""`llmesh up --regions N`: N regions on one machine (ADR 0017). Each region is a whole local mesh
(its own supervisor, `$LLMESH_HOME/regions/<region>`, NATS, five services, LLMESH_REGION=<region>);
region a keeps the well-known ports, the others take free ones. The regions' nats-servers have
their own JetStream domains and are joined by leaf nodes (region a listens, the others dial it);
each cache's invalidation stream sources the other regions'; each router may fail a tier over to
another region's inference."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from llmesh.kit import identity
from llmesh.kit.defaults import home
from llmesh.kit.nats_server import region_config
from llmesh.kit.testing import free_port
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
            command = [
                sys.executable,
                "-m",
                "llmesh.launcher",
                "--foreground",
                "--no-table",
                "--timeout",
                str(timeout_s),
            ]
            children[region] = subprocess.Popen(command, env=env, start_new_session=True)
            progress(f"llmesh up: region {region} (home {env['LLMESH_HOME']}, supervisor pid {children[region].pid})")
        progress("llmesh up: `llmesh status` shows every region; Ctrl-C stops them")
        while not stop.wait(0.5):
            ended = {r: c.returncode for r, c in children.items() if c.poll() is not None}
            if ended:
                progress(f"llmesh up: the supervisor of region(s) {sorted(ended)} ended ({ended}); stopping")
                break
        return 0 if stop.is_set() else 1
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(120)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        regions_path().unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
