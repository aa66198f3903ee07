"""The contracts: generated code is current and the protos pass Buf's STANDARD lint."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_generated_code_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_buf_lint_passes():
    buf = shutil.which("buf") or str(pathlib.Path(sys.executable).parent / "buf")
    if not pathlib.Path(buf).exists():
        pytest.fail("buf not installed: `make setup` installs buf-bin")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_main():
    """`buf breaking` against where this branch left main (what `make breaking` and `make lint` run)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--breaking"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
