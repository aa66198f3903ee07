"""Inference benchmark: time to first token and decode speed of Generate over gRPC.

    .venv/bin/python bench/inference_bench.py [--requests 20] [--concurrency 1,2] [--max-tokens 64]
                                              [--target host:port] [--out bench/results/inference.md]

Without --target it hosts the inference service in this process on a free port (the real model,
settings from the environment as the service reads them). Writes a markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import pathlib
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPTS = (
    "Write a short poem about the sea.",
    "Explain what a hash table is.",
    "List three uses of copper.",
    "Tell me a story about a lighthouse keeper.",
    "What should I pack for a hiking trip?",
)


@dataclass
class Sample:
    ttft_s: float  # client side: call start to first delta
    total_s: float
    completion_tokens: int
    prompt_tokens: int
    server_ttft_ms: float
    finish_reason: int

    @property
    def decode_tokens_per_s(self) -> float | None:
        decode_s = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / decode_s if self.completion_tokens > 1 and decode_s > 0 else None


async def one_request(stub, model: str, index: int, max_tokens: int) -> Sample:
    request = inference_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPTS[index % len(PROMPTS)])],
        max_tokens=max_tokens,
        sampling=common_pb2.SamplingParams(temperature=0.7, seed=index),
    )
    started = time.perf_counter()
    first: float | None = None
    async for response in stub.Generate(request, timeout=300):
        if response.WhichOneof("event") == "delta":
            if first is None:
                first = time.perf_counter() - started
        else:
            total = time.perf_counter() - started
            c = response.completion
            return Sample(
                ttft_s=first if first is not None else total,
                total_s=total,
                completion_tokens=c.usage.completion_tokens,
                prompt_tokens=c.usage.prompt_tokens,
                server_ttft_ms=c.time_to_first_token_ms,
                finish_reason=c.finish_reason,
            )
    raise RuntimeError("stream ended without a completion")


async def run_level(stub, model: str, requests: int, concurrency: int, max_tokens: int) -> tuple[list[Sample], float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    samples: list[Sample] = []

    async def client() -> None:
        while not queue.empty():
            samples.append(await one_request(stub, model, queue.get_nowait(), max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(levels, *, model: str, target: str, max_tokens: int, model_info, load_before) -> str:
    lines = [
        "# Inference benchmark",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, load average before the run "
        f"{', '.join(f'{x:.2f}' for x in load_before)} (other processes on the machine skew every number)",
        f"- service: {target}; model `{model}` ({model_info.backend}, context {model_info.context_length}, "
        f"{model_info.max_concurrency} slots); LLMESH_INFERENCE_THREADS="
        f"{os.environ.get('LLMESH_INFERENCE_THREADS', '1')}",
        f"- each request: one short user prompt, max_tokens={max_tokens}, temperature 0.7, a seed per request",
        "- TTFT: client-side, call start to first delta (gRPC and queueing included); decode tokens/s: "
        "(completion tokens − 1) / (time after the first delta)",
        "",
        "| concurrency | requests | TTFT p50 ms | TTFT p90 ms | decode tok/s p50 | decode tok/s p90 "
        "| completion tokens (mean) | aggregate tok/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for concurrency, samples, wall_s in levels:
        ttft = [s.ttft_s * 1000 for s in samples]
        speed = [v for v in (s.decode_tokens_per_s for s in samples) if v is not None]
        tokens = sum(s.completion_tokens for s in samples)
        lines.append(
            f"| {concurrency} | {len(samples)} | {pct(ttft, 50):.0f} | {pct(ttft, 90):.0f} | "
            f"{pct(speed, 50):.1f} | {pct(speed, 90):.1f} | {tokens / len(samples):.1f} | {tokens / wall_s:.1f} |"
        )
    lines += [
        "",
        "Tokens/s p90 is the 90th percentile of per-request speed (the faster tail). With one llama.cpp "
        "thread per generation, concurrency 2 uses both cores of a 2-core machine; beyond the slot count "
        "requests wait in the service's queue, which shows in TTFT.",
        "",
        f"Reproduce: `.venv/bin/python bench/inference_bench.py {' '.join(sys.argv[1:])}`".rstrip() + "",
        "",
    ]
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def service(target: str | None):
    if target:
        yield target
        return
    from llmesh.kit.testing import hosted
    from llmesh.services.inference.app import InferenceApp
    from llmesh.services.inference.settings import InferenceSettings

    settings = load_settings(InferenceSettings, port=0, metrics_port=0, max_queue=64)
    async with hosted(InferenceApp(settings), settings, serve_metrics=False) as host:
        yield host.address


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,2", help="comma-separated concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--target", help="host:port of a running inference service (default: host one here)")
    parser.add_argument("--model", help="model name (default: the first ListModels returns)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "inference.md"))
    args = parser.parse_args()
    levels_wanted = [int(c) for c in args.concurrency.split(",") if c.strip()]
    load_before = os.getloadavg()

    async with service(args.target) as address, open_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        models = (await stub.ListModels(inference_pb2.ListModelsRequest())).models
        info = next((m for m in models if m.name == args.model), None) if args.model else models[0]
        if info is None:
            print(f"model {args.model!r} not served at {address}", file=sys.stderr)
            return 1
        await one_request(stub, info.name, 0, 4)  # warm-up: first-use allocations
        levels = []
        for concurrency in levels_wanted:
            samples, wall_s = await run_level(stub, info.name, args.requests, concurrency, args.max_tokens)
            levels.append((concurrency, samples, wall_s))
            print(f"concurrency {concurrency}: {len(samples)} requests in {wall_s:.1f}s", file=sys.stderr)
    text = report(
        levels,
        model=info.name,
        target=args.target or "in process",
        max_tokens=args.max_tokens,
        model_info=info,
        load_before=load_before,
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
