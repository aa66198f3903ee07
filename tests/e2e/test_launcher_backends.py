"""`llmesh up` with its model servers: Triton on CPU and the OpenAI-compatible stand-in start next
to the services, the inference service's catalog names them, and chats reach both."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from llmesh.launcher.backends import triton_unavailable_reason

from tests.e2e.test_launcher import cli_env, llmesh, new_key, status_rows

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(bool(triton_unavailable_reason()), reason="no Triton environment (`make triton-env`)"),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    home = tmp_path_factory.mktemp("llmesh-home")
    env = cli_env(home)
    env.pop("LLMESH_UP_BACKENDS")
    env.pop("LLMESH_INFERENCE_CATALOG", None)
    try:
        up = llmesh(env, "up", "--detach", timeout=500)
        assert up.returncode == 0, up.stdout + up.stderr
        yield home, env
    finally:
        llmesh(env, "down", timeout=150)


def chat(env: dict[str, str], api_key: str, model: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "llmesh.cli.main", "chat", "--no-cache", "--max-tokens", "8", "--model", model, "hi"],
        env={**env, "LLMESH_API_KEY": api_key},
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_backends_serve_and_chats_reach_them(mesh):
    home, env = mesh
    status = llmesh(env, "status")
    rows = status_rows(status.stdout)
    for name in ("triton", "openai"):
        assert rows[name]["state"] == "serving", status.stdout
        assert rows[name]["pid"] != "-", status.stdout
    catalog = json.loads((home / "catalog.json").read_text())
    triton_entry = next(m for m in catalog["models"] if m["backend"] == "triton")
    assert rows["triton"]["address"] == triton_entry["endpoint"], status.stdout

    models = llmesh(env, "models")
    assert models.returncode == 0, models.stdout + models.stderr
    listed = {line.split()[0]: line for line in models.stdout.splitlines()[1:] if line.strip()}
    assert "triton" in listed["gemma-3-270m"], models.stdout
    assert "openai" in listed["frontier"] and "external" in listed["frontier"], models.stdout

    state = json.loads((home / "mesh.json").read_text())
    api_key, _ = asyncio.run(new_key(state))
    assert "frontier" in chat(env, api_key, "frontier").splitlines()[-1]
    assert "gemma-3-270m" in chat(env, api_key, "gemma-3-270m").splitlines()[-1]
