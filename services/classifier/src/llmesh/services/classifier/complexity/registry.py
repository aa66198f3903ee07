"""Keeps the complexity model versions loaded: loads them at start and, called periodically by the
app, looks in the models folder again, picking up a new version (or a rewritten one) without a
restart. A version that fails to load is logged and skipped; the models in use stay.

`model` is the newest loadable version (what serves when no rollout says otherwise); `get(version)`
any of the newest `keep` versions, so a rollout can serve the current and the candidate side by
side."""

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
    def __init__(
        self,
        models_dir: pathlib.Path,
        *,
        on_change: Callable[[ComplexityModel], None] | None = None,
        keep: int = 5,
    ):
        self.models_dir = pathlib.Path(models_dir)
        self._on_change = on_change
        self._keep = keep
        self._model: ComplexityModel | None = None
        self._loaded: dict[str, tuple[tuple[str, int, int], ComplexityModel]] = {}
        self._rejected: set[tuple[str, int, int]] = set()

    @property
    def model(self) -> ComplexityModel:
        """The newest loadable version."""
        if self._model is None:
            raise ModelFileError(f"no complexity model loaded from {self.models_dir}")
        return self._model

    def get(self, version: str) -> ComplexityModel | None:
        entry = self._loaded.get(version)
        return entry[1] if entry else None

    def versions(self) -> list[str]:
        """Loaded versions, oldest first."""
        return sorted(self._loaded)

    def refresh(self) -> bool:
        """Loads new or rewritten versions among the newest `keep`; True when the newest changed."""
        loaded: dict[str, tuple[tuple[str, int, int], ComplexityModel]] = {}
        for folder in reversed(version_folders(self.models_dir)):
            if len(loaded) >= self._keep:
                break
            try:
                stamp = _stamp(folder)
            except OSError:
                continue  # removed while we looked
            known = self._loaded.get(folder.name)
            if known is not None and known[0] == stamp:
                loaded[folder.name] = known
                continue
            if stamp in self._rejected:
                continue
            try:
                model = load_model(folder)
            except ModelFileError as exc:
                log.error("model_rejected", version=folder.name, error=str(exc))
                self._rejected.add(stamp)
                continue
            loaded[folder.name] = (stamp, model)
        if not loaded:
            return False
        previous = self._model
        self._loaded = loaded
        newest = loaded[max(loaded)][1]
        if previous is not None and newest is previous:
            return False
        self._model = newest
        log.info("model_loaded", version=newest.version, previous=previous.version if previous else None)
        if self._on_change is not None:
            self._on_change(newest)
        return True

    def load_or_fail(self) -> ComplexityModel:
        self.refresh()
        return self.model
