"""Router benchmark: what the router's pipeline adds to a request, on a cache hit and on a miss.

    .venv/bin/python bench/router_bench.py [--calls 1000] [--concurrency 16] [--out bench/results/router.md]
    LLMESH_API_KEY=... .venv/bin/python bench/router_bench.py --mesh [--calls 200] [--model-calls 20]

Default: hosts the router in this process with the in-test fake upstream services
(services/router/tests/fakes.py: real gRPC servers answering at once, inference streaming four deltas) and a
private nats-server, so the numbers are the router's own work plus its gRPC hops, not a model's.
Everything shares one event loop and one core: the client, the router and the four fakes.

--mesh: measures a running mesh (`llmesh up`) through its router instead: exact hits (real tenancy,
classifier and cache) and bypassed requests that reach the real model. Writes a markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fakes live with the router's tests

from llmesh.kit.client import open_channel  # noqa: E402
from llmesh.kit.config import ServerSettings, load_settings  # noqa: E402
from llmesh.kit.nats_server import NatsServerProcess  # noqa: E402
from llmesh.kit.testing import hosted  # noqa: E402
from llmesh.router.v1 import router_pb2  # noqa: E402
from llmesh.services.router.app import RouterApp  # noqa: E402

from services.router.tests.conftest import RouterClient, router_settings  # noqa: E402
from services.router.tests.fakes import FakeUpstreams  # noqa: E402


def _row(name: str, ms: list[float]) -> str:
    a = np.array(ms)
    return (
        f"| {name} | {len(a)} | {np.median(a):.2f} | {np.percentile(a, 90):.2f} | "
        f"{np.percentile(a, 99):.2f} | {a.max():.2f} |"
    )


async def _one(client: RouterClient, api_key: str, text: str, **fields) -> tuple[float, float, int]:
    """(client-side ms to the summary, router-reported TTFT ms, cache outcome)."""
    started = time.perf_counter()
    summary = None
    async for response in client.call(api_key, client.request(text, **fields)):
        if response.HasField("summary"):
            summary = response.summary
    return (time.perf_counter() - started) * 1000, summary.time_to_first_token_ms, summary.cache_outcome


async def _sequential(client, api_key, calls: int, text: str, **fields):
    totals, ttfts = [], []
    for _ in range(calls):
        total, ttft, _ = await _one(client, api_key, text, **fields)
        totals.append(total)
        ttfts.append(ttft)
    return totals, ttfts


async def _concurrent(client, api_key, calls: int, concurrency: int, text: str, **fields) -> tuple[float, list[float]]:
    queue = list(range(calls))
    latencies: list[float] = []

    async def worker():
        while queue:
            queue.pop()
            latencies.append((await _one(client, api_key, text, **fields))[0])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started), latencies


async def run(calls: int, concurrency: int) -> str:
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        nats = NatsServerProcess(os.path.join(tmp, "nats")).start()
        try:
            fakes = FakeUpstreams()
            async with hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as up:
                fakes.address = up.address
                for ttl, label in ((30.0, "principal cached"), (0.0, "no principal cache")):
                    app = RouterApp(router_settings(nats.url, up.address, principal_ttl_s=ttl))
                    async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
                        client = RouterClient(channel, fakes)
                        api_key, _, _ = client.new_key()
                        await _one(client, api_key, "warm up")
                        _, _, outcome = await _one(client, api_key, "warm up")
                        assert outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT
                        hit, hit_ttft = await _sequential(client, api_key, calls, "warm up")
                        rows.append(_row(f"exact hit, {label}: client → summary", hit))
                        rows.append(_row(f"exact hit, {label}: router TTFT", hit_ttft))
                        miss, miss_ttft = await _sequential(
                            client, api_key, calls, "fresh", cache_policy=router_pb2.CACHE_POLICY_BYPASS
                        )
                        rows.append(_row(f"miss (bypass), {label}: client → summary", miss))
                        rows.append(_row(f"miss (bypass), {label}: router TTFT", miss_ttft))
                        if ttl:
                            rate, lat = await _concurrent(client, api_key, calls, concurrency, "warm up")
                            rows.append(_row(f"exact hit, {concurrency} concurrent: client → summary", lat))
                            notes.append(f"exact hits at {concurrency} concurrent callers: {rate:.0f} requests/s")
        finally:
            nats.stop()
    header = [
        "# Router benchmark",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · `.venv/bin/python bench/router_bench.py "
        f"--calls {calls} --concurrency {concurrency}`",
        "",
        "Router in-process with instant fake upstreams (services/router/tests/fakes.py) and a private nats-server; "
        "client, router and fakes share one event loop. A hit is auth (cached or not) + classify ‖ lookup + "
        "streamed content; a miss is auth + classify + a 4-delta inference stream + summary.",
        "",
        "| measurement | n | median ms | p90 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join([*header, *rows, "", *(f"- {n}" for n in notes), ""])


async def run_against_mesh(calls: int, model_calls: int, concurrency: int) -> str:
    from llmesh.launcher.state import endpoint

    api_key = os.environ.get("LLMESH_API_KEY", "")
    if not api_key:
        raise SystemExit("--mesh needs LLMESH_API_KEY (`llmesh tenant create NAME` prints one)")
    rows, notes = [], []
    async with open_channel(endpoint("router")) as channel:
        client = RouterClient(channel, None)
        question = f"What is the capital of France? ({os.getpid()})"
        _, first_ttft, outcome = await _one(client, api_key, question, max_tokens=16)
        notes.append(f"first request (miss, real model): router TTFT {first_ttft:.1f} ms")
        _, _, outcome = await _one(client, api_key, question, max_tokens=16)
        assert outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT, outcome
        hit, hit_ttft = await _sequential(client, api_key, calls, question, max_tokens=16)
        rows.append(_row("exact hit: client → summary", hit))
        rows.append(_row("exact hit: router TTFT", hit_ttft))
        rate, lat = await _concurrent(client, api_key, calls, concurrency, question, max_tokens=16)
        rows.append(_row(f"exact hit, {concurrency} concurrent: client → summary", lat))
        notes.append(f"exact hits at {concurrency} concurrent callers: {rate:.0f} requests/s")
        miss, miss_ttft = await _sequential(
            client, api_key, model_calls, question, max_tokens=16, cache_policy=router_pb2.CACHE_POLICY_BYPASS
        )
        rows.append(_row("bypass, real model, 16 tokens: client → summary", miss))
        rows.append(_row("bypass, real model, 16 tokens: router TTFT", miss_ttft))
    header = [
        "# Router benchmark: a running mesh",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · `.venv/bin/python bench/router_bench.py --mesh --calls {calls} "
        f"--model-calls {model_calls}`",
        "",
        "The five services as `llmesh up` runs them (separate processes, one NATS), called through the router.",
        "",
        "| measurement | n | median ms | p90 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join([*header, *rows, "", *(f"- {n}" for n in notes), ""])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--model-calls", type=int, default=20, help="--mesh: requests that reach the model")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mesh", action="store_true", help="measure the running mesh instead of fakes")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)
    if args.mesh:
        report = asyncio.run(run_against_mesh(args.calls, args.model_calls, args.concurrency))
        args.out = args.out or str(ROOT / "bench" / "results" / "router_mesh.md")
    else:
        report = asyncio.run(run(args.calls, args.concurrency))
        args.out = args.out or str(ROOT / "bench" / "results" / "router.md")
    pathlib.Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
