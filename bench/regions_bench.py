"""Regions benchmark (ADR 0017): how long an invalidation takes to reach the other region's
stream, against the same publish reaching its own region's stream (baseline, same run).

    .venv/bin/python bench/regions_bench.py [--events 300] [--out bench/results/regions.md]

Starts two private nats-servers configured as regions a and b (own JetStream domains, a leaf node
link, LLMESH_CACHE_INVALIDATE in each sourcing the other's), publishes invalidation-sized events
one at a time in region b and times, per event, its arrival at a durable consumer of region b's
stream (local) and of region a's stream (cross-region, via sourcing). One machine, loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.nats_server import NatsServerProcess, region_config
from llmesh.kit.streams import CACHE_INVALIDATE, cache_invalidate_subject
from llmesh.kit.testing import free_port


async def measure(events: int, tmp: str) -> dict[str, list[float]]:
    leaf = free_port()
    servers = {}
    for region, kwargs in (
        ("a", {"leaf_listen_port": leaf}),
        ("b", {"hub_leaf_urls": (f"nats-leaf://127.0.0.1:{leaf}",)}),
    ):
        config = pathlib.Path(tmp) / f"{region}.conf"
        config.write_text(region_config(region, **kwargs))
        servers[region] = NatsServerProcess(f"{tmp}/{region}", config_file=str(config)).start()
    buses = {}
    try:
        for region, other in (("a", "b"), ("b", "a")):
            buses[region] = await Bus.connect(servers[region].url, f"bench-{region}")
            await buses[region].ensure_stream(CACHE_INVALIDATE.sourcing([other]))
        arrived: dict[str, dict[str, float]] = {"a": {}, "b": {}}
        for region in ("a", "b"):

            async def on_event(data: bytes, region: str = region) -> None:
                event = events_pb2.CacheInvalidated.FromString(data)
                arrived[region].setdefault(event.event_id, time.perf_counter())

            await buses[region].consume_durable(CACHE_INVALIDATE, "llmesh.cache.invalidate.>", "bench", on_event)
        sent: dict[str, float] = {}
        for i in range(events + 20):  # the first 20 warm the source consumer up and are not counted
            event_id = f"bench-{i}"
            event = events_pb2.CacheInvalidated(event_id=event_id, tenant_id="bench", all=True)
            sent[event_id] = time.perf_counter()
            await buses["b"].publish(cache_invalidate_subject("bench"), event, msg_id=event_id)
            deadline = time.monotonic() + 10
            while event_id not in arrived["a"] or event_id not in arrived["b"]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{event_id} did not reach both regions within 10 s")
                await asyncio.sleep(0.0005)
        counted = [f"bench-{i}" for i in range(20, events + 20)]
        return {
            "same region (b → b)": [(arrived["b"][e] - sent[e]) * 1000 for e in counted],
            "cross-region (b → a)": [(arrived["a"][e] - sent[e]) * 1000 for e in counted],
        }
    finally:
        for bus in buses.values():
            await bus.close()
        for server in servers.values():
            server.stop()


def report(results: dict[str, list[float]], events: int) -> str:
    lines = [
        "# Regions: invalidation delivery",
        "",
        f"`bench/regions_bench.py --events {events}` on {platform.node()} ({platform.processor() or platform.machine()}), "
        f"{datetime.date.today()}; nats-server per region, leaf node link, stream sourcing (ADR 0017).",
        "Time from the publish call in region b to the event's delivery to a durable consumer, one event at a time.",
        "",
        "| path | events | p50 ms | p95 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for path, values in results.items():
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        lines.append(f"| {path} | {len(values)} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {max(values):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--out", default="bench/results/regions.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(measure(args.events, tmp))
    text = report(results, args.events)
    pathlib.Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
