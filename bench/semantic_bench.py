"""Semantic cache benchmark: embedding latency, semantic Lookup through the cache service's gRPC
API, and top-1 tenant-filtered search on the embedded qdrant-edge store at 100k and 1M entries.

    .venv/bin/python bench/semantic_bench.py [--scenarios 100000:1000:opt,...] [--skip-grpc]
                                             [--skip-embedding] [--skip-search]
                                             [--runtimes torch,onnx]
                                             [--out bench/results/semantic.md]

- Embedding: the minilm embedder (all-MiniLM-L6-v2, fine-tuned where the weights are shipped,
  one thread) on each of --runtimes (torch: sentence-transformers; onnx: ONNX Runtime on its
  export), one question per call as a lookup does, the runtimes taking turns question by
  question so both see the same load; the largest difference between their vectors; and the
  second stage's score where it runs.
- gRPC: the cache service as its own process (`python -m llmesh.services.cache`, semantic layer
  on, embedded store), once per runtime, this process a grpc.aio client. Stores answers to the hand-written
  questions of services/cache/tests/semantic/data/rewordings.csv plus filler questions, then times Lookup
  of the rewordings (semantic hits or gray-zone decisions: the exact layer cannot answer them)
  and of unrelated questions (misses).
- Search: random unit vectors (384 dimensions) with the payload a cached entry carries, written
  through the store the index uses (EdgeStore), spread over N tenants; times one shard query with
  every lookup condition in its filter, and EdgeStore.nearest (the index's call: a first look
  under the tenant filter without payloads, the nearest one's payload, payload decode) for the
  top-1 inside one tenant. Memory
  per entry: the process's RSS growth and the store's size on disk, each divided by the entries.
  A scenario is entries:tenants, with `:opt` when the shard is then optimized (per-tenant graphs,
  vacuum; it holds the GIL) and timed again.
Writes a markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import platform
import random
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent

from llmesh.launcher.processes import ServiceProcess
from llmesh.services.cache.semantic.api import SemanticEntry, SemanticQuery  # noqa: E402
from llmesh.services.cache.semantic.pairs import read_text_pairs  # noqa: E402

REWORDINGS = ROOT / "services" / "cache" / "tests" / "semantic" / "data" / "rewordings.csv"
DIM = 384
DEFAULT_SCENARIOS = "100000:1000,100000:100,100000:10,1000000:1000,1000000:100"


def ms(samples) -> dict:
    a = np.asarray(samples) * 1e3
    return {
        "n": len(a),
        "p50": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
    }


def row(label: str, s: dict) -> str:
    return f"| {label} | {s['n']} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | {s['mean']:.2f} |"


def rss_bytes() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def dir_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- embedding ------------------------------------------------------------------------------------


async def bench_embedding(questions: list[str], runtimes: list[str]) -> dict:
    from llmesh.services.cache.semantic.config import SemanticConfig
    from llmesh.services.cache.semantic.factory import load_calibration, make_embedder, make_stage2

    configs = {runtime: SemanticConfig(embed_runtime=runtime) for runtime in runtimes}
    embedders = {}
    try:
        for runtime, config in configs.items():
            embedders[runtime] = await make_embedder(config)
        for q in questions[:20]:
            for embedder in embedders.values():
                await embedder.embed([q])
        samples: dict[str, list[float]] = {runtime: [] for runtime in runtimes}
        vectors: dict[str, list[np.ndarray]] = {runtime: [] for runtime in runtimes}
        for q in questions:
            for runtime, embedder in embedders.items():
                started = time.perf_counter()
                vector = await embedder.embed([q])
                samples[runtime].append(time.perf_counter() - started)
                vectors[runtime].append(vector)
        embedder = embedders[runtimes[0]]
        result = {
            "model": embedder.model_id,
            "embed": {runtime: ms(s) for runtime, s in samples.items()},
            "models": {runtime: e.model_id for runtime, e in embedders.items()},
        }
        if len(runtimes) > 1:
            first, *others = (np.concatenate(vectors[runtime]) for runtime in runtimes)
            result["max_abs_diff"] = max(float(np.abs(other - first).max()) for other in others)
            result["min_cosine"] = min(float((other * first).sum(axis=1).min()) for other in others)
        config = configs[runtimes[0]]
        stage2 = make_stage2(load_calibration(config, embedder.model_id), config)
        if stage2 is not None:
            pairs = list(zip(questions, questions[1:] + questions[:1], strict=True))
            for a, b in pairs[:10]:
                await stage2.score(a, b, 0.9)
            samples = []
            for a, b in pairs:
                started = time.perf_counter()
                await stage2.score(a, b, 0.9)
                samples.append(time.perf_counter() - started)
            result["stage2"] = {"name": stage2.name, **ms(samples)}
        return result
    finally:
        for embedder in embedders.values():
            await embedder.close()


# -- semantic lookup through gRPC -----------------------------------------------------------------


def start_cache(workdir: pathlib.Path, nats_url: str, runtime: str | None = None) -> ServiceProcess:
    """The cache service as its own process on a free port, as `llmesh up` runs it, with its own
    credential (this process calls it as the operator)."""
    from llmesh.kit.testing import ensure_identity, identity_env

    service = ServiceProcess(
        "cache",
        port=0,
        home=workdir,
        env={
            **os.environ,
            **identity_env(ensure_identity(), "cache"),
            **({"LLMESH_CACHE_EMBED_RUNTIME": runtime} if runtime else {}),
            "LLMESH_HOME": str(workdir),
            "LLMESH_NATS_URL": nats_url,
            "LLMESH_CACHE_SEMANTIC": "true",
            "LLMESH_CACHE_REPLICA_ID": f"bench-{os.getpid()}",
            "LLMESH_LOG_LEVEL": "warning",
            "OMP_NUM_THREADS": "1",
        },
    )
    service.start()
    service.wait_ready(120)
    return service


async def bench_grpc(fillers: int, rounds: int, runtime: str | None = None) -> dict:
    from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
    from llmesh.common.v1 import common_pb2
    from llmesh.kit.client import open_channel
    from llmesh.kit.nats_server import NatsServerProcess

    pairs = read_text_pairs(REWORDINGS)
    tenant = "bench-semantic"

    def key(text: str) -> cache_pb2.CacheKey:
        return cache_pb2.CacheKey(
            tenant_id=tenant,
            use_case="support",
            messages=[
                common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content="Answer briefly."),
                common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text),
            ],
            sampling=common_pb2.SamplingParams(temperature=0.0),
            max_tokens=256,
        )

    topics = ["invoice", "router", "contract", "laptop", "pension", "printer", "badge", "server", "budget", "visa"]
    actions = ["renew", "configure", "return", "approve", "replace", "audit", "migrate", "insure", "ship", "price"]
    filler_questions = [
        f"How do I {actions[i % 10]} the {topics[(i // 10) % 10]} number {i} for team {i % 37}?" for i in range(fillers)
    ]
    with tempfile.TemporaryDirectory(prefix="semantic-bench-") as tmp:
        nats = NatsServerProcess(str(pathlib.Path(tmp) / "nats"))
        nats.start()
        service = start_cache(pathlib.Path(tmp), nats.url, runtime)
        try:
            async with open_channel(f"127.0.0.1:{service.port}") as channel:
                stub = cache_pb2_grpc.CacheServiceStub(channel)
                started = time.perf_counter()
                for text in [a for a, _ in pairs] + filler_questions:
                    await stub.Store(
                        cache_pb2.StoreRequest(
                            key=key(text),
                            content=f"answer: {text}",
                            model="bench",
                            backend="local",
                            tier=common_pb2.TIER_2,
                            ttl_seconds=3600,
                        ),
                        timeout=30,
                    )
                store_s = time.perf_counter() - started
                outcomes: dict[str, int] = {}
                hits, misses = [], []
                unrelated = [f"What is the tallest building in city number {i}?" for i in range(len(pairs))]
                for _ in range(rounds):
                    for (_, reworded), other in zip(pairs, unrelated, strict=True):
                        for text, sink in ((reworded, hits), (other, misses)):
                            t0 = time.perf_counter()
                            response = await stub.Lookup(cache_pb2.LookupRequest(key=key(text)), timeout=10)
                            sink.append(time.perf_counter() - t0)
                            if sink is hits:
                                name = cache_pb2.LookupOutcome.Name(response.outcome)
                                outcomes[name] = outcomes.get(name, 0) + 1
        finally:
            service.stop(30)
            nats.stop()
    return {
        "runtime": runtime or os.environ.get("LLMESH_CACHE_EMBED_RUNTIME", "onnx"),
        "stored": len(pairs) + fillers,
        "store_s": store_s,
        "reworded": ms(hits),
        "unrelated": ms(misses),
        "reworded_outcomes": outcomes,
    }


# -- vector search on the embedded store ----------------------------------------------------------


async def bench_search(size: int, tenants: int, queries: int, optimize: bool, workdir: pathlib.Path) -> dict:
    import qdrant_edge as qe
    from llmesh.services.cache.semantic.edge_store import EdgeStore
    from llmesh.services.cache.semantic.scope import lookup_scope

    rng = np.random.default_rng(size + tenants)
    path = workdir / f"edge-{size}-{tenants}"
    rss_before = rss_bytes()
    store = await EdgeStore.open(path, DIM)
    now = time.time()
    batch = 5000
    started = time.perf_counter()
    for start in range(0, size, batch):
        n = min(batch, size - start)
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        entries = [
            SemanticEntry(
                entry_id=f"e{i}",
                tenant_id=f"t{i % tenants}",
                use_case="support",
                tier=2,
                context_hash="c0ffee" * 8,
                params_hash="5eed" * 16,
                text=f"How do I reset the password of account {i} when the email is gone?",
                expires_at=now + 86400,
                created_at=now,
                content_versions={"handbook": 3},
                payload=b"x" * 300,
            )
            for i in range(start, start + n)
        ]
        await store.upsert(entries, vectors)
    insert_s = time.perf_counter() - started
    shard = store._shard  # the raw engine call, next to the index's own path

    def probe() -> tuple[SemanticQuery, np.ndarray]:
        v = rng.standard_normal(DIM).astype(np.float32)
        v /= np.linalg.norm(v)
        q = SemanticQuery(
            tenant_id=f"t{rng.integers(tenants)}",
            use_case="support",
            tier=1,
            context_hash="c0ffee" * 8,
            params_hash="5eed" * 16,
            text="-",
            now=now,
        )
        return q, v

    async def measure() -> tuple[dict, dict]:
        from llmesh.services.cache.semantic.edge_store import edge_filter

        raw, nearest = [], []
        for _ in range(50):
            q, v = probe()
            await store.nearest(lookup_scope(q), v)
        for _ in range(queries):
            q, v = probe()
            request = qe.QueryRequest(
                limit=1, query=qe.Query.Nearest(v.tolist()), filter=edge_filter(lookup_scope(q)), with_payload=True
            )
            t0 = time.perf_counter()
            found = shard.query(request)
            raw.append(time.perf_counter() - t0)
            assert found and found[0].payload["tenant_id"] == q.tenant_id
            t0 = time.perf_counter()
            await store.nearest(lookup_scope(q), v)
            nearest.append(time.perf_counter() - t0)
        return ms(raw), ms(nearest)

    raw, nearest = await measure()
    result = {
        "size": size,
        "tenants": tenants,
        "insert_s": insert_s,
        "rss_per_entry": (rss_bytes() - rss_before) / size,
        "disk_per_entry": dir_bytes(path) / size,
        "raw": raw,
        "nearest": nearest,
    }
    if optimize:
        t0 = time.perf_counter()
        await store.optimize()
        result["optimize_s"] = time.perf_counter() - t0
        result["raw_optimized"], result["nearest_optimized"] = await measure()
        result["disk_per_entry_optimized"] = dir_bytes(path) / size
    await store.close()
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    return result


# -- report ---------------------------------------------------------------------------------------


def report(args, embedding, grpc_results, searches) -> str:
    lines = [
        "# Semantic cache: embedding, lookup through gRPC, vector search",
        "",
        f"Generated by `bench/semantic_bench.py {' '.join(sys.argv[1:])}` on {datetime.date.today().isoformat()}: "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), "
        f"{platform.system()} {platform.release()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}.",
        "",
        f"Load average when the report was written: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min); "
        "other work shared the two cores, which shows mostly in the p99 column.",
        "",
    ]
    header = ["| measured | n | p50 ms | p90 ms | p99 ms | mean ms |", "| --- | --- | --- | --- | --- | --- |"]
    if embedding:
        lines += [
            "## Embedding one question (in process, 1 thread)",
            "",
            "The runtimes take turns question by question (LLMESH_CACHE_EMBED_RUNTIME: torch is "
            "sentence-transformers, onnx is ONNX Runtime on the same weights' export).",
            "",
            *header,
            *(
                row(f"embed, {runtime} ({embedding['models'][runtime]})", s)
                for runtime, s in embedding["embed"].items()
            ),
        ]
        if "stage2" in embedding:
            lines.append(row(f"second stage score ({embedding['stage2']['name']})", embedding["stage2"]))
        lines.append("")
        if "max_abs_diff" in embedding:
            lines += [
                f"Vectors of the runtimes on these {next(iter(embedding['embed'].values()))['n']} questions: "
                f"largest difference of a component {embedding['max_abs_diff']:.1e}, "
                f"smallest cosine {embedding['min_cosine']:.7f}.",
                "",
            ]
    for g in grpc_results:
        lines += [
            f"## Semantic Lookup through the cache service's gRPC API (embedder runtime {g['runtime']})",
            "",
            f"The cache service as its own process (semantic layer on, qdrant-edge store), {g['stored']} answers "
            f"stored in one tenant ({g['store_s']:.1f} s, each Store embeds its question). Lookups are sequential "
            "from a client process on loopback; each one embeds the question, searches and decides.",
            "",
            *header,
            row("reworded question (semantic path)", g["reworded"]),
            row("unrelated question (miss)", g["unrelated"]),
            "",
            f"Outcomes of the reworded lookups: {json.dumps(g['reworded_outcomes'])}.",
            "",
        ]
    if searches:
        lines += [
            "## Top-1 search with the tenant filter on qdrant-edge",
            "",
            "Random unit vectors (384-d), every entry with the payload a cached answer carries (~0.5 kB). "
            "`raw`: one engine query with every lookup condition in its filter; `index path`: "
            "EdgeStore.nearest, what a lookup runs (the tenant's 8 nearest under the tenant filter without "
            "payloads, then the nearest one's payload with the other conditions checked on it; on the "
            "event loop's thread; payload decode). All entries here share one context, so the nearest "
            "always answers: a tenant whose nearest entry belongs to another context pays one more query "
            "on those 8 ids (~0.2 ms), and `raw` on top when none of the 8 is eligible.",
            "",
            "| entries | tenants (entries each) | insert s | RSS per entry | disk per entry | raw p50 / p99 ms "
            "| index path p50 / p99 ms | optimize s | after optimize: raw p50 / p99 ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in searches:
            opt = (
                f"{s['optimize_s']:.1f} | {s['raw_optimized']['p50']:.2f} / {s['raw_optimized']['p99']:.2f}"
                if "optimize_s" in s
                else "not run | -"
            )
            lines.append(
                f"| {s['size']:,} | {s['tenants']:,} ({s['size'] // s['tenants']:,}) | {s['insert_s']:.0f} | "
                f"{s['rss_per_entry'] / 1024:.2f} kB | {s['disk_per_entry'] / 1024:.2f} kB | "
                f"{s['raw']['p50']:.2f} / {s['raw']['p99']:.2f} | "
                f"{s['nearest']['p50']:.2f} / {s['nearest']['p99']:.2f} "
                f"| {opt} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--fillers", type=int, default=2000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeats of the lookups; repeats reuse the vector of the first (embedded once)",
    )
    parser.add_argument("--skip-embedding", action="store_true")
    parser.add_argument("--skip-grpc", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument(
        "--runtimes",
        default="torch,onnx",
        help="embedder runtimes to measure, comma-separated (torch, onnx); the gRPC part runs once per runtime",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "semantic.md"))
    args = parser.parse_args()

    questions = [q for pair in read_text_pairs(REWORDINGS) for q in pair]
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    embedding = None if args.skip_embedding else await bench_embedding(questions, runtimes)
    if embedding:
        print("embedding", json.dumps(embedding), flush=True)
    grpc_results = []
    for runtime in [] if args.skip_grpc else runtimes:
        grpc_results.append(await bench_grpc(args.fillers, args.rounds, runtime))
        print("grpc", json.dumps(grpc_results[-1]), flush=True)
    searches = []
    if not args.skip_search:
        with tempfile.TemporaryDirectory(prefix="semantic-search-") as tmp:
            for scenario in args.scenarios.split(","):
                size, tenants, *flags = scenario.split(":")
                result = await bench_search(int(size), int(tenants), args.queries, "opt" in flags, pathlib.Path(tmp))
                print("search", json.dumps(result), flush=True)
                searches.append(result)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(args, embedding, grpc_results, searches))
    print(f"wrote {out}")


if __name__ == "__main__":
    random.seed(0)
    asyncio.run(main())
