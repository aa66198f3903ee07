"""`llmesh audit ...`: read and verify tenancy's hash-chained audit log."""

from __future__ import annotations

import sys

from llmesh.cli.tenant import Stub, run_admin
from llmesh.tenancy.v1 import tenancy_pb2


class AuditBroken(Exception):
    """verify found a bad entry: exit 1 after the report."""


def register(subparsers) -> None:
    audit = subparsers.add_parser("audit", help="the tamper-evident audit log")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = commands.add_parser("verify", help="recompute the chain and check the signed checkpoints")
    verify.set_defaults(func=_verify_command)
    listing = commands.add_parser("list", help="entries, oldest first")
    listing.add_argument("--tenant-id", default="")
    listing.add_argument("--after", type=int, default=0, help="entries after this seq")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(func=lambda args: run_admin(_list, args, "audit"))


def _verify_command(args) -> int:
    found: list[tenancy_pb2.VerifyAuditResponse] = []

    async def verify(stub: Stub, metadata, args) -> None:
        found.append(await stub.VerifyAudit(tenancy_pb2.VerifyAuditRequest(), metadata=metadata))

    code = run_admin(verify, args, "audit")
    if code or not found:
        return code
    result = found[0]
    if result.ok:
        print(f"ok: {result.entries} entries, {result.checkpoints} signed checkpoints")
        return 0
    print(f"BROKEN at entry {result.first_bad_seq}: {result.problem}", file=sys.stderr)
    return 1


async def _list(stub: Stub, metadata, args) -> None:
    request = tenancy_pb2.ListAuditRequest(tenant_id=args.tenant_id, after_seq=args.after, limit=args.limit)
    for e in (await stub.ListAudit(request, metadata=metadata)).entries:
        at = e.at.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"{e.seq}\t{at}\t{e.actor}\t{e.action}\t{e.tenant_id or '-'}\t{e.target or '-'}\t{e.detail_json}")
