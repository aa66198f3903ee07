"""Routing and tenant policy: JSON documents in the NATS KV bucket `llmesh-policy`, watched by
every service that needs them so a change applies without a restart. Each service reads its own
section through a CachedPolicy: its parser runs once per (tenant, use case) and policy revision.

Keys (later ones override earlier ones in `resolve`):
  global                          mesh-wide defaults
  tenant.<tenant_id>              one tenant's overrides
  use_case.<tenant_id>.<use_case> one use case of one tenant

The documents' format is the JSON Schema `policy.schema.json` beside this module (`load_schema()`),
explained in docs/policy.md; `llmesh policy` reads, validates and writes them.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from llmesh.kit.bus import Bus
from llmesh.kit.experiments import merge
from llmesh.kit.logging import get_logger
from llmesh.kit.tasks import BackgroundTasks

POLICY_BUCKET = "llmesh-policy"
# Revisions the bucket keeps per key (an edit can be looked back on).
POLICY_HISTORY = 5
SCHEMA_PATH = pathlib.Path(__file__).with_name("policy.schema.json")

log = get_logger("llmesh.policy")


@functools.cache
def _schema_text() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The JSON Schema of the whole bucket (keys to documents); `$defs/document` is one document."""
    return json.loads(_schema_text())


def policy_keys(tenant_id: str = "", use_case: str = "") -> list[str]:
    keys = ["global"]
    if tenant_id:
        keys.append(f"tenant.{tenant_id}")
        if use_case:
            keys.append(f"use_case.{tenant_id}.{use_case}")
    return keys


_merge = merge  # objects key by key, anything else replaces (the same merge as experiment variants)


P = TypeVar("P")


class CachedPolicy(Generic[P]):
    """One service's parsed section of the policy per (tenant, use case), parsed once per policy
    revision. `parse` turns the effective document into the service's own policy type; it should
    skip (and log) malformed values rather than raise, so a bad edit never fails requests.
    Calling the object (or `get`) returns the parsed policy."""

    def __init__(
        self,
        resolve: Callable[[str, str], Mapping[str, Any]],
        revision: Callable[[], int],
        parse: Callable[[Mapping[str, Any]], P],
        *,
        max_entries: int = 4096,
    ):
        self._resolve = resolve
        self._revision = revision
        self._parse = parse
        self._max_entries = max_entries
        self._seen_revision = -1
        self._parsed: dict[tuple[str, str], P] = {}

    def get(self, tenant_id: str, use_case: str) -> P:
        revision = self._revision()
        if revision != self._seen_revision or len(self._parsed) >= self._max_entries:
            self._parsed.clear()
            self._seen_revision = revision
        key = (tenant_id, use_case)
        if key not in self._parsed:
            self._parsed[key] = self._parse(self._resolve(tenant_id, use_case))
        return self._parsed[key]

    __call__ = get


class PolicyStore:
    def __init__(self, bus: Bus, bucket: str = POLICY_BUCKET):
        self._bus = bus
        self._bucket = bucket
        self._docs: dict[str, dict[str, Any]] = {}
        self._kv = None
        self._watcher = None
        self._tasks = BackgroundTasks("policy")
        self.revision = 0

    async def start(self) -> None:
        """Loads every current document, then follows changes in the background."""
        self._kv = await self._bus.js.create_key_value(bucket=self._bucket, history=POLICY_HISTORY)
        self._watcher = await self._kv.watchall()
        while True:
            entry = await self._watcher.updates(timeout=5.0)
            if entry is None:
                break
            self._apply(entry)
        self._tasks.spawn(self._follow(), name="policy-follow")

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is not None:
                self._apply(entry)

    def _apply(self, entry) -> None:
        self.revision = max(self.revision, entry.revision or 0)
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._docs.pop(entry.key, None)
            return
        try:
            doc = json.loads(entry.value)
            if not isinstance(doc, dict):
                raise ValueError("a policy document must be a JSON object")
        except ValueError as exc:
            log.warning("policy_ignored", key=entry.key, error=str(exc))
            return
        self._docs[entry.key] = doc

    def get(self, key: str) -> dict[str, Any] | None:
        return self._docs.get(key)

    def documents(self) -> dict[str, dict[str, Any]]:
        """Every current document by key (a copy)."""
        return {key: self._docs[key] for key in sorted(self._docs)}

    def resolve(self, tenant_id: str = "", use_case: str = "") -> dict[str, Any]:
        """The effective policy: global, then the tenant's, then the use case's overrides."""
        merged: dict[str, Any] = {}
        for key in policy_keys(tenant_id, use_case):
            doc = self._docs.get(key)
            if doc:
                merged = _merge(merged, doc)
        return merged

    def parsed(self, parse: Callable[[Mapping[str, Any]], P], *, max_entries: int = 4096) -> CachedPolicy[P]:
        """`parse` applied to the effective policy of each (tenant, use case), cached until a change."""
        return CachedPolicy(self.resolve, lambda: self.revision, parse, max_entries=max_entries)

    async def put(self, key: str, doc: dict[str, Any]) -> int:
        assert self._kv is not None, "start() first"
        return await self._kv.put(key, json.dumps(doc).encode())

    async def delete(self, key: str) -> None:
        assert self._kv is not None, "start() first"
        await self._kv.delete(key)

    async def stop(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
        await self._tasks.stop()
