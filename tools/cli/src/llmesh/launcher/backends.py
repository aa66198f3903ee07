"""The model servers `llmesh up` runs next to the services (unless --no-backends or the user set
LLMESH_INFERENCE_CATALOG): Triton on CPU serving the local GGUF (deploy/triton/cpu), the
OpenAI-compatible stand-in for the external tier (llama_cpp.server), and the catalog that points
the inference service at them ($LLMESH_HOME/catalog.json, from deploy/catalog/dev.json).

Each server is wrapped with the interface the supervisor uses for NatsProcess (name, address, pid,
start, exit_code, ready, terminate, wait, kill, log_path); start() blocks until it serves (at
`llmesh up`), launch() does not (a restart: the supervisor polls ready() meanwhile, so a Triton
that loads its models for tens of seconds holds up no other process), and a restart asks for the
same port again."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from llmesh.launcher.openai_server import LlamaCppServerProcess
from llmesh.launcher.triton import DEFAULT_ENV, DEFAULT_REPOSITORY, TritonServerProcess

REPO_ROOT = pathlib.Path(__file__).resolve().parents[5]
DEV_CATALOG = REPO_ROOT / "deploy" / "catalog" / "dev.json"
TRITON_START_S = 120.0
STANDIN_START_S = 60.0


def backends_enabled(environ: dict[str, str] | None = None) -> bool:
    """LLMESH_UP_BACKENDS=0 (or `llmesh up --no-backends`) turns them off."""
    value = (os.environ if environ is None else environ).get("LLMESH_UP_BACKENDS", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def triton_unavailable_reason(env_root: str | os.PathLike = DEFAULT_ENV) -> str:
    """'' when the Triton environment exists, else why not."""
    root = pathlib.Path(env_root)
    if not (root / "bin" / "python").exists():
        return f"{root} is missing (`make triton-env` creates it)"
    if not (root / "backends" / "python" / "triton_python_backend_stub").exists():
        return f"{root} has no Python backend stub (run `make triton-env`)"
    return ""


def model_path() -> str:
    """The bundled GGUF, as the inference service resolves it (in a subprocess: the launcher does
    not import service code)."""
    out = subprocess.run(
        [sys.executable, "-m", "llmesh.services.inference.model_files"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()
    return out.splitlines()[-1].strip() if out else ""


def _signal_group(pid: int | None, sig: int) -> None:
    if not pid:
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ServerUnit:
    """What the supervisor asks of a model server it runs (as of NatsProcess): its exit code,
    readiness and the wait for its exit, read from the helper's `server.process`."""

    server: TritonServerProcess | LlamaCppServerProcess
    #: how long a (re)started server may take to serve before it counts as failed
    start_timeout_s: float

    def _announce(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"--- llmesh up: starting {self.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")

    def start(self) -> None:
        self.launch()
        self.server.wait_ready(self.start_timeout_s)

    def exit_code(self) -> int | None:
        process = self.server.process
        return process.poll() if process is not None else None

    def ready(self) -> bool:
        return self.exit_code() is None and self.server.ready()

    def wait(self, timeout_s: float) -> bool:
        process = self.server.process
        if process is None:
            return True
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True


class TritonUnit(ServerUnit):
    name = "triton"
    start_timeout_s = TRITON_START_S

    def __init__(self, home: pathlib.Path, gguf: str):
        self.log_path = home / "logs" / "triton.log"
        self.server = TritonServerProcess(
            DEFAULT_REPOSITORY,
            env_root=DEFAULT_ENV,
            extra_env={"LLMESH_TRITON_GGUF": gguf},
            log_path=str(self.log_path),
        )

    @property
    def port(self) -> int | None:
        return self.server.grpc_port or None

    @property
    def address(self) -> str:
        return self.server.grpc_url

    @property
    def http_url(self) -> str:
        return self.server.urls["http"]

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def launch(self) -> None:
        self._announce()
        self.server.launch()

    def terminate(self) -> None:
        if self.exit_code() is None:
            _signal_group(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        # The Python backend stubs share the server's process group: they go with it.
        _signal_group(self.pid, signal.SIGKILL)
        if self.server.process is not None:
            self.server.process.wait()


class StandInUnit(ServerUnit):
    """The OpenAI-compatible stand-in (the external tier) serving the local model as `alias`."""

    name = "openai"
    start_timeout_s = STANDIN_START_S

    def __init__(self, home: pathlib.Path, gguf: str, alias: str, api_key: str):
        self.log_path = home / "logs" / "openai.log"
        self.server = LlamaCppServerProcess(gguf, alias, chat_format="gemma", api_key=api_key, log_path=self.log_path)

    @property
    def port(self) -> int | None:
        return self.server.port

    @property
    def address(self) -> str:
        return self.server.base_url

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server.process else None

    def launch(self) -> None:
        self._announce()
        if self.server.port:  # a restart: the same port
            self.server.requested_port = self.server.port
        self.server.launch()

    def terminate(self) -> None:
        if self.exit_code() is None:
            self.server.process.terminate()

    def kill(self) -> None:
        process = self.server.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def write_catalog(
    path: pathlib.Path,
    *,
    triton_address: str | None,
    standin_url: str,
    template: pathlib.Path = DEV_CATALOG,
) -> dict:
    """deploy/catalog/dev.json with the real endpoints; no Triton entry when `triton_address` is
    None (its tiers fall to the llama.cpp fallback). Returns the catalog written."""
    catalog = json.loads(template.read_text())
    models = []
    for entry in catalog["models"]:
        if entry.get("backend") == "triton":
            if triton_address is None:
                continue
            entry = {**entry, "endpoint": triton_address}
        elif entry.get("backend") == "openai":
            entry = {**entry, "endpoint": standin_url}
        models.append(entry)
    catalog["models"] = models
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(catalog, indent=2) + "\n")
    return catalog


def standin_entry(template: pathlib.Path = DEV_CATALOG) -> dict:
    """The catalog's openai entry (alias = remote_model, key variable = api_key_env)."""
    for entry in json.loads(template.read_text())["models"]:
        if entry.get("backend") == "openai":
            return entry
    raise ValueError(f"{template} names no openai model")
