"""The model file format, score monotonicity and the hot-swapping registry."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from llmesh.services.classifier.complexity.features import FEATURE_NAMES
from llmesh.services.classifier.complexity.model import (
    METADATA_FILE,
    MODEL_FILE,
    ModelFileError,
    ScoreMap,
    load_model,
    save_model,
)
from llmesh.services.classifier.complexity.registry import ModelRegistry

from services.classifier.tests.conftest import new_version


def test_score_map_is_strictly_increasing_everywhere_and_in_unit_interval():
    rng = np.random.default_rng(0)
    score_map = ScoreMap.fit(rng.normal(size=5000))
    raw = np.linspace(-50, 50, 20001)
    scores = np.array([score_map(x) for x in raw])
    assert np.all(np.diff(scores) > 0)
    assert scores.min() > 0 and scores.max() < 1
    # The median training output lands in the middle: the score is a share of training prompts.
    assert score_map(0.0) == pytest.approx(0.5, abs=0.02)


def test_score_is_monotone_in_the_models_estimate(packaged_model_dir):
    model = load_model(packaged_model_dir)
    prompts = [
        "Who wrote Hamlet?",
        "What is 2+2?",
        "A farmer has 17 sheep and buys 3 times as many goats. Each goat costs $45. How much did he spend?",
        "Statement 1 | Every group of order 4 is cyclic. Statement 2 | Z_6 has a subgroup of order 4.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer:",
    ]
    predictions = sorted((model.predict(p) for p in prompts), key=lambda p: p.expected_gain)
    scores = [p.score for p in predictions]
    assert scores == sorted(scores)
    assert all(0 < s < 1 for s in scores)


def test_save_and_load_round_trip(tmp_path, packaged_model_dir):
    model = load_model(packaged_model_dir)
    metadata = dict(model.metadata, version="29990101T000000Z-test")
    folder = save_model(tmp_path / "29990101T000000Z-test", model.scorer, metadata)
    again = load_model(folder)
    text = "Explain why the sky is blue."
    assert again.predict(text) == model.predict(text)
    assert again.version == "29990101T000000Z-test"
    assert not list(tmp_path.glob(".*"))  # no staging leftovers


@pytest.mark.parametrize(
    "corrupt, needle",
    [
        (lambda d: d.update(format="pickle"), "unknown model format"),
        (lambda d: d.update(feature_names=list(FEATURE_NAMES)[:-1]), "trained on features"),
        (lambda d: d["coef"].__setitem__(0, float("nan")), "finite"),
        (lambda d: d.update(scale=[0.0] * len(FEATURE_NAMES)), "positive"),
        (lambda d: d["score_map"]["raw"].reverse(), "strictly increasing"),
        (lambda d: d.pop("intercept"), "malformed"),
    ],
)
def test_malformed_model_files_are_rejected(tmp_path, packaged_model_dir, corrupt, needle):
    folder = tmp_path / packaged_model_dir.name
    shutil.copytree(packaged_model_dir, folder)
    data = json.loads((folder / MODEL_FILE).read_text())
    corrupt(data)
    (folder / MODEL_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=needle):
        load_model(folder)


def test_registry_swaps_to_a_newer_version_and_skips_a_broken_one(models_dir, packaged_model_dir):
    seen = []
    registry = ModelRegistry(models_dir, on_change=lambda m: seen.append(m.version))
    assert registry.load_or_fail().version == packaged_model_dir.name
    assert registry.refresh() is False

    newer = new_version(models_dir, packaged_model_dir, "29990101T000000Z-newer", intercept_shift=1.0)
    assert registry.refresh() is True
    assert registry.model.version == newer.name

    # A newer but broken version is logged and skipped: the current model stays in use.
    broken = models_dir / "29990202T000000Z-broken"
    broken.mkdir()
    (broken / MODEL_FILE).write_text("{not json")
    (broken / METADATA_FILE).write_text("{}")
    assert registry.refresh() is False
    assert registry.model.version == newer.name
    assert seen == [packaged_model_dir.name, newer.name]


def test_registry_without_models_fails_clearly(tmp_path):
    with pytest.raises(ModelFileError, match="no complexity model"):
        ModelRegistry(tmp_path).load_or_fail()


def test_calibration_is_monotone_round_trips_and_says_how_often_the_decision_is_right():
    from llmesh.services.classifier.complexity.model import Calibration

    rng = np.random.default_rng(1)
    scores = rng.uniform(size=4000)
    pays_off = rng.uniform(size=4000) < 0.1 + 0.5 * scores
    calibration = Calibration.fit(scores, pays_off)
    grid = np.linspace(0, 1, 101)
    p = np.array([calibration(x) for x in grid])
    assert np.all(np.diff(p) >= 0) and 0 <= p.min() and p.max() <= 1
    assert calibration(0.05) == pytest.approx(0.125, abs=0.08) and calibration(0.95) == pytest.approx(0.575, abs=0.08)
    assert calibration.confidence(0.9, strong=True) == pytest.approx(calibration(0.9))
    assert calibration.confidence(0.1, strong=False) == pytest.approx(1 - calibration(0.1))
    again = Calibration.from_json(calibration.to_json())
    assert [again(x) for x in grid] == p.tolist()
    with pytest.raises(ModelFileError):
        Calibration.from_json({"scores": [0.0, 0.5], "probability": [0.6, 0.2]})


def test_packaged_model_has_a_calibrated_confidence(packaged_model_dir):
    model = load_model(packaged_model_dir)
    assert model.scorer.calibration is not None
    easy, hard = (
        model.predict("Who wrote Hamlet?"),
        model.predict(
            "A farmer has 17 sheep and buys 3 times as many goats. Each goat costs $45. How much did he spend?"
        ),
    )
    assert 0.0 <= model.confidence(easy.score, 1) <= 1.0
    assert model.confidence(hard.score, 3) == pytest.approx(1.0 - model.confidence(hard.score, 1))
