"""`llmesh usage report`: chargeback from tenancy's usage ledger (UsageReport)."""

from __future__ import annotations

import csv
import datetime as dt
import sys

from google.protobuf import timestamp_pb2
from llmesh.cli.tenant import Stub, run_admin
from llmesh.tenancy.v1 import tenancy_pb2

TOTAL_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "cost_avoided_usd")


def register(subparsers) -> None:
    usage = subparsers.add_parser("usage", help="usage and cost from the ledger")
    commands = usage.add_subparsers(dest="usage_command", required=True)
    report = commands.add_parser("report", help="usage grouped and totalled, a month-end forecast, top use cases")
    report.add_argument(
        "--by",
        default="",
        help="comma-separated: tenant, business_unit, use_case, model, tier, backend, region, api_key, cache_outcome",
    )
    report.add_argument("--since", type=_time, help="from (ISO 8601, UTC when no zone), inclusive")
    report.add_argument("--until", type=_time, help="until (ISO 8601), exclusive")
    report.add_argument("--tenant-id", default="", help="one tenant only")
    report.add_argument("--top", type=int, default=5, help="how many top use cases by cost (default 5)")
    report.add_argument("--csv", action="store_true", help="the grouped rows as CSV on stdout, nothing else")
    report.set_defaults(func=lambda args: run_admin(_report, args, "usage"))


def _time(value: str) -> timestamp_pb2.Timestamp:
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


_time.__name__ = "time"  # argparse names the type in its error message


async def _report(stub: Stub, metadata, args) -> None:
    request = tenancy_pb2.UsageReportRequest(
        group_by=[args.by] if args.by else [], tenant_id=args.tenant_id, top_use_cases=args.top
    )
    if args.since:
        request.since.CopyFrom(args.since)
    if args.until:
        request.until.CopyFrom(args.until)
    report = await stub.UsageReport(request, metadata=metadata)
    groups = [g.strip() for g in args.by.split(",") if g.strip()]
    header = [*groups, *TOTAL_COLUMNS]
    rows = [[*(row.group.get(g, "") for g in groups), *_totals(row)] for row in report.rows]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return
    _table([header, *rows, ["TOTAL", *[""] * (len(groups) - 1), *_totals(report.totals)] if groups else []])
    f = report.forecast
    month = f.month_start.ToDatetime().strftime("%Y-%m")
    print(
        f"\nforecast {month}: {f.month_to_date_usd:.4f} USD so far, {f.daily_rate_usd:.4f} USD/day, "
        f"{f.month_end_usd:.4f} USD at month end"
    )
    if report.top_use_cases:
        print(
            "top use cases by cost: "
            + ", ".join(f"{r.group.get('use_case') or '-'} {r.cost_usd:.4f} USD" for r in report.top_use_cases)
        )


def _totals(row: tenancy_pb2.UsageRow) -> list[str]:
    return [
        str(row.requests),
        str(row.prompt_tokens),
        str(row.completion_tokens),
        f"{row.cost_usd:.6f}",
        f"{row.cost_avoided_usd:.6f}",
    ]


def _table(rows: list[list[str]]) -> None:
    rows = [r for r in rows if r]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
