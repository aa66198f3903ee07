"""One mesh service as a child process of the launcher: its environment, log, ready file and
lifecycle."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

# Five services share a small machine: no library may spin-wait on every core (docs/adr/0003).
THREAD_DEFAULTS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
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
    def __init__(self, name: str, *, port: int, home: pathlib.Path, env: dict[str, str]):
        self.name = name
        self.requested_port = port
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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        env = service_env(
            self._env,
            {
                "LLMESH_PORT": str(self.requested_port),
                "LLMESH_METRICS_PORT": "0",
                "LLMESH_READY_FILE": str(self.ready_file),
            },
        )
        with open(self.log_path, "ab") as log:
            log.write(f"--- llmesh up: starting {self.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            # A session of its own: Ctrl-C in the terminal reaches the launcher only, which then
            # stops the services in order.
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"llmesh.services.{self.name}"],
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
        return True

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
