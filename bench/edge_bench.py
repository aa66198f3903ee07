"""Edge benchmark: what the OpenAI-compatible edge adds over calling the router directly, beside
what LiteLLM's proxy adds over calling its upstream directly: p50 and p99 at concurrency 1 and 16,
measured side by side in one run.

    make bench-env   # LiteLLM into .venv-bench (bench/litellm_baseline.py)
    .venv/bin/python bench/edge_bench.py [--calls 1000] [--out bench/results/edge.md]

Processes, so that no hop shares an event loop with the load generator:
- the router (in-process with the router tests' instant fake upstreams and a private nats-server;
  every request is the same prompt, so after the first it is an exact cache hit: the router's own
  work, no model), started by this script in `serve-router` mode;
- the edge (`python -m llmesh.services.edge`) in front of that router;
- the fake OpenAI-compatible upstream (bench/litellm_baseline.py) and LiteLLM's proxy in front of it.
The client (this process, aiohttp and grpc.aio, one connection pool each) sends non-streamed
completions. Added latency = through the proxy − direct, per percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402
from litellm_baseline import FAKE_MODEL, FakeUpstream, LiteLLMProxy  # noqa: E402
from llmesh.common.v1 import common_pb2  # noqa: E402
from llmesh.kit.client import open_channel  # noqa: E402
from llmesh.kit.testing import ensure_identity, free_port, identity_env  # noqa: E402
from llmesh.router.v1 import router_pb2, router_pb2_grpc  # noqa: E402

PROMPT = "What is the capital of France?"
CONCURRENCY = (1, 16)


# -- the router side (a process of its own) ---------------------------------------------------------


async def _serve_router(ready: pathlib.Path) -> None:
    from llmesh.kit.config import ServerSettings, load_settings
    from llmesh.kit.nats_server import NatsServerProcess
    from llmesh.kit.testing import hosted, unique
    from llmesh.services.router.app import RouterApp

    from services.router.tests.conftest import router_settings
    from services.router.tests.fakes import FakeUpstreams

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory() as tmp:
        nats = NatsServerProcess(os.path.join(tmp, "nats")).start()
        try:
            fakes = FakeUpstreams()
            async with hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as up:
                fakes.address = up.address
                app = RouterApp(router_settings(nats.url, up.address, principal_ttl_s=30.0))
                async with hosted(app, app.settings, serve_metrics=False) as host:
                    api_key = unique("sk")
                    fakes.tenancy.add_key(api_key, unique("tenant"), unique("key"), common_pb2.SENSITIVITY_INTERNAL)
                    tmp_ready = ready.with_suffix(".tmp")
                    tmp_ready.write_text(json.dumps({"router": host.address, "api_key": api_key}))
                    tmp_ready.replace(ready)
                    await stop.wait()
        finally:
            nats.stop()


def _wait_file(path: pathlib.Path, process: subprocess.Popen, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args} did not get ready (exit {process.poll()})")
        time.sleep(0.05)
    return json.loads(path.read_text())


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- load ---------------------------------------------------------------------------------------------


async def _run(call, calls: int, concurrency: int) -> list[float]:
    """Latencies (ms) of `calls` calls, `concurrency` at a time."""
    latencies: list[float] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _http_call(session: aiohttp.ClientSession, url: str, key: str, model: str):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16})
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    async def call() -> None:
        async with session.post(f"{url}/chat/completions", data=body, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url}: HTTP {response.status}: {payload[:300]!r}")

    return call


def _grpc_call(stub: router_pb2_grpc.RouterServiceStub, key: str):
    request = router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)], max_tokens=16
    )
    metadata = (("authorization", f"Bearer {key}"),)

    async def call() -> None:
        async for _ in stub.Generate(request, metadata=metadata, timeout=30):
            pass

    return call


def _pcts(ms: list[float]) -> tuple[float, float]:
    a = np.array(ms)
    return float(np.median(a)), float(np.percentile(a, 99))


async def measure(router: str, api_key: str, edge_url: str, upstream_url: str, litellm_url: str | None, calls: int):
    results: dict[tuple[str, int], tuple[float, float]] = {}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session, open_channel(router) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        paths = {
            "router direct (gRPC)": _grpc_call(stub, api_key),
            "edge → router": _http_call(session, edge_url, api_key, "auto"),
            "upstream direct (HTTP)": _http_call(session, upstream_url, "sk-upstream", FAKE_MODEL),
        }
        if litellm_url:
            paths["LiteLLM → upstream"] = _http_call(session, litellm_url, LiteLLMProxy.api_key, FAKE_MODEL)
        for call in paths.values():  # warm-up: connections, the router's cache entry, LiteLLM's imports
            await _run(call, 50, 4)
        for concurrency in CONCURRENCY:
            # Interleaved in rounds, so a slow spell of the shared machine hits every path alike.
            samples: dict[str, list[float]] = {name: [] for name in paths}
            rounds = 5
            for _ in range(rounds):
                for name, call in paths.items():
                    samples[name] += await _run(call, calls // rounds, concurrency)
            for name, ms in samples.items():
                results[(name, concurrency)] = _pcts(ms)
    return results


def report(results, calls: int, litellm_reason: str | None) -> str:
    lines = [
        "# Edge benchmark",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs (shared with other work) · Python {platform.python_version()} · "
        f"`.venv/bin/python bench/edge_bench.py --calls {calls}`",
        "",
        "Non-streamed chat completions, the same prompt every time: through the router it is an exact cache hit "
        "on instant fake upstreams (no model). Each path gets "
        f"{calls} calls per concurrency, in 5 interleaved rounds; client, router, edge, fake upstream and LiteLLM "
        "are separate processes on this machine."
        + ("" if litellm_reason else f" LiteLLM {LiteLLMProxy.version()} (`litellm --config`, 1 worker, .venv-bench)."),
        "",
        "| path | concurrency | p50 ms | p99 ms |",
        "| --- | --- | --- | --- |",
    ]
    for (name, concurrency), (p50, p99) in results.items():
        lines.append(f"| {name} | {concurrency} | {p50:.2f} | {p99:.2f} |")
    lines += ["", "## Added latency (through the proxy − direct)", "", "| proxy | concurrency | p50 ms | p99 ms |"]
    lines.append("| --- | --- | --- | --- |")
    added = {}
    for proxy, direct in (("edge → router", "router direct (gRPC)"), ("LiteLLM → upstream", "upstream direct (HTTP)")):
        for concurrency in CONCURRENCY:
            if (proxy, concurrency) not in results:
                continue
            p50 = results[(proxy, concurrency)][0] - results[(direct, concurrency)][0]
            p99 = results[(proxy, concurrency)][1] - results[(direct, concurrency)][1]
            added[(proxy, concurrency)] = (p50, p99)
            lines.append(f"| {proxy.split(' ')[0]} | {concurrency} | {p50:.2f} | {p99:.2f} |")
    lines += ["", "## Goals", ""]
    edge1 = added.get(("edge → router", 1))
    if edge1:
        verdict = "met" if edge1[0] <= 2.0 else "NOT met"
        lines.append(f"- the edge adds ≤ 2 ms at p50, concurrency 1: {edge1[0]:.2f} ms ({verdict})")
    edge16, lite16 = results.get(("edge → router", 16)), results.get(("LiteLLM → upstream", 16))
    if edge16 and lite16:
        ratio = edge16[1] / lite16[1]
        verdict = "met" if ratio <= 0.2 else "NOT met"
        lines.append(
            f"- at concurrency 16 the edge's p99 ≤ 0.2× LiteLLM's: {edge16[1]:.2f} ms vs {lite16[1]:.2f} ms "
            f"= {ratio:.2f}× ({verdict}; the edge's figure includes the router's own work behind it)"
        )
        edge_added, lite_added = added[("edge → router", 16)][1], added[("LiteLLM → upstream", 16)][1]
        lines.append(
            f"- added p99 alone at concurrency 16: the edge {edge_added:.2f} ms, LiteLLM {lite_added:.2f} ms "
            "(a difference of percentiles; near 0 it is within the noise of the shared machine)"
        )
    if litellm_reason:
        lines.append(f"- LiteLLM not measured: {litellm_reason}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "serve-router"])
    parser.add_argument("--ready", type=pathlib.Path)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results" / "edge.md")
    args = parser.parse_args()
    if args.mode == "serve-router":
        asyncio.run(_serve_router(args.ready))
        return
    litellm_reason = LiteLLMProxy.available()
    with tempfile.TemporaryDirectory() as tmp:
        router_ready = pathlib.Path(tmp) / "router.json"
        router_process = subprocess.Popen(
            [sys.executable, __file__, "serve-router", "--ready", str(router_ready)], stdout=subprocess.DEVNULL
        )
        edge_process = None
        try:
            router = _wait_file(router_ready, router_process)
            edge_ready = pathlib.Path(tmp) / "edge.json"
            env = {
                **os.environ,
                **identity_env(ensure_identity(), "edge"),
                "LLMESH_PORT": "0",
                "LLMESH_METRICS_PORT": "0",
                "LLMESH_EDGE_HTTP_PORT": str(free_port()),
                "LLMESH_READY_FILE": str(edge_ready),
                "LLMESH_ROUTER_ADDR": router["router"],
                "LLMESH_LOG_LEVEL": "warning",
            }
            edge_process = subprocess.Popen([sys.executable, "-m", "llmesh.services.edge"], env=env)
            edge = _wait_file(edge_ready, edge_process)
            edge_url = f"http://127.0.0.1:{edge['http_port']}/v1"
            with FakeUpstream() as upstream:
                if litellm_reason:
                    results = asyncio.run(
                        measure(router["router"], router["api_key"], edge_url, upstream.url, None, args.calls)
                    )
                else:
                    with LiteLLMProxy(upstream.url) as proxy:
                        results = asyncio.run(
                            measure(router["router"], router["api_key"], edge_url, upstream.url, proxy.url, args.calls)
                        )
        finally:
            if edge_process is not None:
                _stop(edge_process)
            _stop(router_process)
    text = report(results, args.calls, litellm_reason)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
