"""Failover under load with the real parts: the tier-1 Triton is SIGKILLed and restarted (issue 10, §5).

    .venv/bin/python bench/router_failover_triton_bench.py [--concurrency 2] [--kill-at 20] [--down-for 10] \
        [--after 40] [--max-tokens 8]

Starts, on free ports: nats-server; a real tritonserver with the repository's CPU model repository
(deploy/triton/cpu, Gemma 3 270M GGUF in a decoupled Python-backend model; .venv-triton, `make
triton-env`); and the five services as processes of their own (`python -m llmesh.services.<name>`,
each with its own identity, as `llmesh up` runs them): tenancy, classifier, cache, inference and the
router (default breaker settings; with --routers 2 a second replica on the same services and NATS, the
clients alternating between them, so that one replica's ejection reaches the other as a hint,
docs/adr/0030). Inference gets the default catalog (deploy/catalog/dev.json)
with the Triton entry pointed at this tritonserver and the in-process llama.cpp engine as the
fallback of last resort; the external tier's entry ("frontier", the llama_cpp.server stand-in) is
left out, so the fallback is the only place tier-1 traffic can go. The real classifier picks each
request's tier; the real cache is bypassed (CACHE_POLICY_BYPASS) so every request reaches a model.

Closed loop: --concurrency clients each send one interactive request (a fresh prompt, --max-tokens)
after the other. At --kill-at seconds tritonserver (and its Python-backend stubs) is SIGKILLed;
--down-for seconds later it is started again on the same ports; the run goes on --after seconds
after Triton is ready again. The router's breaker events are read from NATS
(llmesh.router.breaker.>). Reports: the error rate before, during (kill → Triton ready again) and
after; when the first answer of the fallback came; when the breaker opened and closed; when tier 1
served again after Triton was ready; TTFT and total latency percentiles per phase. Writes
bench/results/router_failover_triton.md (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import grpc
import nats
import numpy as np
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.streams import BREAKER_SUBJECT_PREFIX
from llmesh.launcher.backends import model_path
from llmesh.launcher.triton import DEFAULT_REPOSITORY, TritonServerProcess
from llmesh.router.v1 import router_pb2, router_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from service_processes import ServiceProcesses  # noqa: E402

DEV_CATALOG = ROOT / "deploy" / "catalog" / "dev.json"
SERVICES = ("tenancy", "classifier", "cache", "inference")
WORDS = (
    "river glacier violin ledger orbit falcon tundra opera quartz harvest lantern nebula copper sonnet "
    "basalt turbine walrus citrus meadow cathedral monsoon pottery lobster saffron"
).split()


def catalog(triton_address: str) -> dict:
    """deploy/catalog/dev.json: Triton at `triton_address` (tier 1), the llama.cpp fallback; no
    external tier."""
    doc = json.loads(DEV_CATALOG.read_text())
    doc["models"] = [m for m in doc["models"] if m["backend"] != "openai"]
    for entry in doc["models"]:
        if entry["backend"] == "triton":
            entry["endpoint"] = triton_address
    return doc


class Mesh(ServiceProcesses):
    """nats-server, tritonserver and the five services, each a process of its own."""

    def __init__(self, home: pathlib.Path, gguf: str, routers: int = 1):
        super().__init__(home, poll_s=0.2)
        self.routers = ["router", "router-b"][:routers]
        self.gguf = gguf
        self.nats: NatsServerProcess | None = None
        self.triton: TritonServerProcess | None = None
        self.catalog: dict = {}

    def __enter__(self) -> Mesh:
        self.nats = NatsServerProcess(str(self.home / "nats")).start()
        self.nats_url = self.nats.url
        try:
            self.triton = TritonServerProcess(
                DEFAULT_REPOSITORY, extra_env={"LLMESH_TRITON_GGUF": self.gguf}, log_path=str(self.home / "triton.log")
            ).start(timeout_s=300)
            self.catalog = catalog(self.triton.grpc_url)
            catalog_path = self.home / "catalog.json"
            catalog_path.write_text(json.dumps(self.catalog))
            extra = {"inference": {"LLMESH_INFERENCE_CATALOG": str(catalog_path)}}
            waiting = {name: self.spawn(name, extra.get(name, {})) for name in SERVICES}
            for name, ready in waiting.items():
                self.wait(name, ready)
            upstreams = {f"LLMESH_{n.upper()}_ADDR": self.addresses[n] for n in SERVICES}
            for name in self.routers:  # replicas on the same services and NATS
                self.wait(name, self.spawn(name, upstreams))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all(grace_s=20)
        if self.triton is not None:
            self.triton.stop()
        if self.nats is not None:
            self.nats.stop()

    def new_api_key(self) -> str:
        return super().new_api_key("failover")


@dataclasses.dataclass
class Result:
    start: float  # seconds since the load started
    end: float
    ttft_ms: float | None
    model: str = ""
    attempts: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    error: str = ""  # the gRPC code name of a failed request
    detail: str = ""

    @property
    def total_ms(self) -> float:
        return (self.end - self.start) * 1000


def prompt(worker: int, i: int) -> str:
    rng = np.random.default_rng(worker * 100_003 + i)
    return f"In one short sentence, how does a {' '.join(rng.choice(WORDS, 2))} work? ({worker}-{i})"


async def warm_up(router: str, api_key: str, max_tokens: int, count: int) -> list[str]:
    """`count` requests one after the other before the clock starts (not counted): the models
    each served."""
    metadata = (("authorization", f"Bearer {api_key}"),)
    served = []
    async with grpc.aio.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        for i in range(count):
            request = router_pb2.GenerateRequest(
                messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt(999, i))],
                max_tokens=max_tokens,
                priority=router_pb2.PRIORITY_INTERACTIVE,
                cache_policy=router_pb2.CACHE_POLICY_BYPASS,
            )
            async for response in stub.Generate(request, metadata=metadata, timeout=60):
                if response.HasField("summary"):
                    served.append(response.summary.model)
    return served


async def load(
    routers: list[str], api_key: str, concurrency: int, max_tokens: int, t0: float, stop: asyncio.Event
) -> list[Result]:
    """Client n sends to router replica n mod the number of replicas."""
    results: list[Result] = []
    metadata = (("authorization", f"Bearer {api_key}"),)
    channels = [grpc.aio.insecure_channel(router) for router in routers]
    try:
        stubs = [router_pb2_grpc.RouterServiceStub(channel) for channel in channels]

        async def worker(n: int) -> None:
            stub = stubs[n % len(stubs)]
            i = 0
            while not stop.is_set():
                i += 1
                request = router_pb2.GenerateRequest(
                    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt(n, i))],
                    max_tokens=max_tokens,
                    priority=router_pb2.PRIORITY_INTERACTIVE,
                    cache_policy=router_pb2.CACHE_POLICY_BYPASS,
                )
                started = time.perf_counter()
                result = Result(started - t0, 0.0, None)
                try:
                    async for response in stub.Generate(request, metadata=metadata, timeout=30):
                        if response.HasField("summary"):
                            result.model = response.summary.model
                            result.attempts = [(a.model, a.outcome) for a in response.summary.attempts]
                        elif result.ttft_ms is None and response.delta:
                            result.ttft_ms = (time.perf_counter() - started) * 1000
                except grpc.aio.AioRpcError as exc:
                    result.error, result.detail = exc.code().name, exc.details() or ""
                result.end = time.perf_counter() - t0
                results.append(result)

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    finally:
        for channel in channels:
            await channel.close()
    return results


async def run(args) -> str:
    with tempfile.TemporaryDirectory(prefix="llmesh-failover-") as tmp:
        home = pathlib.Path(tmp)
        setup_started = time.monotonic()
        with Mesh(home, model_path(), args.routers) as mesh:
            setup_s = time.monotonic() - setup_started
            api_key = mesh.new_api_key()
            triton_model = next(m["name"] for m in mesh.catalog["models"] if m["backend"] == "triton")
            fallback = next(m["name"] for m in mesh.catalog["models"] if m.get("fallback"))
            warmed = await warm_up(mesh.addresses["router"], api_key, args.max_tokens, args.warmup)
            events: list[tuple[float, events_pb2.BreakerStateChanged]] = []
            bus = await nats.connect(mesh.nats.url)
            t0 = time.perf_counter()

            async def on_event(msg) -> None:
                events.append((time.perf_counter() - t0, events_pb2.BreakerStateChanged.FromString(msg.data)))

            await bus.subscribe(f"{BREAKER_SUBJECT_PREFIX}.>", cb=on_event)
            await bus.flush()
            stop = asyncio.Event()
            marks: dict[str, float] = {}

            async def chaos() -> None:
                await asyncio.sleep(args.kill_at)
                marks["kill"] = time.perf_counter() - t0
                mesh.triton.kill()
                await asyncio.sleep(args.down_for)
                marks["restart"] = time.perf_counter() - t0
                mesh.triton.launch()
                while not await asyncio.to_thread(mesh.triton.ready):
                    await asyncio.sleep(0.1)
                marks["ready"] = time.perf_counter() - t0
                await asyncio.sleep(args.after)
                stop.set()

            results, _ = await asyncio.gather(
                load([mesh.addresses[r] for r in mesh.routers], api_key, args.concurrency, args.max_tokens, t0, stop),
                chaos(),
            )
            await bus.drain()
            router_log = (home / "router.log").read_text(errors="replace")
            if args.keep_logs:
                keep = pathlib.Path(args.keep_logs)
                keep.mkdir(parents=True, exist_ok=True)
                for log in home.glob("*.log"):
                    (keep / log.name).write_bytes(log.read_bytes())
    return report(args, results, events, marks, triton_model, fallback, setup_s, router_log, warmed)


def report(args, results, events, marks, triton_model, fallback, setup_s, router_log, warmed) -> str:
    kill, ready = marks["kill"], marks["ready"]
    end = max(r.end for r in results)

    def pct(values: list[float], q: float) -> str:
        return f"{np.percentile(values, q):.0f}" if values else "-"

    def row(name: str, lo: float, hi: float) -> str:
        batch = [r for r in results if lo <= r.start < hi]
        errors = [r for r in batch if r.error]
        ok = [r for r in batch if not r.error]
        ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
        total = [r.total_ms for r in ok]
        on_t1 = sum(1 for r in ok if r.model == triton_model)
        rate = 100.0 * len(errors) / max(len(batch), 1)
        return (
            f"| {name} | {lo:.1f}-{hi:.1f} s | {len(batch)} | {len(errors)} ({rate:.2f} %) | {on_t1} / {len(ok) - on_t1} | "
            f"{pct(ttft, 50)} / {pct(ttft, 95)} / {pct(ttft, 99)} | {pct(total, 50)} / {pct(total, 95)} / {pct(total, 99)} |"
        )

    def after_s(value: float | None, since: float) -> str:
        return "never" if value is None else f"{value - since:.2f} s"

    first_fallback = min(
        (r.end for r in results if r.end >= kill and r.model == fallback and not r.error), default=None
    )
    # The fallback's first token after the kill (a request's start plus its TTFT).
    first_fallback_token = min(
        (
            r.start + r.ttft_ms / 1000
            for r in results
            if r.model == fallback and r.ttft_ms is not None and r.start + r.ttft_ms / 1000 >= kill
        ),
        default=None,
    )
    first_t1_back = min((r.end for r in results if r.start >= ready and r.model == triton_model), default=None)
    # The last request the fallback served that started after Triton was ready.
    last_fallback = max((r.start for r in results if r.start >= ready and r.model == fallback), default=None)
    states = {1: "closed", 2: "open", 3: "half_open"}
    mine = [(t, e) for t, e in events if e.model == triton_model]
    opened = min((t for t, e in mine if e.state == 2), default=None)
    replicas = sorted({e.router_replica for _, e in mine})
    opened_by = {r: min((t for t, e in mine if e.state == 2 and e.router_replica == r), default=None) for r in replicas}
    closed = max((t for t, e in mine if e.state == 1), default=None)
    codes: dict[str, int] = {}
    for r in results:
        if r.error:
            codes[r.error] = codes.get(r.error, 0) + 1
    during = [r for r in results if kill <= r.start < ready]
    mid_stream = sum(1 for r in results if r.error and r.start < kill <= r.end)
    fault_errors = sum(1 for r in during if r.error)
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Router: failover with a real Triton (issue 10, §5)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs shared with other work; load average at the end "
        f"{load_avg}.",
        "",
        f"Command: `.venv/bin/python bench/router_failover_triton_bench.py --concurrency {args.concurrency} "
        f"--kill-at {args.kill_at:g} --down-for {args.down_for:g} --after {args.after:g} --max-tokens {args.max_tokens} "
        f"--warmup {args.warmup} --routers {args.routers}`",
        "",
        "Real parts, each its own process: nats-server, tritonserver (deploy/triton/cpu, Gemma 3 270M GGUF in a "
        "decoupled Python-backend model), tenancy, classifier, cache (bypassed: CACHE_POLICY_BYPASS, every "
        "request reaches a model), inference (deploy/catalog/dev.json with Triton as tier 1/2 and the in-process "
        "llama.cpp engine as the fallback; the external tier left out) and "
        f"{'the router' if args.routers == 1 else 'two router replicas'} with default breaker settings. Closed loop of {args.concurrency} interactive clients, fresh prompts, max_tokens "
        f"{args.max_tokens}, after {len(warmed)} warm-up requests (served by {', '.join(sorted(set(warmed))) or '-'}). "
        f"Mesh start-up {setup_s:.0f} s. Times are seconds since the load started; Triton "
        f"SIGKILLed at {kill:.1f} s, started again at {marks['restart']:.1f} s, ready (server and models) at "
        f"{ready:.1f} s ({ready - marks['restart']:.1f} s to load).",
        "",
        f"- requests: {len(results)}, errors: {sum(codes.values())} ({', '.join(f'{c} {n}' for c, n in codes.items()) or 'none'})",
        f"- error rate during the fault (requests started between the kill and Triton ready): {fault_errors}/"
        f"{len(during)} ({100.0 * fault_errors / max(len(during), 1):.2f} %); requests in flight at the kill that "
        f"failed: {mid_stream}",
        f"- first token from the fallback ({fallback}) after the kill: {after_s(first_fallback_token, kill)}; "
        f"first whole answer from it: {after_s(first_fallback, kill)}",
        f"- breaker opened (first OPEN event on NATS): {after_s(opened, kill)} after the kill"
        + (
            " (per replica: " + ", ".join(f"{r} {after_s(t, kill)}" for r, t in opened_by.items()) + ")"
            if len(replicas) > 1
            else ""
        ),
        f"- breaker closed for good (last CLOSED event): {after_s(closed, ready)} after Triton was ready",
        f"- first answer from tier 1 ({triton_model}) after Triton was ready: {after_s(first_t1_back, ready)}; "
        f"the last request the fallback served started {after_s(last_fallback, ready)} after it "
        "('never': none after it)",
        "",
        "| phase | window | requests | errors | tier 1 / fallback | TTFT p50 / p95 / p99 ms | total p50 / p95 / p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        row("before (baseline)", 0.0, kill),
        row("Triton down or loading", kill, ready),
        row("after", ready, end),
        "",
        "Breaker events for the Triton model on NATS (seconds since the load started):",
        "",
        *(
            f"- {t:.2f} s {(e.router_replica + ' ') if len(replicas) > 1 else ''}{states.get(e.state, e.state)} ({e.reason}"
            + (
                f", ejected for {e.ejected_until.ToNanoseconds() / 1e9 - e.observed_at.ToNanoseconds() / 1e9:.1f} s"
                if e.state == 2
                else ""
            )
            + ")"
            for t, e in mine
        ),
    ]
    if not mine:
        lines.append("- none")
    failed = [r for r in results if r.error]
    if failed:
        lines += ["", "Failed requests (start, end, code, message):", ""]
        lines += [
            f"- {r.start:.2f}-{r.end:.2f} s {r.error}: {r.detail[:200]} (attempts: {r.attempts or '-'})"
            for r in failed[:10]
        ]
    failures = [line for line in router_log.splitlines() if '"attempt_failed"' in line][:3]
    if failures:
        lines += ["", "First attempt failures in the router's log:", "", *(f"    {line[:300]}" for line in failures)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--kill-at", type=float, default=20.0)
    parser.add_argument("--down-for", type=float, default=10.0)
    parser.add_argument("--after", type=float, default=40.0)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--routers", type=int, choices=(1, 2), default=1, help="router replicas (clients alternate)")
    parser.add_argument("--warmup", type=int, default=3, help="requests before the clock starts (not counted)")
    parser.add_argument("--keep-logs", default="", help="a folder to copy the services' logs to")
    parser.add_argument("--out", default=str(ROOT / "bench/results/router_failover_triton.md"))
    args = parser.parse_args()
    text = asyncio.run(run(args))
    pathlib.Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
