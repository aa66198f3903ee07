"""`llmesh policy experiment report|promote|rollback` against the session's real nats-server: the
report reads UsageRecorded events from the LLMESH_USAGE stream (published here as routers
publish them: in batches, and one by one as routers before batching did) and ratings from a classifier feedback store; promote and rollback rewrite the
document that holds the experiment."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from llmesh.cli.experiment import rate_interval, summarize
from llmesh.cli.main import main
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.outbox import Batching, Outbox
from llmesh.kit.policy import POLICY_HISTORY
from llmesh.kit.streams import DAY_S, StreamSpec
from llmesh.kit.tasks import BackgroundTasks
from llmesh.kit.testing import unique
from llmesh.kit.usage import pack_usage
from llmesh.services.classifier.feedback import ClassificationRecord, FeedbackStore

pytestmark = pytest.mark.timeout(60)

USAGE = StreamSpec("LLMESH_USAGE", ("llmesh.usage.>",), max_age_s=30 * DAY_S)


def experiment_doc() -> dict:
    return {
        "tiers": {"2": "mid"},
        "experiments": {
            "tier2": {
                "variants": {
                    "control": {"share": 0.5, "policy": {}},
                    "cheap": {
                        "share": 0.5,
                        "policy": {"tiers": {"2": "small"}, "classifier": {"tier_thresholds": [0.4, 0.8]}},
                    },
                }
            }
        },
    }


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["policy", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
async def bus(nats_url, monkeypatch):
    monkeypatch.setenv("LLMESH_NATS_URL", nats_url)
    bus = await Bus.connect(nats_url, "test-experiment-cli")
    yield bus
    await bus.close()


def test_intervals_are_sound_at_the_edges():
    assert rate_interval(0, 0)[0] != rate_interval(0, 0)[0]  # NaN: nothing to rate
    p, low, high = rate_interval(0, 20)
    assert p == 0 and low == 0 and 0.1 < high < 0.2
    figures = summarize([events_pb2.UsageRecorded(policy_variant="other/x,tier2/cheap", cost_usd=1.0)], "tier2", None)
    assert figures["cheap"]["requests"] == 1 and math.isnan(figures["cheap"]["cost_usd_per_request"][1])


async def test_report_compares_the_variants_and_promote_writes_the_winner(capsys, bus, tmp_path):
    bucket, tenant = unique("policy"), unique("t")
    doc_file = tmp_path / "doc.json"
    doc_file.write_text(json.dumps(experiment_doc()))
    code, _, err = await cli(capsys, "set", "--key", f"tenant.{tenant}", str(doc_file), "--bucket", bucket)
    assert code == 0, err

    await bus.ensure_stream(USAGE)
    # Two thirds in batches (a router with the usage outbox batching), the rest one by one (an older one).
    tasks = BackgroundTasks("test")
    outbox = Outbox(bus, tasks.spawn, name=unique("outbox"), batching=Batching(pack_usage, max_records=16))
    for i in range(60):
        cheap = i % 2 == 1
        event = events_pb2.UsageRecorded(
            request_id=f"{tenant}-{i}",
            tenant_id=tenant,
            policy_variant="tier2/cheap" if cheap else "tier2/control",
            cost_usd=(0.002 if cheap else 0.010) + 0.0001 * (i % 5),
            total_time_ms=(300.0 if cheap else 100.0) + i % 7,
            escalated=cheap and i % 3 == 0,
        )
        event.occurred_at.GetCurrentTime()
        outbox.put(f"llmesh.usage.{tenant}", event, msg_id=f"{tenant}-{i}", batched=i < 40)
    assert await outbox.flush(10.0)
    await tasks.stop()

    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)
    for i in range(40):
        variant = "tier2/cheap" if i % 2 else "tier2/control"
        store.record(ClassificationRecord(f"r{i}", tenant, "", 1.0, "f", (), 0.5, 1, "v", {}, variant))
        store.add_feedback(f"r{i}", tenant, -1 if (i % 2 and i % 4 == 1) else 1, "")
    store.close()

    argv = ["experiment", "report", "tier2", "--tenant", tenant, "--bucket", bucket, "--feedback-db", str(db)]
    code, out, err = await cli(capsys, *argv, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["shares"] == {"cheap": 0.5, "control": 0.5}
    cheap, control = report["variants"]["cheap"], report["variants"]["control"]
    assert cheap["requests"] == control["requests"] == 30
    # Cost per request: the intervals do not overlap; the cheap variant is slower and escalates.
    assert cheap["cost_usd_per_request"][2] < control["cost_usd_per_request"][1]
    assert cheap["total_ms_p50"] > 290 and control["total_ms_p50"] < 110
    assert cheap["escalation_rate"][0] == pytest.approx(10 / 30) and control["escalation_rate"][0] == 0
    assert cheap["rated"] == control["rated"] == 20 and cheap["bad_rating_rate"][0] == pytest.approx(0.5)
    code, table, err = await cli(capsys, *argv)
    assert code == 0 and "| cheap | 50% | 30 |" in table and "bad ratings" in table

    code, out, err = await cli(
        capsys, "experiment", "promote", "tier2", "cheap", "--bucket", bucket, "--reason", "cheaper"
    )
    assert code == 0, err
    kv = await bus.js.key_value(bucket)
    assert json.loads((await kv.get(f"tenant.{tenant}")).value) == {
        "tiers": {"2": "small"},
        "classifier": {"tier_thresholds": [0.4, 0.8]},
    }
    code, _, err = await cli(capsys, "experiment", "promote", "tier2", "cheap", "--bucket", bucket)
    assert code == 1 and "no experiment 'tier2'" in err


async def test_rollback_removes_a_variant_and_the_last_one_ends_the_experiment(capsys, bus):
    bucket, tenant = unique("policy"), unique("t")
    kv = await bus.js.create_key_value(bucket=bucket, history=POLICY_HISTORY)
    await kv.put(f"tenant.{tenant}", json.dumps(experiment_doc()).encode())
    args = ["--bucket", bucket, "--key", f"tenant.{tenant}"]
    code, _, err = await cli(capsys, "experiment", "rollback", "tier2", "nope", *args)
    assert code == 1 and "variants: cheap, control" in err
    code, _, err = await cli(capsys, "experiment", "rollback", "tier2", "cheap", *args)
    assert code == 0, err
    doc = json.loads((await kv.get(f"tenant.{tenant}")).value)
    assert doc["experiments"]["tier2"]["variants"] == {"control": {"share": 0.5, "policy": {}}}
    code, _, err = await cli(capsys, "experiment", "rollback", "tier2", "control", *args)
    assert code == 0, err
    assert json.loads((await kv.get(f"tenant.{tenant}")).value) == {"tiers": {"2": "mid"}}


async def test_validate_refuses_shares_above_one_and_disordered_variant_thresholds(capsys, tmp_path):
    doc = experiment_doc()
    doc["experiments"]["tier2"]["variants"]["cheap"]["share"] = 0.7
    doc["experiments"]["tier2"]["variants"]["cheap"]["policy"]["classifier"]["tier_thresholds"] = [0.9, 0.1]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"global": doc}))
    code, _, err = await cli(capsys, "validate", str(path))
    assert code != 0
    assert "shares add up to 1.2" in err and "variants.cheap.policy.classifier.tier_thresholds" in err
