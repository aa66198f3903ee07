"""Feedback capture in SQLite: every classified request that carries a request_id is recorded with
its features, score, tier and model version (not its text: the features are what retraining
needs, and the prompt itself stays out of this store); a later Feedback(request_id, rating,
comment) is stored against that record, and so is a routing outcome from the router (ADR 0027): the
quality check's verdict on the tier-1 answer, a label of its own kind (source "escalation",
"quality_fail" or "quality_pass"; a user's rating is source "user" and wins where both exist).

Records are buffered and written in batches, so a Classify call never waits on the disk; a
Feedback call writes the buffer first, so it always finds its request.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from llmesh.kit.errors import NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS classifications (
    request_id    TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    use_case      TEXT NOT NULL,
    created_at    REAL NOT NULL,
    feature_set   TEXT NOT NULL,
    features      TEXT NOT NULL,
    score         REAL NOT NULL,
    tier          INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    scores        TEXT NOT NULL DEFAULT '{}',
    policy_variant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS classifications_created ON classifications (created_at);
CREATE TABLE IF NOT EXISTS feedback (
    request_id  TEXT PRIMARY KEY REFERENCES classifications (request_id),
    tenant_id   TEXT NOT NULL,
    rating      INTEGER NOT NULL CHECK (rating IN (-1, 0, 1)),
    comment     TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    request_id    TEXT PRIMARY KEY REFERENCES classifications (request_id),
    tenant_id     TEXT NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('escalation', 'quality_fail', 'quality_pass')),
    quality_score REAL NOT NULL,
    weight        REAL NOT NULL CHECK (weight > 0),
    created_at    REAL NOT NULL
);
"""

#: What each kind of routing outcome says: would a strong call pay off (1) or not (0)?
OUTCOME_LABELS = {"escalation": 1, "quality_fail": 1, "quality_pass": 0}


@dataclass(frozen=True)
class Outcome:
    """The router's quality-check verdict on a tier-1 answer, as a label for its request."""

    request_id: str
    tenant_id: str
    source: str  # a key of OUTCOME_LABELS
    quality_score: float
    # Requests this label stands for: 1 / the share of such outcomes the router reports.
    weight: float = 1.0

    def __post_init__(self):
        if self.source not in OUTCOME_LABELS:
            raise ValueError(f"unknown outcome source {self.source!r}")
        if not self.weight > 0:
            raise ValueError(f"outcome weight must be positive (got {self.weight})")

    @property
    def pays_off(self) -> int:
        return OUTCOME_LABELS[self.source]


@dataclass(frozen=True)
class OutcomeRow:
    """A request labelled by a routing outcome, as training reads it."""

    request_id: str
    feature_set: str
    features: tuple[float, ...]
    source: str
    pays_off: int
    weight: float
    model_version: str


@dataclass(frozen=True)
class ClassificationRecord:
    request_id: str
    tenant_id: str
    use_case: str
    created_at: float
    feature_set: str
    features: tuple[float, ...]
    score: float
    tier: int
    model_version: str
    # During a rollout, the score of every version that scored the request (served one included).
    scores: dict[str, float] = field(default_factory=dict)
    # The policy experiment variant(s) the request ran under (llmesh.kit.experiments labels).
    policy_variant: str = ""


@dataclass(frozen=True)
class LabelledRow:
    """A rated request as the rollout evaluator reads it: each version's score, and whether a
    strong call would have paid off (1) or not (0)."""

    request_id: str
    scores: dict[str, float]
    pays_off: int


def label(tier: int, rating: int) -> int | None:
    """What a rating says about the routing decision: a bad answer from a cheap tier (1 or 2) says a
    strong call would have paid off (1), a good one that it would not (0); neutral ratings and tier-3
    answers say nothing about the weak model (None)."""
    if rating == 0 or tier >= 3:
        return None
    return 1 if rating < 0 else 0


@dataclass(frozen=True)
class FeedbackRow:
    """A rated request as training reads it."""

    request_id: str
    feature_set: str
    features: tuple[float, ...]
    tier: int
    rating: int
    model_version: str


