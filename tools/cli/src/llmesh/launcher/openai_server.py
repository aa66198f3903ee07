"""The stand-in for a frontier OpenAI-compatible API on one machine: `python -m llama_cpp.server`
(llama-cpp-python's `server` extra) serving a local GGUF under an alias, on a free loopback port.

    server = LlamaCppServerProcess(model_path, alias="gpt-frontier", chat_format="gemma").start()
    server.base_url  # http://127.0.0.1:PORT/v1, for OpenAIBackend
    server.stop()

It serves one request at a time (llama_cpp.server holds a lock per model), stops a generation
when its client disconnects, and sends no usage chunk when asked for one (stream_options).
The bundled Gemma GGUF names no chat format llama_cpp.server recognises: pass chat_format="gemma"
(without it the server falls back to llama-2 turns and the model answers nothing).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

from llmesh.kit.testing import free_port
from llmesh.launcher.processes import tail

THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class LlamaCppServerProcess:
    def __init__(
        self,
        model_path: str | os.PathLike,
        alias: str,
        *,
        threads: int = 1,
        context_length: int = 2048,
        chat_format: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "",
        log_path: str | os.PathLike | None = None,
        python: str = sys.executable,
    ):
        """port 0 picks a free port at start(). `api_key`, when set, is required of clients
        (Authorization: Bearer). Output goes to `log_path` (else it is discarded)."""
        self.model_path = str(model_path)
        self.alias = alias
        self.threads = threads
        self.context_length = context_length
        self.chat_format = chat_format
        self.host = host
        self.requested_port = port
        self.api_key = api_key
        self.log_path = pathlib.Path(log_path) if log_path else None
        self.python = python
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """The API root an OpenAI client takes (with /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        command = [
            self.python,
            "-m",
            "llama_cpp.server",
            "--model",
            self.model_path,
            "--model_alias",
            self.alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads),
            "--n_ctx",
            str(self.context_length),
        ]
        if self.chat_format:
            command += ["--chat_format", self.chat_format]
        if self.api_key:
            command += ["--api_key", self.api_key]
        return command

    def start(self, timeout_s: float = 60.0) -> LlamaCppServerProcess:
        """Starts the server and returns once GET /v1/models answers; RuntimeError (with the end of
        its log) when it exits or does not answer within timeout_s."""
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def launch(self) -> None:
        """Starts the server without waiting: `ready()` says when it answers."""
        if not os.path.exists(self.model_path):
            raise FileNotFoundError(f"model file {self.model_path} not found")
        self.port = self.requested_port or free_port(self.host)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **THREAD_ENV},
                start_new_session=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    def wait_ready(self, timeout_s: float) -> None:
        """Waits for a launched server; stops it and raises RuntimeError (with the end of its log)
        when it exits or does not answer within `timeout_s`."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop()
                raise RuntimeError(
                    f"llama_cpp.server did not answer on {self.base_url} within {timeout_s:g}s "
                    f"(exit {code}): {tail(self.log_path) if self.log_path else '(no log)'}"
                )
            time.sleep(0.1)

    def ready(self) -> bool:
        request = urllib.request.Request(f"{self.base_url}/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LlamaCppServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
