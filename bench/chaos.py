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

What must not be lost, counted after the faults:
- the usage ledger against the answers, by request id (tenancy's store read directly): every
  answered request in it once, no request id twice, and each entry beyond the answers explained;
- audit entries: every key revocation accepted during the NATS freeze and the PostgreSQL stop is in
  tenancy's audit log afterwards (and one refused is not), and the log's hash chain verifies;
- batch items: a small batch job submitted before each kill of the router and of inference ends
  with one result per item, succeeded or failed with a reason, none lost or billed twice;
- invalidations: a cache invalidation issued during the NATS freeze is applied by the cache replica
  (the launcher runs one) or refused, never accepted and dropped.

Replicas (docs/adr/0034): `--replicas router=2,inference=2` (the default when every fault asked for is
kill-router or kill-inference) runs those services as two processes each (`llmesh up` with
LLMESH_UP_REPLICAS); a kill takes one replica. The load then round-robins over every router address
and tries a Generate that failed UNAVAILABLE before any message again, under the same request id
(llmesh.kit.client.retrying_unserved); the router tries a Generate that inference failed before its
first token once more on another replica. With inference replicas the router dials them directly:
the latency and drop faults (which need the proxy in front of the one inference) are refused.

Per fault: the error rate in the fault window, the first success after the part is back, the last
error after it is back, what was lost. Writes docs/reports/reliability.md (the chaos part) and
bench/results/chaos.json. `--only kill-cache,nats` runs a subset."""

from __future__ import annotations

import argparse
import asyncio
import collections
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
from llmesh.kit.testing import unique
from llmesh.router.v1 import batch_pb2, router_pb2, router_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.mesh_load import (  # noqa: E402
    REPEATED_PROMPTS,
    Answer,
    FaultProxy,
    Load,
    PrivateMesh,
    RedisProcess,
    StandInModel,
    batch_file,
    cli,
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


BATCH_ITEMS = 16
BATCH_KILLS = ("router", "inference")


async def submit_batch(mesh: PrivateMesh, api_key: str, fault: str) -> dict:
    job = (
        await mesh.batch_call(
            api_key, "SubmitBatch", batch_pb2.SubmitBatchRequest(jsonl=batch_file(BATCH_ITEMS, unique("chaos")))
        )
    ).job
    return {"fault": fault, "job_id": job.job_id, "total": job.total}


def cut_codes(answers: list[Answer]) -> str:
    """How the failed ones of `answers` failed: code counts, and how many after tokens."""
    failed = [a for a in answers if not a.ok]
    codes = collections.Counter(a.code for a in failed)
    text = ", ".join(f"{c} {n}" for c, n in sorted(codes.items())) or "-"
    return f"{text}, {sum(a.cut for a in failed)} after tokens" if failed else text


async def kill_service(mesh: PrivateMesh, load: Load, name: str, batch: tuple[str, list] | None = None) -> dict:
    job = None
    if batch is not None and name in BATCH_KILLS:
        # Submitted before the kill, so the kill finds some of its items done and some not.
        job = await submit_batch(mesh, batch[0], f"SIGKILL {name}")
        batch[1].append(job)
    await asyncio.sleep(BASELINE_S)
    # the killed process's own address (a replicated service's endpoint names every replica)
    address = mesh.state()["processes"].get(name, {}).get("address") or mesh.state()["endpoints"].get(name, "")
    old_pid, restarts = mesh.pid(name), mesh.restarts(name)
    if job is not None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            got = (await mesh.batch_call(batch[0], "GetBatch", batch_pb2.GetBatchRequest(job_id=job["job_id"]))).job
            job["done_at_kill"] = got.completed + got.failed
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
    # every request the kill could touch: those in flight at it (started before, ended after) too
    window = [a for a in load.answers if a.end >= t0 and a.start < back + AFTER_S]
    at_kill = [a for a in window if a.start < t0]
    in_flight = (
        f"{len(at_kill)} requests in flight at the kill ({sum(not a.ok for a in at_kill)} failed: {cut_codes(at_kill)})"
    )
    if load.retry:
        replicas = sum(1 for p in mesh.state()["processes"] if p == name or p.startswith(f"{name}-"))
        retried = [a for a in window if a.retries]
        router_retries = [a for a in window if a.ok and any(t.endswith(" retry") for t in a.attempts)]
        retry_note = (
            f"{replicas} replicas of {name}, one killed; {in_flight}; from the kill to {AFTER_S:.0f} s after it was back: "
            f"{len(retried)} requests tried again by the client under the same id ({sum(a.ok for a in retried)} "
            f"then answered), {len(router_retries)} answered after the router tried inference again on another "
            f"replica, {sum(a.cut for a in window)} streams cut after tokens (not retried, by design; "
            f"{sum(a.interrupted for a in window)} of them billed for what streamed)"
        )
    else:
        retry_note = (
            f"{in_flight}; requests failed in the window are lost (no retry by the harness), "
            f"{sum(a.cut for a in window)} of them streams cut after tokens"
        )
    lost = (
        f"restarts {restarts}→{mesh.restarts(name)}; {retry_note}; answers served from cache after restart "
        f"(ok answers with a hit / all ok): {cache_hits(after)}, before: {cache_hits(load.between(t0 - BASELINE_S, t0))}"
    )
    return summarize(load, f"SIGKILL {name}", t0, back, lost, f".venv/bin/python bench/chaos.py --only kill-{name}")


async def exact_hit(stub, api_key: str, prompt: str, timeout_s: float = 60) -> bool:
    """Asks until the answer comes from the exact cache (the first asks store it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = await generate_once(stub, api_key, prompt, router_pb2.PRIORITY_BATCH)
        if answer.ok and answer.cache == "CACHE_OUTCOME_EXACT_HIT":
            return True
        await asyncio.sleep(0.5)
    return False


HITS = ("CACHE_OUTCOME_EXACT_HIT", "CACHE_OUTCOME_SEMANTIC_HIT")


async def cached_now(stub, api_key: str, prompt: str, timeout_s: float = 10) -> bool | None:
    """Whether the first answer that the cache decided within `timeout_s` was a hit (a miss stores
    the answer again, so asking on after a miss would hide it); None: no such answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = await generate_once(stub, api_key, prompt, router_pb2.PRIORITY_BATCH)
        if answer.ok and answer.cache in HITS:
            return True
        if answer.ok and answer.cache == "CACHE_OUTCOME_MISS":
            return False
        await asyncio.sleep(0.5)  # failed, or the router did not ask the cache (BYPASSED): ask again
    return None


async def first_miss(stub, api_key: str, prompt: str, since: float, timeout_s: float = 45) -> float | None:
    """Seconds after `since` when the prompt is no longer a cache hit (the invalidation applied)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = await generate_once(stub, api_key, prompt, router_pb2.PRIORITY_BATCH)
        if answer.ok and answer.cache == "CACHE_OUTCOME_MISS":
            return time.monotonic() - since
        await asyncio.sleep(0.5)
    return None


async def revoke_all(mesh: PrivateMesh, victims: list[tuple[str, str]], fault: str, actions: list[dict]) -> list[str]:
    """Revokes each victim's key at once; records each admin action and its answer; returns the
    API keys whose revocation was accepted."""

    async def one(api_key: str, key_id: str) -> str | None:
        try:
            await mesh.revoke(key_id)
            actions.append({"fault": fault, "key_id": key_id, "tenant_id": mesh.tenants[api_key], "accepted": True})
            return api_key
        except grpc.aio.AioRpcError as exc:
            actions.append(
                {
                    "fault": fault,
                    "key_id": key_id,
                    "tenant_id": mesh.tenants[api_key],
                    "accepted": False,
                    "code": exc.code().name,
                }
            )
            return None

    return [k for k in await asyncio.gather(*(one(*v) for v in victims)) if k]


async def nats_freeze(
    mesh: PrivateMesh,
    load: Load,
    victims: list[tuple[str, str]],
    actions: list[dict],
    inval: tuple[str, str] | None = None,
) -> dict:
    # Each victim's key answers once first, so the router holds its principal (cached for 30 s):
    # only the revocation event, not a cache miss, can make the router refuse it within that time.
    async with grpc.aio.insecure_channel(mesh.state()["endpoints"]["router"]) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        warmed = [
            (await generate_once(stub, api_key, REPEATED_PROMPTS[1], router_pb2.PRIORITY_INTERACTIVE)).code
            for api_key, _ in victims
        ]
        # The invalidation victim's prompt is in the exact cache before the freeze.
        inval_prompt = f"Name a colour ({unique('inval')})."
        cached_before = inval is not None and await exact_hit(stub, inval[0], inval_prompt)
    await asyncio.sleep(BASELINE_S)
    pid = mesh.pid("nats")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    invalidation = None
    try:
        await asyncio.sleep(2)

        # The operator's CLI runs beside the revocations (it needs a few seconds to start); the
        # freeze ends at 10 s whether or not it has answered.
        def timed_invalidate() -> tuple[subprocess.CompletedProcess, float]:
            result = mesh.invalidate(inval[1], 20)
            return result, time.monotonic()

        pending = asyncio.create_task(asyncio.to_thread(timed_invalidate)) if cached_before else None
        revoked = await revoke_all(mesh, victims, "NATS frozen", actions)
        revoke_errors = [a["code"] for a in actions if a["fault"] == "NATS frozen" and not a["accepted"]]
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - t0)))
    finally:
        os.kill(pid, signal.SIGCONT)
    back = time.monotonic()
    if pending is not None:
        invalidation, answered_at = await pending
        invalidation_answered = answered_at - back
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
        inval_note = await invalidation_outcome(mesh, stub, inval, inval_prompt, cached_before, invalidation, back)
        if invalidation is not None:
            when = (
                f"{-invalidation_answered:.1f} s before SIGCONT"
                if invalidation_answered <= 0
                else f"{invalidation_answered:.1f} s after SIGCONT"
            )
            inval_note = f"the CLI answered {when}; {inval_note}"
    await asyncio.sleep(max(0.0, back + AFTER_S - time.monotonic()))
    times = ", ".join(f"{t:.1f} s" for t in sorted(refused_at.values())) or "-"
    lost = (
        f"victims answered before the freeze: {warmed}; "
        f"{len(revoked)} revocations accepted during the freeze ({len(revoke_errors)} refused: "
        f"{revoke_errors or '-'}); {len(refused_at)}/{len(revoked)} enforced by the router after SIGCONT "
        f"(at {times} after SIGCONT; 45 s limit); {inval_note}"
    )
    return summarize(
        load,
        "NATS frozen 10 s (SIGSTOP/SIGCONT)",
        t0,
        back,
        lost,
        ".venv/bin/python bench/chaos.py --only nats",
    )


