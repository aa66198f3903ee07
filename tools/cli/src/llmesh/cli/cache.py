"""`llmesh cache ...`: invalidate, warm, inspect and curate the cache through the cache service."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.identity import ADMIN_TOKEN_METADATA_KEY
from llmesh.launcher.state import admin_token, endpoint
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

ROLES = {"system": common_pb2.ROLE_SYSTEM, "user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT}
TIERS = {0: common_pb2.TIER_UNSPECIFIED, 1: common_pb2.TIER_1, 2: common_pb2.TIER_2, 3: common_pb2.TIER_3}
# A warm stream's deadline: generous, since each batch is embedded on the service's CPU.
WARM_TIMEOUT_BASE_S = 60.0
WARM_TIMEOUT_PER_PAIR_S = 0.2


class UsageError(Exception):
    """Bad command-line input or file content, reported without calling any service."""


def register(subparsers) -> None:
    cache = subparsers.add_parser("cache", help="invalidate, warm and inspect the cache")
    commands = cache.add_subparsers(dest="cache_command", required=True)

    invalidate = commands.add_parser(
        "invalidate", help="remove a tenant's cached answers on every replica (prints the event id)"
    )
    _tenant_arguments(invalidate, required=True)
    scope = invalidate.add_mutually_exclusive_group()
    scope.add_argument("--use-case", help="only this use case's answers")
    scope.add_argument("--document", help="answers built from a version of this document older than --version")
    invalidate.add_argument("--version", type=int, help="the document's new version (with --document)")
    invalidate.set_defaults(func=lambda args: _run(_invalidate, args))

    warm = commands.add_parser("warm", help="load prompt/answer pairs from a JSONL file, with a progress bar")
    warm.add_argument(
        "file",
        help='JSONL, one pair a line: {"tenant": NAME, "prompt": TEXT, "answer": TEXT} plus optional "system", '
        '"messages" (instead of prompt), "use_case", "model", "tier", "pinned_model", "sampling", "max_tokens", '
        '"ttl_seconds", "content_class", "content_versions" {doc: version}, "usage", "cost_usd", "business_unit"',
    )
    _tenant_arguments(warm, required=False, help_suffix=" (for lines that name none)")
    warm.add_argument("--use-case", default="", help="use case of lines that name none (default: default)")
    warm.set_defaults(func=lambda args: _run(_warm, args))

    stats = commands.add_parser("stats", help="hit rates and savings by tenant, business unit and use case")
    _tenant_arguments(stats, required=False)
    stats.add_argument("--business-unit", default="")
    stats.add_argument("--use-case", default="")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=lambda args: _run(_stats, args))

    for name, help_text in (
        ("pin", "keep a cached answer: it no longer expires and survives thumbs-down feedback"),
        ("unpin", "let a pinned answer expire again"),
        ("delete", "delete a cached answer"),
    ):
        command = commands.add_parser(name, help=help_text)
        _tenant_arguments(command, required=True)
        command.add_argument("entry_id", help="the answer's entry id (64 hex digits)")
        command.set_defaults(func=lambda args, name=name: _run(_ADMIN[name], args))


def _tenant_arguments(parser: argparse.ArgumentParser, *, required: bool, help_suffix: str = "") -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--tenant", help=f"tenant name, resolved through the tenancy service{help_suffix}")
    group.add_argument("--tenant-id", help=f"tenant id, used as given{help_suffix}")


# How tenancy's API keys begin: LLMESH_ADMIN_TOKEN may be an admin API key rather than the
# bootstrap admin token.
API_KEY_PREFIX = "llmesh_"


class Session:
    """What a command talks to: the cache, and tenancy to resolve tenant names (and, for an admin
    API key, to trade it for an admin token the cache checks on its own: docs/adr/0023)."""

    def __init__(self, cache: cache_pb2_grpc.CacheServiceStub, tenancy_target: str, token: str):
        self.cache = cache
        self._tenancy_target = tenancy_target
        self._role_key = token.startswith(API_KEY_PREFIX)
        # Tenancy's admin RPCs: the admin token or the admin API key.
        self.metadata = grpc.aio.Metadata(("authorization", f"Bearer {token}")) if token else None
        self._ids: dict[str, str] = {}
        self._issued: tenancy_pb2.IssueAdminTokenResponse | None = None

    async def _admin_token(self) -> tenancy_pb2.IssueAdminTokenResponse:
        if self._issued is None:
            async with open_channel(self._tenancy_target) as channel:
                stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
                self._issued = await stub.IssueAdminToken(tenancy_pb2.IssueAdminTokenRequest(), metadata=self.metadata)
        return self._issued

    async def cache_metadata(self, *, bearer: bool = True) -> grpc.aio.Metadata | None:
        """The cache's admin RPCs: an admin token from tenancy for an admin API key; else the
        admin token itself (`bearer`: the RPCs that check it) or nothing (the operator's
        credential alone)."""
        if self._role_key:
            return grpc.aio.Metadata((ADMIN_TOKEN_METADATA_KEY, (await self._admin_token()).admin_token))
        return self.metadata if bearer else None

    async def tenant_id(self, name: str) -> str:
        if name not in self._ids:
            if self.metadata is None:
                raise UsageError("no admin token to resolve tenant names: set LLMESH_ADMIN_TOKEN or use --tenant-id")
            async with open_channel(self._tenancy_target) as channel:
                stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
                response = await stub.GetTenant(tenancy_pb2.GetTenantRequest(name=name), metadata=self.metadata)
            self._ids[name] = response.tenant.tenant_id
        return self._ids[name]

    async def selected_tenant(self, args) -> str:
        if getattr(args, "tenant_id", None):
            return args.tenant_id
        if getattr(args, "tenant", None):
            return await self.tenant_id(args.tenant)
        if self._role_key:
            # A tenant admin's key: its own tenant.
            return (await self._admin_token()).tenant_id
        return ""


Command = Callable[[Session, argparse.Namespace], Awaitable[None]]


def _run(command: Command, args) -> int:
    target = endpoint("cache")
    tenancy = endpoint("tenancy")

    async def call() -> None:
        async with open_channel(target) as channel:
            await command(Session(cache_pb2_grpc.CacheServiceStub(channel), tenancy, admin_token()), args)

    try:
        asyncio.run(call())
    except UsageError as exc:
        print(f"llmesh cache: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        unreachable = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        where = f" (cache at {target}, tenancy at {tenancy})" if unreachable else ""
        details = " ".join((exc.details() or "").split())
        print(f"llmesh cache: {exc.code().name}: {details}{where}", file=sys.stderr)
        return 1
    return 0


async def _invalidate(session: Session, args) -> None:
    if (args.document is None) != (args.version is None):
        raise UsageError("--document and --version go together")
    request = cache_pb2.InvalidateRequest(tenant_id=await session.selected_tenant(args))
    if args.document is not None:
        request.content_version.CopyFrom(common_pb2.ContentVersion(document_id=args.document, version=args.version))
    elif args.use_case is not None:
        request.use_case = args.use_case
    else:
        request.all = True
    metadata = await session.cache_metadata(bearer=False)
    response = await session.cache.Invalidate(request, metadata=metadata)
    if response.pending:
        print(
            f"{response.event_id}  pending: NATS has not confirmed the event yet; the cache replica "
            "publishes it again until it does, then every replica applies it"
        )
    else:
        print(response.event_id)


async def _admin(session: Session, args, call) -> cache_pb2.CachedAnswer | bool:
    if session.metadata is None:
        raise UsageError("no admin token: set LLMESH_ADMIN_TOKEN or start a local mesh with `llmesh up`")
    return await call(await session.selected_tenant(args))


async def _pin(session: Session, args, pinned: bool = True) -> None:
    async def call(tenant_id: str):
        request = cache_pb2.PinEntryRequest(tenant_id=tenant_id, entry_id=args.entry_id, pinned=pinned)
        return (await session.cache.PinEntry(request, metadata=await session.cache_metadata())).answer

    answer = await _admin(session, args, call)
    expires = "never" if answer.pinned else answer.expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
    print(f"{answer.entry_id}  {'pinned' if answer.pinned else 'unpinned'}  expires {expires}")


async def _unpin(session: Session, args) -> None:
    await _pin(session, args, pinned=False)


async def _delete(session: Session, args) -> None:
    async def call(tenant_id: str):
        request = cache_pb2.DeleteEntryRequest(tenant_id=tenant_id, entry_id=args.entry_id)
        return (await session.cache.DeleteEntry(request, metadata=await session.cache_metadata())).deleted

    deleted = await _admin(session, args, call)
    print(f"{args.entry_id}  {'deleted' if deleted else 'not found'}")


_ADMIN = {"pin": _pin, "unpin": _unpin, "delete": _delete}


# -- warm ----------------------------------------------------------------------------------------


def _messages(line: dict[str, Any]) -> list[common_pb2.ChatMessage]:
    if "messages" in line:
        messages = line["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError('"messages" must be a list of {"role": ..., "content": ...}')
        result = []
        for m in messages:
            if m.get("role") not in ROLES:
                raise ValueError(f"role must be one of {', '.join(ROLES)} (got {m.get('role')!r})")
            result.append(common_pb2.ChatMessage(role=ROLES[m["role"]], content=str(m.get("content", ""))))
        return result
    if not isinstance(line.get("prompt"), str):
        raise ValueError('a line needs "prompt" (text) or "messages"')
    result = []
    if isinstance(line.get("system"), str):
        result.append(common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=line["system"]))
    result.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=line["prompt"]))
    return result


def _sampling(raw: Any) -> common_pb2.SamplingParams:
    if raw is None:
        return common_pb2.SamplingParams()
    if not isinstance(raw, dict):
        raise ValueError('"sampling" must be an object')
    params = common_pb2.SamplingParams(stop=list(raw.get("stop", [])))
    for name in ("temperature", "top_p", "top_k", "seed"):
        if raw.get(name) is not None:
            setattr(params, name, raw[name])
    return params


def warm_request(line: dict[str, Any], tenant_id: str, default_use_case: str) -> cache_pb2.WarmRequest:
    """One JSONL line as a Store request; the service validates the values."""
    if not isinstance(line.get("answer"), str):
        raise ValueError('a line needs "answer" (text)')
    tier = line.get("tier", 0)
    if tier not in TIERS:
        raise ValueError(f'"tier" must be 1, 2 or 3 (got {tier!r})')
    versions = line.get("content_versions", {})
    if not isinstance(versions, dict):
        raise ValueError('"content_versions" must be an object {"document_id": version}')
    usage = line.get("usage", {})
    key = cache_pb2.CacheKey(
        tenant_id=tenant_id,
        use_case=line.get("use_case") or default_use_case,
        messages=_messages(line),
        model=line.get("pinned_model", ""),
        sampling=_sampling(line.get("sampling")),
        max_tokens=int(line.get("max_tokens", 0)),
    )
    return cache_pb2.WarmRequest(
        entry=cache_pb2.StoreRequest(
            key=key,
            content=line["answer"],
            model=line.get("model", ""),
            backend=line.get("backend", "warm"),
            tier=TIERS[tier],
            usage=common_pb2.Usage(
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            ),
            cost_usd=float(line.get("cost_usd", 0.0)),
            ttl_seconds=int(line.get("ttl_seconds", 0)),
            content_versions=[
                common_pb2.ContentVersion(document_id=str(d), version=int(v)) for d, v in versions.items()
            ],
            content_class=line.get("content_class", ""),
            business_unit=line.get("business_unit", ""),
        )
    )


def read_pairs(path: str) -> list[tuple[int, dict[str, Any]]]:
    pairs = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    line = json.loads(text)
                except ValueError as exc:
                    raise UsageError(f"{path}:{number}: not JSON: {exc}") from exc
                if not isinstance(line, dict):
                    raise UsageError(f"{path}:{number}: each line must be a JSON object")
                pairs.append((number, line))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    return pairs


async def _warm(session: Session, args) -> None:
    from tqdm import tqdm

    pairs = read_pairs(args.file)
    default_tenant = await session.selected_tenant(args)
    requests = []
    for number, line in pairs:
        try:
            if line.get("tenant_id"):
                tenant_id = str(line["tenant_id"])
            elif line.get("tenant"):
                tenant_id = await session.tenant_id(str(line["tenant"]))
            elif default_tenant:
                tenant_id = default_tenant
            else:
                raise ValueError('no tenant: add "tenant" to the line or pass --tenant')
            requests.append(warm_request(line, tenant_id, args.use_case))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{args.file}:{number}: {exc}") from exc
    if session.metadata is None:
        raise UsageError("no admin token: set LLMESH_ADMIN_TOKEN or start a local mesh with `llmesh up`")

    async def stream() -> AsyncIterator[cache_pb2.WarmRequest]:
        for request in requests:
            yield request

    timeout = WARM_TIMEOUT_BASE_S + WARM_TIMEOUT_PER_PAIR_S * len(requests)
    last = cache_pb2.WarmResponse()
    with tqdm(total=len(requests), unit="pair", desc="warming", file=sys.stderr) as bar:
        metadata = await session.cache_metadata()
        async for progress in session.cache.Warm(stream(), metadata=metadata, timeout=timeout):
            bar.update(progress.received - bar.n)
            bar.set_postfix(stored=progress.stored, skipped=progress.skipped, failed=progress.failed)
            last = progress
    print(f"stored {last.stored}, skipped {last.skipped}, failed {last.failed} of {last.received} pairs")
    if last.last_error:
        print(f"last failure: {last.last_error}", file=sys.stderr)


# -- stats ---------------------------------------------------------------------------------------


STAT_COLUMNS = (
    ("TENANT", lambda r: r.tenant_id or "*"),
    ("BU", lambda r: r.business_unit or "-"),
    ("USE_CASE", lambda r: r.use_case or "*"),
    ("LOOKUPS", lambda r: str(r.lookups)),
    ("HIT%", lambda r: f"{100 * r.hit_rate:.1f}"),
    ("EXACT%", lambda r: f"{100 * r.exact_hit_rate:.1f}"),
    ("SEMANTIC%", lambda r: f"{100 * r.semantic_hit_rate:.1f}"),
    ("GRAY%", lambda r: f"{100 * r.gray_zone_rate:.1f}"),
    ("TOKENS_SAVED", lambda r: str(r.tokens_saved)),
    ("USD_SAVED", lambda r: f"{r.cost_saved_usd:.4f}"),
)


async def _stats(session: Session, args) -> None:
    response = await session.cache.Stats(
        cache_pb2.StatsRequest(
            tenant_id=await session.selected_tenant(args), business_unit=args.business_unit, use_case=args.use_case
        )
    )
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(response, always_print_fields_with_no_presence=True), indent=2))
        return
    rows = [[name for name, _ in STAT_COLUMNS]]
    rows += [[cell(r) for _, cell in STAT_COLUMNS] for r in [*response.rows, response.total]]
    rows[-1][0], rows[-1][1], rows[-1][2] = "TOTAL", "", ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
