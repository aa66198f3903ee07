"""`llmesh top` against running services: while answers are generated (a miss, then its exact
hit), one frame shows the requests, TTFT per tier, the hit rate and the cost per minute."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re

import pytest
from llmesh.cli import top
from llmesh.cli.main import main
from llmesh.kit.testing import assert_eventually

from tests.e2e.test_mesh import generate, request

pytestmark = pytest.mark.timeout(90)


def test_quantile_interpolates_as_prometheus_does():
    buckets = [(0.1, 0.0), (0.25, 60.0), (float("inf"), 60.0)]
    assert top.quantile(0.5, buckets) == pytest.approx(0.175)
    assert top.quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None


def test_bad_endpoints_are_refused(capsys):
    assert main(["top", "--once", "--metrics", "nosuch=127.0.0.1:1"]) == 2
    assert "SERVICE=HOST:PORT" in capsys.readouterr().err


async def test_top_shows_live_figures_while_requests_run(mesh, monkeypatch):
    # The frame counts what happens after its first scrape: the requests start once it is taken.
    scraped = []
    real_scrape = top.scrape

    def scrape(*args, **kwargs):
        result = real_scrape(*args, **kwargs)
        scraped.append(result)
        return result

    monkeypatch.setattr(top, "scrape", scrape)
    endpoints = [f"{name}=127.0.0.1:{host.metrics_port}" for name, host in mesh.hosts.items()]
    api_key, _, _ = await mesh.new_tenant()
    out = io.StringIO()

    def run_top() -> int:
        with contextlib.redirect_stdout(out):
            return main(["top", "--once", "--interval", "6", *sum((["--metrics", e] for e in endpoints), [])])

    frame = asyncio.create_task(asyncio.to_thread(run_top))
    await assert_eventually(lambda: len(scraped) >= 1, timeout_s=10, message="top's first scrape")
    await generate(mesh, api_key, request("Name two oceans."))
    await generate(mesh, api_key, request("Name two oceans."))
    assert await frame == 0
    text = out.getvalue()
    rate = float(re.search(r"requests/s\s+([\d.]+)", text).group(1))
    assert rate == pytest.approx(2 / 6, rel=0.5), text
    assert re.search(r"hit rate\s+50\.0%\s+\(2 lookups\)", text), text
    assert re.search(r"tier \d+\s+\d+ ms\s+\d+ ms\s+2", text) or len(re.findall(r"tier \d+\s+\d+ ms", text)) == 2, text
    assert "cost/minute" in text and "NOT ANSWERING" not in text, text
