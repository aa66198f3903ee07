"""Fixtures of the classifier tests: a models folder holding a copy of the packaged model, and new
versions made from it."""

from __future__ import annotations

import pathlib
import shutil

import pytest
from llmesh.services.classifier.complexity.model import LinearScorer, load_model, save_model, version_folders
from llmesh.services.classifier.settings import PACKAGED_MODELS_DIR

DATA = pathlib.Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def packaged_model_dir() -> pathlib.Path:
    folders = version_folders(PACKAGED_MODELS_DIR)
    assert folders, f"no committed complexity model under {PACKAGED_MODELS_DIR}"
    return folders[-1]


@pytest.fixture
def models_dir(tmp_path, packaged_model_dir) -> pathlib.Path:
    target = tmp_path / "models"
    target.mkdir()
    shutil.copytree(packaged_model_dir, target / packaged_model_dir.name)
    return target


def new_version(
    models_dir: pathlib.Path, source: pathlib.Path, name: str, intercept_shift: float = 0.0, coef_scale: float = 1.0
) -> pathlib.Path:
    """A copy of the model in `source` saved as version `name`, its scores raised by `intercept_shift`
    (`coef_scale` -1 reverses its ranking: a version worse than any other)."""
    model = load_model(source)
    scorer = LinearScorer(
        model.scorer.feature_names,
        model.scorer.mean,
        model.scorer.scale,
        model.scorer.coef * coef_scale,
        model.scorer.intercept + intercept_shift,
        model.scorer.score_map,
    )
    return save_model(models_dir / name, scorer, dict(model.metadata, version=name))