class FeedbackStore:
    def __init__(self, path: str | pathlib.Path, *, clock: Callable[[], float] = time.time, max_buffer: int = 10_000):
        self.path = str(path)
        if self.path != ":memory:":
            pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL sync survives a process crash; a power loss may drop the last batch.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(classifications)")}
        # Columns added since the first release: a store written before them gains them.
        for column, default in (("scores", "'{}'"), ("policy_variant", "''")):
            if column not in columns:
                self._db.execute(f"ALTER TABLE classifications ADD COLUMN {column} TEXT NOT NULL DEFAULT {default}")
        self._clock = clock
        self._buffer: list[ClassificationRecord] = []
        self._max_buffer = max_buffer

    def record(self, record: ClassificationRecord) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self._max_buffer:
            self.flush()

    def flush(self) -> int:
        if not self._buffer:
            return 0
        batch, self._buffer = self._buffer, []
        rows = [
            (
                r.request_id,
                r.tenant_id,
                r.use_case,
                r.created_at,
                r.feature_set,
                json.dumps(r.features),
                r.score,
                r.tier,
                r.model_version,
                json.dumps(r.scores),
                r.policy_variant,
            )
            for r in batch
        ]
        try:
            with self._transaction():
                # A repeated request_id (a client retry) keeps the latest classification.
                self._db.executemany(
                    "INSERT OR REPLACE INTO classifications VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
        except sqlite3.Error:
            self._buffer[:0] = batch[-self._max_buffer :]  # kept for the next try, bounded
            raise
        return len(rows)

    def add_feedback(self, request_id: str, tenant_id: str, rating: int, comment: str) -> ClassificationRecord:
        """Stores (or replaces) the rating of a classified request; NotFound when there is none
        (or it belongs to another tenant, which the caller is not told)."""
        self.flush()
        row = self._db.execute(
            "SELECT request_id, tenant_id, use_case, created_at, feature_set, features, score, tier, model_version "
            "FROM classifications WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None or (tenant_id and row[1] != tenant_id):
            raise NotFound(f"no classification recorded for request_id {request_id!r}", field="request_id")
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?, ?)",
                (request_id, row[1], rating, comment, self._clock()),
            )
        return ClassificationRecord(
            row[0], row[1], row[2], row[3], row[4], tuple(json.loads(row[5])), row[6], row[7], row[8]
        )

    def add_outcome(self, outcome: Outcome) -> bool:
        """Stores (or replaces) the routing outcome of a classified request. False when this store
        has no classification of it (classified elsewhere, pruned, or another tenant's id)."""
        self.flush()
        row = self._db.execute(
            "SELECT tenant_id FROM classifications WHERE request_id = ?", (outcome.request_id,)
        ).fetchone()
        if row is None or row[0] != outcome.tenant_id:
            return False
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?, ?)",
                (
                    outcome.request_id,
                    outcome.tenant_id,
                    outcome.source,
                    outcome.quality_score,
                    outcome.weight,
                    self._clock(),
                ),
            )
        return True

    def outcome(self, request_id: str) -> Outcome | None:
        row = self._db.execute(
            "SELECT request_id, tenant_id, source, quality_score, weight FROM outcomes WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        return Outcome(*row) if row else None

    def outcome_counts(self) -> dict[str, int]:
        """Stored routing outcomes by source."""
        return dict(self._db.execute("SELECT source, COUNT(*) FROM outcomes GROUP BY source").fetchall())

    def outcome_labelled(self) -> Iterator[OutcomeRow]:
        """Requests labelled by a routing outcome and not rated by a user (the rating wins)."""
        self.flush()
        cursor = self._db.execute(
            "SELECT c.request_id, c.feature_set, c.features, o.source, o.weight, c.model_version "
            "FROM outcomes o JOIN classifications c USING (request_id) "
            "WHERE o.request_id NOT IN (SELECT request_id FROM feedback) ORDER BY o.created_at"
        )
        for request_id, feature_set, features, source, weight, version in cursor:
            yield OutcomeRow(
                request_id, feature_set, tuple(json.loads(features)), source, OUTCOME_LABELS[source], weight, version
            )

    def feedback(self, request_id: str) -> tuple[int, str] | None:
        row = self._db.execute("SELECT rating, comment FROM feedback WHERE request_id = ?", (request_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def rated(self) -> Iterator[FeedbackRow]:
        self.flush()
        cursor = self._db.execute(
            "SELECT c.request_id, c.feature_set, c.features, c.tier, f.rating, c.model_version "
            "FROM feedback f JOIN classifications c USING (request_id) ORDER BY f.created_at"
        )
        for request_id, feature_set, features, tier, rating, version in cursor:
            yield FeedbackRow(request_id, feature_set, tuple(json.loads(features)), tier, rating, version)

    def labelled(self, versions: tuple[str, ...], *, since: float = 0.0) -> list[LabelledRow]:
        """Labelled requests classified at or after `since` that every one of `versions` scored:
        rated ones with their rating's label (rows whose rating says nothing about the decision
        are left out), then those the router's routing outcomes labelled and no user rated."""
        self.flush()
        cursor = self._db.execute(
            "SELECT c.request_id, c.scores, c.tier, f.rating FROM feedback f JOIN classifications c USING (request_id) "
            "WHERE c.created_at >= ? ORDER BY c.created_at",
            (since,),
        )
        rows = []
        for request_id, scores_json, tier, rating in cursor:
            scores = json.loads(scores_json)
            pays_off = label(tier, rating)
            if pays_off is not None and all(v in scores for v in versions):
                rows.append(LabelledRow(request_id, scores, pays_off))
        cursor = self._db.execute(
            "SELECT c.request_id, c.scores, o.source FROM outcomes o JOIN classifications c USING (request_id) "
            "WHERE c.created_at >= ? AND o.request_id NOT IN (SELECT request_id FROM feedback) "
            "ORDER BY c.created_at",
            (since,),
        )
        for request_id, scores_json, source in cursor:
            scores = json.loads(scores_json)
            if all(v in scores for v in versions):
                rows.append(LabelledRow(request_id, scores, OUTCOME_LABELS[source]))
        return rows

    def ratings_by_variant(self, experiment: str) -> dict[str, list[int]]:
        """The ratings of requests that ran under a variant of `experiment`, by variant name
        ("" for the requests of the same tenants outside every variant is not kept: the store only
        knows a request's variant)."""
        self.flush()
        cursor = self._db.execute(
            "SELECT c.policy_variant, f.rating FROM feedback f JOIN classifications c USING (request_id) "
            "WHERE c.policy_variant LIKE ?",
            (f"%{experiment}/%",),
        )
        out: dict[str, list[int]] = {}
        for labels, rating in cursor:
            for label in labels.split(","):
                name, _, variant = label.partition("/")
                if name == experiment:
                    out.setdefault(variant, []).append(rating)
        return out

    def recent_features(self, feature_set: str, *, limit: int = 5000) -> list[tuple[float, ...]]:
        """Feature rows of the latest `limit` classified requests of one feature set (drift of recent
        traffic under a newly trained model)."""
        self.flush()
        cursor = self._db.execute(
            "SELECT features FROM classifications WHERE feature_set = ? ORDER BY created_at DESC LIMIT ?",
            (feature_set, limit),
        )
        return [tuple(json.loads(features)) for (features,) in cursor]

    def prune(self, older_than_s: float) -> int:
        """Drops unlabelled classifications older than the retention; those with a rating or a
        routing outcome are kept for training."""
        self.flush()
        cutoff = self._clock() - older_than_s
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM classifications WHERE created_at < ? "
                "AND request_id NOT IN (SELECT request_id FROM feedback) "
                "AND request_id NOT IN (SELECT request_id FROM outcomes)",
                (cutoff,),
            )
        return cursor.rowcount

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, exc, tb):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()
