"""Hot-path benchmark: an exact hit and the TTFT a miss pays through the router, beside LiteLLM's
proxy on a fake upstream, measured in one run.

    make bench-env   # LiteLLM into .venv-bench (bench/litellm_baseline.py)
    .venv/bin/python bench/hot_path_bench.py [--calls 1000] [--rounds 5] [--client-procs 2]

What runs, each a process of its own on this machine:
- nats-server, and the real tenancy (SQLite), classifier and cache (`python -m llmesh.services.X`,
  default settings, logs to files, as `llmesh up` runs them);
- a fake inference (this script in `serve-inference` mode: the router tests' FakeInference, four
  deltas at once), so a miss measures the router and not a model;
- the real router in front of them (`python -m llmesh.services.router`, default settings);
- LiteLLM's proxy (1 worker) on the fake OpenAI-compatible upstream (bench/litellm_baseline.py).

The load comes from client processes (multiprocessing, spawn) with one grpc.aio channel or one
aiohttp session each: concurrency 1 is one process; concurrency 16 is split over --client-procs
processes that start together. Each client reports the CPU it used over the timed window, so a
saturated client shows in the report.

Measured, every path in the same interleaved rounds (a slow spell of the shared machine hits all):
- exact hit: the same prompt every time (llmesh: Generate through the router, streamed, to the
  summary; LiteLLM: a non-streamed completion, no cache, so an instant upstream's round trip):
  p50 and p95 at concurrency 1, requests/s at concurrency 1 and 16;
- miss TTFT: a fresh prompt per request (a real cache miss, classification, routing, a stream from
  the fake inference) through the router, and the same prompts straight to the fake inference;
  the router's added TTFT is the difference of the medians. LiteLLM's is its streamed TTFT minus the
  upstream's own. Also with the cache bypassed: the pipeline without the cache's exact and
  semantic lookup, which a miss waits for (the semantic one embeds the prompt).

--baseline-src DIR runs a second router, on the same services, whose router and kit code (and
contracts, when DIR has libs/proto) come from DIR, interleaved with the first: a before/after of a
change on the same machine at the same time.
With --baseline-cache that router has a cache of its own, whose cache, kit and proto code come from
DIR too (DIR then holds services/cache and libs/proto as well): a before/after of a change in the
cache's Lookup, or in how the router and the cache talk.

--inference-ttft-ms 0 50 measures the miss paths once per value, the fake inference waiting that
long before its first delta (a `[ttft:N]` marker in the prompt; about 65 ms is Triton's own TTFT on
this machine): with an instant inference nothing can hide the cache's semantic lookup, with a real
TTFT the router's speculative dispatch (docs/adr/0029) can. --miss-only leaves out the exact hits.

    mkdir /tmp/base && git archive <commit> services/router libs/kit | tar -x -C /tmp/base
    .venv/bin/python bench/hot_path_bench.py --baseline-src /tmp/base --baseline-label "at <commit>"
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import pathlib
import platform
import signal
import sys
import tempfile
import time
import zlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from litellm_baseline import FAKE_MODEL, FakeUpstream, LiteLLMProxy  # noqa: E402
from llmesh.kit.testing import ensure_identity  # noqa: E402
from service_processes import ServiceProcesses  # noqa: E402

PROMPT = "What is the capital of France?"
FAKE_INFERENCE_MODEL = "tiny-1"  # services/router/tests/fakes.py: the catalog's tier 1-2 model
SECOND_ROUTER = "llmesh, router B"
OUT = ROOT / "bench" / "results" / "hot_path.md"
TARGETS = {"hit_p50_ms": 2.0, "hit_rps_16": 1000.0, "miss_added_ttft_ms": 3.0}


# -- servers --------------------------------------------------------------------------------------


async def _serve_inference(ready: pathlib.Path) -> None:
    """The fake inference on a real gRPC server, in this process, until SIGTERM."""
    from llmesh.inference.v1 import inference_pb2_grpc
    from llmesh.kit.config import ServerSettings, load_settings
    from llmesh.kit.server import ServiceApp
    from llmesh.kit.testing import hosted
    from llmesh.services.inference.app import InferenceApp

    from services.router.tests.fakes import FakeInference

    class FakeInferenceApp(ServiceApp):
        name = "inference"  # stands in for the inference service, with its identity
        callers = InferenceApp.callers  # the router may call it, as it may the real one (ADR 0023)

        def __init__(self):
            self.inference = FakeInference()

        def register(self, server):
            inference_pb2_grpc.add_InferenceServiceServicer_to_server(self.inference, server)
            return ["llmesh.inference.v1.InferenceService"]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = FakeInferenceApp()
    # Its identity files from the environment the bench gave it (the inference service's).
    identity = {k: v for k, v in os.environ.items() if k.startswith("LLMESH_IDENTITY_")}
    settings = load_settings(ServerSettings, environ=identity, port=0, metrics_port=0)
    async with hosted(app, settings, serve_metrics=False) as h:
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": int(h.address.rsplit(":", 1)[1])}))
        tmp.replace(ready)
        await stop.wait()


class Mesh(ServiceProcesses):
    """nats-server, tenancy, classifier, cache, the fake inference and the router as processes."""

    def __init__(
        self,
        home: pathlib.Path,
        *,
        second_router_env: dict[str, str] | None = None,
        second_cache_env: dict[str, str] | None = None,
    ):
        super().__init__(home)
        # another router on the same services (e.g. older code), for an interleaved A/B
        self.second_router_env = second_router_env
        # ... with a cache of its own (e.g. older code too)
        self.second_cache_env = second_cache_env
        self.nats = None

    def __enter__(self) -> Mesh:
        from llmesh.kit.nats_server import NatsServerProcess

        self.nats = NatsServerProcess(str(self.home / "nats")).start()
        self.nats_url = self.nats.url
        try:
            waiting = {name: self.spawn(name, {}) for name in ("tenancy", "classifier", "cache")}
            waiting["inference"] = self.spawn("inference", {}, [sys.executable, __file__, "serve-inference"])
            for name, ready in waiting.items():
                self.wait(name, ready)
            upstreams = {f"LLMESH_{n.upper()}_ADDR": self.addresses[n] for n in waiting}
            self.wait("router", self.spawn("router", upstreams))
            if self.second_router_env is not None:
                upstreams_b = dict(upstreams)
                if self.second_cache_env is not None:
                    # its own replica id: its own semantic store and durable consumer
                    env = {"LLMESH_CACHE_REPLICA_ID": f"cache-b-{os.getpid()}", **self.second_cache_env}
                    self.wait("cache-b", self.spawn("cache-b", env))
                    upstreams_b["LLMESH_CACHE_ADDR"] = self.addresses["cache-b"]
                self.wait("router-b", self.spawn("router-b", {**upstreams_b, **self.second_router_env}))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
        if self.nats is not None:
            self.nats.stop()

    def new_api_key(self) -> str:
        return super().new_api_key("hot-path")


# -- clients (processes of their own) -------------------------------------------------------------


def _grpc_hit(stub, key: str):
    from llmesh.common.v1 import common_pb2
    from llmesh.router.v1 import router_pb2

    request = router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)], max_tokens=16
    )
    metadata = (("authorization", f"Bearer {key}"),)

    async def call(_: int) -> float:
        started = time.perf_counter()
        summary = None
        async for response in stub.Generate(request, metadata=metadata, timeout=30):
            summary = response
        if not summary.HasField("summary") or summary.summary.cache_outcome != router_pb2.CACHE_OUTCOME_EXACT_HIT:
            raise RuntimeError(f"expected an exact hit, got {summary}")
        return (time.perf_counter() - started) * 1000

    return call


_WORDS = (
    "river glacier violin tax ledger orbit enzyme mortgage falcon syntax tundra opera pension quartz "
    "harvest kernel vaccine tariff lantern nebula copper sonnet invoice basalt turbine walrus citrus "
    "protocol meadow cathedral asthma bitcoin origami monsoon diesel pottery lobster thermostat saffron"
).split()


def _fresh_prompt(seed: str) -> str:
    """A prompt no earlier one resembles (so the cache, semantic included, misses)."""
    import random

    rng = random.Random(seed)
    return f"{' '.join(rng.sample(_WORDS, 7))}: explain how these relate ({seed})."


def _grpc_ttft(stub, key: str, tag: str, *, direct: bool, bypass: bool = False, ttft_ms: int = 0):
    """TTFT (ms) of a fresh prompt per call, through the router (`bypass`: not looked up in the
    cache nor stored) or straight to inference (`ttft_ms`: the fake inference's own TTFT)."""
    from llmesh.common.v1 import common_pb2
    from llmesh.inference.v1 import inference_pb2
    from llmesh.router.v1 import router_pb2

    metadata = (("authorization", f"Bearer {key}"),)

    async def call(i: int) -> float | None:
        text = _fresh_prompt(f"{tag}-{i}") + (f" [ttft:{ttft_ms}]" if ttft_ms else "")
        messages = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)]
        if direct:
            request = inference_pb2.GenerateRequest(model=FAKE_INFERENCE_MODEL, messages=messages, max_tokens=16)
            stream = stub.Generate(request, timeout=30)
        else:
            policy = router_pb2.CACHE_POLICY_BYPASS if bypass else router_pb2.CACHE_POLICY_UNSPECIFIED
            request = router_pb2.GenerateRequest(messages=messages, max_tokens=16, cache_policy=policy)
            stream = stub.Generate(request, metadata=metadata, timeout=30)
        started = time.perf_counter()
        first = None
        async for response in stream:
            if first is None and response.delta:
                first = (time.perf_counter() - started) * 1000
            if not direct and response.HasField("summary"):
                expected = router_pb2.CACHE_OUTCOME_BYPASSED if bypass else router_pb2.CACHE_OUTCOME_MISS
                if response.summary.cache_outcome != expected:
                    return None  # a semantic hit on an earlier fresh prompt: not a miss, left out
        return first

    return call


