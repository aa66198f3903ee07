"""Background work of a service or an engine: one-off tasks that outlive the call that started
them, and periodic jobs. They are kept referenced (asyncio holds tasks weakly), a failing periodic
job is logged and runs again at its next tick, and `stop` cancels and awaits them all.

A ServiceApp owns one (`app.spawn`, `app.every`); ServiceHost stops it before `app.stop()`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from llmesh.kit.logging import get_logger

log = get_logger("llmesh.tasks")


class BackgroundTasks:
    def __init__(self, owner: str = ""):
        self._owner = owner
        self._tasks: set[asyncio.Task] = set()
        self._periodic: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task:
        """Runs `coro` in the background; an exception it raises is logged."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def every(
        self, interval_s: float, job: Callable[[], Awaitable[object] | object], *, name: str | None = None
    ) -> asyncio.Task:
        """Calls `job` (sync or async) every `interval_s` seconds, the first time one interval from
        now, until stopped. An exception in one run is logged and the next run happens as planned."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0 (got {interval_s})")
        name = name or getattr(job, "__qualname__", None) or repr(job)
        task = self.spawn(self._repeat(interval_s, job, name), name=name)
        self._periodic.add(task)
        task.add_done_callback(self._periodic.discard)
        return task

    async def _repeat(self, interval_s: float, job: Callable[[], Awaitable[object] | object], name: str) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                result = job()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("periodic_job_failed", owner=self._owner, job=name)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", owner=self._owner, task=task.get_name(), error=repr(task.exception()))

    async def stop(self, grace_s: float = 0.0) -> None:
        """Cancels the periodic jobs at once; one-off tasks get `grace_s` seconds to finish first.
        Returns once every task has ended."""
        periodic = set(self._periodic)
        for task in periodic:
            task.cancel()
        one_off = self._tasks - periodic
        if grace_s > 0 and one_off:
            await asyncio.wait(one_off, timeout=grace_s)
        pending = self._tasks | periodic
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
