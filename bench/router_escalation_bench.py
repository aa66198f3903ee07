"""What quality-scored escalation costs a stream's first token: `release` vs `hold` (ADR 0012).

    .venv/bin/python bench/router_escalation_bench.py [--calls 20] [--token-ms 10] [--out bench/results/router_escalation.md]

Hosts the router in this process with the fake upstream services (services/router/tests/fakes.py,
real gRPC servers) and a private nats-server. The fake tier-1 and tier-2 models stream 40 deltas,
one every --token-ms (a simulated decode rate), so the numbers are the router's policy plus the
simulated decoding. Two kinds of tier-1 answer: a good one (never escalated) and a refusal (scores
0.4 < 0.7). Modes run interleaved, round by round, in the same process: `release` (baseline: stream
at once), `hold` with 8, 16 and 32 held deltas. Reports client-side TTFT and total time (medians
and percentiles) and how many refusals each mode escalated.
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
TOKENS = 40
GOOD = [f"word{i} " for i in range(TOKENS)]
REFUSAL = ["I'm ", "sorry, ", "I ", "cannot ", "help. "] + [f"filler{i} " for i in range(TOKENS - 5)]
MODES = [("release", {"stream_mode": "release"})] + [
    (f"hold {n}", {"stream_mode": "hold", "hold_tokens": n}) for n in (8, 16, 32)
]


async def _one(client: RouterClient, api_key: str, text: str) -> tuple[float, float, bool]:
    """(client TTFT ms, client total ms, escalated)."""
    started = time.perf_counter()
    first = None
    summary = None
    request = client.request(text, cache_policy=router_pb2.CACHE_POLICY_BYPASS)
    async for response in client.call(api_key, request, timeout=60):
        if response.HasField("summary"):
            summary = response.summary
        elif first is None:
            first = time.perf_counter()
    done = time.perf_counter()
    return (first - started) * 1000, (done - started) * 1000, summary.HasField("escalation")


async def run(calls: int, token_ms: float) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        nats = NatsServerProcess(os.path.join(tmp, "nats")).start()
        try:
            up = FakeUpstreams(CATALOG)
            up.inference.token_delay_s.update({"t1": token_ms / 1000, "t2": token_ms / 1000})
            up.inference.answers["t2"] = GOOD
            async with hosted(up, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as uphost:
                app = RouterApp(router_settings(nats.url, uphost.address, tier_models="", default_model="", prices=""))
                async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
                    client = RouterClient(channel, up)
                    keys = {}
                    for name, section in MODES:
                        api_key, tenant, _ = client.new_key()
                        await app.policy.put(f"tenant.{tenant}", {"escalation": section})
                        keys[name] = api_key
                    await asyncio.sleep(0.5)  # the policy watch applies the documents
                    results = {(name, kind): [] for name, _ in MODES for kind in ("good", "refusal")}
                    for round_ in range(calls):
                        for kind, words in (("good", GOOD), ("refusal", REFUSAL)):
                            up.inference.answers["t1"] = words
                            for name, _ in MODES:
                                results[(name, kind)].append(await _one(client, keys[name], f"q{round_} {kind}"))
        finally:
            nats.stop()
    lines = [
        "# Router: escalation stream modes, TTFT cost",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs (shared).",
        "",
        f"Command: `.venv/bin/python bench/router_escalation_bench.py --calls {calls} --token-ms {token_ms:g}`",
        "",
        f"Router in-process, fake upstreams (real gRPC) streaming {TOKENS} deltas one every {token_ms:g} ms; "
        f"{calls} requests per mode and answer kind, modes interleaved round by round; client-side times in ms. "
        "`release` is the baseline (stream at once).",
        "",
        "| mode | tier-1 answer | n | TTFT p50 | TTFT p90 | TTFT p99 | total p50 | escalated |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (name, kind), rows in results.items():
        ttft = np.array([r[0] for r in rows])
        total = np.array([r[1] for r in rows])
        escalated = sum(r[2] for r in rows)
        lines.append(
            f"| {name} | {kind} | {len(rows)} | {np.median(ttft):.1f} | {np.percentile(ttft, 90):.1f} | "
            f"{np.percentile(ttft, 99):.1f} | {np.median(total):.1f} | {escalated}/{len(rows)} |"
        )
    base = np.median([r[0] for r in results[("release", "good")]])
    lines += [
        "",
        "TTFT added over `release` (p50, good answers): "
        + ", ".join(
            f"{name} +{np.median([r[0] for r in results[(name, 'good')]]) - base:.1f} ms" for name, _ in MODES[1:]
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--token-ms", type=float, default=10.0)
    parser.add_argument("--out", default=str(ROOT / "bench/results/router_escalation.md"))
    args = parser.parse_args()
    report = asyncio.run(run(args.calls, args.token_ms))
    pathlib.Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
