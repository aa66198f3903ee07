"""The launcher's child processes (one mesh service, or the local nats-server): environment, log,
ready file and lifecycle; and what the launcher knows of processes it did not start itself."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from llmesh.kit.nats_server import NatsServerProcess

# Five services share a small machine: no library may spin-wait on every core (docs/adr/0003).
THREAD_DEFAULTS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on `port` now. SO_REUSEADDR, as the gRPC server and
    nats-server bind: the TIME_WAIT connections a stopped server leaves behind do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A process that exited but was not reaped (its parent is gone and PID 1 does not reap, as in
    # some containers) still answers signal 0: it is dead all the same.
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def process_start_ticks(pid: int | None) -> int | None:
    """When the process started (clock ticks since boot; Linux), to tell it from a later process
    that reuses its pid; None when unknown."""
    if not pid:
        return None
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at field 3; starttime is field 22.
    return int(stat.rsplit(")", 1)[-1].split()[19])


def same_process(pid: int | None, start_ticks: int | None) -> bool:
    """True when `pid` is alive and still the process that started at `start_ticks`."""
    if not pid_alive(pid):
        return False
    return start_ticks is None or process_start_ticks(pid) in (None, start_ticks)


def tail(path: pathlib.Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def service_env(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    for key, value in THREAD_DEFAULTS.items():
        env.setdefault(key, value)
    env.update(OFFLINE)
    env.update(extra)
    return env


class ServiceProcess:
    def __init__(
        self,
        name: str,
        *,
        port: int,
        home: pathlib.Path,
        env: dict[str, str],
        http_port_variable: str | None = None,
        service: str | None = None,
    ):
        #: the process's name in the mesh (a replica's: "router-2", launcher/state.replica_name)
        self.name = name
        #: the service it runs (`name` unless it is a further replica)
        self.service = service or name
        self.requested_port = port
        #: the variable that sets the port of the service's HTTP API (the edge), if it has one
        self.http_port_variable = http_port_variable
        self.http_port: int | None = None
        self.log_path = home / "logs" / f"{name}.log"
        self.ready_file = home / "run" / f"{name}.ready.json"
        self._env = env
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Starts the service; once it has bound its ports, a restart asks for the same ones, so
        that the services calling it reach it again without reconfiguration."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        env = service_env(
            self._env,
            {
                "LLMESH_PORT": str(self.port if self.port else self.requested_port),
                "LLMESH_METRICS_PORT": str(self.metrics_port or 0),
                "LLMESH_READY_FILE": str(self.ready_file),
            },
        )
        if self.http_port_variable and self.http_port:
            env[self.http_port_variable] = str(self.http_port)
        with open(self.log_path, "ab") as log:
            log.write(f"--- llmesh up: starting {self.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            # A session of its own: Ctrl-C in the terminal reaches the launcher only, which then
            # stops the services in order.
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"llmesh.services.{self.service}"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None

    def read_ready_file(self) -> bool:
        """True once the service wrote its bound ports (it does so when SERVING)."""
        try:
            data = json.loads(self.ready_file.read_text())
        except (FileNotFoundError, ValueError):
            return False
        if data.get("pid") != self.pid:
            return False
        self.port, self.metrics_port = int(data["port"]), int(data["metrics_port"])
        if data.get("http_port"):
            self.http_port = int(data["http_port"])
        return True

    def ready(self) -> bool:
        return self.read_ready_file()

    def wait_ready(self, timeout_s: float) -> None:
        """Blocks until the service is SERVING (its ready file names this process)."""
        deadline = time.monotonic() + timeout_s
        while not self.read_ready_file():
            if self.exit_code() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
            time.sleep(0.05)

    def stop(self, timeout_s: float) -> None:
        """SIGTERM (graceful drain), then SIGKILL after `timeout_s`."""
        self.terminate()
        if not self.wait(timeout_s):
            self.kill()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> bool:
        if self.process is None:
            return True
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.ready_file.unlink(missing_ok=True)


class NatsProcess:
    """The launcher's own nats-server, with the interface of a ServiceProcess. The first start lets
    nats-server pick a free port; a restart asks for that port again and keeps the JetStream store
    folder, so streams, consumers and KV buckets survive and the services' clients reconnect."""

    name = "nats"

    def __init__(self, home: pathlib.Path):
        self.store_dir = home / "nats"
        self.log_path = home / "logs" / "nats.log"
        self.server: NatsServerProcess | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return self.url

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server and self.server.process else None

    def start(self) -> None:
        """Blocks until nats-server listens; raises RuntimeError (or OSError) when it does not."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"--- llmesh up: starting nats-server at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        self.server = NatsServerProcess(
            str(self.store_dir),
            port=self.port or -1,
            log_path=str(self.log_path),
            # a region's JetStream domain and leaf node link (`llmesh up --regions`, ADR 0017)
            config_file=os.environ.get("LLMESH_NATS_CONFIG") or None,
        )
        self.server.start()
        self.port = self.server.port

    def exit_code(self) -> int | None:
        if self.server is None or self.server.process is None:
            return None
        return self.server.process.poll()

    def ready(self) -> bool:
        return self.server is not None and self.server.port is not None and self.exit_code() is None

    def terminate(self) -> None:
        # SIGINT: nats-server shuts JetStream down and exits 0 (on SIGTERM it does the same, exit 1).
        if self.exit_code() is None and self.server is not None and self.server.process is not None:
            self.server.process.send_signal(signal.SIGINT)

    def wait(self, timeout_s: float) -> bool:
        if self.server is None or self.server.process is None:
            return True
        try:
            self.server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        if self.exit_code() is None and self.server is not None and self.server.process is not None:
            self.server.process.kill()
            self.server.process.wait()
