"""Faults under load (`make chaos`): a private mesh (`llmesh up --detach`, backends off, the local
model), three tenants, a steady mixed load through the router, and one fault at a time:

- SIGKILL of each service (the launcher's supervisor restarts it on its port);
- NATS frozen for 10 s (SIGSTOP, then SIGCONT of the nats-server process), key revocations issued
  during the freeze and checked afterwards;
- added latency, then severed and refused connections, on the router→inference path, through this
  harness's TCP proxy (the launcher's LLMESH_ROUTER_INFERENCE_ADDR points the router at it);
- disk full for the semantic store's folder (a 512 MiB tmpfs mounted over $LLMESH_HOME/cache/semantic
  before `up`, filled during the fault; skipped with the reason when mounting is not allowed);
- Redis stopped 10 s (SIGTERM, append-only file kept) and started again on its port, and PostgreSQL
  stopped 10 s (`pg_ctl stop -m fast`) and started again: with `redis`, `postgres` or `--stores` the
  harness starts both and the mesh uses them (LLMESH_REDIS_URL for the exact cache,
  LLMESH_ROUTER_QUOTA_REDIS_URL for budgets and rate limits, LLMESH_TENANCY_DATABASE_URL).

After the faults, the usage ledger is compared with the answers, per tenant (none missing, none
billed twice).

Per fault: the error rate in the fault window, the first success after the part is back, the last
error after it is back, what was lost. Writes docs/reports/reliability.md (the chaos part) and
bench/results/chaos.json. `--only kill-cache,nats` runs a subset."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.kit.postgres_server import PostgresServerProcess
from llmesh.router.v1 import router_pb2, router_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.mesh_load import (  # noqa: E402
    REPEATED_PROMPTS,
    FaultProxy,
    Load,
    PrivateMesh,
    RedisProcess,
    error_rate,
    free_port,
    generate_once,
    model_busy,
    percentile,
    write_report_section,
)

RESULTS = ROOT / "bench" / "results" / "chaos.json"
LOGS = pathlib.Path(tempfile.gettempdir()) / "llmesh-chaos-logs"
BASELINE_S, AFTER_S = 10.0, 20.0
# A 64 MiB tmpfs is too small: the restarted cache dies of SIGBUS at start (docs/reports/reliability.md).
TMPFS_MIB = 512


def serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
        return status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


async def wait_for(predicate, timeout_s: float = 120, interval_s: float = 0.1) -> float:
    """Polls `predicate` (sync, run in a thread) until true; returns the monotonic time it was."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return time.monotonic()
        await asyncio.sleep(interval_s)
    raise TimeoutError("the part did not come back")


def summarize(load: Load, name: str, t0: float, back: float, lost: str, command: str, note: str = "") -> dict:
    base = load.between(t0 - BASELINE_S, t0)
    during = load.between(t0, back)
    after = load.between(back, back + AFTER_S)
    first_ok = next((a.end for a in sorted(after, key=lambda a: a.end) if a.ok), None)
    errors_after = [a for a in after if not a.ok]
    codes: dict[str, int] = {}
    for a in during + errors_after:
        if not a.ok:
            code = f"{a.code} (model busy: TTFT SLO)" if model_busy(a) else a.code
            codes[code] = codes.get(code, 0) + 1
    ok_during = [a.latency_ms for a in during if a.ok]
    return {
        "fault": name,
        "baseline_requests": len(base),
        "baseline_error_rate": error_rate(base),
        "fault_s": back - t0,
        "fault_requests": len(during),
        "fault_error_rate": error_rate(during),
        # Without the interactive requests the router shed because the one local model was busy (the
        # machine's load, not the fault).
        "fault_error_rate_not_busy": error_rate([a for a in during if not model_busy(a)]),
        "baseline_p50_ms": percentile([a.latency_ms for a in base if a.ok], 50),
        "fault_p50_ms": percentile(ok_during, 50),
        "after_requests": len(after),
        "after_error_rate": error_rate(after),
        "first_ok_after_back_s": None if first_ok is None else first_ok - back,
        "last_error_after_back_s": max((a.start for a in errors_after), default=back) - back,
        "codes": codes,
        "lost": lost,
        "command": command,
        "note": note,
    }


