"""Soak (`make soak`, 30 minutes; `--minutes 5` to shorten): a private mesh (`llmesh up --detach`,
backends off), three tenants, a steady mixed load through the router (bench/mesh_load.py's Load), and
every 10 s the RSS and open file descriptors (/proc/<pid>/fd) of each service and of nats-server,
and each service's asyncio task count (the `llmesh_asyncio_tasks` gauge on its /metrics).

Verdicts: RSS growth after the warm-up (the first fifth of the run, at least 1 minute) within
`--rss-growth-mib` per service; no fd growth (last sample ≤ the first after the warm-up + 5); no task growth (median of the last
five task samples ≤ median of the first five after the warm-up + `--task-growth`); p99 of the
last 5 minutes ≤ 1.5 × the first 5 minutes' (shorter runs: the last and first fifths). Writes
bench/results/soak.md and bench/results/soak.json; exits 1 when a verdict fails."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.mesh_load import (  # noqa: E402
    SERVICES,
    Load,
    PrivateMesh,
    asyncio_tasks,
    error_rate,
    percentile,
    proc_sample,
    write_report_section,
)

SAMPLE_S = 10.0


async def run(minutes: float, rate: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="llmesh-soak-") as tmp:
        mesh = PrivateMesh(pathlib.Path(tmp))
        try:
            await asyncio.to_thread(mesh.up)
            keys = [(await mesh.new_tenant(f"soak{i}"))[0] for i in range(3)]
            load = Load(mesh.state()["endpoints"]["router"], keys, rate=rate)
            loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
            t0 = time.monotonic()
            load.start()
            samples: list[dict] = []
            end = t0 + minutes * 60
            while time.monotonic() < end:
                state = mesh.state()
                row = {"t": time.monotonic() - t0}
                for name in (*SERVICES, "nats"):
                    row[name] = proc_sample(int(state["processes"][name]["pid"]))
                for name in SERVICES:
                    port = state.get("metrics_ports", {}).get(name)
                    row[name]["tasks"] = await asyncio.to_thread(asyncio_tasks, port, name)
                samples.append(row)
                if len(samples) % 6 == 1:  # progress, about once a minute
                    print(json.dumps(row), flush=True)
                await asyncio.sleep(min(SAMPLE_S, max(0.0, end - time.monotonic())))
            await load.stop()
            restarts = {name: mesh.restarts(name) for name in (*SERVICES, "nats")}
            loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
        finally:
            await asyncio.to_thread(mesh.down)
    answers = [a for a in load.answers if a.start >= t0]
    return {
        "t0": t0,
        "answers": answers,
        "samples": samples,
        "restarts": restarts,
        "skipped": load.skipped,
        "loadavg": f"{loadavg_start} at the start, {loadavg} at the end",
    }


def verdicts(result: dict, minutes: float, rss_bound_mib: float, task_bound: int = 20) -> tuple[list[str], dict]:
    answers, samples, t0 = result["answers"], result["samples"], result["t0"]
    warm_s = max(60.0, minutes * 60 / 5)
    window_s = 300.0 if minutes >= 15 else minutes * 60 / 5
    per_minute = []
    for m in range(int(minutes + 0.999)):
        chunk = [a for a in answers if m * 60 <= a.start - t0 < (m + 1) * 60]
        ok = [a.latency_ms for a in chunk if a.ok]
        per_minute.append(
            {
                "minute": m + 1,
                "requests": len(chunk),
                "error_rate": error_rate(chunk),
                "p50": percentile(ok, 50),
                "p99": percentile(ok, 99),
            }
        )
    first = [a.latency_ms for a in answers if a.ok and a.start - t0 < window_s]
    last = [a.latency_ms for a in answers if a.ok and a.start - t0 >= minutes * 60 - window_s]
    p99_first, p99_last = percentile(first, 99), percentile(last, 99)
    lines, failed = [], False
    growth = {}
    for name in (*SERVICES, "nats"):
        warm = [s[name] for s in samples if s["t"] >= warm_s] or [samples[-1][name]]
        rss_growth = warm[-1]["rss_mib"] - warm[0]["rss_mib"]
        fd_ok = warm[-1]["fds"] <= max(s["fds"] for s in warm[:1]) + 5
        rss_ok = rss_growth <= rss_bound_mib
        tasks = [w["tasks"] for w in warm if w.get("tasks", -1) >= 0]
        if name == "nats":
            tasks_ok, task_start, task_end = True, None, None
        elif len(tasks) < 2:
            tasks_ok, task_start, task_end = False, None, None  # a service that hides its count fails
        else:
            task_start, task_end = statistics.median(tasks[:5]), statistics.median(tasks[-5:])
            tasks_ok = task_end <= task_start + task_bound
        failed |= not (fd_ok and rss_ok and tasks_ok)
        growth[name] = {
            "rss_start": warm[0]["rss_mib"],
            "rss_end": warm[-1]["rss_mib"],
            "rss_max": max(w["rss_mib"] for w in warm),
            "fds_start": warm[0]["fds"],
            "fds_end": warm[-1]["fds"],
            "fds_max": max(w["fds"] for w in warm),
            "rss_ok": rss_ok,
            "fd_ok": fd_ok,
            "tasks_start": task_start,
            "tasks_end": task_end,
            "tasks_max": max(tasks) if tasks else None,
            "tasks_ok": tasks_ok,
        }
    p99_ok = p99_last <= 1.5 * p99_first
    failed |= not p99_ok
    lines.append(
        f"p99 first {window_s / 60:.0f} min {p99_first:.0f} ms, last {p99_last:.0f} ms: {'PASS' if p99_ok else 'FAIL'}"
    )
    return lines, {
        "per_minute": per_minute,
        "growth": growth,
        "warm_s": warm_s,
        "window_s": window_s,
        "failed": failed,
        "p99_first": p99_first,
        "p99_last": p99_last,
        "p99_ok": p99_ok,
    }


def codes(answers) -> dict[str, int]:
    counted: dict[str, int] = {}
    for a in answers:
        if not a.ok:
            counted[a.code] = counted.get(a.code, 0) + 1
    return counted


def _num(value) -> str:
    return "-" if value is None else f"{value:g}"


def render(result: dict, facts: dict, minutes: float, rate: float, rss_bound: float, task_bound: int) -> str:
    answers = result["answers"]
    out = [
        "## Soak (`make soak`)",
        "",
        f"{minutes:g}-minute run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.uname().nodename} "
        f"(2 shared cores), `.venv/bin/python bench/soak.py --minutes {minutes:g} --rate {rate:g}`: "
        f"{len(answers)} requests, error rate {error_rate(answers):.2%}, {result['skipped']} not sent "
        f"(in-flight cap), failures by code {codes(answers) or '-'}, restarts during the run {result['restarts']}. Samples every {SAMPLE_S:.0f} s; warm-up "
        f"{facts['warm_s']:.0f} s. Load average (1, 5, 15 min): {result.get('loadavg', '-')}. Asyncio tasks: the "
        "`llmesh_asyncio_tasks` gauge of each service (median of the first and of the last five samples after "
        "the warm-up).",
        "",
        f"Verdict: **{'FAIL' if facts['failed'] else 'PASS'}**. p99 of the first {facts['window_s'] / 60:.0f} min "
        f"{facts['p99_first']:.0f} ms vs the last {facts['window_s'] / 60:.0f} min {facts['p99_last']:.0f} ms "
        f"(bound 1.5×): {'PASS' if facts['p99_ok'] else 'FAIL'}.",
        "",
        f"| process | RSS after warm-up (MiB) | RSS at end | RSS max | growth ≤ {rss_bound:g} MiB | fds after warm-up | fds at end | fds max | no fd growth "
        f"| tasks after warm-up | tasks at end | tasks max | task growth ≤ {task_bound} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, g in facts["growth"].items():
        out.append(
            f"| {name} | {g['rss_start']:.1f} | {g['rss_end']:.1f} | {g['rss_max']:.1f} | "
            f"{'PASS' if g['rss_ok'] else 'FAIL'} | {g['fds_start']} | {g['fds_end']} | {g['fds_max']} | "
            f"{'PASS' if g['fd_ok'] else 'FAIL'} | {_num(g['tasks_start'])} | {_num(g['tasks_end'])} | "
            f"{_num(g['tasks_max'])} | {'-' if g['tasks_start'] is None and g['tasks_ok'] else ('PASS' if g['tasks_ok'] else 'FAIL')} |"
        )
    out += ["", "| minute | requests | error rate | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for m in facts["per_minute"]:
        out.append(f"| {m['minute']} | {m['requests']} | {m['error_rate']:.2%} | {m['p50']:.0f} | {m['p99']:.0f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=3.0, help="requests per second")
    parser.add_argument("--rss-growth-mib", type=float, default=50.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--task-growth", type=int, default=20, help="allowed asyncio task growth after warm-up")
    args = parser.parse_args()
    result = asyncio.run(run(args.minutes, args.rate))
    _, facts = verdicts(result, args.minutes, args.rss_growth_mib, args.task_growth)
    report = render(result, facts, args.minutes, args.rate, args.rss_growth_mib, args.task_growth)
    (ROOT / "bench" / "results" / "soak.md").write_text(report)
    write_report_section("soak", report)
    (ROOT / "bench" / "results" / "soak.json").write_text(
        json.dumps(
            {
                "samples": result["samples"],
                **{k: v for k, v in facts.items() if k != "growth"},
                "growth": facts["growth"],
            },
            indent=1,
        )
    )
    print(report)
    sys.exit(1 if facts["failed"] else 0)
