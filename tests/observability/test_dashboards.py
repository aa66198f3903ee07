"""deploy/grafana: the committed dashboard JSON is what dashboards.py generates, and every panel's
query is valid PromQL (promtool checks them as recording rules)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"


def load_generator():
    spec = importlib.util.spec_from_file_location("llmesh_dashboards", GRAFANA / "dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_are_generated():
    rendered = load_generator().render()
    assert set(rendered) == {"overview.json", "routing.json", "cache.json", "cost.json", "regions.json"}
    committed = {p.name for p in (GRAFANA / "dashboards").glob("*.json")}
    assert committed == set(rendered)
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, f"{name} is stale: run deploy/grafana/dashboards.py"


def test_dashboard_queries_are_valid_promql(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed and `make setup` could not install it (Debian prometheus)")
    exprs = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        assert board["uid"].startswith("llmesh-") and board["panels"], path.name
        for p in board["panels"]:
            assert p["targets"], (path.name, p["title"])
            exprs += [t["expr"] for t in p["targets"]]
    # Template variables become what "All" selects.
    exprs = [re.sub(r"\$\{?\w+\}?", ".*", e) for e in exprs]
    rules = {
        "groups": [
            {"name": "dashboards", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
