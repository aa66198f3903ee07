"""CPU time per exact hit in every process of the mesh: what bounds requests/s when all of them
share the machine's cores.

    .venv/bin/python bench/hot_path_cpu.py [--calls 2000] [--concurrency 16] [--repeats 3]

Starts the mesh as bench/hot_path_bench.py does (nats-server, tenancy, classifier, cache, the fake
inference, the router), seeds one exact hit, then sends `--calls` exact hits through the router
from one client process and reads each process's user+system CPU time from /proc/<pid>/stat before
and after (less what it used in an idle window measured first). Prints microseconds of CPU per request per process (median of the repeats) and the
client's own; the load average is printed with it, since other work on the machine shows up in
wall time but not in a process's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hot_path_bench import Mesh, _client_identity, _grpc_hit, _seed  # noqa: E402
from llmesh.kit.testing import ensure_identity  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (its threads included)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def _load(target: str, key: str, calls: int, concurrency: int) -> dict:
    from llmesh.kit.client import open_channel
    from llmesh.router.v1 import router_pb2_grpc

    async with open_channel(target) as channel:
        call = _grpc_hit(router_pb2_grpc.RouterServiceStub(channel), key)
        for i in range(20):
            await call(i)
        counter = iter(range(calls))

        async def worker() -> None:
            for i in counter:
                await call(i)

        began, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"wall_s": time.monotonic() - began, "cpu_s": time.process_time() - cpu}


def _client(args: tuple[str, str, int, int]) -> dict:
    return asyncio.run(_load(*args))


def _profile(args, pool, pids: dict[str, int], router: str, key: str) -> None:
    """One more pass (not counted) with py-spy sampling every process: collapsed stacks per process
    in --profile DIR, and the functions most often on the stack printed (own and total)."""
    import collections
    import signal
    import subprocess

    out = pathlib.Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    spies = {
        name: subprocess.Popen(
            [
                args.py_spy,
                "record",
                "--nonblocking",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(out / f"{name}.txt"),
                "-p",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
        if name != "nats-server"
    }
    time.sleep(1.0)
    pool.apply(_client, ((router, key, args.calls, args.concurrency),))
    for spy in spies.values():
        spy.send_signal(signal.SIGINT)
    for spy in spies.values():
        spy.wait(30)
    for name in spies:
        own: collections.Counter[str] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        samples = 0
        path = out / f"{name}.txt"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            n = int(count)
            samples += n
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
        print(f"--- {name}: {samples} samples; own time")
        for frame, n in own.most_common(args.top):
            print(f"{100 * n / samples:5.1f}%  {frame}")
        print(f"--- {name}: on the stack")
        for frame, n in total.most_common(args.top):
            print(f"{100 * n / samples:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="", help="also sample every process with py-spy into this folder")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--top", type=int, default=25, help="functions listed per process with --profile")
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle window measured first (subtracted)")
    args = parser.parse_args()
    pool = multiprocessing.get_context("spawn").Pool(
        1, initializer=_client_identity, initargs=(str(ensure_identity()),)
    )
    try:
        with tempfile.TemporaryDirectory() as tmp, Mesh(pathlib.Path(tmp)) as mesh:
            key = mesh.new_api_key()
            router = mesh.addresses["router"]
            _seed(router, key)
            pids = {name: p.pid for name, p in mesh.processes.items()}
            if mesh.nats is not None and mesh.nats.process is not None:
                pids["nats-server"] = mesh.nats.process.pid
            per: dict[str, list[float]] = {name: [] for name in [*pids, "client", "all"]}
            rps = []
            # what each process burns with no request at all (timers, pollers), per second
            before, began = {name: cpu_s(pid) for name, pid in pids.items()}, time.monotonic()
            time.sleep(args.idle_s)
            idle_s = time.monotonic() - began
            idle = {name: (cpu_s(pid) - before[name]) / idle_s for name, pid in pids.items()}
            for _ in range(args.repeats):
                before = {name: cpu_s(pid) for name, pid in pids.items()}
                result = pool.apply(_client, ((router, key, args.calls, args.concurrency),))
                after = {name: cpu_s(pid) for name, pid in pids.items()}
                wall = result["wall_s"]
                used = {name: (after[name] - before[name] - idle[name] * wall) / args.calls * 1e6 for name in pids}
                used["client"] = result["cpu_s"] / args.calls * 1e6
                used["all"] = sum(used.values())
                for name, us in used.items():
                    per[name].append(us)
                rps.append(args.calls / result["wall_s"])
            if args.profile:
                _profile(args, pool, pids, router, key)
    finally:
        pool.close()
        pool.join()
    load = os.getloadavg()
    print(
        f"exact hits through the router: {args.calls} calls × {args.repeats}, concurrency {args.concurrency}; "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )
    print(f"{'process':<14} CPU µs per request, idle use subtracted (median; each repeat) | idle CPU ms/s")
    for name, values in per.items():
        print(
            f"{name:<14} {statistics.median(values):8.0f}   "
            + ", ".join(f"{v:.0f}" for v in values)
            + (f"   | {idle[name] * 1000:.0f}" if name in idle else "")
        )
    print(f"requests/s: median {statistics.median(rps):.0f} ({', '.join(f'{r:.0f}' for r in rps)})")


if __name__ == "__main__":
    main()