class BudgetProbe:
    """A tenant under a hard budget (far from its limit) asking through a Redis outage: by the
    router's default policy it is refused with UNAVAILABLE while the quota store is down
    (LLMESH_ROUTER_BUDGETS_FAIL_OPEN unset) and served again once Redis is back."""

    def __init__(self, mesh: PrivateMesh, api_key: str):
        self.mesh, self.api_key = mesh, api_key
        self.before_code = ""
        self.during: list[str] = []

    async def _ask(self) -> Answer:
        async with grpc.aio.insecure_channel(self.mesh.state()["endpoints"]["router"]) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            return await generate_once(stub, self.api_key, f"Budget probe {unique('b')}.", router_pb2.PRIORITY_BATCH)

    async def before(self) -> None:
        tenant = self.mesh.tenants[self.api_key]
        policy = self.mesh.home / "budget-policy.json"
        policy.write_text(json.dumps({"budgets": [{"name": "chaos-hard", "limit": 100, "hard": True}]}))
        result = await asyncio.to_thread(
            cli, self.mesh.env, "policy", "set", str(policy), "--key", f"tenant.{tenant}", timeout=60
        )
        if result.returncode != 0:
            raise RuntimeError(f"llmesh policy set failed: {result.stderr}")
        self.before_code = (await self._ask()).code

    async def during_outage(self) -> None:
        for _ in range(3):
            answer = await self._ask()
            self.during.append(
                f"{answer.code}{' (budget store unreachable)' if 'budget store' in answer.detail else ''}"
            )
            await asyncio.sleep(1)

    async def after(self) -> str:
        back = time.monotonic()
        served = None
        while time.monotonic() - back < 30:
            if (await self._ask()).ok:
                served = time.monotonic() - back
                break
            await asyncio.sleep(0.5)
        return (
            f"a tenant under a hard budget: {self.before_code} before the stop, "
            f"{dict(collections.Counter(self.during))} during it, "
            + (f"served again {served:.1f} s after the start" if served is not None else "NOT served within 30 s after")
        )


