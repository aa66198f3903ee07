"""`llmesh tenant ...`: manage tenants and API keys through the tenancy service's admin RPCs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

import grpc
from llmesh.kit.client import open_channel
from llmesh.kit.vocabulary import Sensitivity
from llmesh.launcher.state import admin_token, endpoint
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

CLEARANCES = {level.name.lower(): level.to_proto() for level in Sensitivity if level is not Sensitivity.UNSPECIFIED}
CLEARANCE_NAMES = {value: name for name, value in CLEARANCES.items()}

Stub = tenancy_pb2_grpc.TenancyServiceStub


def register(subparsers) -> None:
    tenant = subparsers.add_parser("tenant", help="manage tenants and API keys")
    commands = tenant.add_subparsers(dest="tenant_command", required=True)

    create = commands.add_parser("create", help="create a tenant and its first API key (printed last, alone)")
    create.add_argument("name", help="unique, 1-64 characters of [A-Za-z0-9._-]")
    create.add_argument("--business-unit", default="", help="business unit the tenant's usage is billed to")
    create.add_argument(
        "--clearance",
        choices=list(CLEARANCES),
        default="internal",
        help="most sensitive data the tenant may send (default: internal)",
    )
    create.add_argument("--label", default="", help="label of the first API key")
    create.set_defaults(func=lambda args: _run(_create, args))

    listing = commands.add_parser("list", help="list tenants")
    listing.set_defaults(func=lambda args: _run(_list, args))

    key = commands.add_parser("key", help="manage API keys")
    key_commands = key.add_subparsers(dest="key_command", required=True)
    key_create = key_commands.add_parser("create", help="create an API key (printed last, alone)")
    key_create.add_argument("tenant_name")
    key_create.add_argument("--label", default="")
    key_create.set_defaults(func=lambda args: _run(_key_create, args))
    key_revoke = key_commands.add_parser("revoke", help="revoke an API key at once, mesh-wide")
    key_revoke.add_argument("key_id")
    key_revoke.set_defaults(func=lambda args: _run(_key_revoke, args))


def _run(command: Callable[[Stub, grpc.aio.Metadata, argparse.Namespace], Awaitable[None]], args) -> int:
    return run_admin(command, args, "tenant")


def run_admin(
    command: Callable[[Stub, grpc.aio.Metadata, argparse.Namespace], Awaitable[None]], args, group: str
) -> int:
    """Runs `command` against tenancy's admin RPCs with the admin credential (LLMESH_ADMIN_TOKEN:
    the bootstrap token or an admin API key); `llmesh <group>: CODE: details` on an RPC error."""
    token = admin_token()
    if not token:
        print(
            f"llmesh {group}: no admin token: set LLMESH_ADMIN_TOKEN or start a local mesh with `llmesh up`",
            file=sys.stderr,
        )
        return 2
    target = endpoint("tenancy")

    async def call() -> None:
        async with open_channel(target) as channel:
            await command(Stub(channel), grpc.aio.Metadata(("authorization", f"Bearer {token}")), args)

    try:
        asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        where = (
            f" (tenancy at {target})"
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            else ""
        )
        details = " ".join((exc.details() or "").split())
        print(f"llmesh {group}: {exc.code().name}: {details}{where}", file=sys.stderr)
        return 1
    return 0


def _print_key(key: tenancy_pb2.ApiKey, api_key: str) -> None:
    print(f"key_id         {key.key_id}")
    print("API key (shown once, store it now):", file=sys.stderr)
    sys.stderr.flush()
    print(api_key, flush=True)


async def _create(stub: Stub, metadata, args) -> None:
    tenant = (
        await stub.CreateTenant(
            tenancy_pb2.CreateTenantRequest(
                name=args.name, business_unit=args.business_unit, clearance=CLEARANCES[args.clearance]
            ),
            metadata=metadata,
        )
    ).tenant
    print(f"tenant_id      {tenant.tenant_id}")
    print(f"name           {tenant.name}")
    print(f"business_unit  {tenant.business_unit or '-'}")
    print(f"clearance      {CLEARANCE_NAMES.get(tenant.clearance, tenant.clearance)}")
    created = await stub.CreateApiKey(
        tenancy_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, label=args.label), metadata=metadata
    )
    _print_key(created.key, created.api_key)


async def _list(stub: Stub, metadata, args) -> None:
    tenants = (await stub.ListTenants(tenancy_pb2.ListTenantsRequest(), metadata=metadata)).tenants
    rows = [("NAME", "TENANT_ID", "BUSINESS_UNIT", "CLEARANCE", "CREATED")]
    for t in tenants:
        created = t.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
        rows.append((t.name, t.tenant_id, t.business_unit or "-", CLEARANCE_NAMES.get(t.clearance, "?"), created))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


async def _key_create(stub: Stub, metadata, args) -> None:
    tenant = (await stub.GetTenant(tenancy_pb2.GetTenantRequest(name=args.tenant_name), metadata=metadata)).tenant
    created = await stub.CreateApiKey(
        tenancy_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, label=args.label), metadata=metadata
    )
    print(f"tenant_id      {tenant.tenant_id}")
    _print_key(created.key, created.api_key)


async def _key_revoke(stub: Stub, metadata, args) -> None:
    key = (await stub.RevokeApiKey(tenancy_pb2.RevokeApiKeyRequest(key_id=args.key_id), metadata=metadata)).key
    revoked = key.revoked_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
    print(f"revoked {key.key_id} of tenant {key.tenant_id} at {revoked}")
