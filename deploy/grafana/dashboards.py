"""Grafana dashboards as code (grafanalib): mesh overview, routing, cache, cost, regions.

    .venv/bin/python deploy/grafana/dashboards.py          # writes deploy/grafana/dashboards/*.json
    .venv/bin/python deploy/grafana/dashboards.py --check  # exits 1 when the JSON is stale

The panels read the recording rules of deploy/prometheus/rules/recording.yml where one exists,
and the metric names of deploy/prometheus/README.md (some exported by features in flight)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

OUT = pathlib.Path(__file__).resolve().parent / "dashboards"
DATASOURCE = "${datasource}"
WIDTH = 24


def panel(title: str, exprs: dict[str, str], *, unit: str = "", stack: bool = False, w: int = 12) -> g.TimeSeries:
    return g.TimeSeries(
        title=title,
        dataSource=DATASOURCE,
        targets=[
            g.Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i))
            for i, (legend, expr) in enumerate(exprs.items())
        ],
        unit=unit,
        stacking={"mode": "normal", "group": "A"} if stack else {"mode": "none"},
        gridPos=g.GridPos(h=8, w=w, x=0, y=0),
    )


def stat(title: str, expr: str, *, unit: str = "", w: int = 6) -> g.Stat:
    return g.Stat(
        title=title,
        dataSource=DATASOURCE,
        targets=[g.Target(expr=expr, refId="A")],
        format=unit or "none",
        reduceCalc="lastNotNull",
        gridPos=g.GridPos(h=4, w=w, x=0, y=0),
    )


def variables(*extra: g.Template) -> g.Templating:
    source = g.Template(name="datasource", query="prometheus", type="datasource", label="Data source", default="")
    return g.Templating(list=[source, *extra])


def label_variable(name: str, metric: str, label: str) -> g.Template:
    return g.Template(
        name=name,
        label=label,
        dataSource=DATASOURCE,
        query=f"label_values({metric}, {name})",
        includeAll=True,
        multi=True,
        allValue=".*",
        default="$__all",
    )


def layout(panels: list) -> list:
    """Left to right, top to bottom, in the order given."""
    x = y = row_h = 0
    for p in panels:
        w, h = p.gridPos.w, p.gridPos.h
        if x + w > WIDTH:
            x, y, row_h = 0, y + row_h, 0
        p.gridPos = g.GridPos(h=h, w=w, x=x, y=y)
        x += w
        row_h = max(row_h, h)
    return panels


def dashboard(uid: str, title: str, panels: list, templating: g.Templating | None = None) -> g.Dashboard:
    return g.Dashboard(
        uid=uid,
        title=title,
        tags=["llmesh"],
        timezone="utc",
        refresh="30s",
        time=g.Time("now-6h", "now"),
        templating=templating or variables(),
        panels=layout(panels),
    ).auto_panel_ids()


def overview() -> g.Dashboard:
    return dashboard(
        "llmesh-overview",
        "llmesh / mesh overview",
        [
            stat(
                "Generate requests/s",
                'sum(rate(llmesh_grpc_requests_total{service="router",method="Generate"}[5m]))',
                unit="reqps",
            ),
            stat("Generate error ratio (SLO 0.1 %)", "llmesh:router_error_ratio:rate1h", unit="percentunit"),
            stat("Interactive TTFT > 1 s (SLO 1 %)", "llmesh:router_ttft_slow_ratio:rate1h", unit="percentunit"),
            stat("Services up", 'sum(up{job="llmesh"})'),
            panel("Traffic by service", {"{{service}}": "service:llmesh_grpc_requests:rate5m"}, unit="reqps"),
            panel("Server errors by service", {"{{service}}": "service:llmesh_grpc_errors:rate5m"}, unit="reqps"),
            panel(
                "Latency p95 by service and method",
                {"{{service}} {{method}}": "service_method:llmesh_grpc_request_duration_seconds:p95_5m"},
                unit="s",
            ),
            panel(
                "TTFT p50 / p95 / p99 by tier",
                {
                    f"{q} tier {{{{tier}}}} {{{{priority}}}}": f"tier_priority:llmesh_router_time_to_first_token_seconds:{q}_5m"
                    for q in ("p50", "p95", "p99")
                },
                unit="s",
            ),
            panel(
                "Saturation: generations running and queued",
                {
                    "running {{model}}": "sum by (model) (llmesh_inference_active_generations)",
                    "queued {{model}}": "sum by (model) (llmesh_inference_queued_generations)",
                },
            ),
            panel(
                "Model utilization (router's view)",
                {"{{region}} {{model}}": "max by (region, model) (llmesh_router_model_utilization_ratio)"},
                unit="percentunit",
            ),
        ],
    )


def routing() -> g.Dashboard:
    return dashboard(
        "llmesh-routing",
        "llmesh / routing",
        [
            panel(
                "Tier mix",
                {"tier {{tier}}": "sum by (tier) (rate(llmesh_router_requests_total[5m]))"},
                unit="reqps",
                stack=True,
            ),
            panel(
                "Requests by model",
                {"{{model}}": "sum by (model) (rate(llmesh_router_requests_total[5m]))"},
                unit="reqps",
                stack=True,
            ),
            panel(
                "Classifier tiers by model version",
                {
                    "tier {{tier}} {{model_version}}": "sum by (tier, model_version) (rate(llmesh_classifier_tier_total[5m]))"
                },
                unit="reqps",
            ),
            panel(
                "Degraded requests (fallbacks)",
                {
                    "{{dependency}} {{operation}}": "sum by (dependency, operation) (rate(llmesh_router_degraded_total[5m]))"
                },
                unit="reqps",
            ),
            panel(
                "Escalations and overflow",
                {
                    "escalations": "sum(rate(llmesh_router_escalations_total[5m]))",
                    "overflow {{priority}}": "sum by (priority) (rate(llmesh_router_overflow_total[5m]))",
                    "cache hits refused (tier too low)": "sum(rate(llmesh_router_cache_tier_rejected_total[5m]))",
                    "speculation {{outcome}}": "sum by (outcome) (rate(llmesh_router_speculation_total[5m]))",
                },
                unit="reqps",
            ),
            panel("Open breakers", {"{{region}} {{model}}": "max by (region, model) (llmesh_router_breaker_open)"}),
            panel("Queue depth by class", {"{{priority}}": "sum by (priority) (llmesh_router_queue_depth)"}),
            panel(
                "Request duration p95 by tier",
                {"tier {{tier}} {{priority}}": "tier_priority:llmesh_router_request_duration_seconds:p95_5m"},
                unit="s",
            ),
            panel(
                "Classifier score drift (PSI)",
                {"{{model_version}}": "max by (model_version) (llmesh_classifier_score_drift_psi)"},
            ),
        ],
    )


def cache() -> g.Dashboard:
    scope = '{business_unit=~"$business_unit", use_case=~"$use_case"}'
    return dashboard(
        "llmesh-cache",
        "llmesh / cache",
        [
            panel(
                "Hit rate by business unit and use case",
                {"{{business_unit}} / {{use_case}}": f"business_unit_use_case:llmesh_cache_hit_ratio:rate5m{scope}"},
                unit="percentunit",
            ),
            panel(
                "Lookups by outcome",
                {"{{outcome}}": f"sum by (outcome) (rate(llmesh_cache_lookups_total{scope}[5m]))"},
                unit="reqps",
                stack=True,
            ),
            panel(
                "Tokens saved",
                {
                    "{{business_unit}} / {{use_case}}": f"sum by (business_unit, use_case) (rate(llmesh_cache_tokens_saved_total{scope}[5m]))"
                },
            ),
            panel(
                "Cost saved per hour (USD)",
                {
                    "{{business_unit}} / {{use_case}}": f"business_unit_use_case:llmesh_cache_cost_saved_usd:increase1h{scope}"
                },
                unit="currencyUSD",
            ),
            panel(
                "Freshness: evictions and invalidations",
                {
                    "evicted {{reason}}": "sum by (reason) (rate(llmesh_cache_evictions_total[5m]))",
                    "invalidations {{scope}}": "sum by (scope) (rate(llmesh_cache_invalidations_applied_total[5m]))",
                },
            ),
            panel("Entries", {"{{layer}}": "max by (layer) (llmesh_cache_entries)"}),
            panel(
                "Gray zone decisions",
                {"{{decision}}": f"sum by (decision) (rate(llmesh_cache_gray_zone_total{scope}[5m]))"},
                unit="reqps",
            ),
            panel(
                "Semantic layer errors",
                {"{{operation}}": "sum by (operation) (rate(llmesh_cache_semantic_errors_total[5m]))"},
            ),
        ],
        variables(
            label_variable("business_unit", "llmesh_cache_lookups_total", "Business unit"),
            label_variable("use_case", "llmesh_cache_lookups_total", "Use case"),
        ),
    )


def cost() -> g.Dashboard:
    return dashboard(
        "llmesh-cost",
        "llmesh / cost",
        [
            stat("Spend, last 24 h (USD)", "sum(increase(llmesh_router_cost_usd_total[24h]))", unit="currencyUSD"),
            stat(
                "Saved by the cache, last 24 h (USD)",
                "sum(increase(llmesh_cache_cost_saved_usd_total[24h]))",
                unit="currencyUSD",
            ),
            stat("Spend per minute now (USD)", "sum(rate(llmesh_router_cost_usd_total[5m])) * 60", unit="currencyUSD"),
            stat("Tenants over 80 % of a budget", "count(llmesh_budget_utilization_ratio >= 0.8) or vector(0)"),
            panel(
                "Cost per hour by tenant",
                {"{{tenant}}": 'tenant:llmesh_router_cost_usd:increase1h{tenant=~"$tenant"}'},
                unit="currencyUSD",
                stack=True,
            ),
            panel(
                "Cost per hour by model",
                {"{{model}}": "sum by (model) (tenant_model:llmesh_router_cost_usd:increase1h)"},
                unit="currencyUSD",
                stack=True,
            ),
            panel(
                "Saved per hour by business unit and use case",
                {"{{business_unit}} / {{use_case}}": "business_unit_use_case:llmesh_cache_cost_saved_usd:increase1h"},
                unit="currencyUSD",
            ),
            panel(
                "Forecast: spend over the next 24 h at the last 6 h's trend",
                {
                    "{{tenant}}": 'sum by (tenant) (predict_linear(llmesh_router_cost_usd_total{tenant=~"$tenant"}[6h], 86400))'
                },
                unit="currencyUSD",
            ),
            panel(
                "Budget used",
                {
                    "{{tenant}} {{budget}}": 'max by (tenant, budget) (llmesh_budget_utilization_ratio{tenant=~"$tenant"})'
                },
                unit="percentunit",
                w=24,
            ),
        ],
        variables(label_variable("tenant", "llmesh_router_cost_usd_total", "Tenant")),
    )


def regions() -> g.Dashboard:
    return dashboard(
        "llmesh-regions",
        "llmesh / regions",
        [
            panel("Region health (routers' view)", {"{{region}}": "max by (region) (llmesh_router_region_healthy)"}),
            panel(
                "Failovers",
                {
                    "{{region}} → {{to_region}}": "sum by (region, to_region) (rate(llmesh_router_region_failovers_total[5m]))"
                },
                unit="reqps",
            ),
            panel("Services up by region", {"{{region}}": 'sum by (region) (up{job="llmesh"})'}),
            panel(
                "Traffic by region",
                {
                    "{{region}}": 'sum by (region) (rate(llmesh_grpc_requests_total{service="router",method="Generate"}[5m]))'
                },
                unit="reqps",
            ),
            panel(
                "Model utilization by region",
                {"{{region}} {{model}}": "max by (region, model) (llmesh_router_model_utilization_ratio)"},
                unit="percentunit",
            ),
            panel("Open breakers by region", {"{{region}}": "sum by (region) (llmesh_router_breaker_open)"}),
        ],
    )


DASHBOARDS = {"overview": overview, "routing": routing, "cache": cache, "cost": cost, "regions": regions}


def render() -> dict[str, str]:
    """file name -> JSON text of every dashboard."""
    return {
        f"{name}.json": json.dumps(build().to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed JSON instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run {pathlib.Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
