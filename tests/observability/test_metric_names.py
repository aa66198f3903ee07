"""Every metric the mesh exports follows Prometheus naming: durations are in seconds, sizes in
bytes, fractions are _ratio; no millisecond or kilobyte units (prometheus_client adds _total to
every counter itself)."""

from __future__ import annotations

import importlib
import json
import re

from llmesh.cli.main import main
from llmesh.cli.observe import file_sd, metrics_endpoints
from llmesh.launcher.state import MeshState, save_state
from prometheus_client import REGISTRY

MODULES = [
    "llmesh.kit.metrics",
    "llmesh.services.cache.metrics",
    "llmesh.services.classifier.metrics",
    "llmesh.services.inference.metrics",
    "llmesh.services.router.metrics",
]
BAD_UNITS = re.compile(r"_(ms|millis|milliseconds|us|microseconds|minutes|hours|kb|mb|kib|mib|percent)(_|$)")


def test_metric_names_follow_prometheus_conventions():
    for module in MODULES:
        importlib.import_module(module)
    families = [m for m in REGISTRY.collect() if m.name.startswith("llmesh_")]
    assert len(families) > 20
    problems = []
    for family in families:
        name = family.name
        if BAD_UNITS.search(name):
            problems.append(f"{name}: not a base unit")
        if family.type == "histogram" and not re.search(r"_(seconds|bytes|ratio|tokens|per_second)$", name):
            problems.append(f"{name}: a histogram names its unit")
        if family.type == "gauge" and "utilization" in name and not name.endswith("_ratio"):
            problems.append(f"{name}: a fraction ends in _ratio")
        if family.type == "counter" and name.endswith("_seconds"):
            problems.append(f"{name}: a counter of seconds ends in _seconds_total")
    assert not problems, problems


def test_prometheus_targets_come_from_the_local_mesh(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    assert metrics_endpoints() == {}
    assert main(["prometheus", "targets"]) == 1
    save_state(
        MeshState(
            endpoints={"router": "127.0.0.1:50051", "cache": "127.0.0.1:50054"},
            metrics_ports={"router": 9101, "cache": 9104},
        )
    )
    assert metrics_endpoints() == {"cache": "127.0.0.1:9104", "router": "127.0.0.1:9101"}
    capsys.readouterr()
    assert main(["prometheus", "targets", "--region", "eu"]) == 0
    assert (
        json.loads(capsys.readouterr().out)
        == file_sd(metrics_endpoints(), "eu")
        == [
            {"targets": ["127.0.0.1:9104"], "labels": {"service": "cache", "region": "eu"}},
            {"targets": ["127.0.0.1:9101"], "labels": {"service": "router", "region": "eu"}},
        ]
    )


def test_a_tenant_cannot_create_unbounded_use_case_series():
    from llmesh.kit.metrics import OTHER, USE_CASE
    from llmesh.services.cache import metrics
    from llmesh.services.cache.analytics import Analytics, Outcome, Scope

    analytics = Analytics()
    for i in range(USE_CASE.limit + 30):
        analytics.record_lookup(Scope("t-bounded", "bu", f"use-case-{i}"), Outcome.MISS)
    values = {
        s.labels["use_case"]
        for family in metrics.LOOKUPS.collect()
        for s in family.samples
        if s.labels.get("tenant") == "t-bounded"
    }
    assert OTHER in values
    assert len(values) <= USE_CASE.limit + 1
    # The Stats RPC still counts every use case on its own.
    rows, _ = analytics.report(tenant_id="t-bounded")
    assert len({scope.use_case for scope, _ in rows}) == USE_CASE.limit + 30
