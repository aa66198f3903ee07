"""The supervisor's decisions without a mesh: restarts of a stand-in process, the port check against
TIME_WAIT, what `llmesh down` does with the state a dead supervisor left, and the states `llmesh
status` shows."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time

import pytest
from llmesh.cli.mesh import down_command, process_state
from llmesh.launcher import state as mesh_state
from llmesh.launcher.backends import ServerUnit
from llmesh.launcher.health import SERVING, UNREACHABLE
from llmesh.launcher.processes import port_is_free, process_start_ticks
from llmesh.launcher.supervisor import Supervised, Supervisor, running_mesh, supervisor_alive

pytestmark = pytest.mark.timeout(60)


class StandIn:
    """The part of a ServiceProcess the supervisor uses, driven by the test."""

    def __init__(self, name: str, log_path):
        self.name = name
        self.log_path = log_path
        self.port = 40000
        self.metrics_port = 40001
        self.pid: int | None = None
        self.code: int | None = None
        self.serving = False
        self.starts = 0
        self.refuse_start = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.refuse_start:
            raise RuntimeError("cannot start")
        self.starts += 1
        # pids of processes that do not exist: the supervisor must not need them to be real
        self.pid = 4_000_000 + self.starts
        self.code, self.serving = None, False

    def exit_code(self) -> int | None:
        return self.code

    def ready(self) -> bool:
        return self.serving

    def kill(self) -> None:
        if self.code is None:
            self.code = -9


def running_unit(tmp_path) -> Supervised:
    process = StandIn("cache", tmp_path / "cache.log")
    process.start()
    process.serving = True
    unit = Supervised(process, state=mesh_state.RUNNING)
    unit.mark_started()
    return unit


def crash_and_restart(supervisor: Supervisor, unit: Supervised, code: int) -> float:
    """Lets the process exit, checks the supervisor waits, ends the wait; the wait it chose."""
    unit.process.code = code
    assert supervisor.supervise(unit)
    assert unit.state == mesh_state.BACKOFF and unit.last_exit_code == code
    wait = unit.retry_at_mono - time.monotonic()
    assert not supervisor.supervise(unit), "nothing happens before the wait is over"
    unit.retry_at_mono = time.monotonic()  # the wait is over
    assert supervisor.supervise(unit)
    assert unit.state == mesh_state.STARTING
    return wait


def test_an_exited_process_is_started_again_after_a_growing_wait(supervisor, tmp_path):
    unit = running_unit(tmp_path)
    waits = []
    for restart in (1, 2):
        waits.append(crash_and_restart(supervisor, unit, code=-9))
        assert unit.restarts == restart and unit.process.starts == restart + 1
        assert not supervisor.supervise(unit), "not back before it serves"
        unit.process.serving = True
        assert supervisor.supervise(unit) and unit.state == mesh_state.RUNNING
    assert 0.4 < waits[0] <= 0.5 and 0.9 < waits[1] <= 1.0
    record = unit.record()
    assert (record.restarts, record.last_exit_code, record.state) == (2, -9, mesh_state.RUNNING)
    assert record.address == "127.0.0.1:40000", "the same port again"
    assert "cache (pid 4000001) exited with signal SIGKILL" in supervisor.lines[0]


def test_a_crash_loop_is_reported_and_retried_at_the_cap_until_the_process_recovers(supervisor, tmp_path):
    unit = running_unit(tmp_path)
    waits = [crash_and_restart(supervisor, unit, code=3) for _ in range(5)]
    assert waits[-1] == pytest.approx(2.0, abs=0.05), "retried at the cap"
    assert unit.crashes == 5 and "crash loop" in unit.note
    assert sum("is in a crash loop" in line for line in supervisor.lines) == 1, "reported once"
    unit.process.serving = True
    assert supervisor.supervise(unit) and "crash loop" in unit.note, "serving again is not yet recovered"
    unit.started_mono -= 61.0  # it has stayed up past reset_after_s
    assert supervisor.supervise(unit)
    assert unit.crashes == 0 and unit.note == ""
    assert crash_and_restart(supervisor, unit, code=3) <= 0.5, "the next crash waits as little as the first"


def test_a_start_that_never_serves_is_killed_and_counted_as_a_crash(supervisor, tmp_path):
    unit = running_unit(tmp_path)
    crash_and_restart(supervisor, unit, code=1)
    unit.started_mono -= supervisor.timeout_s + 1
    assert supervisor.supervise(unit)
    assert unit.state == mesh_state.BACKOFF and unit.last_exit_code == -9 and unit.crashes == 2


def test_a_failed_start_is_a_crash_too(supervisor, tmp_path):
    unit = running_unit(tmp_path)
    unit.process.code = -9
    supervisor.supervise(unit)
    unit.process.refuse_start = True
    unit.retry_at_mono = time.monotonic()
    assert supervisor.supervise(unit)
    assert unit.state == mesh_state.BACKOFF and unit.crashes == 2 and unit.restarts == 1
    assert "failed to start (cannot start)" in supervisor.lines[-1]


def test_a_port_left_in_time_wait_is_free_for_the_next_server():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port), "a listening port is taken"
        client = socket.create_connection(("127.0.0.1", port))
        server_side, _ = listener.accept()
        server_side.close()  # the server closes first, as a stopping server does: its end waits in TIME_WAIT
        assert client.recv(1) == b""
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what a check without SO_REUSEADDR sees
    assert port_is_free(port)


def test_a_supervisor_pid_reused_by_another_process_is_not_a_running_mesh(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    ticks = process_start_ticks(os.getpid())
    assert ticks is not None
    mine = mesh_state.MeshState(endpoints={}, supervisor_pid=os.getpid(), supervisor_start_ticks=ticks)
    assert supervisor_alive(mine)
    mesh_state.save_state(
        mesh_state.MeshState(endpoints={}, supervisor_pid=os.getpid(), supervisor_start_ticks=ticks + 1)
    )
    assert running_mesh() is None


def test_down_stops_what_a_dead_supervisor_left_running_and_nothing_else(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    ended = subprocess.Popen(["true"])
    ended.wait()
    left = subprocess.Popen(["sleep", "60"], start_new_session=True)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        mesh_state.save_state(
            mesh_state.MeshState(
                endpoints={},
                supervisor_pid=ended.pid,
                processes={
                    "cache": mesh_state.ProcessRecord(pid=left.pid, start_ticks=process_start_ticks(left.pid)),
                    # its pid was reused: the start time recorded is not this process's
                    "nats": mesh_state.ProcessRecord(
                        pid=stranger.pid, start_ticks=process_start_ticks(stranger.pid) - 1
                    ),
                },
            )
        )
        assert running_mesh() is None
        assert down_command(argparse.Namespace()) == 0
        out = capsys.readouterr().out
        assert "left running: cache" in out and "nats" not in out
        assert left.wait(10) == -15, "stopped with SIGTERM"
        assert stranger.poll() is None, "a process that only shares a pid is left alone"
        assert mesh_state.load_state() is None
    finally:
        for process in (left, stranger):
            process.kill()
            process.wait()


def record(state: str, **fields) -> mesh_state.ProcessRecord:
    return mesh_state.ProcessRecord(
        pid=os.getpid(), start_ticks=process_start_ticks(os.getpid()), state=state, **fields
    )


@pytest.mark.parametrize(
    ("process", "health", "supervised", "shown"),
    [
        (record(mesh_state.RUNNING), SERVING, True, "serving"),
        (record(mesh_state.RUNNING), "NOT_SERVING", True, "not serving"),
        (record(mesh_state.RUNNING), UNREACHABLE, True, "not serving"),
        (record(mesh_state.BACKOFF, restarts=1), UNREACHABLE, True, "restarting"),
        (record(mesh_state.STARTING, restarts=1), UNREACHABLE, True, "restarting"),
        (record(mesh_state.STARTING), UNREACHABLE, True, "starting"),
        (record(mesh_state.STOPPED), UNREACHABLE, True, "down"),
        (mesh_state.ProcessRecord(pid=None, state=mesh_state.RUNNING), SERVING, True, "down"),
        (record(mesh_state.RUNNING), SERVING, False, "serving"),
        (mesh_state.ProcessRecord(pid=None, state=mesh_state.RUNNING), SERVING, False, "down"),
        (None, SERVING, False, "serving"),
        (None, UNREACHABLE, False, "down"),
    ],
)
def test_status_names_each_process_state(process, health, supervised, shown):
    assert process_state(process, health, supervised) == shown


class SlowModelServer(ServerUnit):
    """A model-server unit (ServerUnit, as Triton's) whose server takes long to load its models:
    only launch() may be called on a restart, a blocking wait would hang the test."""

    name = "triton"
    start_timeout_s = 120.0

    def __init__(self, log_path):
        self.log_path = log_path
        self.launches = 0
        self.loaded = False
        self.process = None
        self.server = self  # ServerUnit reads the exit code from server.process

    @property
    def address(self) -> str:
        return "127.0.0.1:40010"

    port = 40010
    pid = None

    def launch(self) -> None:
        self.launches += 1
        self.loaded = False
        self.process = subprocess.Popen(["sleep", "30"])

    def ready(self) -> bool:
        return self.exit_code() is None and self.loaded

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def start(self) -> None:
        raise AssertionError("a restart must not wait for the models to load")


def test_a_model_server_is_restarted_without_blocking_and_given_its_own_start_time(supervisor, tmp_path):
    server = SlowModelServer(tmp_path / "triton.log")
    server.launch()
    unit = Supervised(server, state=mesh_state.RUNNING)
    unit.mark_started()
    try:
        server.kill()  # a crash
        assert supervisor.supervise(unit) and unit.state == mesh_state.BACKOFF
        unit.retry_at_mono = time.monotonic()
        started = time.monotonic()
        assert supervisor.supervise(unit)
        assert time.monotonic() - started < 1.0 and server.launches == 2
        assert unit.state == mesh_state.STARTING
        unit.started_mono -= supervisor.timeout_s + 1  # past the services' start time, not its own
        assert not supervisor.supervise(unit) and unit.state == mesh_state.STARTING
        server.loaded = True
        assert supervisor.supervise(unit) and unit.state == mesh_state.RUNNING
        assert "triton is back" in supervisor.lines[-1]
    finally:
        server.kill()
