"""The README's Python example, run as a user would run it (its own process, `python ask.py`)
against the whole mesh hosted in this process."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys

import pytest

from tests.test_docs import readme_python_example

pytestmark = pytest.mark.timeout(180)


async def test_the_readme_python_example_streams_an_answer_and_its_summary(mesh, tmp_path):
    api_key, _, _ = await mesh.new_tenant()
    script = tmp_path / "ask.py"
    script.write_text(readme_python_example())
    env = dict(os.environ, LLMESH_ROUTER_ADDR=mesh.hosts["router"].address, LLMESH_API_KEY=api_key)
    # A subprocess, awaited without blocking: the mesh it calls runs on this event loop.
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=150)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    answer, _, summary = out.decode().partition("\nrequest_id:")
    assert answer.strip(), "the answer was printed before the summary"
    assert 'model: "gemma-3-270m"' in summary and "cache_outcome: CACHE_OUTCOME_MISS" in summary


async def test_the_readme_warm_example_then_chat_is_an_exact_hit(mesh, tmp_path, mesh_identity_dir):
    """The README's "Warming the cache": `llmesh cache warm examples/cache_warm.jsonl` for the tenant
    acme, then the first conversation's question is answered from the cache."""
    from llmesh.common.v1 import common_pb2
    from llmesh.router.v1 import router_pb2
    from llmesh.tenancy.v1 import tenancy_pb2

    from tests.e2e.conftest import bearer

    tenant = (await mesh.tenancy.CreateTenant(tenancy_pb2.CreateTenantRequest(name="acme"), metadata=mesh.admin)).tenant
    key = await mesh.tenancy.CreateApiKey(
        tenancy_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=mesh.admin
    )
    env = dict(
        os.environ,
        LLMESH_HOME=str(tmp_path),
        LLMESH_CACHE_ADDR=mesh.hosts["cache"].address,
        LLMESH_TENANCY_ADDR=mesh.hosts["tenancy"].address,
        LLMESH_ADMIN_TOKEN=dict(mesh.admin)["authorization"].removeprefix("Bearer "),
        # The mesh's keys: the CLI calls the cache with the operator credential (docs/adr/0023).
        LLMESH_IDENTITY_DIR=str(mesh_identity_dir),
    )
    root = pathlib.Path(__file__).resolve().parents[2]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmesh.cli.main", "cache", "warm", "examples/cache_warm.jsonl",
        cwd=root, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    assert "stored 6, skipped 0, failed 0 of 6 pairs" in out.decode()

    request = router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="What is the capital of France?")]
    )
    deltas, summary = [], None
    async for event in mesh.router.Generate(request, metadata=bearer(key.api_key), timeout=60):
        if event.HasField("summary"):
            summary = event.summary
        else:
            deltas.append(event.delta)
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT
    assert "".join(deltas) == "The capital of France is Paris."
