"""`llmesh top`: a live terminal view of the running mesh, read from the services' /metrics
(no Prometheus needed): requests/s, TTFT p50/p95 per tier, cache hit rates, queue depth per
class, cost per minute and breaker states, over the last interval.

Each figure comes from the service that owns it (llmesh_<service>_* from that service, the
per-RPC llmesh_grpc_* by their `service` label), summed over the service's replicas."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import urllib.request
from collections import defaultdict

from llmesh.cli.observe import metrics_endpoints
from llmesh.launcher.state import service_of
from prometheus_client.parser import text_string_to_metric_families

SERVICES = ("router", "tenancy", "classifier", "cache", "inference")
Key = tuple[str, tuple[tuple[str, str], ...]]


def register(subparsers) -> None:
    top = subparsers.add_parser("top", help="live view of the running mesh from the services' /metrics")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    top.add_argument("--once", action="store_true", help="print one frame (over one interval) and exit")
    top.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT",
        help="a service's metrics endpoint (repeatable; default: the local mesh's, from mesh.json)",
    )
    top.set_defaults(func=_top)


def parse_endpoints(pairs: list[str]) -> list[tuple[str, str]]:
    endpoints = []
    for pair in pairs:
        service, sep, address = pair.partition("=")
        if not sep or service not in SERVICES or ":" not in address:
            raise ValueError(
                f"--metrics {pair!r}: expected SERVICE=HOST:PORT with SERVICE one of {', '.join(SERVICES)}"
            )
        endpoints.append((service, address))
    return endpoints


def _owned(service: str, name: str, labels: dict[str, str]) -> bool:
    if name.startswith("llmesh_grpc_"):
        return labels.get("service") == service
    return name.startswith(f"llmesh_{service}_") or (service == "router" and name.startswith("llmesh_budget_"))


def parse(service: str, text: str) -> dict[Key, float]:
    """The samples of one scrape that belong to `service`."""
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if _owned(service, sample.name, sample.labels):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(endpoints: list[tuple[str, str]], timeout_s: float = 2.0) -> tuple[dict[Key, float], list[str]]:
    """Samples of every endpoint, summed over replicas of a service; and the endpoints that failed."""
    total: dict[Key, float] = defaultdict(float)
    down = []
    for service, address in endpoints:
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError:
            down.append(f"{service}@{address}")
            continue
        for key, value in parse(service, text).items():
            if not math.isnan(value):
                total[key] += value
    return dict(total), down


def _select(samples: dict[Key, float], name: str, **match: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(labels), value)
        for (n, labels), value in samples.items()
        if n == name and all(dict(labels).get(k) == v for k, v in match.items())
    ]


def _delta(before: dict[Key, float], after: dict[Key, float], name: str, **match: str) -> list[tuple[dict, float]]:
    """Counter increases between two scrapes (a restart, where the value fell, counts from 0)."""
    out = []
    for labels, value in _select(after, name, **match):
        key = (name, tuple(sorted(labels.items())))
        previous = before.get(key, 0.0)
        out.append((labels, value - previous if value >= previous else value))
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """histogram_quantile over cumulative (upper bound, count) pairs, as Prometheus computes it."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return buckets[-1][0]


@dataclasses.dataclass
class View:
    seconds: float
    requests_per_s: float
    errors_per_s: float
    ttft: dict[str, tuple[float | None, float | None, int]]  # tier -> (p50, p95, count)
    hit_rate: float | None
    lookups: int
    hit_rates: dict[str, float]  # business unit -> hit rate
    queue_depth: dict[str, float]  # class (or model) -> depth
    cost_per_minute: float
    breakers: dict[str, str]  # region/model -> open | closed
    down: list[str]