def _http_call(session, url: str, key: str, *, stream: bool):
    body = json.dumps(
        {"model": FAKE_MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16, "stream": stream}
    )
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    async def call(_: int) -> float:
        started = time.perf_counter()
        first = None
        async with session.post(f"{url}/chat/completions", data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"{url}: HTTP {response.status}: {(await response.read())[:300]!r}")
            if not stream:
                await response.read()
                return (time.perf_counter() - started) * 1000
            async for line in response.content:
                if first is None and line.startswith(b"data: {") and b'"content"' in line:
                    first = (time.perf_counter() - started) * 1000
        return first

    return call


async def _phase(spec: dict) -> dict:
    import aiohttp
    from llmesh.inference.v1 import inference_pb2_grpc
    from llmesh.kit.client import open_channel
    from llmesh.router.v1 import router_pb2_grpc

    kind, target, key = spec["kind"], spec["target"], spec["key"]
    tag = f"{spec['tag']}-{os.getpid()}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async with open_channel(target if not kind.startswith("http") else "127.0.0.1:1") as channel:
            if kind == "router_hit":
                call = _grpc_hit(router_pb2_grpc.RouterServiceStub(channel), key)
            elif kind in ("router_miss", "router_bypass"):
                stub = router_pb2_grpc.RouterServiceStub(channel)
                call = _grpc_ttft(stub, key, tag, direct=False, bypass=kind == "router_bypass", ttft_ms=spec["ttft_ms"])
            elif kind == "inference_direct":
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                call = _grpc_ttft(stub, key, tag, direct=True, ttft_ms=spec["ttft_ms"])
            else:
                call = _http_call(session, target, key, stream=kind == "http_stream")
            for i in range(spec["warmup"]):
                await call(-1 - i)
            # every client process of the phase starts at the same moment
            await asyncio.sleep(max(0.0, spec["start_at"] - time.monotonic()))
            latencies: list[float] = []
            skipped = 0
            counter = iter(range(spec["calls"]))

            async def worker() -> None:
                nonlocal skipped
                for i in counter:
                    ms = await call(i)
                    if ms is None:
                        skipped += 1
                    else:
                        latencies.append(ms)

            cpu, began = time.process_time(), time.monotonic()
            await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
            ended = time.monotonic()
            return {
                "latencies": latencies,
                "skipped": skipped,
                "began": began,
                "ended": ended,
                "cpu_s": time.process_time() - cpu,
            }


