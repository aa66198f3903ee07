"""deploy/prometheus: the rules load (promtool check), every alert has a unit test that makes it
fire and one that keeps it quiet (promtool test rules), the Alertmanager configuration is valid
and routes by severity (amtool), and every alert names a runbook that exists."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RUNBOOKS = ROOT / "docs" / "runbooks"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed and `make setup` could not install it (Debian prometheus packages)")
    return path


def run(*args: str, cwd: pathlib.Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict]:
    groups = yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_are_valid():
    done = run(tool("promtool"), "check", "rules", "rules/recording.yml", "rules/alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_local_scrape_config_is_valid(tmp_path):
    # file_sd needs no targets file to pass the check; rule_files resolve beside the config.
    done = run(tool("promtool"), "check", "config", "local/prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass():
    done = run(tool("promtool"), "test", "rules", "tests/alerts_test.yml", "tests/recording_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_expectation_fails(tmp_path):
    """The unit tests can fail: the same test with a wrong expected severity does."""
    broken = (
        (PROM / "tests" / "alerts_test.yml")
        .read_text()
        .replace("{severity: page, region: eu-west}", "{severity: ticket, region: eu-west}")
    )
    broken = broken.replace("../rules/", str(PROM / "rules") + "/")
    path = tmp_path / "broken_test.yml"
    path.write_text(broken)
    done = run(tool("promtool"), "test", "rules", str(path), cwd=tmp_path)
    assert done.returncode != 0


def test_every_alert_is_tested_firing_and_quiet():
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert len(names) == len(alerts()), "alert names are unique"
    assert not names - fired, f"alerts never tested firing: {sorted(names - fired)}"
    # A quiet case is either an explicit empty expectation, or a series in a firing test whose
    # labels the expected alerts leave out (checked by promtool: it compares the whole list).
    multi_series = {
        check["alertname"]
        for case in tests
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts") and len(case["input_series"]) > len(check["exp_alerts"])
    }
    assert not names - quiet - multi_series, f"alerts never tested quiet: {sorted(names - quiet - multi_series)}"


def test_every_alert_has_severity_summary_and_an_existing_runbook():
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert rule["annotations"]["summary"], name
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbooks/{name}.md", name
        text = (ROOT / url).read_text()
        assert "## Check first" in text and "## Commands" in text, name


def test_operations_have_runbooks():
    operations = ("rotate-keys", "change-a-policy", "roll-a-model", "drain-a-region", "restore-tenancy-from-backup")
    for name in (*operations, "scaling"):
        text = (RUNBOOKS / f"{name}.md").read_text()
        assert "## Check first" in text and "```bash" in text, name


def test_alertmanager_config_is_valid():
    done = run(tool("amtool"), "check-config", "alertmanager.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=ServiceDown", "region=eu-west"], "oncall-pager"),
        (["severity=ticket", "alertname=CacheHitRateDrop"], "ops-tickets"),
        (["severity=ticket", "category=cost", "alertname=BudgetExhausted"], "finance"),
        (["severity=page", "category=cost", "alertname=BudgetExhausted"], "finance"),
    ],
)
def test_alertmanager_routes_by_severity_and_cost(labels, receiver):
    done = run(tool("amtool"), "config", "routes", "test", "--config.file=alertmanager.yml", *labels)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [receiver]


def test_one_region_outage_pages_once():
    """Pages group by region, and RegionDown inhibits the region's other alerts."""
    config = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    page = next(r for r in config["route"]["routes"] if r["matchers"] == ['severity="page"'])
    assert page["group_by"] == ["region"]
    region = next(r for r in config["inhibit_rules"] if r["source_matchers"] == ['alertname="RegionDown"'])
    assert region["equal"] == ["region"] and region["target_matchers"] == ['alertname!="RegionDown"']


def test_kustomization_renders_the_config_maps():
    kubectl = tool("kubectl")
    done = run(kubectl, "kustomize", str(PROM))
    assert done.returncode == 0, done.stderr
    names = set(re.findall(r"^  name: (\S+)-[a-z0-9]{10}$", done.stdout, re.M))
    assert names == {"prometheus-config", "prometheus-rules", "alertmanager-config", "prometheus-adapter-config"}
