"""`llmesh usage report` against a hosted tenancy service fed over LLMESH_USAGE."""

from __future__ import annotations

import asyncio
import csv
import io

import nats
import pytest
from llmesh.cli.main import main
from llmesh.kit.streams import usage_subject
from llmesh.kit.testing import assert_eventually, unique
from llmesh.tenancy.v1 import tenancy_pb2 as pb
from structlog.testing import capture_logs

from services.tenancy.tests.test_ledger import _usage_event

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cli_env(service, admin_token, monkeypatch, tmp_path):
    host, stub = service
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMESH_TENANCY_ADDR", host.address)
    monkeypatch.setenv("LLMESH_ADMIN_TOKEN", admin_token)
    return stub


async def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    with capture_logs():
        code = await asyncio.to_thread(main, ["usage", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_report_as_table_and_csv_and_bad_group(cli_env, capsys, nats_url, admin):
    stub = cli_env
    tenant = unique("u").replace(".", "-")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for i in range(5):
            event = _usage_event(f"{tenant}-{i}", tenant, "chat" if i < 3 else "search")
            await js.publish(
                usage_subject(tenant), event.SerializeToString(), headers={"Nats-Msg-Id": event.request_id}
            )
    finally:
        await nc.close()

    async def written() -> bool:
        report = await stub.UsageReport(pb.UsageReportRequest(tenant_id=tenant), metadata=admin)
        return report.totals.requests == 5

    await assert_eventually(written, message="5 ledger rows")

    code, out, _ = await _cli(capsys, "report", "--by", "use_case,model", "--tenant-id", tenant, "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {(r["use_case"], r["model"], r["requests"]) for r in rows} == {("chat", "m", "3"), ("search", "m", "2")}
    assert sum(float(r["cost_usd"]) for r in rows) == pytest.approx(1.25)

    code, out, _ = await _cli(capsys, "report", "--by", "use_case", "--tenant-id", tenant, "--since", "2020-01-01")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["use_case", "requests"]
    assert lines[3].split()[:2] == ["TOTAL", "5"]
    assert "forecast" in out and "top use cases by cost: chat 0.7500 USD, search 0.5000 USD" in out

    code, _, err = await _cli(capsys, "report", "--by", "prompt")
    assert code == 1 and "INVALID_ARGUMENT: cannot group by 'prompt'" in err
