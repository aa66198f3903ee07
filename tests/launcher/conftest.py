"""The launcher tests' supervisor: no mesh, LLMESH_HOME in the test's folder, a quick restart
policy, and the progress lines it printed (`sup.lines`)."""

from __future__ import annotations

import pytest
from llmesh.launcher.backoff import RestartPolicy
from llmesh.launcher.supervisor import Supervisor


@pytest.fixture
def supervisor(tmp_path, monkeypatch) -> Supervisor:
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    lines: list[str] = []
    policy = RestartPolicy(initial_s=0.5, factor=2.0, max_s=2.0, reset_after_s=60.0, crash_loop_after=3)
    sup = Supervisor(progress=lines.append, policy=policy, timeout_s=30.0)
    sup.lines = lines
    return sup
