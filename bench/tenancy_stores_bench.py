"""Tenancy stores benchmark: the same repository on SQLite (the baseline) and on PostgreSQL.

    .venv/bin/python bench/tenancy_stores_bench.py [--calls 1000] [--concurrency 16]
                                                   [--out bench/results/tenancy_stores.md]

Starts a private PostgreSQL (llmesh.kit.postgres_server: initdb/pg_ctl on a free port, fsync off
as in the tests, so commit latency here is not a durable server's) and a fresh SQLite file, in
this run, and times on each: the credentials lookup behind Authenticate, a ledger insert one at a
time, ledger inserts from `concurrency` writers at once (throughput), and an audit append (a
serialised transaction). Interleaved rounds so both stores see the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
from llmesh.kit.postgres_server import PostgresServerProcess
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.tenancy import keys
from llmesh.services.tenancy.audit import AuditLog
from llmesh.services.tenancy.ledger import UsageEntry
from llmesh.services.tenancy.models import ApiKey, Tenant, new_key_id, new_tenant_id
from llmesh.services.tenancy.repository import Repository, now_us

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROUNDS = 4


def _entry(n: int, tag: str) -> UsageEntry:
    return UsageEntry(
        f"{tag}-{n}", "t_bench", "bu", "chat", "k_1", "m", "1", "api", "local", "miss", 10, 5, 0.01, 0.0, now_us()
    )


async def _timed(fn, calls: int) -> list[float]:
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        await fn(i)
        samples.append(time.perf_counter() - started)
    return samples


async def measure(repo: Repository, audit: AuditLog, key_ids: list[str], calls: int, concurrency: int, tag: str):
    lookups = await _timed(lambda i: repo.credentials(key_ids[i % len(key_ids)]), calls)
    inserts = await _timed(lambda i: repo.insert_usage(_entry(i, f"{tag}-s"), now_us()), calls)
    appends = await _timed(lambda i: audit.append("bench", "bench.append", detail={"i": i}), calls // 4)
    started = time.perf_counter()
    queue = iter(range(calls))

    async def writer() -> None:
        for i in queue:
            await repo.insert_usage(_entry(i, f"{tag}-c"), now_us())

    await asyncio.gather(*(writer() for _ in range(concurrency)))
    rate = calls / (time.perf_counter() - started)
    return lookups, inserts, appends, rate


async def prepare(url: str, keys_n: int) -> tuple[Repository, AuditLog, list[str]]:
    repo = Repository(url)
    await repo.open()
    tenant = Tenant(new_tenant_id(), "bench", "bu", Sensitivity.INTERNAL, now_us())
    await repo.insert_tenant(tenant)
    key_ids = []
    for _ in range(keys_n):
        key = ApiKey(new_key_id(), tenant.tenant_id, "", now_us())
        await repo.insert_key(key, keys.hash_secret(keys.new_secret()))
        key_ids.append(key.key_id)
    return repo, AuditLog(repo, "bench-audit-key-0123456789"), key_ids


def _row(name: str, store: str, seconds: list[float]) -> str:
    a = np.array(seconds) * 1e6
    return f"| {name} | {store} | {len(a)} | {np.median(a):.0f} | {np.percentile(a, 90):.0f} | {np.percentile(a, 99):.0f} |"


async def run(args) -> str:
    workdir = tempfile.mkdtemp(prefix="llmesh-stores-bench-")
    server = PostgresServerProcess(os.path.join(workdir, "pg")).start()
    stores = {"sqlite": os.path.join(workdir, "tenancy.db"), "postgresql": server.url}
    results: dict[str, dict[str, list]] = {s: {"lookup": [], "insert": [], "append": [], "rate": []} for s in stores}
    opened = {}
    try:
        for store, url in stores.items():
            opened[store] = await prepare(url, 1000)
        for round_ in range(ROUNDS):
            for store in stores:
                repo, audit, key_ids = opened[store]
                lookups, inserts, appends, rate = await measure(
                    repo, audit, key_ids, args.calls, args.concurrency, f"r{round_}"
                )
                r = results[store]
                r["lookup"] += lookups
                r["insert"] += inserts
                r["append"] += appends
                r["rate"].append(rate)
    finally:
        for repo, _, _ in opened.values():
            await repo.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [
        "# Tenancy stores: SQLite (baseline) and PostgreSQL, one repository",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared), Python {sys.version.split()[0]}; `bench/tenancy_stores_bench.py --calls {args.calls} "
        f"--concurrency {args.concurrency}`; {ROUNDS} interleaved rounds. PostgreSQL 15 on loopback with fsync off "
        "(as in the tests): commit latency of a durable server is higher. SQLite: WAL, synchronous=NORMAL.",
        "",
        "| operation | store | n | p50 µs | p90 µs | p99 µs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for op, name in (
        ("lookup", "credentials lookup"),
        ("insert", "ledger insert, one writer"),
        ("append", "audit append"),
    ):
        for store in stores:
            lines.append(_row(name, store, results[store][op]))
    lines += ["", f"| ledger inserts, {args.concurrency} writers | rows/s, median of rounds |", "| --- | --- |"]
    for store in stores:
        lines.append(f"| {store} | {np.median(results[store]['rate']):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "bench/results/tenancy_stores.md")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
