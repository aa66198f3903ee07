"""A real Prometheus (temporary folder, free port, 1 s scrapes) against the running mesh: every
service is scraped (up == 1) and the recording rules of deploy/prometheus produce series.

The mesh runs in this process, so every service's /metrics shows the one registry of the
process; the checks are on targets and on series existing, not on their values."""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
import yaml
from llmesh.cli.observe import file_sd
from llmesh.kit.testing import assert_eventually, free_port

from tests.e2e.test_mesh import generate, request

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"

pytestmark = pytest.mark.timeout(120)

RECORDED = (
    "tier_priority:llmesh_router_time_to_first_token_seconds:p50_5m",
    "tier_priority:llmesh_router_time_to_first_token_seconds:p95_5m",
    "tier_priority:llmesh_router_request_duration_seconds:p99_5m",
    "business_unit_use_case:llmesh_cache_hit_ratio:rate5m",
    "tenant_model:llmesh_router_cost_usd:increase1h",
    "service:llmesh_grpc_requests:rate5m",
)


@contextlib.contextmanager
def prometheus(tmp_path: pathlib.Path, targets: list[dict]):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed and `make setup` could not install it (Debian prometheus)")
    (tmp_path / "targets.json").write_text(json.dumps(targets))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "llmesh",
                "file_sd_configs": [{"files": [str(tmp_path / "targets.json")], "refresh_interval": "1s"}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError as exc:
        raise AssertionError(f"prometheus not answering: {exc}") from exc
    assert body["status"] == "success", body
    return body["data"]["result"]


async def test_prometheus_scrapes_every_service_and_records_the_rules(mesh, tmp_path):
    endpoints = {name: f"127.0.0.1:{host.metrics_port}" for name, host in mesh.hosts.items()}
    api_key, _, _ = await mesh.new_tenant()
    await generate(mesh, api_key, request("Name three colours."))
    with prometheus(tmp_path, file_sd(endpoints)) as base:

        def all_up():
            up = {r["metric"]["service"]: r["value"][1] for r in query(base, 'up{job="llmesh"}')}
            assert up == dict.fromkeys(mesh.hosts, "1"), up

        await assert_eventually(all_up, timeout_s=30, interval_s=0.5, message="every service scraped")
        # Traffic between scrapes, so the rates are not all zero: a miss, then its exact hit.
        await generate(mesh, api_key, request("Name three animals."))
        await generate(mesh, api_key, request("Name three animals."))

        def recorded():
            missing = []
            for name in RECORDED:
                values = [float(r["value"][1]) for r in query(base, name)]
                if not any(not math.isnan(v) for v in values):
                    missing.append(name)
            assert not missing, missing

        await assert_eventually(recorded, timeout_s=30, interval_s=0.5, message="recording rules produce series")
        # The alerts load and evaluate without errors.
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as response:
            groups = json.load(response)["data"]["groups"]
        assert all(rule["health"] == "ok" for group in groups for rule in group["rules"]), groups
