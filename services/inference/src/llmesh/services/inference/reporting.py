"""Load reports: a snapshot of every model at a fixed interval, and one at once whenever a model's
utilization crosses 50, 80 or 95 % (either way). Domain code: `publish` does the sending."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from llmesh.kit.streams import MODEL_LOAD_SUBJECT_PREFIX
from llmesh.services.inference.core import ModelStatus
from llmesh.services.inference.load import LatencyStats, band, crossed_percent


def load_subject(region: str, model: str) -> str:
    """llmesh.inference.load.<region>.<model>, the model name made a single subject token."""
    return f"{MODEL_LOAD_SUBJECT_PREFIX}.{region}.{re.sub(r'[^A-Za-z0-9_-]', '_', model)}"


Publish = Callable[[ModelStatus, int], Awaitable[None]]


class LoadReporter:
    def __init__(
        self,
        statuses: Callable[[], list[ModelStatus]],
        status: Callable[..., ModelStatus],
        utilization: Callable[[str], float],
        publish: Publish,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
        latency: Callable[[str], LatencyStats],
    ):
        """`status(model, latency=False)`: a model's load without its percentiles; `latency(model)`:
        the percentiles."""
        self._statuses = statuses
        self._status = status
        self._latency = latency
        self._utilization = utilization
        self._publish = publish
        self._spawn = spawn
        self._bands: dict[str, int] = {}

    def _crossing(self, model: str, utilization: float) -> int:
        new = band(utilization)
        old = self._bands.get(model, 0)
        self._bands[model] = new
        return crossed_percent(old, new)

    async def report_all(self) -> None:
        """The periodic snapshot of every model."""
        for status in self._statuses():
            await self._publish(status, self._crossing(status.info.name, status.utilization))

    def changed(self, model: str) -> None:
        """The load of `model` changed (a slot taken or freed): report at once if a line was
        crossed. Called on every change, so the band compared against is never stale.

        Called on a generation's path, before its backend call: only the load counts are taken
        here; the latency percentiles, the event and its sending are left to a task that lets
        the generation's own tasks (its request to the backend) run first."""
        crossed = self._crossing(model, self._utilization(model))
        if crossed:
            self._spawn(self._report_crossing(self._status(model, latency=False), crossed))

    async def _report_crossing(self, status: ModelStatus, crossed: int) -> None:
        await asyncio.sleep(0)  # behind the tasks the generation started after this one
        await self._publish(dataclasses.replace(status, latency=self._latency(status.info.name)), crossed)
