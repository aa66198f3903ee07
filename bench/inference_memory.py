"""Where the inference service's memory goes under a steady load: the service alone
(`python -m llmesh.services.inference`, the bundled model, launcher thread settings) on its own
nats-server, driven straight over gRPC with the soak's mix (bench/mesh_load.py Load: short unique
prompts and a few repeated ones, max_tokens 4, and some callers that go away mid-stream), and
every `--sample-s` its VmRSS and the Rss of its mappings from /proc/<pid>/smaps, grouped:

- `heap`: the main arena ([heap]);
- `arenas`: glibc's per-thread arenas (anonymous, 64 MiB-aligned, with their PROT_NONE reserve);
- `stacks`: thread stacks (anonymous, 8 MiB-ish, behind a guard page);
- `anon_large` / `anon_small`: other anonymous mappings ≥ / < 4 MiB (llama.cpp's KV cache and
  compute buffers, numpy arrays, pymalloc arenas, large mallocs);
- `model`: the GGUF file mapping; `files`: other file mappings (libraries).

Prints one JSON line a sample and, at the end, each group's growth between the first sample after
`--warm-s` and the last. `--env NAME=VALUE` adds to the service's environment (e.g. MALLOC_ARENA_MAX=2).

    nice -n 19 .venv/bin/python bench/inference_memory.py --minutes 10 --rate 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from service_processes import ServiceProcesses  # noqa: E402

MODEL = "gemma-3-270m"
REPEATED_PROMPTS = [f"In one word, what colour is a {thing}?" for thing in ("lemon", "cherry", "leaf", "sky")]
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$")
ARENA = 64 << 20


def smaps_groups(pid: int) -> dict[str, float]:
    """Rss (MiB) of the process's mappings, by group (see the module docstring)."""
    mappings: list[dict] = []
    current: dict | None = None
    for line in pathlib.Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = _MAPPING.match(line)
        if m:
            current = {
                "start": int(m.group(1), 16),
                "end": int(m.group(2), 16),
                "perms": m.group(3),
                "path": m.group(4).strip(),
                "rss": 0,
            }
            mappings.append(current)
        elif line.startswith("Rss:") and current is not None:
            current["rss"] = int(line.split()[1])
    groups = dict.fromkeys(("heap", "arenas", "stacks", "anon_large", "anon_small", "model", "files"), 0.0)
    for i, m in enumerate(mappings):
        size, path = m["end"] - m["start"], m["path"]
        prev = mappings[i - 1] if i else None
        nxt = mappings[i + 1] if i + 1 < len(mappings) else None
        if path == "[heap]":
            group = "heap"
        elif path.endswith(".gguf"):
            group = "model"
        elif path.startswith("/"):
            group = "files"
        elif path.startswith("["):
            group = "files" if path != "[stack]" else "stacks"
        elif m["start"] % ARENA == 0 and nxt and nxt["perms"].startswith("---") and nxt["start"] == m["end"]:
            group = "arenas"  # a thread arena's used part, the reserve behind it
        elif (
            prev
            and prev["perms"].startswith("---")
            and prev["end"] == m["start"]
            and prev["end"] - prev["start"] == 4096
        ):
            group = "stacks"  # behind a one-page guard
        else:
            group = "anon_large" if size >= 4 << 20 else "anon_small"
        groups[group] += m["rss"] / 1024
    return {k: round(v, 1) for k, v in groups.items()}


def status(pid: int) -> dict:
    values = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            values[key] = int(rest.split()[0]) / (1024 if key != "Threads" else 1)
    return {k: round(v, 1) for k, v in values.items()}


