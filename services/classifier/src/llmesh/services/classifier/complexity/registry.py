"""Keeps the newest complexity model loaded: loads it at start and, called periodically by the app,
looks in the models folder again, swapping to a newer version (or a rewritten current one) without a restart. A version that fails to load
is logged and skipped; the model in use stays."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

from llmesh.kit.logging import get_logger
from llmesh.services.classifier.complexity.model import (
    METADATA_FILE,
    MODEL_FILE,
    ComplexityModel,
    ModelFileError,
    load_model,
    version_folders,
)

log = get_logger("llmesh.classifier.models")


def _stamp(folder: pathlib.Path) -> tuple[str, int, int]:
    return (
        folder.name,
        (folder / MODEL_FILE).stat().st_mtime_ns,
        (folder / METADATA_FILE).stat().st_mtime_ns,
    )


class ModelRegistry:
    def __init__(self, models_dir: pathlib.Path, *, on_change: Callable[[ComplexityModel], None] | None = None):
        self.models_dir = pathlib.Path(models_dir)
        self._on_change = on_change
        self._model: ComplexityModel | None = None
        self._stamp: tuple[str, int, int] | None = None
        self._rejected: set[tuple[str, int, int]] = set()

    @property
    def model(self) -> ComplexityModel:
        if self._model is None:
            raise ModelFileError(f"no complexity model loaded from {self.models_dir}")
        return self._model

    def refresh(self) -> bool:
        """Loads the newest loadable version if it differs from the one in use; True when swapped."""
        for folder in reversed(version_folders(self.models_dir)):
            try:
                stamp = _stamp(folder)
            except OSError:
                continue  # removed while we looked
            if stamp == self._stamp:
                return False
            if stamp in self._rejected:
                continue
            try:
                model = load_model(folder)
            except ModelFileError as exc:
                log.error("model_rejected", version=folder.name, error=str(exc))
                self._rejected.add(stamp)
                continue
            previous = self._model.version if self._model else None
            self._model, self._stamp = model, stamp
            log.info("model_loaded", version=model.version, previous=previous)
            if self._on_change is not None:
                self._on_change(model)
            return True
        return False

    def load_or_fail(self) -> ComplexityModel:
        self.refresh()
        return self.model
