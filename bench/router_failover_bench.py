"""Failover under load: the tier-1 model dies mid-run and comes back (issue 10, section 5).

    .venv/bin/python bench/router_failover_bench.py [--concurrency 8] [--kill-at 3] [--down-for 8] [--run-for 20]

Hosts the router in this process (default breaker settings) with the fake upstream services
(services/router/tests/fakes.py, real gRPC servers) and a private nats-server. Tier 1 is `t1`,
its fallback `t2` (tier 2); both stream 8 deltas, 2 ms apart. Closed-loop clients keep
--concurrency requests in flight. At --kill-at seconds `t1` starts failing every call with
UNAVAILABLE (what inference answers when its Triton is gone); --down-for seconds later it answers
again. Reports the error rate, when traffic reached the fallback and when the breaker stopped
sending requests to `t1` at all, when `t1` served again, and latency percentiles before, during
and after (the `before` phase is the baseline of the same run).
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

import grpc
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fakes live with the router's tests

from llmesh.common.v1 import common_pb2  # noqa: E402
from llmesh.inference.v1 import inference_pb2  # noqa: E402
from llmesh.kit.client import open_channel  # noqa: E402
from llmesh.kit.config import ServerSettings, load_settings  # noqa: E402
from llmesh.kit.nats_server import NatsServerProcess  # noqa: E402
from llmesh.kit.testing import hosted  # noqa: E402
from llmesh.router.v1 import router_pb2  # noqa: E402
from llmesh.services.router.app import RouterApp  # noqa: E402

from services.router.tests.conftest import RouterClient, router_settings  # noqa: E402
from services.router.tests.fakes import FakeUpstreams  # noqa: E402

SELF, R = inference_pb2.HOSTING_SELF_HOSTED, common_pb2.SENSITIVITY_RESTRICTED
CATALOG = [
    inference_pb2.ModelInfo(name="t1", backend="triton", tiers=[1], hosting=SELF, max_sensitivity=R),
    inference_pb2.ModelInfo(name="t2", backend="triton", tiers=[2], hosting=SELF, max_sensitivity=R),
]
WORDS = [f"w{i} " for i in range(8)]


async def run(concurrency: int, kill_at: float, down_for: float, run_for: float) -> str:
    records: list[tuple[float, float, str, int, bool]] = []  # (start, latency ms, model, attempts, t1 tried)
    errors: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        nats = NatsServerProcess(os.path.join(tmp, "nats")).start()
        try:
            up = FakeUpstreams(CATALOG)
            up.inference.token_delay_s.update({"t1": 0.002, "t2": 0.002})
            up.inference.answers.update({"t1": WORDS, "t2": WORDS})
            async with hosted(up, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as uphost:
                app = RouterApp(
                    router_settings(
                        nats.url, uphost.address, tier_models="", default_model="", prices="", upstream_timeout_s=2.0
                    )
                )
                async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
                    client = RouterClient(channel, up)
                    api_key, _, _ = client.new_key()
                    t0 = time.perf_counter()
                    stop_at = t0 + run_for

                    async def worker(n: int) -> None:
                        i = 0
                        while time.perf_counter() < stop_at:
                            i += 1
                            started = time.perf_counter()
                            request = client.request(f"w{n} r{i}", cache_policy=router_pb2.CACHE_POLICY_BYPASS)
                            try:
                                summary = None
                                async for response in client.call(api_key, request, timeout=10):
                                    if response.HasField("summary"):
                                        summary = response.summary
                                tried = any(a.model == "t1" for a in summary.attempts)
                                records.append(
                                    (
                                        started - t0,
                                        (time.perf_counter() - started) * 1000,
                                        summary.model,
                                        len(summary.attempts),
                                        tried,
                                    )
                                )
                            except grpc.aio.AioRpcError as exc:
                                errors.append((started - t0, exc.code().name))

                    async def chaos() -> None:
                        await asyncio.sleep(kill_at)
                        up.inference.down.add("t1")
                        await asyncio.sleep(down_for)
                        up.inference.down.discard("t1")

                    await asyncio.gather(chaos(), *(worker(n) for n in range(concurrency)))
        finally:
            nats.stop()

    back_at = kill_at + down_for
    total = len(records) + len(errors)
    first_fallback = min((s for s, _, m, _, _ in records if s >= kill_at and m == "t2"), default=None)
    # The breaker open: from then on requests no longer try t1 (until the half-open probe).
    skipping = min((s for s, _, _, _, tried in records if s >= kill_at and not tried), default=None)
    served_again = min((s for s, _, m, _, _ in records if s >= back_at and m == "t1"), default=None)

    def phase(lo: float, hi: float) -> list[float]:
        return [lat for s, lat, _, _, _ in records if lo <= s < hi]

    def row(name: str, lats: list[float], lo: float, hi: float) -> str:
        errs = sum(1 for s, _ in errors if lo <= s < hi)
        n = len(lats) + errs
        if not lats:
            return f"| {name} | {n} | {errs} | - | - | - |"
        a = np.array(lats)
        return (
            f"| {name} | {n} | {errs} ({100.0 * errs / max(n, 1):.2f} %) | {np.median(a):.1f} | "
            f"{np.percentile(a, 95):.1f} | {np.percentile(a, 99):.1f} |"
        )

    def secs(value: float | None, since: float) -> str:
        return "never" if value is None else f"{value - since:.2f} s"

    lines = [
        "# Router: failover under load",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs (shared).",
        "",
        f"Command: `.venv/bin/python bench/router_failover_bench.py --concurrency {concurrency} --kill-at {kill_at:g} "
        f"--down-for {down_for:g} --run-for {run_for:g}`",
        "",
        "Router in-process with default breaker settings (5 consecutive failures, 5 s first ejection), fake "
        "upstreams over real gRPC; t1 (tier 1) fails every call with UNAVAILABLE from "
        f"{kill_at:g} s to {back_at:g} s; fallback t2 (tier 2). Latency: client-side ms per request, by start time.",
        "",
        f"- requests: {total}, errors: {len(errors)} ({100.0 * len(errors) / max(total, 1):.2f} %)",
        f"- first answer from the fallback after the kill: {secs(first_fallback, kill_at)}",
        f"- breaker open (requests no longer try t1): {secs(skipping, kill_at)} after the kill",
        f"- t1 serving again after its return: {secs(served_again, back_at)}",
        "",
        "| phase | requests | errors | p50 | p95 | p99 |",
        "| --- | --- | --- | --- | --- | --- |",
        row("before (baseline)", phase(0, kill_at), 0, kill_at),
        row("t1 down", phase(kill_at, back_at), kill_at, back_at),
        row("after", phase(back_at, run_for), back_at, run_for),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kill-at", type=float, default=3.0)
    parser.add_argument("--down-for", type=float, default=8.0)
    parser.add_argument("--run-for", type=float, default=20.0)
    parser.add_argument("--out", default=str(ROOT / "bench/results/router_failover.md"))
    args = parser.parse_args()
    report = asyncio.run(run(args.concurrency, args.kill_at, args.down_for, args.run_for))
    pathlib.Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
