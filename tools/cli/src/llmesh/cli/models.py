"""`llmesh models`: the inference service's model catalog with live load, as a table."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from llmesh.launcher.state import endpoint

COLUMNS = (
    "model",
    "backend",
    "tiers",
    "region",
    "hosting",
    "max data",
    "price/1k in/out",
    "load",
    "queue",
    "ttft p50/p95",
    "tok/s p50",
    "",
)


def register(subparsers) -> None:
    models = subparsers.add_parser("models", help="list the model catalog with live load")
    models.add_argument("--addr", default="", help="inference host:port (default: the local mesh)")
    models.set_defaults(func=_models)


def rows(models) -> list[tuple[str, ...]]:
    from llmesh.common.v1 import common_pb2
    from llmesh.inference.v1 import inference_pb2

    out = []
    for m in models:
        hosting = {inference_pb2.HOSTING_SELF_HOSTED: "self-hosted", inference_pb2.HOSTING_EXTERNAL: "external"}.get(
            m.hosting, "?"
        )
        sensitivity = common_pb2.Sensitivity.Name(m.max_sensitivity).removeprefix("SENSITIVITY_").lower()
        if m.prompt_price_per_1k or m.completion_price_per_1k:
            price = f"${m.prompt_price_per_1k:g}/${m.completion_price_per_1k:g}"
        elif m.gpu_hour_cost:
            price = f"${m.gpu_hour_cost:g}/GPU-h"
        else:
            price = "-"
        latency = m.latency
        out.append(
            (
                m.name,
                m.backend + (f" {m.endpoint}" if m.endpoint else ""),
                ",".join(map(str, m.tiers)) or "-",
                m.region or "-",
                hosting,
                sensitivity,
                price,
                f"{m.active_requests}/{m.capacity or m.max_concurrency} ({m.utilization:.0%})",
                f"{m.queued_requests}/{m.max_queue}",
                f"{latency.time_to_first_token_p50_ms:.0f}/{latency.time_to_first_token_p95_ms:.0f} ms"
                if latency.samples
                else "-",
                f"{latency.tokens_per_second_p50:.1f}" if latency.samples else "-",
                "fallback" if m.fallback else "",
            )
        )
    return out


def table(body: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *body]) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [COLUMNS, *body])


def _models(args: argparse.Namespace) -> int:
    from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
    from llmesh.kit.client import open_channel

    async def call():
        async with open_channel(args.addr or endpoint("inference")) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            return await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)

    try:
        response = asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        print(f"llmesh: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(table(rows(response.models)))
    return 0
