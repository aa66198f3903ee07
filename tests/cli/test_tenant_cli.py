"""`llmesh tenant ...` against a hosted tenancy service."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llmesh.cli.main import main
from llmesh.common.v1 import common_pb2
from llmesh.kit.testing import unique
from llmesh.tenancy.v1 import tenancy_pb2 as pb
from structlog.testing import capture_logs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cli_env(service, admin_token, monkeypatch, tmp_path):
    host, stub = service
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMESH_TENANCY_ADDR", host.address)
    monkeypatch.setenv("LLMESH_ADMIN_TOKEN", admin_token)
    return stub


async def _cli(capsys, *argv: str) -> tuple[int, list[str], str]:
    # The CLI runs its own event loop (asyncio.run), so it gets a thread of its own here; the
    # in-process service's logs are held aside so stdout is the CLI's alone.
    with capture_logs():
        code = await asyncio.to_thread(main, ["tenant", *argv])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


async def test_create_list_key_create_and_revoke(cli_env, capsys):
    stub = cli_env
    name = unique("cli")
    code, out, _ = await _cli(
        capsys, "create", name, "--business-unit", "legal", "--clearance", "restricted", "--label", "first"
    )
    assert code == 0
    api_key = out[-1]
    principal = (await stub.Authenticate(pb.AuthenticateRequest(api_key=api_key))).principal
    assert principal.tenant_name == name and principal.business_unit == "legal"
    assert principal.clearance == common_pb2.SENSITIVITY_RESTRICTED
    assert f"tenant_id      {principal.tenant_id}" in out

    code, out, _ = await _cli(capsys, "list")
    assert code == 0 and out[0].split() == ["NAME", "TENANT_ID", "BUSINESS_UNIT", "CLEARANCE", "CREATED"]
    assert any(line.split()[:4] == [name, principal.tenant_id, "legal", "restricted"] for line in out[1:])

    code, out, _ = await _cli(capsys, "key", "create", name)
    assert code == 0
    second = (await stub.Authenticate(pb.AuthenticateRequest(api_key=out[-1]))).principal
    assert second.tenant_id == principal.tenant_id and second.key_id != principal.key_id

    code, out, _ = await _cli(capsys, "key", "revoke", principal.key_id)
    assert code == 0 and out[-1].startswith(f"revoked {principal.key_id} of tenant {principal.tenant_id}")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.Authenticate(pb.AuthenticateRequest(api_key=api_key))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_errors_are_one_line_on_stderr(cli_env, capsys, monkeypatch):
    name = unique("cli")
    assert (await _cli(capsys, "create", name))[0] == 0

    code, out, err = await _cli(capsys, "create", name)
    assert code == 1 and out == []
    assert err.strip() == f"llmesh tenant: ALREADY_EXISTS: a tenant named {name!r} already exists"

    code, _, err = await _cli(capsys, "key", "create", unique("nobody"))
    assert code == 1 and "NOT_FOUND: no tenant named" in err and len(err.strip().splitlines()) == 1

    code, _, err = await _cli(capsys, "key", "revoke", "not.a.key")
    assert code == 1 and "INVALID_ARGUMENT" in err and "Traceback" not in err

    monkeypatch.setenv("LLMESH_ADMIN_TOKEN", "a-wrong-admin-token-value")
    code, _, err = await _cli(capsys, "list")
    assert code == 1 and "PERMISSION_DENIED: the admin token is not valid" in err

    monkeypatch.delenv("LLMESH_ADMIN_TOKEN")
    code, _, err = await _cli(capsys, "list")
    assert code == 2 and "no admin token" in err

    monkeypatch.setenv("LLMESH_ADMIN_TOKEN", "a-wrong-admin-token-value")
    monkeypatch.setenv("LLMESH_TENANCY_ADDR", "127.0.0.1:1")
    code, _, err = await _cli(capsys, "list")
    assert code == 1 and "UNAVAILABLE" in err and "tenancy at 127.0.0.1:1" in err
    assert len(err.strip().splitlines()) == 1


async def test_admin_keys_list_expiry_and_rotation(cli_env, capsys, monkeypatch):
    stub = cli_env
    name = unique("cli")
    code, out, _ = await _cli(capsys, "create", name)
    assert code == 0
    first = out[-1]
    code, out, _ = await _cli(capsys, "key", "create", name, "--role", "tenant-admin", "--label", "ops")
    assert code == 0
    tenant_admin = out[-1]
    code, out, _ = await _cli(capsys, "key", "create", name, "--expires-in", "30d")
    assert code == 0

    # The tenant admin's key is the admin credential from here on.
    monkeypatch.setenv("LLMESH_ADMIN_TOKEN", tenant_admin)
    code, out, _ = await _cli(capsys, "key", "list", name)
    assert code == 0 and out[0].split() == ["KEY_ID", "LABEL", "ROLE", "CREATED", "EXPIRES", "REVOKED"]
    assert len(out) == 4 and any(" ops " in line and "tenant-admin" in line for line in out)
    assert sum(1 for line in out[1:] if line.count(":") == 4) == 1, "one key has an expiry time beside its creation"

    first_id = first.split("_")[1] + "_" + first.split("_")[2]
    code, out, err = await _cli(capsys, "key", "rotate", first_id, "--overlap", "1h")
    assert code == 0 and out[0].startswith(f"old key        {first_id} valid until")
    for api_key in (first, out[-1]):
        await stub.Authenticate(pb.AuthenticateRequest(api_key=api_key))

    code, _, err = await _cli(capsys, "create", unique("other"))
    assert code == 1 and "PERMISSION_DENIED" in err and "tenant admin" in err
    code, _, err = await _cli(capsys, "key", "create", name, "--role", "platform-admin")
    assert code == 1 and "only a platform admin" in err