def compute(before: dict[Key, float], after: dict[Key, float], seconds: float, down: list[str] | None = None) -> View:
    seconds = max(seconds, 1e-9)
    generate = _delta(before, after, "llmesh_grpc_requests_total", service="router", method="Generate")
    requests = sum(v for _, v in generate)
    errors = sum(
        v
        for labels, v in generate
        if labels.get("code") not in ("OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED")
    )

    by_tier: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, v in _delta(before, after, "llmesh_router_time_to_first_token_seconds_bucket"):
        by_tier[labels.get("tier", "?")][float(labels["le"])] += v
    ttft = {}
    for tier, buckets in sorted(by_tier.items()):
        pairs = list(buckets.items())
        count = int(max((c for _, c in pairs), default=0))
        ttft[tier] = (quantile(0.5, pairs), quantile(0.95, pairs), count)

    hits: dict[str, float] = defaultdict(float)
    looked: dict[str, float] = defaultdict(float)
    for labels, v in _delta(before, after, "llmesh_cache_lookups_total"):
        if labels.get("outcome") == "uncacheable":
            continue
        unit = labels.get("business_unit", "?")
        looked[unit] += v
        if labels.get("outcome") in ("exact_hit", "semantic_hit"):
            hits[unit] += v
    total_lookups = sum(looked.values())
    hit_rates = {unit: hits[unit] / n for unit, n in sorted(looked.items()) if n > 0}

    queue: dict[str, float] = defaultdict(float)
    for labels, v in _select(after, "llmesh_router_queue_depth"):
        queue[labels.get("priority", "?")] += v
    for labels, v in _select(after, "llmesh_inference_queued_generations"):
        queue[f"inference {labels.get('model', '?')}"] += v

    cost = sum(v for _, v in _delta(before, after, "llmesh_router_cost_usd_total"))
    breakers = {
        f"{labels.get('region', '?')}/{labels.get('model', '?')}": "open" if v >= 1 else "closed"
        for labels, v in sorted(_select(after, "llmesh_router_breaker_open"), key=lambda x: sorted(x[0].items()))
    }
    return View(
        seconds=seconds,
        requests_per_s=requests / seconds,
        errors_per_s=errors / seconds,
        ttft=ttft,
        hit_rate=(sum(hits.values()) / total_lookups) if total_lookups else None,
        lookups=int(total_lookups),
        hit_rates=hit_rates,
        queue_depth=dict(queue),
        cost_per_minute=cost / seconds * 60,
        breakers=breakers,
        down=list(down or []),
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def render(view: View) -> str:
    lines = [
        f"llmesh top   over the last {view.seconds:.1f} s   {time.strftime('%H:%M:%S')}",
        "",
        f"requests/s      {view.requests_per_s:8.2f}     errors/s {view.errors_per_s:.2f}",
        f"cost/minute     {view.cost_per_minute:8.4f} USD",
        "hit rate        "
        + ("-" if view.hit_rate is None else f"{view.hit_rate:8.1%}")
        + f"     ({view.lookups} lookups)",
    ]
    for unit, rate in view.hit_rates.items():
        lines.append(f"  {unit:<20} {rate:6.1%}")
    lines += ["", "TTFT            p50        p95        requests"]
    if not view.ttft:
        lines.append("  (no answers in this interval)")
    for tier, (p50, p95, count) in view.ttft.items():
        lines.append(f"  tier {tier:<9} {_ms(p50):>9}  {_ms(p95):>9}  {count:>8}")
    lines += ["", "queue depth"]
    lines += [f"  {name:<20} {depth:6.0f}" for name, depth in sorted(view.queue_depth.items())] or ["  (none reported)"]
    lines += ["", "breakers"]
    lines += [f"  {name:<30} {state}" for name, state in view.breakers.items()] or ["  (none reported)"]
    if view.down:
        lines += ["", "NOT ANSWERING: " + ", ".join(view.down)]
    return "\n".join(lines)


def frames(endpoints: list[tuple[str, str]], interval_s: float):
    """Yields a rendered frame every interval (each over the interval before it)."""
    before, _ = scrape(endpoints)
    started = time.monotonic()
    while True:
        time.sleep(interval_s)
        after, down = scrape(endpoints)
        now = time.monotonic()
        yield render(compute(before, after, now - started, down))
        before, started = after, now


def _top(args: argparse.Namespace) -> int:
    try:
        endpoints = (
            parse_endpoints(args.metrics)
            if args.metrics
            else [(service_of(name), address) for name, address in sorted(metrics_endpoints().items())]
        )
    except ValueError as exc:
        print(f"llmesh top: {exc}", file=sys.stderr)
        return 2
    if not endpoints:
        print("llmesh top: no running mesh found (start one with `llmesh up`, or pass --metrics)", file=sys.stderr)
        return 1
    if args.interval <= 0:
        print("llmesh top: --interval must be positive", file=sys.stderr)
        return 2
    for frame in frames(endpoints, args.interval):
        if args.once:
            print(frame)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + frame + "\n")
        sys.stdout.flush()
    return 0
