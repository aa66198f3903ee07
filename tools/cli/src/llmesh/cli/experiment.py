"""`llmesh policy experiment report|promote|rollback`: compare the variants of a policy experiment
(docs/policy.md, `experiments`) on what the router recorded, and end it with one command.

report   reads the router's UsageRecorded events (JetStream stream LLMESH_USAGE, subjects
         llmesh.usage.<tenant>, alone or in batches; each carries the request's policy_variant)
         and the classifier's feedback store (the variant of each rated request), and prints per
         variant: requests, cost per request, latency, escalation rate and bad-rating rate, each
         with a 95 % interval.
promote  writes the variant's policy into the document that holds the experiment and removes
         the experiment: every request runs under the promoted policy from then on.
rollback removes the variant from the experiment (its share goes back to the document's own
         policy); the last variant removed ends the experiment.

Changes are logged as audit lines (`llmesh.audit`) until tenancy's audit RPC exists.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from llmesh.kit.experiments import EXPERIMENTS_FIELD, merge, parse_experiments
from llmesh.kit.logging import get_logger

USAGE_STREAM = "LLMESH_USAGE"
USAGE_SUBJECTS = "llmesh.usage.>"
_Z95 = 1.959963984540054


def register(commands, policy) -> None:
    experiment = commands.add_parser(
        "experiment",
        help="compare the variants of a policy experiment; promote or roll back a variant",
        description="Experiments are the `experiments` section of a policy document (docs/policy.md).",
    )
    steps = experiment.add_subparsers(dest="experiment_command", required=True)

    report = steps.add_parser("report", help="cost, latency, escalations and feedback per variant, with 95%% intervals")
    report.add_argument("name", help="the experiment's name")
    report.add_argument("--tenant", default="", help="only this tenant's requests")
    report.add_argument("--since-hours", type=float, default=0.0, help="only requests of the last N hours (0: all)")
    report.add_argument(
        "--feedback-db",
        default="",
        help="the classifier's feedback SQLite file (default: LLMESH_CLASSIFIER_FEEDBACK_DB, else "
        "$LLMESH_HOME/classifier/feedback.sqlite3; absent: no feedback column)",
    )
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    policy.nats_arguments(report)
    report.set_defaults(func=lambda args: policy.run_nats(_report, args, prog="llmesh policy experiment"))

    for name, text in (
        ("promote", "write the variant's policy into the document and remove the experiment"),
        ("rollback", "remove the variant from the experiment (the last one removed ends it)"),
    ):
        step = steps.add_parser(name, help=text)
        step.add_argument("name", help="the experiment's name")
        step.add_argument("variant", help="the variant's name")
        step.add_argument("--key", default="", help="the policy key that holds the experiment (default: found)")
        step.add_argument("--reason", default="", help="why (kept in the audit line)")
        policy.nats_arguments(step)
        step.set_defaults(func=lambda args: policy.run_nats(_change, args, prog="llmesh policy experiment"))


# -- statistics ------------------------------------------------------------------------------------


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95 % interval (normal approximation; NaN bounds under two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _Z95 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def rate_interval(hits: int, n: int) -> tuple[float, float, float]:
    """A rate and its 95 % Wilson interval (sound for small n and rates near 0 or 1)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    p = hits / n
    z2 = _Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def variant_of(labels: str, experiment: str) -> str | None:
    for label in labels.split(","):
        name, _, variant = label.partition("/")
        if name == experiment and variant:
            return variant
    return None