class Driver:
    def __init__(self, address: str, rate: float, cancel_share: float, long_share: float, seed: int = 16):
        self.address, self.rate, self.cancel_share, self.long_share = address, rate, cancel_share, long_share
        self.rng = random.Random(seed)
        self.counts = {"ok": 0, "cancelled": 0, "error": 0}
        self.errors: dict[str, int] = {}

    def request(self):
        from llmesh.common.v1 import common_pb2
        from llmesh.inference.v1 import inference_pb2

        if self.rng.random() < 0.34:
            prompt = self.rng.choice(REPEATED_PROMPTS)
        else:
            prompt = f"Say one word about topic-{self.rng.getrandbits(40):010x}."
        if self.rng.random() < self.long_share:  # an occasional longer prompt and answer
            prompt = prompt + " Some context: " + " ".join(f"w{self.rng.randrange(1000)}" for _ in range(300))
            max_tokens = 64
        else:
            max_tokens = 4
        return inference_pb2.GenerateRequest(
            model=MODEL,
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt)],
            max_tokens=max_tokens,
            sampling=common_pb2.SamplingParams(),
            request_id=f"mem-{self.rng.getrandbits(48):012x}",
        )

    async def one(self, stub) -> None:
        import grpc

        request = self.request()
        cancel_after = 1 if self.rng.random() < self.cancel_share else None
        try:
            received = 0
            call = stub.Generate(request, timeout=30)
            async for _ in call:
                received += 1
                if cancel_after is not None and received >= cancel_after:
                    call.cancel()
                    self.counts["cancelled"] += 1
                    return
            self.counts["ok"] += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                self.counts["cancelled"] += 1
                return
            self.counts["error"] += 1
            self.errors[exc.code().name] = self.errors.get(exc.code().name, 0) + 1

    async def run(self, stop: asyncio.Event) -> None:
        from llmesh.inference.v1 import inference_pb2_grpc
        from llmesh.kit.client import open_channel

        async with open_channel(self.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            in_flight: set[asyncio.Task] = set()
            period, next_at = 1.0 / self.rate, time.monotonic()
            while not stop.is_set():
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if len(in_flight) >= 16:
                    continue
                task = asyncio.create_task(self.one(stub))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight, return_exceptions=True)


async def main(args) -> int:
    from llmesh.kit.nats_server import NatsServerProcess

    extra = dict(kv.split("=", 1) for kv in args.env)
    extra.setdefault("LLMESH_INFERENCE_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="llmesh-infmem-") as tmp:
        procs = ServiceProcesses(pathlib.Path(tmp))
        nats = NatsServerProcess(str(pathlib.Path(tmp) / "nats")).start()
        procs.nats_url = nats.url
        try:
            procs.wait("inference", procs.spawn("inference", extra), timeout_s=600)
            pid = procs.processes["inference"].pid
            driver = Driver(procs.addresses["inference"], args.rate, args.cancel_share, args.long_share)
            stop = asyncio.Event()
            load = asyncio.create_task(driver.run(stop))
            t0, samples = time.monotonic(), []
            end = t0 + args.minutes * 60
            while time.monotonic() < end:
                row = {"t": round(time.monotonic() - t0), **status(pid), **smaps_groups(pid), **driver.counts}
                samples.append(row)
                print(json.dumps(row), flush=True)
                await asyncio.sleep(min(args.sample_s, max(0.0, end - time.monotonic())))
            stop.set()
            await load
            row = {"t": round(time.monotonic() - t0), **status(pid), **smaps_groups(pid), **driver.counts}
            samples.append(row)
            print(json.dumps(row), flush=True)
        finally:
            procs.stop_all()
            nats.stop()
    warm = [s for s in samples if s["t"] >= args.warm_s] or samples[-1:]
    first, last = warm[0], warm[-1]
    growth = {
        k: round(last[k] - first[k], 1)
        for k in ("VmRSS", "RssAnon", "heap", "arenas", "stacks", "anon_large", "anon_small", "model", "files")
    }
    requests = sum(last[k] for k in ("ok", "cancelled", "error")) - sum(first[k] for k in ("ok", "cancelled", "error"))
    print(
        json.dumps(
            {
                "env": extra,
                "from_t": first["t"],
                "to_t": last["t"],
                "requests": requests,
                "growth_mib": growth,
                "errors": driver.errors,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2.0, help="requests a second (open loop)")
    parser.add_argument("--sample-s", type=float, default=15.0)
    parser.add_argument(
        "--warm-s", type=float, default=60.0, help="growth is measured from the first sample after this"
    )
    parser.add_argument("--cancel-share", type=float, default=0.05, help="callers that go away after the first delta")
    parser.add_argument("--long-share", type=float, default=0.0, help="requests with a ~300-word prompt, 64 tokens")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service's environment")
    sys.exit(asyncio.run(main(parser.parse_args())))
