"""What a stored point carries and which points an operation may touch, independent of the store.

Every read and every tenant-level delete goes through a `TenantScope`: it cannot be built without
a tenant id, and its conditions always begin with the tenant match, so no store call can leave the
tenant filter out. Each store only translates these conditions into its own filter types.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from typing import Any

from llmesh.kit import errors

from .api import SemanticEntry, SemanticQuery

# Payload keys (also the names of the payload indexes).
TENANT = "tenant_id"
USE_CASE = "use_case"
TIER = "tier"
CONTEXT = "context_hash"
PARAMS = "params_hash"
EXPIRES = "expires_at"  # whole microseconds since the epoch, see `stored_time`
CREATED = "created_at"  # whole microseconds since the epoch
DOCS = "docs"  # [{"doc": document_id, "v": version}, ...]

KEYWORD_FIELDS = (USE_CASE, CONTEXT, PARAMS)
# Indexed as numbers (a float index, which ranges over integers too).
TIME_FIELDS = (EXPIRES, CREATED)

_POINT_NAMESPACE = uuid.UUID("6f9d1c2e-5b7a-4e3c-9a8d-2c4b6e8f0a1d")


@dataclasses.dataclass(frozen=True)
class Match:
    key: str
    value: str | int


@dataclasses.dataclass(frozen=True)
class Range:
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclasses.dataclass(frozen=True)
class BuiltFromOlder:
    """The entry was built from `document_id` at a version below `version`."""

    document_id: str
    version: int


Condition = Match | Range | BuiltFromOlder


@dataclasses.dataclass(frozen=True)
class TenantScope:
    tenant_id: str
    extra: tuple[Condition, ...] = ()

    def __post_init__(self):
        if not isinstance(self.tenant_id, str) or not self.tenant_id:
            raise errors.InvalidArgument("a tenant id is required", field="tenant_id")

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return (Match(TENANT, self.tenant_id), *self.extra)


def satisfied(conditions: tuple[Condition, ...], payload: dict[str, Any]) -> bool:
    """The conditions evaluated on a stored payload, with the stores' semantics."""
    for cond in conditions:
        if isinstance(cond, Match):
            if payload.get(cond.key) != cond.value:
                return False
        elif isinstance(cond, Range):
            value = payload.get(cond.key)
            if value is None:
                return False
            if (
                (cond.gt is not None and not value > cond.gt)
                or (cond.gte is not None and not value >= cond.gte)
                or (cond.lt is not None and not value < cond.lt)
                or (cond.lte is not None and not value <= cond.lte)
            ):
                return False
        elif isinstance(cond, BuiltFromOlder):
            if not any(
                d.get("doc") == cond.document_id and d.get("v", 0) < cond.version for d in payload.get(DOCS, [])
            ):
                return False
        else:
            raise TypeError(f"unknown condition {cond!r}")
    return True


def stored_time(unix_seconds: float) -> int:
    """Times are stored as integer microseconds: qdrant-edge returns about one float payload in
    eight a bit off in its last binary digit, and an integer comes back exactly."""
    return round(unix_seconds * 1_000_000)


def expired(now: float) -> Range:
    return Range(EXPIRES, lte=stored_time(now))


def lookup_scope(query: SemanticQuery) -> TenantScope:
    """The entries that may answer `query`: same tenant, use case, context and parameters, a tier
    at least as strong as the one asked for, not expired."""
    extra: list[Condition] = [
        Match(USE_CASE, query.use_case),
        Match(CONTEXT, query.context_hash),
        Match(PARAMS, query.params_hash),
        Range(EXPIRES, gt=stored_time(query.now)),
    ]
    if query.tier > 0:
        extra.append(Range(TIER, gte=query.tier))
    return TenantScope(query.tenant_id, tuple(extra))


def deletion_scope(
    tenant_id: str,
    *,
    use_case: str | None = None,
    document_id: str | None = None,
    older_than_version: int | None = None,
    created_before: float | None = None,
) -> TenantScope:
    extra: list[Condition] = []
    if use_case is not None:
        extra.append(Match(USE_CASE, use_case))
    if document_id is not None:
        if older_than_version is None:
            raise errors.InvalidArgument("a document id needs the version it now has", field="older_than_version")
        extra.append(BuiltFromOlder(document_id, older_than_version))
    elif older_than_version is not None:
        raise errors.InvalidArgument("a version needs the document it belongs to", field="document_id")
    if created_before is not None:
        extra.append(Range(CREATED, lt=stored_time(created_before)))
    return TenantScope(tenant_id, tuple(extra))


def point_id(tenant_id: str, entry_id: str) -> str:
    """Qdrant ids are UUIDs; the tenant is part of the name so equal entry ids never collide."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{tenant_id}\x00{entry_id}"))


def to_payload(entry: SemanticEntry) -> dict[str, Any]:
    return {
        TENANT: entry.tenant_id,
        "entry_id": entry.entry_id,
        USE_CASE: entry.use_case,
        TIER: int(entry.tier),
        CONTEXT: entry.context_hash,
        PARAMS: entry.params_hash,
        "text": entry.text,
        EXPIRES: stored_time(entry.expires_at),
        CREATED: stored_time(entry.created_at),
        "content_class": entry.content_class,
        DOCS: [{"doc": doc, "v": int(version)} for doc, version in sorted(entry.content_versions.items())],
        "answer": base64.b64encode(entry.payload).decode("ascii"),
        "pinned": bool(entry.pinned),
    }


def from_payload(payload: dict[str, Any]) -> SemanticEntry:
    return SemanticEntry(
        entry_id=payload["entry_id"],
        tenant_id=payload[TENANT],
        use_case=payload[USE_CASE],
        tier=int(payload[TIER]),
        context_hash=payload[CONTEXT],
        params_hash=payload[PARAMS],
        text=payload["text"],
        expires_at=payload[EXPIRES] / 1_000_000,
        created_at=payload[CREATED] / 1_000_000,
        content_class=payload.get("content_class", ""),
        content_versions={item["doc"]: int(item["v"]) for item in payload.get(DOCS, [])},
        payload=base64.b64decode(payload.get("answer", "")),
        pinned=bool(payload.get("pinned", False)),
    )
