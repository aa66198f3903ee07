"""Tracing overhead per RPC: a unary call through the kit (server interceptor and client channel),
with tracing absent, off (the default: the no-op API), and on (the SDK with a batch processor).

    .venv/bin/python bench/tracing_bench.py [--calls 1500] [--rounds 3] [--out bench/results/tracing.md]

Each mode runs in its own process (an OpenTelemetry provider is set once per process), in
interleaved rounds: a toy ClassifierService hosted by the kit's ServiceHost on loopback, one
client calling Classify sequentially. Modes:
  none  the kit's tracing calls replaced by no-ops (the baseline: the code before tracing)
  off   the default: no OTEL_* variables, no SDK (spans are non-recording, context still passed on)
  sdk   an SDK TracerProvider, BatchSpanProcessor, an exporter that drops the spans (no network)
Writes a markdown report with the median, p95 and p99 latency per mode and the difference to none.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODES = ("none", "off", "sdk")


async def _child(mode: str, calls: int) -> list[float]:
    from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
    from llmesh.common.v1 import common_pb2
    from llmesh.kit import interceptors, tracing
    from llmesh.kit.client import open_channel
    from llmesh.kit.config import ServerSettings, load_settings
    from llmesh.kit.server import ServiceApp
    from llmesh.kit.testing import hosted

    if mode == "none":
        tracing.start_server_span = lambda service, method, metadata: (_NoSpan(), None)
        tracing.end_span = lambda span, token, code: None
        tracing.inject = lambda carrier: carrier
        interceptors.tracing = tracing
    elif mode == "sdk":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)

    class Servicer(classifier_pb2_grpc.ClassifierServiceServicer):
        async def Classify(self, request, context):
            return classifier_pb2.ClassifyResponse(model_name="toy")

    class App(ServiceApp):
        name = "toy"

        def register(self, server):
            classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(Servicer(), server)
            return ["llmesh.classifier.v1.ClassifierService"]

    settings = load_settings(ServerSettings, environ={}, port=0, metrics_port=0)
    request = classifier_pb2.ClassifyRequest(messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")])
    async with hosted(App(), settings, serve_metrics=False) as host, open_channel(host.address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        for _ in range(200):  # warm-up
            await stub.Classify(request)
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            await stub.Classify(request)
            latencies.append(time.perf_counter() - started)
    return latencies


class _NoSpan:
    def set_attribute(self, key, value):
        pass


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tracing.md"))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.calls))))
        return 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    results: dict[str, list[float]] = {m: [] for m in MODES}
    for round_ in range(args.rounds):
        for mode in MODES:
            done = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--calls", str(args.calls)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            results[mode] += json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {round_ + 1} {mode}: done", file=sys.stderr)

    base = {q: _percentile(results["none"], q) for q in (0.5, 0.95, 0.99)}
    rows = []
    for mode in MODES:
        values = results[mode]
        p = {q: _percentile(values, q) for q in (0.5, 0.95, 0.99)}
        diff = (p[0.5] - base[0.5]) * 1e6
        rows.append(
            f"| {mode} | {len(values)} | {p[0.5] * 1e6:.0f} | {p[0.95] * 1e6:.0f} | {p[0.99] * 1e6:.0f} | {diff:+.0f} |"
        )
    report = "\n".join(
        [
            "# Tracing overhead per RPC",
            "",
            f"Generated by `bench/tracing_bench.py --calls {args.calls} --rounds {args.rounds}` on "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
            f"{os.cpu_count()} CPUs (shared with other work: figures are noisy), Python {platform.python_version()}.",
            "",
            "A sequential unary Classify on loopback through the kit's server interceptor and client",
            "channel; each mode in its own process, modes interleaved over the rounds. `none` is the",
            "baseline (the kit's tracing calls replaced by no-ops), `off` the default (no OTEL_*",
            "variables), `sdk` an SDK provider with a batch processor whose exporter drops the spans.",
            "",
            "| mode | calls | p50 µs | p95 µs | p99 µs | p50 − none µs |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    pathlib.Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
