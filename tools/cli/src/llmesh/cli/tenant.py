"""`llmesh tenant ...`: manage tenants and API keys (roles, expiry, rotation) through the tenancy
service's admin RPCs. The admin credential (LLMESH_ADMIN_TOKEN) is the bootstrap token or an API
key with an admin role."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import duration_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.vocabulary import Sensitivity
from llmesh.launcher.state import admin_token, endpoint
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

CLEARANCES = {level.name.lower(): level.to_proto() for level in Sensitivity if level is not Sensitivity.UNSPECIFIED}
CLEARANCE_NAMES = {value: name for name, value in CLEARANCES.items()}
ROLES = {
    "none": tenancy_pb2.ADMIN_ROLE_UNSPECIFIED,
    "platform-admin": tenancy_pb2.ADMIN_ROLE_PLATFORM_ADMIN,
    "tenant-admin": tenancy_pb2.ADMIN_ROLE_TENANT_ADMIN,
    "auditor": tenancy_pb2.ADMIN_ROLE_AUDITOR,
}
ROLE_NAMES = {value: name for name, value in ROLES.items()}
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(value: str) -> int:
    """`90s`, `15m`, `24h`, `30d` (or plain seconds) as seconds."""
    text = value.strip().lower()
    unit = _UNITS_S.get(text[-1:], None)
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise ValueError(f"not a duration: {value!r} (e.g. 90s, 15m, 24h, 30d)")
    return int(number) * (unit or 1)


duration_s.__name__ = "duration"  # argparse names the type in its error message

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
    key_create.add_argument(
        "--role", choices=list(ROLES), default="none", help="an admin key of this role (default: an ordinary key)"
    )
    key_create.add_argument("--expires-in", type=duration_s, help="the key expires after this long (e.g. 30d)")
    key_create.set_defaults(func=lambda args: _run(_key_create, args))
    key_list = key_commands.add_parser("list", help="a tenant's keys")
    key_list.add_argument("tenant_name")
    key_list.add_argument("--all", action="store_true", help="also revoked keys")
    key_list.set_defaults(func=lambda args: _run(_key_list, args))
    key_rotate = key_commands.add_parser(
        "rotate", help="a new key (printed last, alone); the old one stays valid for the overlap"
    )
    key_rotate.add_argument("key_id")
    key_rotate.add_argument("--overlap", type=duration_s, default=86400, help="how long the old key lives on (24h)")
    key_rotate.set_defaults(func=lambda args: _run(_key_rotate, args))
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
    request = tenancy_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, label=args.label, role=ROLES[args.role])
    if args.expires_in is not None:
        request.expires_at.GetCurrentTime()
        request.expires_at.FromSeconds(request.expires_at.seconds + args.expires_in)
    created = await stub.CreateApiKey(request, metadata=metadata)
    print(f"tenant_id      {tenant.tenant_id}")
    _print_key(created.key, created.api_key)


def _when(ts) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")


async def _key_list(stub: Stub, metadata, args) -> None:
    tenant = (await stub.GetTenant(tenancy_pb2.GetTenantRequest(name=args.tenant_name), metadata=metadata)).tenant
    keys = (
        await stub.ListApiKeys(
            tenancy_pb2.ListApiKeysRequest(tenant_id=tenant.tenant_id, include_revoked=args.all), metadata=metadata
        )
    ).keys
    rows = [("KEY_ID", "LABEL", "ROLE", "CREATED", "EXPIRES", "REVOKED")]
    for k in keys:
        rows.append(
            (
                k.key_id,
                k.label or "-",
                ROLE_NAMES.get(k.role, "?"),
                _when(k.created_at),
                _when(k.expires_at) if k.HasField("expires_at") else "-",
                _when(k.revoked_at) if k.HasField("revoked_at") else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


async def _key_rotate(stub: Stub, metadata, args) -> None:
    rotated = await stub.RotateApiKey(
        tenancy_pb2.RotateApiKeyRequest(key_id=args.key_id, overlap=duration_pb2.Duration(seconds=args.overlap)),
        metadata=metadata,
    )
    print(f"old key        {rotated.old_key.key_id} valid until {_when(rotated.old_key.expires_at)}")
    _print_key(rotated.new_key, rotated.api_key)


async def _key_revoke(stub: Stub, metadata, args) -> None:
    key = (await stub.RevokeApiKey(tenancy_pb2.RevokeApiKeyRequest(key_id=args.key_id), metadata=metadata)).key
    revoked = key.revoked_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
    print(f"revoked {key.key_id} of tenant {key.tenant_id} at {revoked}")
