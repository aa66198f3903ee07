"""Runs a private `tritonserver` (Triton Inference Server) on free ports, with Triton's own Python
environment (.venv-triton, `make triton-env`; deploy/triton/README.md): used by the tests and by
the launcher. The Python-backend model runs in the interpreter first on PATH, so that
environment's bin goes first; the server's shared libraries come from nvidia-pytriton's wheel.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sysconfig
import threading
import time
import urllib.request

from llmesh.kit.testing import free_port

REPO_ROOT = pathlib.Path(__file__).resolve().parents[5]
# LLMESH_TRITON_ENV points at another prepared environment.
DEFAULT_ENV = pathlib.Path(os.environ.get("LLMESH_TRITON_ENV") or REPO_ROOT / ".venv-triton")
DEFAULT_REPOSITORY = REPO_ROOT / "deploy" / "triton" / "cpu"


class TritonEnvironment:
    """Where .venv-triton keeps the server binary, its libraries and the prepared backends."""

    def __init__(self, root: str | os.PathLike = DEFAULT_ENV):
        self.root = pathlib.Path(root).resolve()
        python = self.root / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(f"{self.root} is missing: run `make triton-env`")
        version = subprocess.run(
            [
                str(python),
                "-c",
                "import sys, sysconfig; print(sysconfig.get_paths()['purelib']);"
                "print(sysconfig.get_config_var('LIBDIR'))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        self.site_packages = pathlib.Path(version[0])
        self.python_libdir = version[1]
        self.binary = self.site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        self.libraries = self.site_packages / "nvidia_pytriton.libs"
        self.backends = self.root / "backends"
        if not (self.backends / "python" / "triton_python_backend_stub").exists():
            raise FileNotFoundError(f"{self.backends} has no Python backend stub: run `make triton-env`")

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.root / 'bin'}:{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.root)
        env.pop("PYTHONHOME", None)
        libs = [str(self.libraries), self.python_libdir or sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, "1")
        return env


class TritonServerProcess:
    """`start()` runs tritonserver and waits until it and every model are ready; `urls` then
    tells where (grpc host:port for tritonclient, http, metrics). `extra_env` reaches the models
    (e.g. LLMESH_TRITON_GGUF)."""

    def __init__(
        self,
        model_repository: str | os.PathLike = DEFAULT_REPOSITORY,
        *,
        env_root: str | os.PathLike = DEFAULT_ENV,
        host: str = "127.0.0.1",
        extra_env: dict[str, str] | None = None,
        log_path: str | None = None,
        grpc_port: int = 0,
    ):
        self.model_repository = pathlib.Path(model_repository).resolve()
        self.environment = TritonEnvironment(env_root)
        self.host = host
        self.extra_env = dict(extra_env or {})
        self.log_path = log_path
        self.requested_grpc_port = grpc_port
        self.process: subprocess.Popen | None = None
        self.grpc_port = self.http_port = self.metrics_port = 0
        self._log_tail: list[str] = []

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def urls(self) -> dict[str, str]:
        return {
            "grpc": self.grpc_url,
            "http": f"http://{self.host}:{self.http_port}",
            "metrics": f"http://{self.host}:{self.metrics_port}/metrics",
        }

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout_s: float = 90.0) -> TritonServerProcess:
        """Starts the server (same gRPC port as before on a restart) and waits for readiness."""
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def launch(self) -> None:
        """Starts the server (same gRPC port as before on a restart) without waiting: `ready()`
        says when it and its models serve."""
        if not self.grpc_port:
            self.grpc_port = self.requested_grpc_port or free_port(self.host)
        # A restart keeps every port: the catalog and `llmesh status` name them.
        self.http_port = self.http_port or free_port(self.host)
        self.metrics_port = self.metrics_port or free_port(self.host)
        env = self.environment.environ()
        env.update(self.extra_env)
        command = [
            str(self.environment.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.environment.backends}",
            f"--grpc-address={self.host}",
            f"--http-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        log_file = open(self.log_path, "a") if self.log_path else None
        process = self.process

        def pump() -> None:  # keeps reading so tritonserver never blocks on a full pipe
            try:
                for line in process.stdout:
                    if log_file:
                        log_file.write(line)
                        log_file.flush()
                    self._log_tail = [*self._log_tail[-200:], line]
            finally:
                if log_file:
                    log_file.close()

        threading.Thread(target=pump, daemon=True).start()

    def wait_ready(self, timeout_s: float) -> None:
        """Waits for a launched server; stops it and raises RuntimeError (with its last lines) when
        it exits or is not ready within `timeout_s`."""
        process = self.process
        assert process is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "".join(self._log_tail[-15:])
                raise RuntimeError(f"tritonserver did not become ready (exit {process.returncode}):\n{tail}")
            time.sleep(0.1)

    def log_lines(self) -> list[str]:
        """The server's last lines of output."""
        return list(self._log_tail)

    def ready(self) -> bool:
        """Server and all its models ready (Triton's HTTP health endpoint)."""
        if not self.http_port:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would (for failure tests)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (Triton drains and unloads its models), SIGKILL after `timeout_s`; the Python
        backend stubs are in the same process group and go with it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # stubs left behind by a killed server
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()

    def __enter__(self) -> TritonServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
