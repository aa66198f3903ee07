"""Classifier service configuration from the environment."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import socket

from llmesh.kit.config import non_negative, parses, port_check, positive, setting
from llmesh.kit.defaults import DEFAULT_PORTS
from llmesh.kit.forecast import ForecastSettings
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.classifier.tiers import TierThresholds

# The versions committed with the code; training writes new ones here unless told otherwise.
PACKAGED_MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"


def _region_check(value: str) -> str | None:
    return (
        None
        if len(value) == 2 and value.isalpha() and value.isupper()
        else "must be a two-letter ISO region code, e.g. US"
    )


def _share_check(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be a share in [0, 1]"


@dataclasses.dataclass(frozen=True)
class ClassifierSettings(ForecastSettings):
    port: int = setting("LLMESH_PORT", DEFAULT_PORTS["classifier"], "gRPC port (0 picks a free one)", port_check)
    model_dir: str = setting(
        "LLMESH_CLASSIFIER_MODEL_DIR",
        str(PACKAGED_MODELS_DIR),
        "folder of complexity model versions; the newest is loaded and a newer one is picked up while running",
    )
    model_poll_s: float = setting(
        "LLMESH_CLASSIFIER_MODEL_POLL_S", 2.0, "seconds between checks of the model folder for a new version", positive
    )
    tier_thresholds: str = setting(
        "LLMESH_CLASSIFIER_TIER_THRESHOLDS",
        "0.3,0.7",
        "default score thresholds low,high (tier 1 below low, tier 3 above high); the policy overrides them",
        parses(TierThresholds.parse),
    )
    default_sensitivity: str = setting(
        "LLMESH_CLASSIFIER_DEFAULT_SENSITIVITY",
        "internal",
        "level of a request in which nothing sensitive was found (docs/adr/0006-sensitivity-levels.md)",
        parses(Sensitivity.parse),
    )
    phone_region: str = setting(
        "LLMESH_CLASSIFIER_PHONE_REGION",
        "US",
        "region assumed for phone numbers written without a country code",
        _region_check,
    )
    feedback_db: str = setting(
        "LLMESH_CLASSIFIER_FEEDBACK_DB",
        "",
        "SQLite file of classifications and feedback (empty: $LLMESH_HOME/classifier/feedback.sqlite3)",
    )
    feedback_flush_s: float = setting(
        "LLMESH_CLASSIFIER_FEEDBACK_FLUSH_S", 0.5, "seconds between batched writes of classification records", positive
    )
    feedback_retention_days: float = setting(
        "LLMESH_CLASSIFIER_FEEDBACK_RETENTION_DAYS",
        30.0,
        "days an unrated classification record is kept for a late Feedback (0: forever)",
        non_negative,
    )
    replica_id: str = setting(
        "LLMESH_CLASSIFIER_REPLICA_ID",
        "",
        "names this replica's durable consumer of the router's routing outcomes (labels, ADR 0027), "
        "`classifier-<id>`; distinct per replica, since each keeps its own feedback store (empty: the hostname)",
    )
    policy_bucket: str = setting(
        "LLMESH_CLASSIFIER_POLICY_BUCKET", "llmesh-policy", "NATS KV bucket of the policy (the router's is the same)"
    )
    rollout_share: float = setting(
        "LLMESH_CLASSIFIER_ROLLOUT_SHARE",
        0.1,
        "share of requests a newly found model version serves at first (its rollout; the policy's "
        "classifier.rollout overrides); 0: a new version serves everything at once",
        _share_check,
    )
    rollout_eval_s: float = setting(
        "LLMESH_CLASSIFIER_ROLLOUT_EVAL_S",
        60.0,
        "seconds between evaluations of a rollout on recent feedback",
        positive,
    )
    rollout_min_labels: int = setting(
        "LLMESH_CLASSIFIER_ROLLOUT_MIN_LABELS",
        30,
        "labelled requests (rated answers of tier 1 or 2, routing outcomes of tier 1) before a rollout may be rolled back",
        positive,
    )
    rollout_promote_after: int = setting(
        "LLMESH_CLASSIFIER_ROLLOUT_PROMOTE_AFTER",
        200,
        "labelled requests after which a candidate that holds is promoted to serve everything",
        positive,
    )
    rollout_tolerance: float = setting(
        "LLMESH_CLASSIFIER_ROLLOUT_TOLERANCE",
        0.02,
        "APGR a candidate may lose (low end of the 90% interval of the difference) and still be promoted",
        non_negative,
    )
    drift_window: int = setting(
        "LLMESH_CLASSIFIER_DRIFT_WINDOW",
        5000,
        "recent scores per model version the score drift is measured on",
        positive,
    )
    drift_min_samples: int = setting(
        "LLMESH_CLASSIFIER_DRIFT_MIN_SAMPLES", 200, "scores a version needs before its drift is exported", positive
    )
    drift_eval_s: float = setting(
        "LLMESH_CLASSIFIER_DRIFT_EVAL_S", 30.0, "seconds between updates of llmesh_classifier_score_drift_psi", positive
    )

    @property
    def outcome_consumer(self) -> str:
        """The durable consumer name of this replica (resolved late: a documented default must not
        depend on the machine that renders the docs)."""
        return "classifier-" + re.sub(r"[^A-Za-z0-9_-]", "_", self.replica_id or socket.gethostname())[:200]
