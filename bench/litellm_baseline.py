"""LiteLLM's proxy as a peer baseline, and a tiny fast OpenAI-compatible upstream for it.

Reusable by any benchmark that compares a hop of ours with LiteLLM's (the edge, the router's hot
path):

    with FakeUpstream() as upstream, LiteLLMProxy(upstream.url) as proxy:
        ...  # POST {proxy.url}/chat/completions with model=FAKE_MODEL, key proxy.api_key

LiteLLM runs from its own environment, `.venv-bench` (`make bench-env`; never the workspace lock),
as a subprocess with a generated config file naming the upstream. The upstream is this file run
as a script (`python bench/litellm_baseline.py upstream --port N`): an aiohttp server in a process
of its own that answers every chat completion at once with a fixed reply (streamed or not).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / ".venv-bench"
FAKE_MODEL = "fake-model"
REPLY = "Paris is the capital of France."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, timeout_s: float, log: pathlib.Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} while starting:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class FakeUpstream:
    """The fake OpenAI-compatible upstream in a subprocess; `url` ends with /v1."""

    def __init__(self, port: int = 0):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> FakeUpstream:
        self._process = subprocess.Popen(
            [sys.executable, __file__, "upstream", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_http(f"{self.url}/models", self._process, 30)
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            _stop(self._process)


class LiteLLMProxy:
    """`litellm --config` from .venv-bench in front of `upstream_url`; `url` ends with /v1."""

    api_key = "sk-bench-master-key"

    def __init__(self, upstream_url: str, *, port: int = 0, workers: int = 1):
        self.upstream_url = upstream_url
        self.port = port or _free_port()
        self.workers = workers
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._process: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @staticmethod
    def available() -> str | None:
        """Why LiteLLM cannot run here, or None."""
        if not (BENCH_VENV / "bin" / "litellm").exists():
            return f"{BENCH_VENV}/bin/litellm is missing: run `make bench-env`"
        return None

    @staticmethod
    def version() -> str:
        out = subprocess.run(
            [str(BENCH_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() or "unknown"

    def __enter__(self) -> LiteLLMProxy:
        reason = self.available()
        if reason:
            raise RuntimeError(reason)
        self._tmp = tempfile.TemporaryDirectory()
        config = pathlib.Path(self._tmp.name) / "litellm.yaml"
        # JSON is YAML: no YAML writer needed.
        config.write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": FAKE_MODEL,
                            "litellm_params": {
                                "model": f"openai/{FAKE_MODEL}",
                                "api_base": self.upstream_url,
                                "api_key": "sk-upstream",
                            },
                        }
                    ],
                    "general_settings": {"master_key": self.api_key},
                    "litellm_settings": {"telemetry": False, "drop_params": True, "set_verbose": False},
                }
            )
        )
        log = pathlib.Path(self._tmp.name) / "litellm.log"
        env = {
            **os.environ,
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "DISABLE_ADMIN_UI": "True",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        with open(log, "wb") as out:
            self._process = subprocess.Popen(
                [
                    str(BENCH_VENV / "bin" / "litellm"),
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--num_workers",
                    str(self.workers),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._tmp.name,
            )
        _wait_http(f"http://127.0.0.1:{self.port}/health/liveliness", self._process, 180, log)
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            _stop(self._process)
        if self._tmp is not None:
            self._tmp.cleanup()


def _serve_upstream(port: int) -> None:
    from aiohttp import web

    completion = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": FAKE_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16},
    }
    body = json.dumps(completion).encode()

    async def chat(request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        if not doc.get("stream"):
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for word in REPLY.split(" "):
            chunk = {**completion, "object": "chat.completion.chunk"}
            chunk["choices"] = [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": FAKE_MODEL, "object": "model"}]})

    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", chat), web.get("/v1/models", models)])
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, handle_signals=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    upstream = sub.add_parser("upstream", help="serve the fake OpenAI-compatible upstream")
    upstream.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "upstream":
        _serve_upstream(args.port)


if __name__ == "__main__":
    main()