def cache_hits(answers) -> str:
    repeats = [a for a in answers if a.ok and a.cache]
    hits = sum(a.cache in ("CACHE_OUTCOME_EXACT_HIT", "CACHE_OUTCOME_SEMANTIC_HIT") for a in repeats)
    return f"{hits}/{len(repeats)}"


async def kill_service(mesh: PrivateMesh, load: Load, name: str) -> dict:
    await asyncio.sleep(BASELINE_S)
    address = mesh.state()["endpoints"].get(name, "")
    old_pid, restarts = mesh.pid(name), mesh.restarts(name)
    t0 = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)

    def back_up() -> bool:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if mesh.pid(name) == old_pid:
                return False
            if name in BACKENDS:  # no gRPC health service: their own HTTP readiness
                try:
                    with urllib.request.urlopen(mesh.state()["health_urls"][name], timeout=1) as response:
                        return response.status == 200
                except urllib.error.HTTPError as exc:  # the stand-in wants its API key: it answers
                    return exc.code in (401, 403)
            return serving(address)
        return False

    back = await wait_for(back_up)
    await asyncio.sleep(AFTER_S)
    after = load.between(back, back + AFTER_S)
    lost = (
        f"restarts {restarts}→{mesh.restarts(name)}; requests failed in the window are lost (no retry by the "
        f"harness); answers served from cache after restart (ok answers with a hit / all ok): {cache_hits(after)}, "
        f"before: {cache_hits(load.between(t0 - BASELINE_S, t0))}"
    )
    return summarize(load, f"SIGKILL {name}", t0, back, lost, f".venv/bin/python bench/chaos.py --only kill-{name}")


async def nats_freeze(mesh: PrivateMesh, load: Load, victims: list[tuple[str, str]]) -> dict:
    # Each victim's key answers once first, so the router holds its principal (cached for 30 s):
    # only the revocation event, not a cache miss, can make the router refuse it within that time.
    async with grpc.aio.insecure_channel(mesh.state()["endpoints"]["router"]) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        warmed = [
            (await generate_once(stub, api_key, REPEATED_PROMPTS[1], router_pb2.PRIORITY_INTERACTIVE)).code
            for api_key, _ in victims
        ]
    await asyncio.sleep(BASELINE_S)
    pid = mesh.pid("nats")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    revoked, revoke_errors = [], []
    try:
        await asyncio.sleep(2)
        for api_key, key_id in victims:
            try:
                await mesh.revoke(key_id)
                revoked.append(api_key)
            except grpc.aio.AioRpcError as exc:
                revoke_errors.append(exc.code().name)
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - t0)))
    finally:
        os.kill(pid, signal.SIGCONT)
    back = time.monotonic()
    # Each revocation issued during the freeze must reach the router (which caches principals for 30 s).
    refused_at: dict[str, float] = {}
    async with grpc.aio.insecure_channel(mesh.state()["endpoints"]["router"]) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        deadline = back + 45
        while len(refused_at) < len(revoked) and time.monotonic() < deadline:
            for api_key in revoked:
                if api_key in refused_at:
                    continue
                answer = await generate_once(stub, api_key, REPEATED_PROMPTS[0], router_pb2.PRIORITY_INTERACTIVE)
                if answer.code == "UNAUTHENTICATED":
                    refused_at[api_key] = time.monotonic() - back
            await asyncio.sleep(0.5)
    await asyncio.sleep(max(0.0, back + AFTER_S - time.monotonic()))
    times = ", ".join(f"{t:.1f} s" for t in sorted(refused_at.values())) or "-"
    lost = (
        f"victims answered before the freeze: {warmed}; "
        f"{len(revoked)} revocations accepted during the freeze ({len(revoke_errors)} refused: "
        f"{revoke_errors or '-'}); {len(refused_at)}/{len(revoked)} enforced by the router after SIGCONT "
        f"(at {times} after SIGCONT; 45 s limit)"
    )
    return summarize(
        load,
        "NATS frozen 10 s (SIGSTOP/SIGCONT)",
        t0,
        back,
        lost,
        ".venv/bin/python bench/chaos.py --only nats",
    )


