"""The README's configuration tables are generated from the settings classes and must be current."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_config_tables_are_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_tables.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
