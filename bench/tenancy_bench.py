"""Tenancy benchmark: what the SQLite layer costs, and Authenticate over gRPC.

    .venv/bin/python bench/tenancy_bench.py [--keys 2000] [--calls 2000] [--concurrency 1,16,64]
                                            [--out bench/results/tenancy.md]

Hosts the tenancy service in this process on a free port with a private nats-server and a fresh
SQLite file. Measures (1) the credentials lookup and a key insert run inline on a connection,
i.e. what an event loop would be blocked for without the worker thread; (2) the same lookup
through the repository's worker thread; (3) Authenticate end to end at several concurrencies.
Writes a markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import pathlib
import platform
import sqlite3
import sys
import tempfile
import time

import numpy as np
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings
from llmesh.kit.logging import configure_logging
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.server import ServiceHost
from llmesh.kit.testing import ensure_identity
from llmesh.services.tenancy import keys
from llmesh.services.tenancy.app import TenancyApp
from llmesh.services.tenancy.models import new_key_id
from llmesh.services.tenancy.repository import Repository, now_us
from llmesh.services.tenancy.settings import TenancySettings
from llmesh.tenancy.v1 import tenancy_pb2 as pb
from llmesh.tenancy.v1 import tenancy_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token-0123456789"


def _row(name: str, seconds: list[float], unit: float = 1e6, unit_name: str = "µs") -> str:
    a = np.array(seconds) * unit
    return (
        f"| {name} | {len(a)} | {np.median(a):.1f} | {np.percentile(a, 90):.1f} | "
        f"{np.percentile(a, 99):.1f} | {a.max():.1f} | {unit_name} |"
    )


def time_inline(db_path: pathlib.Path, key_ids: list[str], calls: int) -> tuple[list[float], list[float]]:
    """Lookups and commits on a plain connection in this thread: the cost the loop would pay."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    tenant_id = conn.execute("SELECT tenant_id FROM tenants LIMIT 1").fetchone()[0]
    sql = (
        "SELECT k.key_id, k.salt_hex, k.hash_hex, t.name FROM api_keys k "
        "JOIN tenants t ON t.tenant_id = k.tenant_id WHERE k.key_id = ?"
    )
    lookups = []
    for i in range(calls):
        started = time.perf_counter()
        conn.execute(sql, (key_ids[i % len(key_ids)],)).fetchone()
        lookups.append(time.perf_counter() - started)
    inserts = []
    for _ in range(min(calls, 500)):
        stored = keys.hash_secret(keys.new_secret())
        started = time.perf_counter()
        conn.execute(
            "INSERT INTO api_keys (key_id, tenant_id, label, created_at_us, salt_hex, hash_hex) "
            "VALUES (?, ?, '', ?, ?, ?)",
            (new_key_id(), tenant_id, now_us(), stored.salt_hex, stored.hash_hex),
        )
        inserts.append(time.perf_counter() - started)
    conn.close()
    return lookups, inserts


async def time_repository(db_path: pathlib.Path, key_ids: list[str], calls: int) -> list[float]:
    repo = Repository(str(db_path))
    await repo.open()
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        await repo.credentials(key_ids[i % len(key_ids)])
        samples.append(time.perf_counter() - started)
    await repo.close()
    return samples


async def time_authenticate(stub, api_keys: list[str], calls: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    next_call = iter(range(calls))

    async def worker() -> None:
        for i in next_call:
            started = time.perf_counter()
            await stub.Authenticate(pb.AuthenticateRequest(api_key=api_keys[i % len(api_keys)]))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, calls / (time.perf_counter() - started)


async def run(args) -> str:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="tenancy-bench-"))
    nats_server = NatsServerProcess(str(workdir / "nats")).start()
    db_path = workdir / "tenancy.db"
    settings = load_settings(
        TenancySettings,
        environ={},
        port=0,
        metrics_port=0,
        db_path=str(db_path),
        nats_url=nats_server.url,
        admin_token=ADMIN_TOKEN,
        log_level="warning",
    )
    ensure_identity()  # the benchmark calls as the operator; tenancy verifies with the same keys
    host = ServiceHost(TenancyApp(settings), settings, serve_metrics=False)
    await host.start()
    lines = []
    try:
        admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        async with open_channel(host.address) as channel:
            stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
            tenant = (await stub.CreateTenant(pb.CreateTenantRequest(name="bench"), metadata=admin)).tenant
            api_keys, key_ids = [], []
            for _ in range(args.keys):
                created = await stub.CreateApiKey(pb.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin)
                api_keys.append(created.api_key)
                key_ids.append(created.key.key_id)
            for api_key in api_keys[:200]:  # warm-up
                await stub.Authenticate(pb.AuthenticateRequest(api_key=api_key))
            rows = []
            for concurrency in args.concurrency:
                latencies, rate = await time_authenticate(stub, api_keys, args.calls, concurrency)
                rows.append((concurrency, latencies, rate))
        lookups, inserts = time_inline(db_path, key_ids, args.calls)
        via_thread = await time_repository(db_path, key_ids, args.calls)
        secret = keys.new_secret()
        stored = keys.hash_secret(secret)
        hashing = []
        for _ in range(args.calls):
            started = time.perf_counter()
            keys.verify_secret(secret, stored)
            hashing.append(time.perf_counter() - started)
    finally:
        await host.stop(0)
        nats_server.stop()

    lines += [
        "# Tenancy benchmark",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, {platform.processor() or platform.machine()},"
        f" {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}"
        f" (WAL, synchronous=NORMAL), {args.keys} keys in the database.",
        "",
        "## Storage and hashing (one thread, no gRPC)",
        "",
        "| operation | n | median | p90 | p99 | max | unit |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        _row("credentials lookup, inline", lookups),
        _row("credentials lookup, via the repository's worker thread", via_thread),
        _row("key insert + commit, inline", inserts),
        _row("HMAC-SHA256 verify (salted, constant-time compare)", hashing),
        "",
        "## Authenticate over gRPC (loopback, client and server in one process)",
        "",
        "| concurrency | n | median ms | p90 ms | p99 ms | max ms | calls/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for concurrency, latencies, rate in rows:
        a = np.array(latencies) * 1e3
        lines.append(
            f"| {concurrency} | {len(a)} | {np.median(a):.2f} | {np.percentile(a, 90):.2f} | "
            f"{np.percentile(a, 99):.2f} | {a.max():.2f} | {rate:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tenancy.md"))
    args = parser.parse_args()
    configure_logging("tenancy-bench", "warning")
    report = asyncio.run(run(args))
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
