"""Fixtures of the classifier tests: a models folder holding a copy of the packaged model."""

from __future__ import annotations

import pathlib
import shutil

import pytest
from llmesh.services.classifier.complexity.model import version_folders
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
