"""`llmesh call`: any RPC through server reflection with a JSON body, against a hosted tenancy
service (unary) and a router with fake upstreams (server streaming)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json

import pytest
from llmesh.cli import call as call_cli
from llmesh.kit.testing import free_port, unique
from llmesh.tenancy.v1 import tenancy_pb2 as pb

pytestmark = pytest.mark.timeout(60)


async def call(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="llmesh")
    call_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["call", *argv])
    out, err = io.StringIO(), io.StringIO()
    # Blocking gRPC in a thread: the services under test run on this event loop.
    code = await asyncio.to_thread(args.func, args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def tenancy(service, admin_token, monkeypatch, tmp_path):
    host, stub = service
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMESH_ADMIN_TOKEN", admin_token)
    return host.address, stub


async def test_list_shows_every_service_and_its_methods(tenancy):
    address, _ = tenancy
    code, out, err = await call(address, "list")
    assert code == 0, err
    lines = out.splitlines()
    assert "llmesh.tenancy.v1.TenancyService" in lines
    assert "grpc.health.v1.Health" in lines
    assert (
        "  CreateTenant(llmesh.tenancy.v1.CreateTenantRequest) returns (llmesh.tenancy.v1.CreateTenantResponse)"
        in lines
    )
    code, out, _ = await call(address, "list", "TenancyService")
    assert code == 0 and out.splitlines()[0] == "llmesh.tenancy.v1.TenancyService"
    assert "grpc.health.v1.Health" not in out

    code, out, _ = await call(address, "describe", "llmesh.tenancy.v1.TenancyService/CreateTenant")
    assert code == 0
    assert "string business_unit = 2;  // JSON: businessUnit" in out
    assert "enum llmesh.common.v1.Sensitivity: SENSITIVITY_UNSPECIFIED" in out


async def test_a_unary_call_takes_json_and_prints_json(tenancy, admin_token):
    address, stub = tenancy
    name = unique("acme")
    body = json.dumps({"name": name, "businessUnit": "retail", "clearance": "SENSITIVITY_CONFIDENTIAL"})
    code, out, err = await call(
        address, "llmesh.tenancy.v1.TenancyService/CreateTenant", body, "-H", f"authorization: Bearer {admin_token}"
    )
    assert code == 0, err
    tenant = json.loads(out)["tenant"]
    assert tenant["name"] == name and tenant["clearance"] == "SENSITIVITY_CONFIDENTIAL"
    stored = (
        await stub.GetTenant(pb.GetTenantRequest(name=name), metadata=[("authorization", f"Bearer {admin_token}")])
    ).tenant
    assert stored.tenant_id == tenant["tenantId"] and stored.business_unit == "retail"

    # The dotted form of the method, field names as in the proto, and the admin token from the environment.
    code, out, err = await call(
        address, "llmesh.tenancy.v1.TenancyService.GetTenant", f'{{"name": "{name}"}}', "--admin"
    )
    assert code == 0, err
    assert json.loads(out)["tenant"]["tenantId"] == tenant["tenantId"]
    code, out, err = await call(address, "TenancyService/ListTenants", "--admin")
    assert code == 0, err
    assert name in [t["name"] for t in json.loads(out)["tenants"]]

    # Fields at their default value are left out, as grpcurl does, unless asked for.
    code, out, _ = await call(address, "TenancyService/CreateTenant", json.dumps({"name": unique("b")}), "--admin")
    assert code == 0 and "businessUnit" not in json.loads(out)["tenant"]
    code, out, _ = await call(
        address, "TenancyService/CreateTenant", json.dumps({"name": unique("b")}), "--admin", "--emit-defaults"
    )
    assert code == 0 and json.loads(out)["tenant"]["businessUnit"] == ""


async def test_mistakes_are_one_line_with_a_non_zero_exit(tenancy):
    address, _ = tenancy
    code, out, err = await call(address, "llmesh.tenancy.v1.TenancyService/ListTenants")
    assert code == 1 and out == "" and err.startswith("llmesh call: UNAUTHENTICATED") and err.count("\n") == 1

    code, _, err = await call(address, "llmesh.tenancy.v1.TenancyService/Nope", "{}")
    assert code == 2 and "has no method 'Nope'" in err and "CreateTenant" in err
    code, _, err = await call(address, "llmesh.nothing.v1.Nope/Call", "{}")
    assert code == 2 and "no service 'llmesh.nothing.v1.Nope'" in err
    code, _, err = await call(address, "TenancyService/GetTenant", '{"nmae": "x"}', "--admin")
    assert code == 2 and "not a valid llmesh.tenancy.v1.GetTenantRequest" in err and "nmae" in err
    code, _, err = await call(address, "TenancyService/GetTenant", "{not json", "--admin")
    assert code == 2 and err.count("\n") == 1
    code, _, err = await call(address, "TenancyService/GetTenant", "{}", "-H", "no colon")
    assert code == 2 and "'NAME: VALUE'" in err

    dead = f"127.0.0.1:{free_port()}"
    code, _, err = await call(dead, "list", "--timeout", "1")
    assert code == 1 and err == f"llmesh call: nothing answers at {dead} (is the service running?)\n"


async def test_a_server_stream_prints_each_reply(router_host, client):
    api_key, _, _ = client.new_key()
    body = json.dumps({"messages": [{"role": "ROLE_USER", "content": "what is llmesh?"}], "maxTokens": 20})
    code, out, err = await call(
        router_host.address, "llmesh.router.v1.RouterService/Generate", body, "-H", f"authorization: Bearer {api_key}"
    )
    assert code == 0, err
    replies = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00")]
    assert "".join(r.get("delta", "") for r in replies) == "answer to the question"
    assert replies[-1]["summary"]["model"] == "tiny-1"

    code, _, err = await call(router_host.address, "llmesh.router.v1.RouterService/Generate", body)
    assert code == 1 and "UNAUTHENTICATED" in err


async def test_a_client_stream_is_refused_before_calling(upstreams):
    # The router's fake upstreams serve the cache API, whose Warm reads a stream of requests.
    code, out, err = await call(upstreams.address, "llmesh.cache.v1.CacheService/Warm", "{}")
    assert code == 2 and out == "" and "reads a stream of requests" in err and "llmesh cache warm" in err