async def proxy_fault(load: Load, proxy: FaultProxy, kind: str) -> dict:
    await asyncio.sleep(BASELINE_S)
    t0 = time.monotonic()
    if kind == "latency":
        proxy.delay_s = 0.3
        await asyncio.sleep(15)
        proxy.delay_s = 0.0
        name = "router→inference +300 ms per chunk, 15 s"
    else:
        proxy.sever()
        await asyncio.sleep(10)
        proxy.severed = False
        name = "router→inference connections cut and refused, 10 s"
    back = time.monotonic()
    await asyncio.sleep(AFTER_S)
    return summarize(
        load,
        name,
        t0,
        back,
        "only the failed requests (no state on this path)",
        f".venv/bin/python bench/chaos.py --only {kind}",
    )


async def disk_full(mesh: PrivateMesh, load: Load, mounted: str) -> dict:
    if mounted != "ok":
        return {"fault": "semantic store disk full", "skipped": mounted}
    await asyncio.sleep(BASELINE_S)
    folder = mesh.home / "cache" / "semantic"
    filler = folder / "filler"
    restarts = mesh.restarts("cache")
    t0 = time.monotonic()

    def fill() -> None:
        with open(filler, "wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()

    await asyncio.to_thread(fill)
    await asyncio.sleep(15)
    filler.unlink()
    back = time.monotonic()
    await asyncio.sleep(AFTER_S)
    log = (mesh.home / "logs" / "cache.log").read_text(errors="replace")
    supervisor = (mesh.home / "logs" / "supervisor.log").read_text(errors="replace")
    return summarize(
        load,
        f"semantic store disk full, 15 s ({TMPFS_MIB} MiB tmpfs filled)",
        t0,
        back,
        f"cache restarts during the fault and after: {mesh.restarts('cache') - restarts} (SIGBUS lines in the "
        f"supervisor log: {supervisor.count('SIGBUS')}); cache log: {log.count('semantic_store_disk_full')} "
        f"disk-full warnings, {log.count('semantic_add_refused')} semantic stores refused, "
        f"{log.count('semantic_store_writable_again')} back to writable, "
        f"{log.count('semantic_refused_delete_applied')} refused deletes applied later",
        ".venv/bin/python bench/chaos.py --only disk",
    )


async def store_outage(load: Load, fault: str, name: str, stop, start, before, after) -> dict:
    """`stop` the store (a thread), wait so that it is down 10 s, `start` it; 'back' = `start` returned
    (the server accepts connections again). `before()` right before the stop, `after(seen)` right
    after the start, then the after-window: what survived."""
    await asyncio.sleep(BASELINE_S)
    seen = await before()
    t0 = time.monotonic()
    await asyncio.to_thread(stop)
    await asyncio.sleep(max(0.0, t0 + 10 - time.monotonic()))
    await asyncio.to_thread(start)
    back = time.monotonic()
    survived = await after(seen)
    await asyncio.sleep(AFTER_S)
    return summarize(
        load,
        f"{name} stopped 10 s, then started",
        t0,
        back,
        survived,
        f".venv/bin/python bench/chaos.py --only {fault}",
    )


async def settled_ledger(mesh: PrivateMesh, load: Load, timeout_s: float = 60) -> str:
    """Each answered request must be in the usage ledger once (usage travels over JetStream to
    tenancy): waits until the ledger stops growing, then compares, per tenant."""
    tenants = sorted({mesh.tenants[a.key] for a in load.answers if a.key in mesh.tenants})
    deadline, last, stable_since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            counts = await mesh.usage_requests(tenants)
        except grpc.aio.AioRpcError:
            counts = None
        if counts is not None and counts != last:
            last, stable_since = counts, time.monotonic()
        elif counts is not None and time.monotonic() - stable_since >= 5:
            break
        await asyncio.sleep(1)
    if last is None:
        return "usage ledger: not readable"
    ok = {t: sum(1 for a in load.answers if a.ok and mesh.tenants.get(a.key) == t) for t in tenants}
    failed = {t: sum(1 for a in load.answers if not a.ok and mesh.tenants.get(a.key) == t) for t in tenants}
    rows = [f"{ok[t]} answered / {failed[t]} failed → {last[t]} in the ledger" for t in tenants]
    missing = sum(max(0, ok[t] - last[t]) for t in tenants)
    extra = sum(max(0, last[t] - ok[t]) for t in tenants)
    return (
        f"usage ledger per tenant: {'; '.join(rows)}; answered but not in the ledger: {missing}; in the ledger "
        f"beyond the answered: {extra} (requests cut when the load stopped: {load.cut_at_stop})"
    )


def mount_tmpfs(folder: pathlib.Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    return "ok" if result.returncode == 0 else f"skipped: mount -t tmpfs failed ({result.stderr.strip()})"


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        "## Faults under load (`make chaos`)",
        "",
        f"Run {meta['when']} on {meta['host']} (2 shared cores, 8 engineers on the machine, load average "
        f"{meta.get('load', '-')} at the end), mesh from `llmesh up --detach` (backends: {meta.get('backends', 'off (the local model)')}; "
        f"stores: {meta.get('stores', 'embedded')}), {meta['rate']} requests/s open loop through the "
        "router, three tenants, half PRIORITY_INTERACTIVE and half PRIORITY_BATCH, a third repeated prompts, "
        f"max_tokens 4. Windows: {BASELINE_S:.0f} s baseline before each fault, the fault, {AFTER_S:.0f} s after "
        "the part is back. 'back' = the restarted process answers health SERVING (kills), SIGCONT (NATS), the "
        "proxy cleared (network), the filler removed (disk), the server accepts connections again (Redis, "
        "PostgreSQL). Requests are not retried by the harness. 'model busy': interactive requests the router "
        "refused because the one local model's queue would miss the TTFT SLO (the shared machine's load).",
        "",
        "| fault | baseline err | fault window | requests in it | err in fault (without 'model busy') | p50 ok baseline → fault | 1st ok after back | "
        "last err after back | err in 20 s after | error codes | what was lost / counted | reproduce |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in rows:
        if "ledger" in r:
            notes.append(f"Whole run: {r['ledger']}.")
            continue
        if "skipped" in r:
            lines.append(f"| {r['fault']} | | | | | | | | | | {r['skipped']} | |")
            continue
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items())) or "-"
        lines.append(
            f"| {r['fault']} | {r['baseline_error_rate']:.1%} | {r['fault_s']:.1f} s | {r['fault_requests']} | "
            f"{r['fault_error_rate']:.1%} ({r.get('fault_error_rate_not_busy', r['fault_error_rate']):.1%}) | {fmt(r['baseline_p50_ms'], '.0f')} → {fmt(r['fault_p50_ms'], '.0f')} ms | "
            f"{fmt(r['first_ok_after_back_s'])} s | "
            f"{r['last_error_after_back_s']:.2f} s | {r['after_error_rate']:.1%} | {codes} | {r['lost']} | "
            f"`{r['command']}` |"
        )
    return "\n".join([*lines, "", *notes]) + "\n"


