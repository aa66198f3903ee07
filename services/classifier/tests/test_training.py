"""Training on team-written routing data (tests/data/routing_sample.csv, made by
make_routing_sample.py); the label-noise figures and the full run on the MMLU dev set (as
`llmesh classifier train` does it) need ../shared/data and skip without it."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from llmesh.cli.main import main as llmesh
from llmesh.services.classifier.complexity.model import load_model, version_folders
from llmesh.services.classifier.complexity.trainer import train
from llmesh.services.classifier.complexity.training import (
    TrainConfig,
    build_training_set,
    load_routing_data,
    subject_stats,
    suspect_subjects,
    training_targets,
    unusable_subjects,
)

SAMPLE = pathlib.Path(__file__).resolve().parent / "data" / "routing_sample.csv"
# The sample's subject whose strong labels carry the one-token recording artifact.
NOISY_SUBJECT = "mental_arithmetic"


@pytest.fixture(scope="module")
def dev_data(shared_data):
    return load_routing_data(shared_data / "routing" / "mmlu_dev.csv")


@pytest.fixture(scope="module")
def sample():
    return load_routing_data(SAMPLE)


def test_the_sample_is_what_its_generator_writes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_routing_sample", SAMPLE.parent / "make_routing_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "routing_sample.csv")
    module.main()
    assert (tmp_path / "routing_sample.csv").read_bytes() == SAMPLE.read_bytes()


def test_the_sample_has_clean_subjects_and_one_with_unusable_strong_labels(sample):
    stats = {s.subject: s for s in subject_stats(sample)}
    assert len(stats) == 8 and all(s.n == 50 for s in stats.values())
    assert unusable_subjects(sample) == suspect_subjects(sample) == {NOISY_SUBJECT}
    # Only the strong model solves the multi-step problems: the gain is where the work is.
    assert stats["linear_equations"].label_rate > 2 * stats["world_capitals"].label_rate


def test_label_noise_is_found_where_the_strong_model_fails_what_the_weak_one_solves(dev_data):
    stats = {s.subject: s for s in subject_stats(dev_data)}
    assert stats["high_school_mathematics"].unusable
    assert stats["high_school_mathematics"].strong_accuracy < 0.1
    assert stats["high_school_physics"].suspect and not stats["high_school_physics"].unusable
    assert not stats["high_school_us_history"].suspect
    assert unusable_subjects(dev_data) == {"high_school_mathematics"}
    assert "elementary_mathematics" in suspect_subjects(dev_data)


def test_targets_and_option_free_copies(sample):
    gain = training_targets(sample)
    assert set(np.unique(gain)) <= {-1.0, 0.0, 1.0}
    assert gain.tolist() == (sample.strong_correct.astype(int) - sample.weak_correct.astype(int)).tolist()
    binary = training_targets(sample, "binary")
    assert binary.tolist() == (~sample.weak_correct & sample.strong_correct).astype(float).tolist()
    suspect = {"syllogisms"}
    training = build_training_set(sample, TrainConfig(), suspect=suspect)
    copies = len(sample) - int((sample.subjects == "syllogisms").sum())
    assert len(training.y) == len(sample) + copies
    assert training.original.sum() == len(sample)


@pytest.mark.timeout(60)
def test_training_writes_a_loadable_version_and_a_report(sample, tmp_path):
    result = train(sample, models_dir=tmp_path / "models", report_dir=tmp_path / "report", log=lambda *_: None)
    (folder,) = version_folders(tmp_path / "models")
    model = load_model(folder)
    assert model.version == result.version and result.version.endswith(sample.sha256[:8])
    meta = model.metadata
    assert meta["training_data"]["sha256"] == sample.sha256
    assert meta["unusable_subjects"] == [NOISY_SUBJECT]
    assert meta["word_problem_check"]["problems"] >= 10
    cv = meta["cross_validation"]
    assert 0.0 < cv["all_subjects"]["apgr"] < 1.5 and cv["fold_apgr"]["folds"] == 15
    # Leave-one-family-out beside leave-one-subject-out, the configuration chosen by the former.
    assert 0.0 < cv["family_all"]["apgr"] < 1.5
    families = {r["family"] for r in cv["per_family"]}
    assert families == {"stem_math", "stem_science", "humanities", "social_sciences"}
    chosen = max(cv["config_selection"], key=lambda c: c["family_apgr_all"])
    assert meta["config"] == chosen["config"]
    assert cv["confidence_reliability"]["calibrated"]["bins"]
    assert model.scorer.calibration is not None
    # The training score distribution, the reference of the served scores' drift; the held-out
    # families' scores beside it in the report.
    bins = model.scorer.score_bins
    assert bins is not None and len(bins.shares) == 10 and abs(bins.shares.sum() - 1) < 1e-9
    drift = cv["score_drift"]
    assert drift["psi_held_out_families"] >= 0 and set(drift["per_family_psi"]) == families
    assert (folder / "model.json").stat().st_size < 5_000_000
    report = (tmp_path / "report" / "classifier.md").read_text()
    assert "APGR" in report and NOISY_SUBJECT in report
    assert "unseen task families" in report and "## Confidence" in report and "## Score drift" in report
    assert "## Learning from routing outcomes" in report and "This version:" not in report, "no outcomes given"
    assert (tmp_path / "report" / "classifier_routing_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "report" / "classifier_metrics.json").read_text())["all_subjects"]["n"] == len(sample)


@pytest.mark.timeout(60)
def test_training_is_deterministic_apart_from_the_version(sample, tmp_path):
    a = train(sample, models_dir=tmp_path / "a", report_dir=None, cross_validation=False, log=lambda *_: None)
    b = train(sample, models_dir=tmp_path / "b", report_dir=None, cross_validation=False, log=lambda *_: None)
    text = "How many ways can 5 people sit at a round table?"
    assert load_model(a.model_dir).predict(text) == load_model(b.model_dir).predict(text)


@pytest.mark.timeout(60)
def test_train_command_without_data_fails_clearly(tmp_path, capsys):
    assert llmesh(["classifier", "train", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path)]) == 2
    assert "no training data at" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_training_generalizes_to_unseen_subjects(dev_data, tmp_path):
    result = train(dev_data, models_dir=tmp_path / "models", report_dir=tmp_path / "report", config=TrainConfig())
    cv = result.metadata["cross_validation"]
    assert cv["reliable_subjects"]["apgr"] > cv["length_baseline_all_subjects"]["apgr"] - 0.02
    assert cv["reliable_subjects"]["apgr"] >= 0.6


@pytest.mark.timeout(60)
def test_train_with_feedback_folds_rated_requests_in(sample, tmp_path):
    import csv

    from llmesh.services.classifier.complexity.features import FEATURE_SET, prompt_features
    from llmesh.services.classifier.feedback import ClassificationRecord, FeedbackStore

    data_csv = tmp_path / "sample.csv"
    with open(data_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "subject", "prompt", "weak_correct", "strong_correct"])
        for prompt, subject, w, s in zip(sample.prompts, sample.subjects, sample.weak_correct, sample.strong_correct):
            writer.writerow(["mmlu", subject, prompt, int(w), int(s)])
    db = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(db)
    features = tuple(prompt_features("How many apples are left after 3 days if Tom eats 2 a day from 20?"))
    for i, (tier, rating) in enumerate([(1, -1), (2, 1), (3, -1), (1, 0)]):
        store.record(ClassificationRecord(f"r{i}", "t", "", 1.0, FEATURE_SET, features, 0.2, tier, "v"))
        store.add_feedback(f"r{i}", "t", rating, "")
    store.close()

    out = tmp_path / "models"
    argv = ["classifier", "train", "--data", str(data_csv), "--with-feedback", "--feedback-db", str(db)]
    assert llmesh([*argv, "--out", str(out), "--no-cv"]) == 0
    (folder,) = version_folders(out)
    assert load_model(folder).metadata["feedback"] == {"used": 2, "skipped": 2}


def test_a_fold_without_a_gap_is_counted_and_left_out_of_the_spread():
    from llmesh.services.classifier.complexity.trainer import fold_spread

    assert fold_spread([0.5, float("nan"), 0.7]) == pytest.approx(
        {"folds": 3, "defined": 2, "mean": 0.6, "std": 0.1, "min": 0.5, "max": 0.7}
    )
    empty = fold_spread([float("nan")])
    assert empty["folds"] == 1 and empty["defined"] == 0 and np.isnan(empty["mean"])


@pytest.mark.timeout(60)
def test_family_cross_validation_holds_out_whole_families(sample):
    from llmesh.services.classifier.complexity.families import families
    from llmesh.services.classifier.complexity.features import strip_options
    from llmesh.services.classifier.complexity.training import cross_validate, feature_matrix

    X = feature_matrix(sample.prompts)
    X_stem = feature_matrix(strip_options(p) for p in sample.prompts)
    by_family = cross_validate(
        sample,
        {NOISY_SUBJECT},
        set(),
        TrainConfig(),
        X=X,
        X_stem=X_stem,
        groups=families(sample.subjects),
        spread_repeats=0,
    )
    # Every prompt is scored out of fold, and its complexity_score lies in (0, 1).
    assert np.all((by_family.percentiles > 0) & (by_family.percentiles < 1))
    assert by_family.scores.shape == (len(sample),)


def test_score_drift_compares_training_held_out_families_and_recent_traffic(sample, tmp_path):
    import numpy as np
    from llmesh.services.classifier.complexity.families import families
    from llmesh.services.classifier.complexity.trainer import score_drift
    from llmesh.services.classifier.complexity.training import feature_matrix

    result = train(sample, models_dir=tmp_path / "m", report_dir=None, cross_validation=False, log=lambda *_: None)
    scorer = load_model(result.model_dir).scorer
    X = feature_matrix(sample.prompts)
    scores = np.array([scorer.score_map(float(x)) for x in scorer.raw_score(X)])
    family = families(sample.subjects)
    same = score_drift(scorer, scores, family, X)
    # The training prompts themselves (plus the subject left out of training): stable, below 0.1.
    assert same["psi_recent_traffic"] < 0.1 and same["recent_n"] == len(sample)
    # Recent traffic of the easiest prompts only: far from the training mix.
    easy = X[scores < np.quantile(scores, 0.2)]
    assert score_drift(scorer, scores, family, easy)["psi_recent_traffic"] > 0.5