async def invalidation_outcome(mesh, stub, inval, prompt: str, cached_before: bool, result, back: float) -> str:
    """An invalidation issued during the freeze: accepted (an event id) → the replica must apply
    it (the prompt stops being a hit); refused → it must not be applied (still a hit), and the
    operator's retry after the freeze must be."""
    if inval is None:
        return "cache invalidation: not tried"
    if not cached_before:
        return "cache invalidation: not tried (the probe prompt never became an exact hit before the freeze)"
    if result.returncode == 0:
        applied = await first_miss(stub, inval[0], prompt, back)
        verdict = "LOST" if applied is None else f"applied by the cache replica {applied:.1f} s after SIGCONT"
        return f"cache invalidation accepted during the freeze (event {result.stdout.strip()[:40]}): {verdict}"
    reason = (result.stderr.strip().splitlines() or ["?"])[-1][:120]
    still_hit = await cached_now(stub, inval[0], prompt)
    retry_at = time.monotonic()
    retry = await asyncio.to_thread(mesh.invalidate, inval[1], 20)
    applied = await first_miss(stub, inval[0], prompt, retry_at) if retry.returncode == 0 else None
    return (
        f"cache invalidation refused during the freeze ({reason}); after SIGCONT the answer was "
        f"{ {True: 'still cached (not applied: right)', False: 'not cached (APPLIED although refused)'}.get(still_hit, 'not known (no answer)') }; "
        f"the retry after the freeze {'was refused' if retry.returncode else 'was accepted'} and "
        f"{'applied ' + format(applied, '.1f') + ' s later' if applied is not None else 'NOT applied within 45 s'}"
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


async def store_outage(load: Load, fault: str, name: str, stop, start, before, after, during=None) -> dict:
    """`stop` the store (a thread), wait so that it is down 10 s, `start` it; 'back' = `start` returned
    (the server accepts connections again). `before()` right before the stop, `during()` (optional)
    2 s into the outage, `after(seen)` right after the start, then the after-window: what survived."""
    await asyncio.sleep(BASELINE_S)
    seen = await before()
    t0 = time.monotonic()
    await asyncio.to_thread(stop)
    if during is not None:
        await asyncio.sleep(2)
        await during()
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


async def settled_ledger(mesh: PrivateMesh, load: Load, database_url: str = "", timeout_s: float = 60) -> str:
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
    summary = (
        f"usage ledger per tenant: {'; '.join(rows)}; answered but not in the ledger: {missing}; in the ledger "
        f"beyond the answered: {extra} (requests cut when the load stopped: {load.cut_at_stop})"
    )
    try:
        entries = await mesh.ledger(tenants, database_url)
    except Exception as exc:  # the figures above stand; say why the finer check is missing
        return f"{summary}; by request id: the store could not be read ({exc!r})"
    return f"{summary}; {by_request_id(mesh, load, entries)}"


def by_request_id(mesh: PrivateMesh, load: Load, entries: list[tuple[str, str, str]]) -> str:
    """The ledger against the requests by request id (the load sends its own, x-request-id): none
    billed twice, every answered one billed, and each other entry traced to what its caller saw."""
    billed = collections.Counter(rid for rid, _, _ in entries)
    answers = {a.request_id: a for a in load.answers}
    answered = {rid for rid, a in answers.items() if a.ok}
    extra = set(billed) - answered
    interrupted = {rid for rid in extra if rid in answers and answers[rid].interrupted}
    failed = collections.Counter(answers[rid].code for rid in extra - interrupted if rid in answers)
    cut = {rid for rid in extra if rid in load.sent and rid not in answers}
    unknown = sorted(extra - set(answers) - cut)
    return (
        f"by request id: {len(billed)} ids in the ledger, {sum(n > 1 for n in billed.values())} billed twice; "
        f"answered but not billed: {len(answered - set(billed))}; billed but not answered OK: {len(extra)}, of "
        f"them {len(interrupted)} streams interrupted after tokens (billed for what streamed, by design), "
        f"{sum(failed.values())} that failed without tokens {dict(failed) or ''}, {len(cut)} cut when the load "
        f"stopped (answered after the harness stopped listening), {len(unknown)} never sent by the load"
    )


async def settled_batches(mesh: PrivateMesh, api_key: str, jobs: list[dict], timeout_s: float = 300) -> str:
    """Each batch job submitted before a kill ends with one result per item, succeeded or failed
    with a reason; its items are billed once each (item request ids are stable across retries)."""
    if not jobs:
        return ""
    terminal = (batch_pb2.BATCH_STATE_COMPLETED, batch_pb2.BATCH_STATE_CANCELLED, batch_pb2.BATCH_STATE_EXPIRED)
    parts = []
    for job in jobs:
        deadline, state = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                got = (await mesh.batch_call(api_key, "GetBatch", batch_pb2.GetBatchRequest(job_id=job["job_id"]))).job
                state = got
                if got.state in terminal:
                    break
            await asyncio.sleep(1)
        if state is None or state.state not in terminal:
            parts.append(
                f"{job['fault']}: job not finished within {timeout_s:.0f} s ({state and state.completed} done)"
            )
            continue
        lines = await mesh.batch_results(api_key, job["job_id"])
        per_item = collections.Counter(line["index"] for line in lines)
        failed = [line for line in lines if line.get("error")]
        no_reason = [f for f in failed if not (f["error"].get("code") and f["error"].get("message"))]
        reasons = collections.Counter(f["error"]["code"] for f in failed)
        job["ids"] = {line["response"]["request_id"] for line in lines if not line.get("error")}
        parts.append(
            f"{job['fault']}: {job['total']} items ({job.get('done_at_kill', '?')} done at the kill), state "
            f"{batch_pb2.BatchState.Name(state.state)}, {len(lines) - len(failed)} succeeded, {len(failed)} failed "
            f"({dict(reasons) or '-'}; {len(no_reason)} without a reason), "
            f"{job['total'] - len(per_item)} without a result, {sum(n > 1 for n in per_item.values())} with two"
        )
    return "; ".join(parts)


def batch_ledger(jobs: list[dict], entries: list[tuple[str, str, str]]) -> str:
    billed = collections.Counter(rid for rid, _, _ in entries)
    succeeded = set().union(*(job.get("ids", set()) for job in jobs))
    return (
        f"batch items in the ledger: {len(billed)} ids for {len(succeeded)} succeeded items, "
        f"{sum(n > 1 for n in billed.values())} billed twice, {len(succeeded - set(billed))} succeeded but not "
        f"billed, {len(set(billed) - succeeded)} billed but not succeeded"
    )


async def audit_check(mesh: PrivateMesh, actions: list[dict]) -> str:
    """Every revocation accepted during a fault is in the tenant's audit log once; one refused is
    not there (or, if it is, the key was revoked after all); the log's chain verifies."""
    if not actions:
        return ""
    parts = []
    for fault in dict.fromkeys(a["fault"] for a in actions):
        mine = [a for a in actions if a["fault"] == fault]
        found = {}
        for a in mine:
            entries = await mesh.audit(a["tenant_id"])
            found[a["key_id"]] = sum(e.action == "key.revoked" and e.target == a["key_id"] for e in entries)
        accepted = [a for a in mine if a["accepted"]]
        refused = [a for a in mine if not a["accepted"]]
        parts.append(
            f"{fault}: {len(accepted)} revocations accepted, {sum(found[a['key_id']] == 1 for a in accepted)} of "
            f"them in the audit log once ({sum(found[a['key_id']] == 0 for a in accepted)} missing, "
            f"{sum(found[a['key_id']] > 1 for a in accepted)} twice); {len(refused)} refused "
            f"({dict(collections.Counter(a['code'] for a in refused)) or '-'}), "
            f"{sum(found[a['key_id']] > 0 for a in refused)} of them in the log all the same"
        )
    verify = await mesh.verify_audit()
    chain = "verifies" if verify.ok else f"BROKEN at seq {verify.first_bad_seq}: {verify.problem}"
    return f"{'; '.join(parts)}; the audit chain ({verify.entries} entries) {chain}"


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
        f"Run {meta['when']} on {meta['host']} ({os.cpu_count()} cores, load average "
        f"{meta.get('load_start', '-')} at the start, {meta.get('load', '-')} at the end), mesh from `llmesh up --detach` (backends: {meta.get('backends', 'off (the local model)')}; "
        f"stores: {meta.get('stores', 'embedded')}), {meta['rate']} requests/s open loop through the "
        "router, three tenants, half PRIORITY_INTERACTIVE and half PRIORITY_BATCH, a third repeated prompts, "
        f"max_tokens 4. Windows: {BASELINE_S:.0f} s baseline before each fault, the fault, {AFTER_S:.0f} s after "
        "the part is back. 'back' = the restarted process answers health SERVING (kills), SIGCONT (NATS), the "
        "proxy cleared (network), the filler removed (disk), the server accepts connections again (Redis, "
        f"PostgreSQL). {meta.get('retries', 'Requests are not retried by the harness.')} 'model busy': interactive "
        "requests the router refused because the local model's queue would miss the TTFT SLO (the shared machine's "
        "load).",
        "",
        "| fault | baseline err | fault window | requests in it | err in fault (without 'model busy') | p50 ok baseline → fault | 1st ok after back | "
        "last err after back | err in 20 s after | error codes | what was lost / counted | reproduce |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in rows:
        if "ledger" in r:
            notes.append(f"{r['fault'].capitalize()}: {r['ledger']}.")
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
# The faults a replica covers (docs/adr/0034): run with REPLICA_DEFAULT unless --replicas says otherwise.
REPLICA_FAULTS = {"kill-router", "kill-inference"}
REPLICA_DEFAULT = "router=2,inference=2"
# The stand-in model's pace (--model standin): about the local model's on this machine (TTFT p50
# 0.6 s under the chaos load in bench/results/chaos.md).
STANDIN_FIRST_TOKEN_S, STANDIN_TOKEN_S = 0.5, 0.05


async def main(
    only: list[str], rate: float, stores: bool, backends: bool, replicas: str = "", standin: bool = False
) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="llmesh-chaos-") as tmp:
        home = pathlib.Path(tmp) / "home"
        mounted = mount_tmpfs(home / "cache" / "semantic") if "disk" in only else "not asked"
        extra = {"LLMESH_UP_REPLICAS": replicas} if replicas else {}
        model = None
        if standin:
            # the harness's OpenAI-compatible stand-in as every model (--model standin)
            model = StandInModel(STANDIN_FIRST_TOKEN_S, STANDIN_TOKEN_S)
            await model.start()
            extra["LLMESH_INFERENCE_CATALOG"] = str(model.catalog(pathlib.Path(tmp) / "catalog.json"))
        inference_port = 0
        proxy = None
        if "inference=" not in replicas or "inference=1" in replicas:
            # one inference: the router reaches it through the fault proxy (latency, drop)
            inference_port = free_port()
            proxy = FaultProxy(inference_port)
            await proxy.start()
            extra["LLMESH_ROUTER_INFERENCE_ADDR"] = f"127.0.0.1:{proxy.port}"
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
            pg_victims = [await mesh.new_tenant("revoked-pg") for _ in range(3)] if "postgres" in only else []
            # Admin actions made during faults (revocations), checked against the audit log at the end.
            actions: list[dict] = []
            inval_key = (await mesh.new_tenant("inval"))[0] if "nats" in only else ""
            budget_key = (await mesh.new_tenant("budget"))[0] if "redis" in only else ""
            batch_key = (await mesh.new_tenant("batch"))[0] if {f"kill-{n}" for n in BATCH_KILLS} & set(only) else ""
            jobs: list[dict] = []
            # every router replica's address; with replicas, the retry rule of docs/adr/0034
            load = Load(mesh.state()["endpoints"]["router"], keys, rate=rate, retry=bool(replicas))
            load.start()
            for fault in only:
                if fault.startswith("kill-"):
                    batch = (batch_key, jobs) if batch_key else None
                    row = await kill_service(mesh, load, fault.removeprefix("kill-"), batch)
                elif fault == "nats":
                    inval = (inval_key, mesh.tenants[inval_key]) if inval_key else None
                    row = await nats_freeze(mesh, load, victims, actions, inval)
                elif fault in ("latency", "drop"):
                    row = await proxy_fault(load, proxy, fault)
                elif fault == "redis":
                    budget_probe = BudgetProbe(mesh, budget_key)

                    async def redis_before() -> list[str]:
                        await budget_probe.before()
                        return await asyncio.to_thread(redis.keys)

                    async def redis_after(keys: list[str]) -> str:
                        kept = await asyncio.to_thread(redis.existing, keys)
                        return (
                            f"Redis keys before the stop: {len(keys)}; of these, there after the start: {kept}; "
                            f"{await budget_probe.after()}"
                        )

                    row = await store_outage(
                        load,
                        fault,
                        "Redis (exact cache, quotas)",
                        redis.stop,
                        redis.start,
                        redis_before,
                        redis_after,
                        budget_probe.during_outage,
                    )
                elif fault == "postgres":
                    tenants = sorted(set(mesh.tenants.values()))

                    async def pg_before() -> int:
                        return sum((await mesh.usage_requests(tenants)).values())

                    async def pg_during() -> None:
                        await revoke_all(mesh, pg_victims, "PostgreSQL stopped", actions)

                    async def pg_after(ledger: int) -> str:
                        mine = [a for a in actions if a["fault"] == "PostgreSQL stopped"]
                        codes = dict(collections.Counter(a.get("code", "OK") for a in mine))
                        return (
                            f"ledger requests of the load's tenants before the stop: {ledger}; the ledger over the "
                            f"whole run is checked against the answers below; {len(mine)} key revocations during "
                            f"the stop: {codes} (audit log checked below)"
                        )

                    row = await store_outage(
                        load,
                        fault,
                        "PostgreSQL (tenancy)",
                        postgres.stop,
                        postgres.resume,
                        pg_before,
                        pg_after,
                        pg_during,
                    )
                else:
                    row = await disk_full(mesh, load, mounted)
                print(json.dumps(row), flush=True)
                rows.append(row)
            await load.stop()
            database_url = postgres.url if postgres is not None else ""
            batches = await settled_batches(mesh, batch_key, jobs)
            ledger = await settled_ledger(mesh, load, database_url)  # waits until usage stops arriving
            if batches:
                batch_entries = await mesh.ledger([mesh.tenants[batch_key]], database_url)
                batches = f"{batches}; {batch_ledger(jobs, batch_entries)}"
            audit = await audit_check(mesh, actions)
            for name, text in (("whole run", ledger), ("batch items", batches), ("audit entries", audit)):
                if text:
                    print(f"{name}: {text}", flush=True)
                    rows.append({"fault": name, "ledger": text})
        finally:
            await asyncio.to_thread(mesh.down)
            if redis is not None:
                await asyncio.to_thread(redis.stop)
            if postgres is not None:
                await asyncio.to_thread(postgres.stop)
            if proxy is not None:
                await proxy.stop()
            if model is not None:
                await model.stop()
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
        "--model",
        choices=("local", "standin"),
        default="local",
        help="local: the in-process llama.cpp model; standin: an OpenAI-compatible stand-in of the harness's own "
        f"({STANDIN_FIRST_TOKEN_S} s to the first token, {STANDIN_TOKEN_S} s a token, about the local model's pace on "
        "this machine) as every model, for when the local model cannot run",
    )
    parser.add_argument(
        "--replicas",
        default=None,
        help="LLMESH_UP_REPLICAS for the mesh, e.g. router=2,inference=2 (the default when only kill-router and "
        "kill-inference are asked for; '' for one of each); the load then retries per docs/adr/0034",
    )
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
    replicas = args.replicas
    if replicas is None:
        replicas = REPLICA_DEFAULT if set(only) <= REPLICA_FAULTS else ""
    if "inference=" in replicas and "inference=1" not in replicas and {"latency", "drop"} & set(only):
        parser.error("the latency and drop faults need one inference (behind the fault proxy): drop inference=N")
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = asyncio.run(main(only, args.rate, stores, backends, replicas, standin=args.model == "standin"))
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": os.uname().nodename,
        "rate": args.rate,
        "stores": "Redis (exact cache, quotas) and PostgreSQL (tenancy)" if stores else "embedded (LRU, SQLite)",
        "backends": "Triton and the OpenAI-compatible stand-in"
        if backends
        else f"off; every model is the harness's OpenAI-compatible stand-in ({STANDIN_FIRST_TOKEN_S} s to the first "
        f"token, {STANDIN_TOKEN_S} s a token)"
        if args.model == "standin"
        else "off (the local model)",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "load_start": load_start,
    }
    if replicas:
        meta["replicas"] = replicas
        meta["retries"] = (
            f"Replicas: {replicas} (`llmesh up` with LLMESH_UP_REPLICAS), the load round-robins over the router "
            "replicas and tries a Generate that failed UNAVAILABLE before any message again (at most twice, 0.1 and "
            "0.4 s apart, same request id); the router tries inference once more on another replica when a Generate "
            "failed before its first token (docs/adr/0034)."
        )
    # A subset does not replace the full run's table: it goes to chaos-<faults>.{json,md}.
    full = set(only) == set(FAULTS)
    name = "chaos" if full else "chaos-" + "-".join(only)
    if replicas:
        name += "-replicas-" + replicas.replace("=", "").replace(",", "-")
    if args.model == "standin":
        name += "-standin"
    (RESULTS.parent / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (RESULTS.parent / f"{name}.md").write_text(render(rows, meta))
    if full and not replicas:
        write_report_section("chaos", render(rows, meta))
    elif replicas:
        # the faults a replica covers: a section of their own beside the one-of-each table
        body = render(rows, meta).split("\n", 1)[1]
        write_report_section(name, f"### Faults under load with replicas ({replicas}): {', '.join(only)}\n{body}")
    print(render(rows, meta))
