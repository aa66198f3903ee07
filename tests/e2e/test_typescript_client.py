"""The TypeScript client's own tests (clients/typescript/test, Node's test runner) against the real
mesh of tests/e2e/conftest.py and its edge: the typed Generate wrapper and the `openai` npm package;
and its retry tests (test/retry.test.ts), which bring their own gRPC server."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil

import pytest

pytestmark = pytest.mark.timeout(300)

CLIENT = pathlib.Path(__file__).resolve().parents[2] / "clients" / "typescript"


async def test_the_typescript_clients_tests_pass_against_the_mesh(mesh, edge):
    npm = shutil.which("npm")
    assert npm, "npm (Node 20) is not installed"
    assert (CLIENT / "node_modules").is_dir(), "run `make setup` (npm ci in clients/typescript)"
    api_key, _, _ = await mesh.new_tenant()
    env = {
        **os.environ,
        "LLMESH_ROUTER_ADDR": mesh.hosts["router"].address,
        "LLMESH_API_KEY": api_key,
        "LLMESH_EDGE_URL": edge,
    }
    # Asynchronously: the mesh serves from this event loop while Node runs.
    process = await asyncio.create_subprocess_exec(
        npm, "test", cwd=CLIENT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    assert process.returncode == 0, text
    assert "# fail 0" in text and "# pass 12" in text, text