def summarize(events, experiment: str, ratings: dict[str, list[int]] | None) -> dict[str, dict[str, Any]]:
    """Per variant of `experiment`: the figures of its UsageRecorded events and its ratings."""
    groups: dict[str, list] = {}
    for event in events:
        variant = variant_of(event.policy_variant, experiment)
        if variant is not None:
            groups.setdefault(variant, []).append(event)
    out = {}
    for variant in sorted(set(groups) | set(ratings or {})):
        rows = groups.get(variant, [])
        latencies = [e.total_time_ms for e in rows if e.total_time_ms > 0]
        figures: dict[str, Any] = {
            "requests": len(rows),
            "cost_usd_per_request": mean_interval([e.cost_usd for e in rows]),
            "cost_usd_total": sum(e.cost_usd for e in rows),
            "total_ms_p50": percentile(latencies, 0.5),
            "total_ms_p95": percentile(latencies, 0.95),
            "total_ms_mean": mean_interval(latencies),
            "escalation_rate": rate_interval(sum(e.escalated for e in rows), len(rows)),
        }
        if ratings is not None:
            rated = ratings.get(variant, [])
            figures["rated"] = len(rated)
            figures["bad_rating_rate"] = rate_interval(sum(r < 0 for r in rated), len(rated))
        out[variant] = figures
    return out


def _fmt(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)


def _interval(triple, spec: str) -> str:
    value, low, high = triple
    if value != value:
        return "-"
    if low != low:
        return format(value, spec)
    return f"{format(value, spec)} ({format(low, spec)}..{format(high, spec)})"


def render(name: str, shares: dict[str, float], figures: dict[str, dict[str, Any]]) -> str:
    with_feedback = any("rated" in f for f in figures.values())
    header = "| variant | share | requests | USD per request (95% CI) | total ms p50 / p95 | mean total ms (95% CI) | escalations (95% CI) |"
    rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    if with_feedback:
        header += " rated | bad ratings (95% CI) |"
        rule += " ---: | ---: |"
    lines = [f"experiment {name}", "", header, rule]
    for variant, f in figures.items():
        share = shares.get(variant)
        line = (
            f"| {variant} | {'-' if share is None else f'{share:.0%}'} | {f['requests']} | "
            f"{_interval(f['cost_usd_per_request'], '.6f')} | "
            f"{_fmt(f['total_ms_p50'], '.0f')} / {_fmt(f['total_ms_p95'], '.0f')} | "
            f"{_interval(f['total_ms_mean'], '.0f')} | {_interval(f['escalation_rate'], '.1%')} |"
        )
        if with_feedback:
            line += f" {f.get('rated', 0)} | {_interval(f.get('bad_rating_rate', (math.nan,) * 3), '.1%')} |"
        lines.append(line)
    return "\n".join(lines)


# -- NATS ------------------------------------------------------------------------------------------


async def read_usage(nc, *, tenant: str = "", since_s: float = 0.0) -> list:
    """Every UsageRecorded event in the usage stream (of one tenant; since an epoch time)."""
    import nats.errors
    from llmesh.cli.policy import PolicyError
    from llmesh.kit.usage import usage_records
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    try:
        info = await js.stream_info(USAGE_STREAM)
    except NotFoundError:
        raise PolicyError(
            f"no stream {USAGE_STREAM}: the router publishes its usage records there (none recorded yet?)", code=1
        ) from None
    last = info.state.last_seq
    events: list = []
    if info.state.messages == 0:
        return events
    subject = f"llmesh.usage.{tenant}" if tenant else USAGE_SUBJECTS
    sub = await js.pull_subscribe(subject, stream=USAGE_STREAM)
    try:
        while True:
            try:
                batch = await sub.fetch(500, timeout=1.0)
            except nats.errors.TimeoutError:
                break
            done = False
            for msg in batch:
                for event in usage_records(msg.data, msg.headers):  # one record, or a router's batch
                    if not since_s or event.occurred_at.ToNanoseconds() / 1e9 >= since_s:
                        events.append(event)
                done = done or msg.metadata.sequence.stream >= last
            if done:
                break
    finally:
        await sub.unsubscribe()
    return events


def _ratings(explicit: str, experiment: str) -> dict[str, list[int]] | None:
    import pathlib

    from llmesh.launcher.state import home

    db = explicit or os.environ.get("LLMESH_CLASSIFIER_FEEDBACK_DB") or str(home() / "classifier" / "feedback.sqlite3")
    if not pathlib.Path(db).is_file():
        return None
    try:
        from llmesh.services.classifier.feedback import FeedbackStore
    except ModuleNotFoundError:
        return None
    store = FeedbackStore(db)
    try:
        return store.ratings_by_variant(experiment)
    finally:
        store.close()


