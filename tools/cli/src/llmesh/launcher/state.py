"""Where a local mesh is found: `$LLMESH_HOME/mesh.json` (written by `llmesh up`), with
environment overrides, so the CLI and tests reach the services without flags."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from llmesh.kit.defaults import DEFAULT_PORTS, SERVICES, home

__all__ = ["DEFAULT_PORTS", "SERVICES", "MeshState", "ProcessRecord", "home"]

# What the supervisor says of a process it runs (ProcessRecord.state).
STARTING = "starting"  # started, not SERVING yet
RUNNING = "running"  # SERVING once (a live health check tells whether it still is)
BACKOFF = "backoff"  # exited; restarted at ProcessRecord.retry_at
STOPPED = "stopped"  # stopped by the supervisor

# Phases of the whole mesh (MeshState.phase).
PHASE_STARTING = "starting"
PHASE_UP = "up"
PHASE_STOPPING = "stopping"


@dataclasses.dataclass
class ProcessRecord:
    """One supervised process (NATS or a service) as the supervisor last saw it."""

    pid: int | None = None
    #: when the process started, in clock ticks since boot (tells it from a later one with its pid)
    start_ticks: int | None = None
    state: str = STARTING
    #: times the supervisor started it again after it exited
    restarts: int = 0
    #: its last exit status (negative: killed by that signal); None before it ever exited
    last_exit_code: int | None = None
    #: wall-clock time (epoch seconds) of its current start
    started_at: float | None = None
    #: wall-clock time of the next restart while in BACKOFF
    retry_at: float | None = None
    address: str = ""
    #: what the supervisor wants an operator to know (e.g. a crash loop)
    note: str = ""


@dataclasses.dataclass
class MeshState:
    #: service -> the gRPC target its clients use (every replica's address: multi_address_target)
    endpoints: dict[str, str]
    #: process name (replica_name) -> its metrics port / pid
    metrics_ports: dict[str, int] = dataclasses.field(default_factory=dict)
    pids: dict[str, int] = dataclasses.field(default_factory=dict)
    nats_url: str = ""
    admin_token: str = ""
    #: the mesh's keys and credentials (docs/adr/0023); the CLI calls as `operator.credential`
    identity_dir: str = ""
    supervisor_pid: int | None = None
    supervisor_start_ticks: int | None = None
    phase: str = PHASE_UP
    #: "nats" (when the supervisor runs it) and every service
    processes: dict[str, ProcessRecord] = dataclasses.field(default_factory=dict)
    #: the backend model servers (triton, openai) and the HTTP URL that answers 200 when each serves
    health_urls: dict[str, str] = dataclasses.field(default_factory=dict)
    #: services with an HTTP API (the edge) and its base URL, e.g. {"edge": "http://127.0.0.1:8080/v1"}
    http_urls: dict[str, str] = dataclasses.field(default_factory=dict)
    #: under `llmesh up --tls`: the CA the services' certificates come from and the CLI's own
    #: certificate, and the name the servers' certificates are checked against
    #: ({"ca_file", "cert_file", "key_file", "server_name"}); empty: plaintext
    tls: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> pathlib.Path:
        return home() / "mesh.json"


def replica_name(service: str, index: int) -> str:
    """The supervisor's name of a service's `index`th process (from 1): the service's own name for the
    first, `<service>-<index>` for the others (`llmesh up` with LLMESH_UP_REPLICAS)."""
    return service if index == 1 else f"{service}-{index}"


def service_of(name: str) -> str:
    """The service a process of the mesh runs: "router" for "router" and "router-2"; other names
    (nats, triton, openai) as they are."""
    base, _, index = name.rpartition("-")
    return base if base in SERVICES and index.isdigit() else name


def replicas_of(state: MeshState, service: str) -> list[str]:
    """The names of `service`'s processes in `state`, the first replica first (just the service's
    name when the supervisor records none)."""
    names = [n for n in state.processes if service_of(n) == service]
    names.sort(key=lambda n: 1 if n == service else int(n.rpartition("-")[2]))
    return names or [service]


def multi_address_target(addresses: list[str]) -> str:
    """One gRPC target for every address of a service: the address itself when there is one,
    else `ipv4:host:port,host:port` (the kit's channels round-robin over them, docs/adr/0034)."""
    if len(addresses) == 1:
        return addresses[0]
    return "ipv4:" + ",".join(addresses)


def state_path() -> pathlib.Path:
    return home() / "mesh.json"


def load_state() -> MeshState | None:
    try:
        data = json.loads(state_path().read_text())
    except (FileNotFoundError, ValueError):
        return None
    fields = {f.name for f in dataclasses.fields(MeshState)}
    state = MeshState(**{k: v for k, v in data.items() if k in fields})
    record_fields = {f.name for f in dataclasses.fields(ProcessRecord)}
    state.processes = {
        name: ProcessRecord(**{k: v for k, v in record.items() if k in record_fields})
        for name, record in (state.processes or {}).items()
    }
    return state


def save_state(state: MeshState) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # The admin token is in here: readable by the owner only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dataclasses.asdict(state), f, indent=2)
    os.replace(tmp, path)


def clear_state() -> None:
    state_path().unlink(missing_ok=True)


def endpoint(service: str) -> str:
    """host:port of a service: LLMESH_<SERVICE>_ADDR, else the running local mesh, else the default."""
    override = os.environ.get(f"LLMESH_{service.upper()}_ADDR")
    if override:
        return override
    state = load_state()
    if state and service in state.endpoints:
        return state.endpoints[service]
    return f"127.0.0.1:{DEFAULT_PORTS[service]}"


def identity_dir() -> pathlib.Path:
    """Where the mesh's keys and service credentials live: LLMESH_IDENTITY_DIR (one folder that
    `llmesh up --regions` shares between its regions), else $LLMESH_HOME/identity."""
    override = os.environ.get("LLMESH_IDENTITY_DIR")
    return pathlib.Path(override) if override else home() / "identity"


def operator_identity():
    """The CLI's identity (the operator credential) from the local mesh's identity folder, if any."""
    from llmesh.kit import identity

    state = load_state()
    directory = pathlib.Path(state.identity_dir) if state and state.identity_dir else identity_dir()
    if not identity.credential_file(directory, identity.OPERATOR).exists():
        return None
    return identity.load_provisioned(directory, identity.OPERATOR)


def admin_token() -> str:
    """LLMESH_ADMIN_TOKEN, else the local mesh's generated one."""
    token = os.environ.get("LLMESH_ADMIN_TOKEN")
    if token:
        return token
    state = load_state()
    return state.admin_token if state else ""


def use_mesh_tls() -> bool:
    """Points this process's LLMESH_TLS_* variables at the local mesh's CA and the CLI's
    certificate when the mesh runs with mutual TLS and they are not set already; whether it did."""
    if os.environ.get("LLMESH_TLS_CA_FILE"):
        return False
    state = load_state()
    if state is None or not state.tls:
        return False
    os.environ["LLMESH_TLS_CA_FILE"] = state.tls["ca_file"]
    os.environ["LLMESH_TLS_CERT_FILE"] = state.tls["cert_file"]
    os.environ["LLMESH_TLS_KEY_FILE"] = state.tls["key_file"]
    if state.tls.get("server_name"):  # absent from the mesh.json of an older `llmesh up`
        os.environ["LLMESH_TLS_SERVER_NAME"] = state.tls["server_name"]
    return True