FAULTS = ["kill-tenancy", "kill-classifier", "kill-cache", "kill-inference", "kill-router", "nats", "latency", "drop"]
FAULTS += ["disk", "redis", "postgres"]
STORE_FAULTS = {"redis", "postgres"}
# Triton and the OpenAI-compatible stand-in, with `--backends` (`llmesh up` starts them).
BACKENDS = ("triton", "openai")
BACKEND_FAULTS = [f"kill-{name}" for name in BACKENDS]


async def main(only: list[str], rate: float, stores: bool, backends: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="llmesh-chaos-") as tmp:
        home = pathlib.Path(tmp) / "home"
        mounted = mount_tmpfs(home / "cache" / "semantic") if "disk" in only else "not asked"
        inference_port = free_port()
        proxy = FaultProxy(inference_port)
        await proxy.start()
        extra = {"LLMESH_ROUTER_INFERENCE_ADDR": f"127.0.0.1:{proxy.port}"}
        if backends:
            extra["LLMESH_UP_BACKENDS"] = "1"
        redis = postgres = None
        if stores:
            # The production stores: Redis for the exact cache and the router's budget and rate-limit
            # counters, PostgreSQL for tenancy.
            redis = RedisProcess(pathlib.Path(tmp) / "redis")
            await asyncio.to_thread(redis.start)
            postgres = PostgresServerProcess(str(pathlib.Path(tmp) / "postgres"))
            await asyncio.to_thread(postgres.start)
            extra.update(
                LLMESH_REDIS_URL=redis.url,
                LLMESH_ROUTER_QUOTA_REDIS_URL=redis.url,
                LLMESH_TENANCY_DATABASE_URL=postgres.url,
            )
        mesh = PrivateMesh(home, extra=extra, inference_port=inference_port)
        rows: list[dict] = []
        try:
            up_s = await asyncio.to_thread(mesh.up)
            print(f"mesh up in {up_s:.1f} s", flush=True)
            keys = [(await mesh.new_tenant(f"chaos{i}"))[0] for i in range(3)]
            victims = [await mesh.new_tenant("revoked") for _ in range(3)]
            load = Load(mesh.state()["endpoints"]["router"], keys, rate=rate)
            load.start()
            for fault in only:
                if fault.startswith("kill-"):
                    row = await kill_service(mesh, load, fault.removeprefix("kill-"))
                elif fault == "nats":
                    row = await nats_freeze(mesh, load, victims)
                elif fault in ("latency", "drop"):
                    row = await proxy_fault(load, proxy, fault)
                elif fault == "redis":

                    async def redis_before() -> list[str]:
                        return await asyncio.to_thread(redis.keys)

                    async def redis_after(keys: list[str]) -> str:
                        kept = await asyncio.to_thread(redis.existing, keys)
                        return f"Redis keys before the stop: {len(keys)}; of these, there after the start: {kept}"

                    row = await store_outage(
                        load, fault, "Redis (exact cache, quotas)", redis.stop, redis.start, redis_before, redis_after
                    )
                elif fault == "postgres":
                    tenants = sorted(set(mesh.tenants.values()))

                    async def pg_before() -> int:
                        return sum((await mesh.usage_requests(tenants)).values())

                    async def pg_after(ledger: int) -> str:
                        return (
                            f"ledger requests of the load's tenants before the stop: {ledger}; the ledger over the "
                            "whole run is checked against the answers below"
                        )

                    row = await store_outage(
                        load, fault, "PostgreSQL (tenancy)", postgres.stop, postgres.resume, pg_before, pg_after
                    )
                else:
                    row = await disk_full(mesh, load, mounted)
                print(json.dumps(row), flush=True)
                rows.append(row)
            await load.stop()
            ledger = await settled_ledger(mesh, load)
            print(ledger, flush=True)
            rows.append({"fault": "whole run", "ledger": ledger})
        finally:
            await asyncio.to_thread(mesh.down)
            if redis is not None:
                await asyncio.to_thread(redis.stop)
            if postgres is not None:
                await asyncio.to_thread(postgres.stop)
            await proxy.stop()
            # The services' logs outlive the private home, for what a fault left behind.
            shutil.rmtree(LOGS, ignore_errors=True)
            shutil.copytree(home / "logs", LOGS, dirs_exist_ok=True)
            if mounted == "ok":
                subprocess.run(["umount", "-l", str(home / "cache" / "semantic")], check=False)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(FAULTS), help=f"comma-separated subset of {FAULTS + BACKEND_FAULTS}")
    parser.add_argument(
        "--backends",
        action="store_true",
        help="`llmesh up` with Triton and the OpenAI-compatible stand-in (implied by kill-triton, kill-openai)",
    )
    parser.add_argument("--rate", type=float, default=3.0, help="requests per second")
    parser.add_argument(
        "--stores",
        action="store_true",
        help="run the mesh on Redis and PostgreSQL (implied by the redis and postgres faults)",
    )
    args = parser.parse_args()
    only = [f for f in args.only.split(",") if f]
    unknown = set(only) - set(FAULTS) - set(BACKEND_FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}")
    stores = args.stores or bool(STORE_FAULTS & set(only))
    backends = args.backends or bool(set(BACKEND_FAULTS) & set(only))
    rows = asyncio.run(main(only, args.rate, stores, backends))
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": os.uname().nodename,
        "rate": args.rate,
        "stores": "Redis (exact cache, quotas) and PostgreSQL (tenancy)" if stores else "embedded (LRU, SQLite)",
        "backends": "Triton and the OpenAI-compatible stand-in" if backends else "off (the local model)",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    # A subset does not replace the full run's table: it goes to chaos-<faults>.{json,md}.
    full = set(only) == set(FAULTS)
    name = "chaos" if full else "chaos-" + "-".join(only)
    (RESULTS.parent / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (RESULTS.parent / f"{name}.md").write_text(render(rows, meta))
    if full:
        write_report_section("chaos", render(rows, meta))
    print(render(rows, meta))