def _experiment_shares(documents: dict[str, Any], name: str) -> dict[str, float]:
    for doc in documents.values():
        if isinstance(doc, dict):
            for experiment in parse_experiments(doc):
                if experiment.name == name:
                    return {v.name: v.share for v in experiment.variants}
    return {}


async def _report(nc, args) -> None:
    from llmesh.cli import policy

    documents = await policy.read_bucket(await policy.bucket(nc, args.bucket, create=False))
    since = time.time() - args.since_hours * 3600 if args.since_hours else 0.0
    events = await read_usage(nc, tenant=args.tenant, since_s=since)
    figures = summarize(events, args.name, _ratings(args.feedback_db, args.name))
    shares = _experiment_shares(documents, args.name)
    for variant in shares:
        figures.setdefault(variant, _empty())
    if args.json:
        print(json.dumps({"experiment": args.name, "shares": shares, "variants": figures}, indent=2))
    else:
        print(render(args.name, shares, figures))


def _empty() -> dict[str, Any]:
    nan3 = (math.nan, math.nan, math.nan)
    return {
        "requests": 0,
        "cost_usd_per_request": nan3,
        "cost_usd_total": 0.0,
        "total_ms_p50": math.nan,
        "total_ms_p95": math.nan,
        "total_ms_mean": nan3,
        "escalation_rate": nan3,
    }


def changed_document(doc: dict[str, Any], name: str, variant: str, action: str) -> dict[str, Any]:
    """The document after promoting or rolling back `variant` of experiment `name`."""
    from llmesh.cli.policy import PolicyError

    experiments = dict(doc.get(EXPERIMENTS_FIELD) or {})
    variants = dict((experiments.get(name) or {}).get("variants") or {})
    if variant not in variants:
        known = ", ".join(sorted(variants)) or "none"
        raise PolicyError(f"experiment {name!r} has no variant {variant!r} (variants: {known})", code=1)
    out = {k: v for k, v in doc.items() if k != EXPERIMENTS_FIELD}
    if action == "promote":
        experiments.pop(name)
        out = merge(out, variants[variant].get("policy") or {})
    else:
        variants.pop(variant)
        if variants:
            experiments[name] = {**experiments[name], "variants": variants}
        else:
            experiments.pop(name)
    if experiments:
        out[EXPERIMENTS_FIELD] = experiments
    return out


async def _change(nc, args) -> None:
    from llmesh.cli import policy

    kv = await policy.bucket(nc, args.bucket, create=False)
    documents = await policy.read_bucket(kv)
    holders = [
        key
        for key, doc in documents.items()
        if isinstance(doc, dict) and args.name in (doc.get(EXPERIMENTS_FIELD) or {})
    ]
    if args.key:
        holders = [k for k in holders if k == args.key]
    if not holders:
        raise policy.PolicyError(
            f"no experiment {args.name!r} in {args.bucket}" + (f" under {args.key}" if args.key else ""), code=1
        )
    if len(holders) > 1:
        raise policy.PolicyError(f"experiment {args.name!r} is under {', '.join(holders)}: name one with --key", code=2)
    key = holders[0]
    new = changed_document(documents[key], args.name, args.variant, args.experiment_command)
    errors = policy.document_errors(key, new)
    if errors:
        raise policy.PolicyError(
            "the result would be invalid, nothing written:\n" + "\n".join(f"  {p}: {m}" for p, m in errors)
        )
    revision = await kv.put(key, json.dumps(new).encode())
    action = "promoted" if args.experiment_command == "promote" else "rolled_back"
    get_logger("llmesh.audit").info(
        "policy_experiment_" + action,
        user=os.environ.get("USER", ""),
        key=key,
        experiment=args.name,
        variant=args.variant,
        reason=args.reason,
        policy_revision=revision,
    )
    print(f"{key}  experiment {args.name}: {args.variant} {action.replace('_', ' ')} (revision {revision})")
