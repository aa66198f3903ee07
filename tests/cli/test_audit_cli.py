"""`llmesh audit verify|list` against a hosted tenancy service, before and after tampering."""

from __future__ import annotations

import asyncio

import pytest
from llmesh.cli.main import main
from llmesh.services.tenancy.repository import Repository
from llmesh.tenancy.v1 import tenancy_pb2 as pb
from structlog.testing import capture_logs

from services.tenancy.tests.conftest import tenancy_client

pytestmark = pytest.mark.timeout(60)


async def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # the service's own logs so far
    with capture_logs():
        code = await asyncio.to_thread(main, ["audit", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_verify_passes_then_names_the_edited_entry(
    store_url, nats_url, admin_token, admin, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMESH_ADMIN_TOKEN", admin_token)
    async with tenancy_client(store_url, nats_url, admin_token, audit_key="k" * 20) as (host, stub):
        monkeypatch.setenv("LLMESH_TENANCY_ADDR", host.address)
        tenant = (await stub.CreateTenant(pb.CreateTenantRequest(name="cli-audit"), metadata=admin)).tenant
        await stub.CreateApiKey(pb.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin)
        code, out, _ = await _cli(capsys, "verify")
        assert code == 0 and out.strip() == "ok: 2 entries, 0 signed checkpoints"
        code, out, _ = await _cli(capsys, "list", "--tenant-id", tenant.tenant_id)
        assert code == 0 and [line.split("\t")[3] for line in out.splitlines()] == ["tenant.created", "key.created"]

        repository = Repository(store_url)
        await repository.open()
        try:
            await repository.db.execute("UPDATE audit_log SET actor = ? WHERE seq = 1", "someone-else")
        finally:
            await repository.close()
        code, _, err = await _cli(capsys, "verify")
        assert code == 1 and "BROKEN at entry 1: entry 1 was changed" in err
