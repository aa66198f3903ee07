"""The feedback store (SQLite) and how training reads it."""

from __future__ import annotations

import pytest
from llmesh.kit.errors import NotFound
from llmesh.services.classifier.complexity.features import FEATURE_NAMES, FEATURE_SET
from llmesh.services.classifier.complexity.training import feedback_examples
from llmesh.services.classifier.feedback import ClassificationRecord, FeedbackRow, FeedbackStore


def record(request_id: str, tenant: str = "t1", tier: int = 1, created_at: float = 1000.0) -> ClassificationRecord:
    return ClassificationRecord(
        request_id,
        tenant,
        "",
        created_at,
        FEATURE_SET,
        tuple(float(i) for i in range(len(FEATURE_NAMES))),
        0.2,
        tier,
        "v1",
    )


def test_feedback_is_stored_with_the_features_and_tier(tmp_path):
    path = tmp_path / "fb.sqlite3"
    store = FeedbackStore(path, clock=lambda: 2000.0)
    store.record(record("r1", tier=2))
    rec = store.add_feedback("r1", "t1", -1, "wrong answer")
    assert rec.tier == 2 and rec.features[3] == 3.0
    store.add_feedback("r1", "", 1, "on second thought fine")  # replaces the earlier rating
    store.close()

    reopened = FeedbackStore(path)
    assert reopened.feedback("r1") == (1, "on second thought fine")
    (row,) = list(reopened.rated())
    assert row.tier == 2 and row.rating == 1 and row.model_version == "v1"
    reopened.close()


def test_unknown_or_foreign_request_is_not_found(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    store.record(record("r1", tenant="owner"))
    with pytest.raises(NotFound, match="no classification"):
        store.add_feedback("nope", "", 1, "")
    with pytest.raises(NotFound):
        store.add_feedback("r1", "someone-else", 1, "")
    store.close()


def test_prune_keeps_rated_records(tmp_path):
    now = [10_000.0]
    store = FeedbackStore(tmp_path / "fb.sqlite3", clock=lambda: now[0])
    store.record(record("old-unrated", created_at=100.0))
    store.record(record("old-rated", created_at=100.0))
    store.record(record("new", created_at=9_999.0))
    store.add_feedback("old-rated", "t1", -1, "")
    assert store.prune(older_than_s=1000.0) == 1
    with pytest.raises(NotFound):
        store.add_feedback("old-unrated", "t1", 1, "")
    store.add_feedback("new", "t1", 1, "")
    store.close()


def test_training_reads_bad_cheap_answers_as_needing_the_strong_model():
    features = tuple(0.0 for _ in FEATURE_NAMES)
    rows = [
        FeedbackRow("a", FEATURE_SET, features, 1, -1, "v"),  # cheap and bad: needed strong
        FeedbackRow("b", FEATURE_SET, features, 2, 1, "v"),  # cheap and good: did not
        FeedbackRow("c", FEATURE_SET, features, 3, -1, "v"),  # strong tier: says nothing of the weak model
        FeedbackRow("d", FEATURE_SET, features, 1, 0, "v"),  # neutral
        FeedbackRow("e", "older-features/0", features, 1, -1, "v"),  # other feature definitions
    ]
    X, y, skipped = feedback_examples(rows)
    assert y.tolist() == [1, 0]
    assert X.shape == (2, len(FEATURE_NAMES))
    assert skipped == 3


def test_a_store_written_before_rollouts_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE classifications (request_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, use_case TEXT NOT NULL, "
        "created_at REAL NOT NULL, feature_set TEXT NOT NULL, features TEXT NOT NULL, score REAL NOT NULL, "
        "tier INTEGER NOT NULL, model_version TEXT NOT NULL);"
        "INSERT INTO classifications VALUES ('old', 't1', '', 1.0, 'f', '[]', 0.4, 1, 'v0');"
    )
    db.commit()
    db.close()
    store = FeedbackStore(path)
    try:
        store.add_feedback("old", "t1", -1, "")
        # The old row has no per-version scores: a rollout cannot compare on it.
        assert store.labelled(("v0",)) == []
        store.record(ClassificationRecord("new", "t1", "", 2.0, "f", (), 0.4, 1, "v0", {"v0": 0.4, "v1": 0.6}, "e/a"))
        store.add_feedback("new", "t1", 1, "")
        (row,) = store.labelled(("v0", "v1"))
        assert row.request_id == "new" and row.pays_off == 0 and row.scores == {"v0": 0.4, "v1": 0.6}
        assert store.ratings_by_variant("e") == {"a": [1]}
    finally:
        store.close()
