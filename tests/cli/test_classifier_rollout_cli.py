"""`llmesh classifier rollout start|status|promote|rollback` against the session's real nats-server,
on a bucket of its own, with real model files; the running classifier reads the same document
(services/classifier/tests/test_rollout.py)."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from llmesh.cli.main import main
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.policy import POLICY_HISTORY
from llmesh.kit.testing import assert_eventually, unique
from llmesh.services.classifier.complexity.model import LinearScorer, load_model, save_model, version_folders
from llmesh.services.classifier.convert import ROLLOUT_SUBJECT
from llmesh.services.classifier.feedback import ClassificationRecord, FeedbackStore
from llmesh.services.classifier.settings import PACKAGED_MODELS_DIR

pytestmark = pytest.mark.timeout(60)

NEW = "29990101T000000Z-candidate"


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["classifier", "rollout", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def models(tmp_path):
    packaged = version_folders(PACKAGED_MODELS_DIR)[-1]
    shutil.copytree(packaged, tmp_path / "models" / packaged.name)
    model = load_model(packaged)
    s = model.scorer
    scorer = LinearScorer(s.feature_names, s.mean, s.scale, s.coef, s.intercept + 0.2, s.score_map)
    save_model(tmp_path / "models" / NEW, scorer, dict(model.metadata, version=NEW))
    return tmp_path / "models", packaged.name


@pytest.fixture
async def bus(nats_url, monkeypatch):
    monkeypatch.setenv("LLMESH_NATS_URL", nats_url)
    bus = await Bus.connect(nats_url, "test-rollout-cli")
    yield bus
    await bus.close()


async def global_doc(bus, bucket) -> dict:
    kv = await bus.js.key_value(bucket)
    return json.loads((await kv.get("global")).value)


async def test_start_status_and_promote_write_the_global_document(capsys, models, bus, tmp_path):
    folder, old = models
    bucket = unique("policy")
    events = []

    async def on_event(msg):
        events.append(events_pb2.ClassifierRolloutChanged.FromString(msg.data))

    await bus.nc.subscribe(ROLLOUT_SUBJECT, cb=on_event)
    common = ["--bucket", bucket, "--models", str(folder)]
    code, _, err = await cli(capsys, "promote", *common)
    assert code == 1 and "no rollout in progress" in err
    code, _, err = await cli(capsys, "start", "19990101T000000Z-missing", *common)
    assert code == 2 and "no version" in err

    code, out, err = await cli(capsys, "start", NEW, "--share", "0.2", *common)
    assert code == 0, err
    rollout = (await global_doc(bus, bucket))["classifier"]["rollout"]
    assert rollout["current"] == old and rollout["candidate"] == NEW and rollout["share"] == 0.2

    # Rated requests that both versions scored: status compares them.
    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)
    for i in range(20):
        score = i / 20
        store.record(
            ClassificationRecord(
                f"r{i}", "t", "", rollout["started_at"] + 1, "f", (), score, 1, old, {old: score, NEW: score}
            )
        )
        store.add_feedback(f"r{i}", "t", -1 if score > 0.5 else 1, "")
    store.close()
    code, out, err = await cli(capsys, "status", *common, "--feedback-db", str(db))
    assert code == 0, err
    status = json.loads(out)
    assert status["candidate"] == NEW and status["current"] == old and status["labelled"] == 20
    assert status["current_apgr"] == status["candidate_apgr"]

    code, out, err = await cli(capsys, "promote", *common, "--reason", "held for a week")
    assert code == 0, err
    assert (await global_doc(bus, bucket))["classifier"] == {"rollout": {"current": NEW}}
    await assert_eventually(lambda: [e.decision for e in events] == ["started", "promoted"])


async def test_rollback_pins_the_current_version_and_keeps_the_rest_of_the_document(capsys, models, bus):
    folder, old = models
    bucket = unique("policy")
    kv = await bus.js.create_key_value(bucket=bucket, history=POLICY_HISTORY)
    doc = {"tiers": {"1": "m"}, "classifier": {"tier_thresholds": [0.2, 0.8], "rollout": {"candidate": NEW}}}
    await kv.put("global", json.dumps(doc).encode())
    code, out, err = await cli(capsys, "rollback", "--bucket", bucket, "--models", str(folder))
    assert code == 0, err
    assert await global_doc(bus, bucket) == {
        "tiers": {"1": "m"},
        "classifier": {"tier_thresholds": [0.2, 0.8], "rollout": {"current": old}},
    }
