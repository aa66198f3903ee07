"""Batch workers' gathering window, idle and under load, and item throughput.

    .venv/bin/python bench/batch_window_bench.py [--items 300] [--out bench/results/batch_window.md]

A private nats-server and the router's BatchRunner with its real JetStream work queue and KV
results; the generation behind it is a stand-in that answers each item in a fixed service time
(`--service-ms`), since what is measured is the queueing around the backend, not the model.
Phases: idle (no items), load (one job of --items items), idle again. The window (the fetch wait)
is sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import pathlib
import statistics
import tempfile
import time

from llmesh.kit.bus import Bus
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.vocabulary import FinishReason, Principal, Sensitivity
from llmesh.services.router.batch import parse_jsonl
from llmesh.services.router.batch_runner import BatchRunner, RunnerConfig
from llmesh.services.router.domain import CacheOutcome, Delta, Summary, Usage


def _jsonl(n: int) -> bytes:
    return "\n".join(
        json.dumps(
            {"custom_id": f"i{i}", "body": {"messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 4}}
        )
        for i in range(n)
    ).encode()


async def main(args) -> str:
    server = NatsServerProcess(tempfile.mkdtemp(prefix="bench-nats-")).start()
    bus = await Bus.connect(server.url, "bench")
    service_s = args.service_ms / 1000

    async def generate(principal, command, request_id):
        await asyncio.sleep(service_s)
        yield Delta("four")
        yield Summary(
            request_id=request_id,
            tier=1,
            model="stand-in",
            backend="stand-in",
            cache_outcome=CacheOutcome.MISS,
            usage=Usage(3, 1),
            cost_usd=0.0,
            time_to_first_token_ms=args.service_ms,
            total_time_ms=args.service_ms,
            finish_reason=FinishReason.STOP,
        )

    runner = BatchRunner(bus, generate, RunnerConfig(concurrency=args.workers, ack_wait_s=30))
    await runner.start()
    worker = asyncio.create_task(runner.run())
    principal = Principal("t_bench", "bench", "qa", Sensitivity.INTERNAL, "k_bench")
    samples: dict[str, list[float]] = {"idle before": [], "load": [], "idle after": []}

    async def sample(phase: str, until) -> None:
        while not await until():
            samples[phase].append(runner.window_s)
            await asyncio.sleep(0.02)

    started = time.monotonic()
    await sample("idle before", lambda: _after(started + 3))
    items = parse_jsonl(_jsonl(args.items), "bench")
    job = await runner.submit(principal, items, use_case="bench", window_s=3600, start_after=0, display_name="")
    load_started = time.monotonic()

    async def finished():
        return (await runner.totals(job.job_id)).completed >= args.items

    await sample("load", finished)
    load_s = time.monotonic() - load_started
    idle_again = time.monotonic()
    await sample("idle after", lambda: _after(idle_again + 3))
    runner.stop()
    await asyncio.wait_for(worker, 5)
    await bus.close()
    server.stop()

    rows = [
        f"| {phase} | {len(values)} | {statistics.median(values) * 1000:.0f} | {min(values) * 1000:.0f} | "
        f"{max(values) * 1000:.0f} |"
        for phase, values in samples.items()
    ]
    return "\n".join(
        [
            "# Batch workers: gathering window and throughput",
            "",
            f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on this machine (2 shared cores): "
            f"`.venv/bin/python bench/batch_window_bench.py --items {args.items} --workers {args.workers} "
            f"--service-ms {args.service_ms}`. Real nats-server, JetStream work queue and KV results; a stand-in "
            f"generation of {args.service_ms} ms per item.",
            "",
            "| phase | samples | window p50 (ms) | min | max |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"{args.items} items in {load_s:.2f} s: {args.items / load_s:.1f} items/s with {args.workers} workers "
            f"(the stand-in alone allows {args.workers / service_s:.1f} items/s).",
            "",
        ]
    )


async def _after(deadline: float) -> bool:
    return time.monotonic() >= deadline


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--service-ms", type=float, default=20.0)
    parser.add_argument("--out", default="bench/results/batch_window.md")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    pathlib.Path(args.out).write_text(report)
    print(report)
