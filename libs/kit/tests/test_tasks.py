"""Background tasks: `spawn` and `every` of a ServiceApp (and of any owner of BackgroundTasks)."""

from __future__ import annotations

import asyncio

import pytest
from llmesh.kit import server as server_module
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.server import ServiceApp
from llmesh.kit.tasks import BackgroundTasks
from llmesh.kit.testing import assert_eventually, hosted
from prometheus_client import REGISTRY


async def test_every_runs_sync_and_async_jobs_and_a_failing_run_does_not_stop_the_loop():
    tasks = BackgroundTasks("test")
    runs = {"sync": 0, "async": 0, "flaky": 0}

    def sync_job():
        runs["sync"] += 1

    async def async_job():
        runs["async"] += 1

    def flaky_job():
        runs["flaky"] += 1
        if runs["flaky"] % 2:
            raise RuntimeError("every other run fails")

    for job in (sync_job, async_job, flaky_job):
        tasks.every(0.01, job)
    await assert_eventually(lambda: min(runs.values()) >= 4, timeout_s=5)
    await tasks.stop()
    assert len(tasks) == 0
    settled = dict(runs)
    await asyncio.sleep(0.05)
    assert runs == settled, "no run after stop"


async def test_every_waits_one_interval_before_the_first_run_and_rejects_a_bad_interval():
    tasks = BackgroundTasks()
    runs = []
    tasks.every(60, lambda: runs.append(1))
    await asyncio.sleep(0.02)
    assert runs == []
    await tasks.stop()
    with pytest.raises(ValueError, match="interval_s"):
        tasks.every(0, lambda: None)


async def test_stop_gives_spawned_tasks_the_grace_then_cancels_what_is_left():
    tasks = BackgroundTasks()
    finished, cancelled = [], []

    async def work(seconds: float, name: str):
        try:
            await asyncio.sleep(seconds)
            finished.append(name)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    tasks.spawn(work(0.01, "quick"))
    tasks.spawn(work(30, "slow"))
    tasks.every(0.01, lambda: None)
    assert len(tasks) == 3
    await asyncio.wait_for(tasks.stop(grace_s=0.5), timeout=5)
    assert finished == ["quick"] and cancelled == ["slow"] and len(tasks) == 0


async def test_a_failing_spawned_task_is_dropped_and_others_go_on():
    tasks = BackgroundTasks()

    async def boom():
        raise RuntimeError("a bug")

    failed = tasks.spawn(boom())
    await asyncio.wait({failed})
    assert len(tasks) == 0 and isinstance(failed.exception(), RuntimeError)
    survivor = tasks.spawn(asyncio.sleep(0.01, "done"))
    assert await survivor == "done"
    await tasks.stop()


class _PeriodicApp(ServiceApp):
    name = "periodic"

    def __init__(self):
        self.ticks = 0
        self.stopped_with_tasks: int | None = None

    def register(self, server):
        return []

    async def start(self):
        self.every(0.01, self._tick)
        self.spawn(asyncio.sleep(3600), name="forever")

    def _tick(self):
        self.ticks += 1

    async def stop(self):
        self.stopped_with_tasks = len(self.tasks)


async def test_the_host_cancels_and_awaits_the_apps_tasks_before_app_stop():
    app = _PeriodicApp()
    settings = load_settings(ServerSettings, environ={}, port=0, metrics_port=0)
    async with hosted(app, settings):
        await assert_eventually(lambda: app.ticks >= 3)
        assert len(app.tasks) == 2
    assert app.stopped_with_tasks == 0
    ticks = app.ticks
    await asyncio.sleep(0.05)
    assert app.ticks == ticks


class _HangingApp(ServiceApp):
    name = "hanging"

    def register(self, server):
        return []

    async def stop(self):
        await asyncio.Event().wait()  # a dependency that never answers


async def test_an_app_stop_that_hangs_is_given_up_on_and_the_host_stops(monkeypatch, capsys):
    monkeypatch.setattr(server_module, "APP_STOP_TIMEOUT_S", 0.2)
    settings = load_settings(ServerSettings, environ={}, port=0, metrics_port=0)
    async with hosted(_HangingApp(), settings) as host:
        pass
    assert host._stopped
    assert "app_stop_timed_out" in capsys.readouterr().out


class _TaskCountApp(ServiceApp):
    name = "taskcount"

    def __init__(self):
        self.release = asyncio.Event()

    def register(self, server):
        return []

    async def start(self):
        for i in range(20):
            self.spawn(self.release.wait(), name=f"waiter-{i}")


def _task_gauge() -> float | None:
    return REGISTRY.get_sample_value("llmesh_asyncio_tasks", {"service": "taskcount"})


async def test_the_host_exposes_the_loops_task_count_and_follows_it_down(monkeypatch):
    monkeypatch.setattr(server_module, "ASYNCIO_TASKS_INTERVAL_S", 0.02)
    app = _TaskCountApp()
    settings = load_settings(ServerSettings, environ={}, port=0, metrics_port=0)
    async with hosted(app, settings):
        await assert_eventually(lambda: _task_gauge() == len(asyncio.all_tasks()))
        with_waiters = _task_gauge()
        assert with_waiters >= 20 + 1  # the app's waiters and this test
        app.release.set()
        await assert_eventually(lambda: _task_gauge() == len(asyncio.all_tasks()) <= with_waiters - 20)
