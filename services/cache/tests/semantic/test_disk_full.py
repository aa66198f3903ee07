"""The embedded store on a real file system filled to the last block (a small tmpfs: needs the
right to mount, as root in a container; skipped otherwise). The store runs in a child process,
disk_fill_child.py: the failure this guards against is SIGBUS, which kills the process."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

CHILD = pathlib.Path(__file__).resolve().parent / "disk_fill_child.py"
TMPFS_MIB = 96


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def run_child(folder: pathlib.Path, min_free_mib: int) -> tuple[int, list[dict], str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(CHILD), str(folder), str(min_free_mib)],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    steps = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, steps, done.stderr[-2000:]


def test_the_guarded_store_survives_a_full_disk_and_writes_again_when_space_returns(small_disk):
    code, steps, err = run_child(small_disk, min_free_mib=32)
    assert code == 0, f"the child exited with {code} ({signal.Signals(-code).name if code < 0 else ''}): {err}"
    by_step = {s["step"]: s for s in steps}
    full = by_step["writes while full"]
    assert full["refused"] == 40 and full["stored"] == 0
    assert by_step["lookup while full"]["found"] == ["e3"], "lookups go on while the disk is full"
    assert by_step["writable again"]["after_s"] < 1
    assert "closed" in by_step


def test_the_bare_store_dies_of_sigbus_on_the_same_full_disk(small_disk):
    """What the guard prevents: the engine writes through memory maps that cannot grow."""
    code, steps, err = run_child(small_disk, min_free_mib=0)
    assert code == -signal.SIGBUS, f"exit {code}, steps {steps}: {err}"
