"""What the cache's semantic lookup costs a miss's first token, with and without speculative
dispatch (ADR 0029), the embedding's CPU left out.

    .venv/bin/python bench/router_speculation_bench.py [--calls 100] [--semantic-ms 17] [--ttft-ms 0 50]

Hosts the router in this process with the fake upstream services (services/router/tests/fakes.py,
real gRPC servers) and a private nats-server. The fake cache's full lookup (not exact_only) waits
--semantic-ms before it answers a miss (the embedding's time on this machine, without its CPU
use); the fake inference waits --ttft-ms before its first delta. Three tenants, interleaved
request by request: speculation on (the default), speculation off (the policy), and the cache
bypassed (no lookup at all: the reference). The TTFT the cache adds is each mode's p50 minus the
bypassed p50, at the same inference TTFT. hot_path_bench.py measures the real cache.
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
from llmesh.kit.logging import configure_logging  # noqa: E402
from llmesh.kit.nats_server import NatsServerProcess  # noqa: E402
from llmesh.kit.testing import hosted  # noqa: E402
from llmesh.router.v1 import router_pb2  # noqa: E402
from llmesh.services.router.app import RouterApp  # noqa: E402

from services.router.tests.conftest import RouterClient, router_settings  # noqa: E402
from services.router.tests.fakes import FakeUpstreams  # noqa: E402

MODES = ("speculation on", "speculation off", "cache bypassed")


async def _ttft(client: RouterClient, api_key: str, text: str, *, bypass: bool) -> float:
    policy = router_pb2.CACHE_POLICY_BYPASS if bypass else router_pb2.CACHE_POLICY_UNSPECIFIED
    started = time.perf_counter()
    first = None
    summary = None
    async for response in client.call(api_key, client.request(text, cache_policy=policy), timeout=30):
        if response.HasField("summary"):
            summary = response.summary
        elif first is None:
            first = time.perf_counter()
    expected = router_pb2.CACHE_OUTCOME_BYPASSED if bypass else router_pb2.CACHE_OUTCOME_MISS
    if summary.cache_outcome != expected:
        raise RuntimeError(f"expected {expected}, got {summary}")
    return (first - started) * 1000


async def run(calls: int, semantic_ms: float, ttfts: list[int]) -> tuple[dict, tuple]:
    with tempfile.TemporaryDirectory() as tmp:
        nats = NatsServerProcess(os.path.join(tmp, "nats")).start()
        try:
            up = FakeUpstreams()
            async with hosted(up, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as uphost:
                app = RouterApp(router_settings(nats.url, uphost.address, upstream_timeout_s=5.0))
                async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
                    client = RouterClient(channel, up)
                    keys = {mode: client.new_key() for mode in MODES}
                    off = {"speculation": {"enabled": False}}
                    await app.policy.put(f"tenant.{keys['speculation off'][1]}", off)
                    while app.policy.get(f"tenant.{keys['speculation off'][1]}") != off:
                        await asyncio.sleep(0.05)
                    load = os.getloadavg()
                    results: dict[tuple[str, int], list[float]] = {(m, t): [] for m in MODES for t in ttfts}
                    for i in range(calls):
                        for ttft in ttfts:
                            for mode in MODES[i % 3 :] + MODES[: i % 3]:
                                text = f"q{i} {mode} [ttft:{ttft}]"
                                up.cache.semantic_delay_s[text] = semantic_ms / 1000.0
                                ms = await _ttft(client, keys[mode][0], text, bypass=mode == "cache bypassed")
                                results[(mode, ttft)].append(ms)
        finally:
            nats.stop()
    return results, (load, os.getloadavg())


def report(results: dict, loads: tuple, args) -> str:
    (l0, l1) = loads
    lines = [
        "## In-process: the mechanism, without the embedding's CPU (bench/router_speculation_bench.py)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {os.cpu_count()} CPUs (shared) · Python "
        f"{platform.python_version()} · `.venv/bin/python bench/router_speculation_bench.py --calls {args.calls} "
        f"--semantic-ms {args.semantic_ms:g} --ttft-ms {' '.join(map(str, args.ttft_ms))}`",
        "",
        f"Load average at the start {l0[0]:.2f} / {l0[1]:.2f} / {l0[2]:.2f}, at the end {l1[0]:.2f} / {l1[1]:.2f} / "
        f"{l1[2]:.2f}. Router and fakes in one process; the fake cache's full lookup takes {args.semantic_ms:g} ms; "
        f"{args.calls} requests per mode and inference TTFT, modes interleaved request by request.",
        "",
        "| inference TTFT ms | mode | n | TTFT p50 ms | p90 ms | cache adds (p50 − bypassed p50) ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for ttft in args.ttft_ms:
        base = float(np.median(results[("cache bypassed", ttft)]))
        for mode in MODES:
            values = np.array(results[(mode, ttft)])
            p50 = float(np.median(values))
            lines.append(
                f"| {ttft} | {mode} | {len(values)} | {p50:.2f} | {np.percentile(values, 90):.2f} | {p50 - base:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--semantic-ms", type=float, default=17.0)
    parser.add_argument("--ttft-ms", type=int, nargs="+", default=[0, 50])
    parser.add_argument("--out", type=pathlib.Path, default=None, help="also write the report here")
    args = parser.parse_args()
    configure_logging("bench", "warning")  # the router's request lines would cost more than the path measured
    results, loads = asyncio.run(run(args.calls, args.semantic_ms, args.ttft_ms))
    text = report(results, loads, args)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
