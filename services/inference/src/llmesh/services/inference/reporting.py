"""Load reports: a snapshot of every model at a fixed interval, and one at once whenever a model's
utilization crosses 50, 80 or 95 % (either way). Domain code: `publish` does the sending."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from llmesh.kit.streams import MODEL_LOAD_SUBJECT_PREFIX
from llmesh.services.inference.core import ModelStatus
from llmesh.services.inference.load import band, crossed_percent


def load_subject(region: str, model: str) -> str:
    """llmesh.inference.load.<region>.<model>, the model name made a single subject token."""
    return f"{MODEL_LOAD_SUBJECT_PREFIX}.{region}.{re.sub(r'[^A-Za-z0-9_-]', '_', model)}"


Publish = Callable[[ModelStatus, int], Awaitable[None]]


class LoadReporter:
    def __init__(
        self,
        statuses: Callable[[], list[ModelStatus]],
        status: Callable[[str], ModelStatus],
        publish: Publish,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ):
        self._statuses = statuses
        self._status = status
        self._publish = publish
        self._spawn = spawn
        self._bands: dict[str, int] = {}

    def _crossing(self, status: ModelStatus) -> int:
        new = band(status.utilization)
        old = self._bands.get(status.info.name, 0)
        self._bands[status.info.name] = new
        return crossed_percent(old, new)

    async def report_all(self) -> None:
        """The periodic snapshot of every model."""
        for status in self._statuses():
            await self._publish(status, self._crossing(status))

    def changed(self, model: str) -> None:
        """A generation of `model` began or ended: report at once if a line was crossed."""
        status = self._status(model)
        crossed = self._crossing(status)
        if crossed:
            self._spawn(self._publish(status, crossed))
