"""Inference backends benchmark: what the inference service adds in front of a remote backend.

    .venv/bin/python bench/inference_backends_bench.py [--requests 20] [--rounds 3] [--max-tokens 32]
                                                       [--out bench/results/inference_backends.md]
                                                       [--baseline-src DIR]

In one run, on the same prompts, greedy (temperature 0), fixed max_tokens, concurrency 1:

- Triton: tritonclient.grpc.aio stream_infer on `gemma-3-270m` of a private tritonserver
  (deploy/triton/cpu) vs the same model through the service's gRPC Generate (catalog backend triton);
- OpenAI-compatible stand-in (llama_cpp.server, chat_format gemma): httpx SSE streaming vs the
  service's Generate (catalog backend openai).

The service runs as its own process (`python -m llmesh.services.inference`), as in production.
Each path gets a discarded warm-up, then `rounds` interleaved rounds (direct, service, direct, ...)
of `requests` sequential requests. TTFT: request start to the first non-empty text; decode tokens/s:
(tokens − 1) / (time after the first text). Every server is started here on free ports and stopped
on exit (Ctrl-C included). Targets (the inference issue): the service adds ≤ 3 ms to TTFT at p50
and passes ≥ 98 % of the direct tokens/s at p50.

--baseline-src DIR runs a second inference service from another copy of the service's source as a
third path, "baseline", interleaved with the others: a before / after comparison of the service's
own cost in one run. DIR is either a whole checkout (e.g. `git archive main | tar -x -C DIR`: its
libs/*/src, services/*/src and tools/*/src go first on the path) or a folder holding
`llmesh/services/inference` (e.g. `git archive HEAD~1 services/inference/src | tar -x
--strip-components=3 -C DIR`).

Besides the difference of the p50s, the report gives the median of the paired differences (each
service request against the direct request of the same round and position, so the same prompt)
with a bootstrap 95 % interval: the prompts' own TTFTs differ by tens of milliseconds, so the
difference of two p50s over a mix of prompts moves by several milliseconds from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

THREADS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(THREADS)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc.aio as triton_grpc  # noqa: E402
from llmesh.common.v1 import common_pb2  # noqa: E402
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
from llmesh.kit.chat import Message  # noqa: E402
from llmesh.kit.client import open_channel  # noqa: E402
from llmesh.kit.testing import ensure_identity, free_port, identity_env  # noqa: E402
from llmesh.launcher.openai_server import LlamaCppServerProcess  # noqa: E402
from llmesh.launcher.triton import TritonServerProcess  # noqa: E402
from llmesh.services.inference.chat_prompt import GemmaTurns  # noqa: E402
from llmesh.services.inference.model_files import resolve_model_path  # noqa: E402
from llmesh.services.inference.openai_backend import remember_missing_sniffio  # noqa: E402
from llmesh.services.inference.triton_backend import prompt_text  # noqa: E402

# The direct client gets the service's httpcore fix too (see openai_backend): the baseline is a
# client as good as the service's own, so the difference is what the service adds.
remember_missing_sniffio()

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRITON_MODEL = "gemma-3-270m"
OPENAI_ALIAS = "gpt-frontier"
PROMPTS = (
    "Write a short poem about the sea.",
    "Explain what a hash table is.",
    "List three uses of copper.",
    "Tell me a story about a lighthouse keeper.",
    "What should I pack for a hiking trip?",
)
TARGET_TTFT_MS = 3.0
TARGET_SPEED = 0.98


@dataclass
class Sample:
    ttft_s: float
    total_s: float
    tokens: int

    @property
    def tokens_per_s(self) -> float | None:
        decode_s = self.total_s - self.ttft_s
        return (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else None


# -- the four paths --------------------------------------------------------------------------


async def triton_direct(client: triton_grpc.InferenceServerClient, prompt: str, max_tokens: int) -> Sample:
    text = prompt_text(GemmaTurns("<bos>").render((Message("user", prompt),)))

    def tensor(name, value, dtype, datatype):
        array = np.array(value, dtype=dtype).reshape((-1,))
        t = triton_grpc.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        return t

    inputs = [
        tensor("text_input", [text.encode()], np.object_, "BYTES"),
        tensor("max_tokens", [max_tokens], np.int32, "INT32"),
        tensor("stream", [True], np.bool_, "BOOL"),
        tensor("temperature", [0.0], np.float32, "FP32"),
    ]
    finished = asyncio.Event()

    async def requests():
        yield {"model_name": TRITON_MODEL, "inputs": inputs}
        await finished.wait()

    started = time.perf_counter()
    first = None
    tokens = 0
    stream = client.stream_infer(requests())
    try:
        async for result, error in stream:
            if error is not None:
                raise RuntimeError(f"triton: {error}")
            out = result.as_numpy("text_output")
            if out is not None and out.size and out.reshape(-1)[0]:
                if first is None:
                    first = time.perf_counter() - started
            count = result.as_numpy("num_output_tokens")
            if count is not None and count.size:
                tokens += int(count.reshape(-1)[0])  # the tokens of this response
            params = result.get_response().parameters
            reason = result.as_numpy("finish_reason")
            if ("triton_final_response" in params and params["triton_final_response"].bool_param) or (
                reason is not None
            ):
                break
    finally:
        finished.set()
        with contextlib.suppress(Exception):
            stream.cancel()
    total = time.perf_counter() - started
    return Sample(first if first is not None else total, total, tokens)


async def openai_direct(http: httpx.AsyncClient, base_url: str, prompt: str, max_tokens: int) -> Sample:
    body = {
        "model": OPENAI_ALIAS,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    started = time.perf_counter()
    first = None
    chunks = 0
    usage_tokens = None
    async with http.stream("POST", f"{base_url}/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        lines = response.aiter_lines()
        async for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                # As the service's backend does: the body's end is read so that the connection
                # goes back to the pool (the next request opens no new one).
                with contextlib.suppress(TimeoutError, httpx.TransportError):
                    async with asyncio.timeout(0.5):
                        async for _ in lines:
                            pass
                break
            event = json.loads(data)
            if event.get("usage"):
                usage_tokens = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - started
    total = time.perf_counter() - started
    return Sample(first if first is not None else total, total, usage_tokens or chunks)


async def via_service(stub, model: str, prompt: str, max_tokens: int) -> Sample:
    request = inference_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt)],
        max_tokens=max_tokens,
        sampling=common_pb2.SamplingParams(temperature=0.0),
    )
    started = time.perf_counter()
    first = None
    async for response in stub.Generate(request, timeout=300):
        if response.WhichOneof("event") == "delta":
            if first is None and response.delta:
                first = time.perf_counter() - started
        else:
            total = time.perf_counter() - started
            return Sample(first if first is not None else total, total, response.completion.usage.completion_tokens)
    raise RuntimeError("stream ended without a completion")


# -- servers ---------------------------------------------------------------------------------


class ServiceProcess:
    """`python -m llmesh.services.inference` on a free port with the given catalog."""

    def __init__(self, catalog: dict, log_path: pathlib.Path, source: str | None = None):
        self.port = free_port("127.0.0.1")
        self.address = f"127.0.0.1:{self.port}"
        self.catalog = catalog
        self.log_path = log_path
        self.source = source  # a directory put first on PYTHONPATH: another copy of the service's code
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            **THREADS,
            # Its own credential; this process calls it as the operator (docs/adr/0023).
            **identity_env(ensure_identity(), "inference"),
            "LLMESH_PORT": str(self.port),
            "LLMESH_METRICS_PORT": "0",
            "LLMESH_INFERENCE_CATALOG": json.dumps(self.catalog),
            "LLMESH_INFERENCE_REPEATED_LINE_STOP": "0",
            "LLMESH_INFERENCE_THREADS": "1",
            "LLMESH_LOG_LEVEL": "warning",
        }
        if self.source:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [*source_path(self.source), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "llmesh.services.inference"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    async def wait_ready(self, stub, names: list[str], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"inference service exited {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(Exception):
                models = (await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=2)).models
                if set(names) <= {m.name for m in models}:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"inference service not ready in {timeout_s:g}s: {self.log_tail()}")
            await asyncio.sleep(0.2)

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:]) if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def source_path(source: str) -> list[str]:
    """The folders to put first on PYTHONPATH for a baseline copy of the code (see above)."""
    root = pathlib.Path(source)
    if (root / "services").is_dir():
        return [
            str(p) for pattern in ("libs/*/src", "services/*/src", "tools/*/src") for p in sorted(root.glob(pattern))
        ]
    return [source]


# -- measurement -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(name, call, requests: int, into: list[Sample], expected: dict[int, int]) -> None:
    for i in range(requests):
        sample = await call(PROMPTS[i % len(PROMPTS)])
        into.append(sample)
        key = i % len(PROMPTS)
        if expected.setdefault(key, sample.tokens) != sample.tokens:
            print(f"warning: {name} prompt {key}: {sample.tokens} tokens, other path {expected[key]}", file=sys.stderr)


def pct(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def summary(samples: list[Sample]) -> dict:
    ttft = [s.ttft_s * 1000 for s in samples]
    speed = [v for v in (s.tokens_per_s for s in samples) if v is not None]
    return {
        "n": len(samples),
        "ttft50": pct(ttft, 50),
        "ttft95": pct(ttft, 95),
        "tps50": pct(speed, 50),
        "tps95": pct(speed, 95),
        "tokens": sorted({s.tokens for s in samples}),
    }


def paired(samples: list[Sample], direct: list[Sample], *, resamples: int = 2000) -> tuple[float, float, float]:
    """Median of the TTFT differences (ms) of requests paired by round and position (the same
    prompt), with a bootstrap 95 % interval."""
    diffs = np.array([(s.ttft_s - d.ttft_s) * 1000 for s, d in zip(samples, direct, strict=True)])
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(diffs, size=(resamples, len(diffs)), replace=True), axis=1)
    return float(np.median(diffs)), float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def report(results: dict, args, load_before, load_after, mismatches: int) -> str:
    lines = [
        "# Inference backends benchmark: direct vs through the inference service",
        "",
        "- command: `" + " ".join([".venv/bin/python bench/inference_backends_bench.py", *sys.argv[1:]]) + "`",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.platform()}); load average "
        f"before {', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}",
        "- the CPUs are shared by this client, the inference service (its own process) and the model server "
        "(tritonserver's Python backend or llama_cpp.server, llama.cpp with 1 thread); OMP/OPENBLAS/MKL threads 1",
        f"- each path: 1 discarded warm-up, then {args.rounds} interleaved rounds (direct, service, ...) of "
        f"{args.requests} sequential requests (concurrency 1) over {len(PROMPTS)} prompts; greedy (temperature 0), "
        f"max_tokens {args.max_tokens}; service with LLMESH_INFERENCE_REPEATED_LINE_STOP=0; no repeat penalty sent "
        "on any path (each model server's own default, the same for direct and service)",
        "- TTFT: request start to the first non-empty text, client side; decode tokens/s: (tokens − 1) / "
        "(time after the first text), per request",
        "- API paths: the direct client and the service's backend alike keep their HTTP connection (the body's end "
        "is read after [DONE]) and remember that sniffio is missing (openai_backend.remember_missing_sniffio: "
        "httpcore tries to import it several times per request)",
        f"- token counts: {'every request of both paths of a backend generated the same number of tokens per prompt' if not mismatches else f'{mismatches} requests differed from the other path (see warnings)'}",
        "",
        "| backend | path | requests | TTFT p50 ms | TTFT p95 ms | decode tok/s p50 | decode tok/s p95 | tokens |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for backend, paths in results.items():
        for path, s in paths.items():
            lines.append(
                f"| {backend} | {path} | {s['n']} | {s['ttft50']:.1f} | {s['ttft95']:.1f} | {s['tps50']:.1f} | "
                f"{s['tps95']:.1f} | {'/'.join(map(str, s['tokens']))} |"
            )
    lines += [
        "",
        "| backend | TTFT added at p50 (service − direct) | target ≤ 3 ms | paired median (95 % interval) "
        "| tokens/s passed at p50 (service / direct) | target ≥ 98 % |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for backend, paths in results.items():
        d = paths["direct"]
        for path in ("service", "baseline"):
            if path not in paths:
                continue
            s = paths[path]
            added = s["ttft50"] - d["ttft50"]
            passed = s["tps50"] / d["tps50"]
            name = backend if path == "service" else f"{backend} (baseline)"
            median, low, high = s["paired"]
            lines.append(
                f"| {name} | {added:+.1f} ms | {'met' if added <= TARGET_TTFT_MS else 'NOT met'} | "
                f"{median:+.1f} ms ({low:+.1f} .. {high:+.1f}) | "
                f"{passed * 100:.1f} % | {'met' if passed >= TARGET_SPEED else 'NOT met'} |"
            )
    lines += [
        "",
        "The service's own CPU time (user + system of its process, /proc, during the service rounds): what it adds "
        "per request whatever the machine's load (wall-clock figures above move with the other processes on the "
        "shared cores).",
        "",
        "| backend | service CPU ms per request | service CPU ms per token |",
        "| --- | --- | --- |",
    ]
    for backend, paths in results.items():
        for path in ("service", "baseline"):
            if path in paths:
                s = paths[path]
                name = backend if path == "service" else f"{backend} (baseline)"
                lines.append(f"| {name} | {s['cpu_ms_per_request']:.2f} | {s['cpu_ms_per_token']:.3f} |")
    lines += [
        "",
        *(
            [
                f"Baseline: a second service process running the source in `{args.baseline_src}` (the code before "
                "the change measured), its requests interleaved with the others' in every round.",
                "",
            ]
            if args.baseline_src
            else []
        ),
        "Medians of per-request values over all rounds; p95 of tokens/s is the faster tail. On a 2-core machine "
        "the client, the service and the model server contend for the same cores (the service's own CPU time per "
        "token competes with llama.cpp's): read the ratios with the load average above.",
        "",
    ]
    return "\n".join(lines)


async def run(args, stack: contextlib.ExitStack, logs: pathlib.Path) -> dict:
    gguf = str(resolve_model_path(""))
    wanted = {b.strip() for b in args.backends.split(",") if b.strip()}
    if not wanted or wanted - {"triton", "openai"}:
        raise SystemExit(f"--backends: triton, openai or both (got {args.backends!r})")
    models: dict[str, dict] = {}
    if "triton" in wanted:
        print("starting tritonserver ...", file=sys.stderr)
        triton = TritonServerProcess(extra_env={"LLMESH_TRITON_GGUF": gguf, **THREADS})
        stack.callback(triton.stop)
        triton.start(timeout_s=180)
        models["triton"] = {
            "name": "triton-gemma",
            "backend": "triton",
            "endpoint": triton.grpc_url,
            "remote_model": TRITON_MODEL,
            "max_concurrency": 1,
            "max_queue": 4,
        }
    if "openai" in wanted:
        print("starting llama_cpp.server ...", file=sys.stderr)
        openai = LlamaCppServerProcess(gguf, OPENAI_ALIAS, chat_format="gemma", threads=1, log_path=logs / "openai.log")
        stack.callback(openai.stop)
        openai.start(timeout_s=120)
        models["openai"] = {
            "name": "openai-gemma",
            "backend": "openai",
            "endpoint": openai.base_url,
            "remote_model": OPENAI_ALIAS,
            "hosting": "external",
            "max_concurrency": 1,
            "max_queue": 4,
        }
    catalog = {"models": list(models.values())}
    names = [m["name"] for m in models.values()]
    service = ServiceProcess(catalog, logs / "service.log")
    stack.callback(service.stop)
    service.start()
    baseline = None
    if args.baseline_src:
        baseline = ServiceProcess(catalog, logs / "baseline.log", source=args.baseline_src)
        stack.callback(baseline.stop)
        baseline.start()

    mt = args.max_tokens
    results: dict = {}
    mismatches = 0
    processes = {"service": service, **({"baseline": baseline} if baseline is not None else {})}
    async with contextlib.AsyncExitStack() as channels, httpx.AsyncClient() as http:
        tclient = triton_grpc.InferenceServerClient(triton.grpc_url) if "triton" in models else None
        try:
            stubs = {}
            for path, process in processes.items():
                channel = await channels.enter_async_context(open_channel(process.address))
                stubs[path] = inference_pb2_grpc.InferenceServiceStub(channel)
                await process.wait_ready(stubs[path], names)

            def through(path: str, model: str):
                return lambda p: via_service(stubs[path], model, p, mt)

            backends = {}
            if "triton" in models:
                backends["triton"] = {
                    "direct": lambda p: triton_direct(tclient, p, mt),
                    **{path: through(path, "triton-gemma") for path in processes},
                }
            if "openai" in models:
                backends["openai"] = {
                    "direct": lambda p: openai_direct(http, openai.base_url, p, mt),
                    **{path: through(path, "openai-gemma") for path in processes},
                }
            for backend, paths in backends.items():
                samples: dict[str, list[Sample]] = {path: [] for path in paths}
                expected: dict[int, int] = {}
                for call in paths.values():  # warm-up, discarded
                    await call(PROMPTS[0])
                cpu_s = dict.fromkeys(processes, 0.0)
                for r in range(args.rounds):
                    for path, call in paths.items():
                        started = time.perf_counter()
                        process = processes.get(path)
                        cpu_before = cpu_seconds(process.process.pid) if process else 0.0
                        await measure(f"{backend} {path}", call, args.requests, samples[path], expected)
                        if process:
                            cpu_s[path] += cpu_seconds(process.process.pid) - cpu_before
                        print(f"{backend} round {r + 1} {path}: {time.perf_counter() - started:.1f}s", file=sys.stderr)
                for path, got in samples.items():
                    mismatches += sum(
                        1 for i, s in enumerate(got) if s.tokens != expected[i % args.requests % len(PROMPTS)]
                    )
                results[backend] = {path: summary(got) for path, got in samples.items()}
                for path, got in samples.items():
                    if path != "direct":
                        results[backend][path]["paired"] = paired(got, samples["direct"])
                for path, seconds in cpu_s.items():
                    served = samples[path]
                    results[backend][path]["cpu_ms_per_request"] = seconds * 1000 / len(served)
                    results[backend][path]["cpu_ms_per_token"] = seconds * 1000 / sum(x.tokens for x in served)
        finally:
            if tclient is not None:
                await tclient.close()
    return results, mismatches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="requests per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "inference_backends.md"))
    parser.add_argument(
        "--backends", default="triton,openai", help="which to measure: triton, openai or both (comma-separated)"
    )
    parser.add_argument(
        "--baseline-src", default="", help="another copy of the service's source, run as a third path (see above)"
    )
    args = parser.parse_args()
    logs = ROOT / "bench" / "results" / "tmp"
    logs.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    # SIGTERM ends like Ctrl-C: the exit stack stops every server it started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with contextlib.ExitStack() as stack:
        try:
            results, mismatches = asyncio.run(run(args, stack, logs))
        except KeyboardInterrupt:
            print("interrupted: stopping the servers", file=sys.stderr)
            return 130
    text = report(results, args, load_before, os.getloadavg(), mismatches)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