def _client(spec: dict) -> dict:
    import logging

    logging.disable(logging.INFO)
    return asyncio.run(_phase(spec))


def _client_identity(directory: str) -> None:
    """A client process calls as the operator (its direct calls to inference need a credential)."""
    from llmesh.kit import identity

    operator = identity.load_provisioned(pathlib.Path(directory), identity.OPERATOR)
    identity.set_default(operator)


class Clients:
    def __init__(self, procs: int):
        self.procs = procs
        self.pool = multiprocessing.get_context("spawn").Pool(
            procs, initializer=_client_identity, initargs=(str(ensure_identity()),)
        )

    def run(self, kind: str, target: str, key: str, calls: int, concurrency: int, tag: str, ttft_ms: int = 0) -> dict:
        procs = 1 if concurrency == 1 else min(self.procs, concurrency)
        start_at = time.monotonic() + 1.0 + 0.2 * procs  # time for every process to warm up first
        specs = [
            {
                "kind": kind,
                "target": target,
                "key": key,
                "calls": calls // procs,
                "concurrency": concurrency // procs + (1 if p < concurrency % procs else 0),
                "warmup": 5,
                "start_at": start_at,
                "tag": f"{tag}-{p}",
                "ttft_ms": ttft_ms,
            }
            for p in range(procs)
        ]
        parts = self.pool.map(_client, specs, chunksize=1)
        wall = max(p["ended"] for p in parts) - min(p["began"] for p in parts)
        latencies = [ms for p in parts for ms in p["latencies"]]
        return {
            "latencies": latencies,
            "skipped": sum(p["skipped"] for p in parts),
            "rps": len(latencies) / wall,
            "client_cpu": max(p["cpu_s"] / (p["ended"] - p["began"]) for p in parts),
        }

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


# -- the run --------------------------------------------------------------------------------------


def _seed(router: str, api_key: str) -> None:
    """Puts PROMPT's answer in the cache (a miss stores it in the background): until a call hits."""
    import grpc
    from llmesh.common.v1 import common_pb2
    from llmesh.router.v1 import router_pb2, router_pb2_grpc

    request = router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)], max_tokens=16
    )
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        while True:
            *_, last = stub.Generate(request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=30)
            if last.summary.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no exact hit after 30 s: {last.summary}")
            time.sleep(0.1)


def with_ttft(name: str, ttft_ms: int) -> str:
    """A miss path's name for an inference TTFT (the plain name for an instant inference)."""
    return f"{name}, inference TTFT {ttft_ms} ms" if ttft_ms else name


def measure(clients: Clients, mesh: Mesh, api_key: str, upstream: str, litellm: str | None, args):
    router, inference = mesh.addresses["router"], mesh.addresses["inference"]
    paths: dict[str, dict[str, tuple]] = {"hit": {} if args.miss_only else {"llmesh": ("router_hit", router, api_key)}}
    paths["miss"] = {}
    for ttft in args.inference_ttft_ms:
        paths["miss"][with_ttft("llmesh router", ttft)] = ("router_miss", router, api_key, ttft)
        if "router-b" in mesh.addresses:
            paths["miss"][with_ttft(SECOND_ROUTER, ttft)] = ("router_miss", mesh.addresses["router-b"], api_key, ttft)
        paths["miss"][with_ttft("llmesh router, cache bypassed", ttft)] = ("router_bypass", router, api_key, ttft)
        paths["miss"][with_ttft("llmesh inference direct", ttft)] = ("inference_direct", inference, "", ttft)
    if "router-b" in mesh.addresses:
        other = mesh.addresses["router-b"]
        if not args.miss_only:
            paths["hit"][SECOND_ROUTER] = ("router_hit", other, api_key)
        paths["miss"][f"{SECOND_ROUTER}, cache bypassed"] = ("router_bypass", other, api_key, 0)
    if litellm:
        if not args.miss_only:
            paths["hit"]["LiteLLM"] = ("http", litellm, LiteLLMProxy.api_key)
        paths["miss"]["LiteLLM"] = ("http_stream", litellm, LiteLLMProxy.api_key, 0)
        paths["miss"]["LiteLLM upstream direct"] = ("http_stream", upstream, "sk-upstream", 0)
    if not args.miss_only:
        _seed(router, api_key)
        if "router-b" in mesh.addresses and args.baseline_cache:  # router B's own cache, seeded too
            _seed(mesh.addresses["router-b"], api_key)
    samples: dict[tuple[str, str, int], list[dict]] = {}
    per_round = max(1, args.calls // args.rounds)

    def rotated(section: str, r: int) -> list:
        # each round starts with another path: none always follows the same one (LiteLLM keeps
        # working for a while after its last answer, which would slow whatever comes next)
        items = list(paths[section].items())
        return items[r % len(items) :] + items[: r % len(items)]

    for r in range(args.rounds):
        for concurrency in (1, 16) if paths["hit"] else ():
            for name, (kind, target, key) in rotated("hit", r):
                result = clients.run(kind, target, key, per_round, concurrency, f"r{r}")
                samples.setdefault(("hit", name, concurrency), []).append(result)
        for name, (kind, target, key, ttft) in rotated("miss", r):
            # a tag of its own per path: two routers on one cache must not answer each other's prompts
            tag = f"r{r}-{zlib.crc32(name.encode()):08x}"
            result = clients.run(kind, target, key, max(1, args.miss_calls // args.rounds), 1, tag, ttft)
            samples.setdefault(("miss", name, 1), []).append(result)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    return samples


def _summary(rounds: list[dict]) -> dict:
    lat = np.array([ms for r in rounds for ms in r["latencies"]])
    return {
        "n": len(lat),
        "skipped": sum(r["skipped"] for r in rounds),
        "p50": float(np.median(lat)),
        "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
        "rps": float(np.median([r["rps"] for r in rounds])),
        "rps_rounds": [r["rps"] for r in rounds],
        "client_cpu": max(r["client_cpu"] for r in rounds),
        "p50_rounds": [float(np.median(r["latencies"])) for r in rounds],
    }


def report(samples, args, load: tuple[tuple[float, ...], tuple[float, ...]], litellm_reason: str | None) -> str:
    s = {k: _summary(v) for k, v in samples.items()}
    command = (
        f"`.venv/bin/python bench/hot_path_bench.py --calls {args.calls} --miss-calls {args.miss_calls} "
        f"--rounds {args.rounds} --client-procs {args.client_procs}"
        + (" --miss-only" if args.miss_only else "")
        + (
            f" --inference-ttft-ms {' '.join(map(str, args.inference_ttft_ms))}"
            if args.inference_ttft_ms != [0]
            else ""
        )
        + (
            f" --out {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
            if args.out != OUT
            else ""
        )
        + (f" --baseline-src {args.baseline_src}" if args.baseline_src else "")
        + (f" --baseline-label '{args.baseline_label}'" if args.baseline_label else "")
        + (" --baseline-cache" if args.baseline_cache else "")
        + "`"
    )
    lines = [
        "# Router hot path beside LiteLLM",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs (shared with other work) · Python {platform.python_version()} · {command}",
        "",
        f"Load average (1, 5, 15 min) at the start {load[0][0]:.2f} / {load[0][1]:.2f} / {load[0][2]:.2f}, "
        f"at the end {load[1][0]:.2f} / {load[1][1]:.2f} / {load[1][2]:.2f}.",
        "",
        "Separate processes: nats-server; the real tenancy, classifier and cache; a fake inference (four deltas, "
        + ", ".join(f"{t} ms" for t in args.inference_ttft_ms)
        + " before the first; 0: instant); the real router with its default settings (logs to a file); LiteLLM "
        + ("(not run)" if litellm_reason else f"{LiteLLMProxy.version()} (1 worker)")
        + " on the fake OpenAI-compatible upstream. "
        f"Clients: concurrency 1 from one process, 16 from {args.client_procs} processes (one grpc.aio channel or "
        "aiohttp session each, started together). Every path runs in each of "
        f"{args.rounds} interleaved rounds, in an order that rotates each round; latencies are pooled over the rounds, requests/s is the median of the "
        "rounds. `client CPU` is the busiest client process's CPU time over its wall time (1.0 = a saturated "
        "client).",
        "",
    ]
    if args.baseline_cache:
        lines += [
            f"Router B ({args.baseline_label or args.baseline_src}) has a cache process of its own, of the same code "
            "as it; every other service is shared.",
            "",
        ]
    if not args.miss_only:
        lines += [
            "## Exact hit (the same prompt; LiteLLM: a non-streamed completion of an instant upstream, no cache)",
            "",
            "| path | concurrency | n | p50 ms | p95 ms | p99 ms | requests/s (median of rounds) | client CPU |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for (section, name, concurrency), v in s.items():
        if section == "hit":
            lines.append(
                f"| {name} | {concurrency} | {v['n']} | {v['p50']:.2f} | {v['p95']:.2f} | {v['p99']:.2f} | "
                f"{v['rps']:.0f} | {v['client_cpu']:.2f} |"
            )
    lines += [
        "",
        "## Miss: time to the first token (a fresh prompt per request, concurrency 1)",
        "",
        "| path | n | p50 ms | p95 ms | p50 of each round ms | left out (semantic hits) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (section, name, _), v in s.items():
        if section == "miss":
            rounds = ", ".join(f"{x:.2f}" for x in v["p50_rounds"])
            lines.append(f"| {name} | {v['n']} | {v['p50']:.2f} | {v['p95']:.2f} | {rounds} | {v['skipped']} |")
    lines += ["", "## Against the targets and LiteLLM", ""]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def added_ttft(name: str, ttft: int) -> tuple[float, list[float]]:
        """TTFT a path adds to inference's own, same TTFT: difference of the p50s, and per round."""
        path, direct = s[("miss", with_ttft(name, ttft), 1)], s[("miss", with_ttft("llmesh inference direct", ttft), 1)]
        return path["p50"] - direct["p50"], [a - b for a, b in zip(path["p50_rounds"], direct["p50_rounds"])]

    for ttft in args.inference_ttft_ms:
        added, added_rounds = added_ttft("llmesh router", ttft)
        added_bypass, _ = added_ttft("llmesh router, cache bypassed", ttft)
        line = (
            f"- TTFT the router adds to a miss ≤ {TARGETS['miss_added_ttft_ms']:.0f} ms, inference TTFT {ttft} ms: "
            f"{added:.2f} ms ({verdict(added <= TARGETS['miss_added_ttft_ms'])}; difference of the p50s; per round: "
            + ", ".join(f"{x:.2f}" for x in added_rounds)
            + f"); cache bypassed {added_bypass:.2f} ms"
        )
        if ("miss", with_ttft(SECOND_ROUTER, ttft), 1) in s:
            b_added, b_rounds = added_ttft(SECOND_ROUTER, ttft)
            line += (
                f"; router B {b_added:.2f} ms (per round: " + ", ".join(f"{x:.2f}" for x in b_rounds) + "; "
                "A − B per round: " + ", ".join(f"{a - b:.2f}" for a, b in zip(added_rounds, b_rounds)) + ")"
            )
        lines.append(line)
    if args.miss_only:
        if litellm_reason:
            lines.append(f"- LiteLLM not measured: {litellm_reason}")
        else:
            lite_added = s[("miss", "LiteLLM", 1)]["p50"] - s[("miss", "LiteLLM upstream direct", 1)]["p50"]
            lines.append(f"- LiteLLM adds {lite_added:.2f} ms to the TTFT of its instant upstream")
        return "\n".join(lines) + "\n"
    hit1 = s[("hit", "llmesh", 1)]
    hit16 = s[("hit", "llmesh", 16)]
    added, _ = added_ttft("llmesh router", args.inference_ttft_ms[0])
    lines.append(
        f"- exact hit p50 at concurrency 1 ≤ {TARGETS['hit_p50_ms']:.0f} ms: {hit1['p50']:.2f} ms "
        f"({verdict(hit1['p50'] <= TARGETS['hit_p50_ms'])}; p95 {hit1['p95']:.2f} ms)"
    )
    lines.append(
        f"- exact hits at concurrency 16 ≥ {TARGETS['hit_rps_16']:.0f} requests/s: {hit16['rps']:.0f} "
        f"({verdict(hit16['rps'] >= TARGETS['hit_rps_16'])}; rounds: "
        + ", ".join(f"{x:.0f}" for x in hit16["rps_rounds"])
        + f"); at concurrency 1: {hit1['rps']:.0f} requests/s"
    )
    if ("hit", SECOND_ROUTER, 1) in s:
        b1, b16 = s[("hit", SECOND_ROUTER, 1)], s[("hit", SECOND_ROUTER, 16)]
        b_bypass = s[("miss", f"{SECOND_ROUTER}, cache bypassed", 1)]["p50"]
        a_bypass = s[("miss", "llmesh router, cache bypassed", 1)]["p50"]
        lines.append(
            f"- router B (router and kit code {args.baseline_label or f'from {args.baseline_src}'}), on the same services, interleaved: hit p50 {hit1['p50']:.2f} vs "
            f"B {b1['p50']:.2f} ms ({hit1['p50'] / b1['p50']:.2f}×); requests/s at 16: {hit16['rps']:.0f} vs B "
            f"{b16['rps']:.0f} ({hit16['rps'] / b16['rps']:.2f}×); cache-bypassed miss TTFT p50 {a_bypass:.2f} vs B "
            f"{b_bypass:.2f} ms"
        )
    if litellm_reason:
        lines.append(f"- LiteLLM not measured: {litellm_reason}")
    else:
        lite1, lite16 = s[("hit", "LiteLLM", 1)], s[("hit", "LiteLLM", 16)]
        lite_added = s[("miss", "LiteLLM", 1)]["p50"] - s[("miss", "LiteLLM upstream direct", 1)]["p50"]
        lines.append(
            f"- beside LiteLLM: hit p50 {hit1['p50']:.2f} vs {lite1['p50']:.2f} ms "
            f"({hit1['p50'] / lite1['p50']:.2f}×); requests/s at 1: {hit1['rps']:.0f} vs {lite1['rps']:.0f} "
            f"({hit1['rps'] / lite1['rps']:.1f}×), at 16: {hit16['rps']:.0f} vs {lite16['rps']:.0f} "
            f"({hit16['rps'] / lite16['rps']:.1f}×); TTFT added to a miss {added:.2f} vs {lite_added:.2f} ms"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "serve-inference"])
    parser.add_argument("--ready", default="")
    parser.add_argument("--calls", type=int, default=1000, help="exact hits per path and concurrency, all rounds")
    parser.add_argument("--miss-calls", type=int, default=300, help="misses per path, all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--client-procs", type=int, default=2, help="client processes at concurrency 16")
    parser.add_argument(
        "--baseline-src",
        type=pathlib.Path,
        help="also run a second router whose router and kit code (and libs/proto, if there) come from this source tree (e.g. "
        "`git archive <commit> services/router libs/kit | tar -x -C DIR`), interleaved",
    )
    parser.add_argument("--baseline-label", default="", help="what --baseline-src holds, for the report")
    parser.add_argument(
        "--baseline-cache",
        action="store_true",
        help="the second router gets a cache of its own whose cache, kit and proto code come from --baseline-src "
        "(`git archive <commit> services/router services/cache libs/kit libs/proto`)",
    )
    parser.add_argument(
        "--inference-ttft-ms",
        type=int,
        nargs="+",
        default=[0],
        help="the fake inference's time to its first delta; the miss paths run once per value",
    )
    parser.add_argument("--miss-only", action="store_true", help="measure the miss paths only (no exact hits)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    if args.mode == "serve-inference":
        ready = pathlib.Path(args.ready or os.environ["LLMESH_READY_FILE"])
        asyncio.run(_serve_inference(ready))
        return
    litellm_reason = LiteLLMProxy.available()
    load_start = os.getloadavg()
    clients = Clients(args.client_procs)
    try:
        second = second_cache = None
        if args.baseline_src:
            src = args.baseline_src.resolve()
            code = [src / "services" / "router" / "src", src / "libs" / "kit" / "src"]
            # the tree's own contracts where it has them (a router that sends a newer field needs them)
            code += [src / "libs" / "proto" / "src"] if (src / "libs" / "proto" / "src").is_dir() else []
            second = {"PYTHONPATH": ":".join(map(str, code))}
            if args.baseline_cache:
                code = [
                    src / "services" / "cache" / "src",
                    src / "libs" / "kit" / "src",
                    src / "libs" / "proto" / "src",
                ]
                second_cache = {"PYTHONPATH": ":".join(map(str, code))}
        elif args.baseline_cache:
            parser.error("--baseline-cache needs --baseline-src")
        with (
            tempfile.TemporaryDirectory() as tmp,
            Mesh(pathlib.Path(tmp), second_router_env=second, second_cache_env=second_cache) as mesh,
            FakeUpstream() as upstream,
        ):
            api_key = mesh.new_api_key()
            if litellm_reason:
                samples = measure(clients, mesh, api_key, upstream.url, None, args)
            else:
                with LiteLLMProxy(upstream.url) as proxy:
                    samples = measure(clients, mesh, api_key, upstream.url, proxy.url, args)
    finally:
        clients.close()
    text = report(samples, args, (load_start, os.getloadavg()), litellm_reason)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
