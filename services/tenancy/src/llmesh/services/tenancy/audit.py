"""The tamper-evident audit log: append-only, hash-chained, with signed checkpoints.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's own fields (seq, time,
actor, action, tenant, target, detail) in canonical JSON; the first entry chains to 64 zeros.
Appends are serialised (a transaction-scoped lock on PostgreSQL, the write lock on SQLite), so
the chain has one order. Every `checkpoint_every` entries, and periodically, the head (seq and
hash) is signed with HMAC-SHA256 under the audit key from the settings: someone who can write to
the store but has not the key can rewrite the chain from an edited entry onwards, but not the
checkpoints, and cannot cut entries off the end behind a checkpoint.

verify() walks the chain in seq order and names the first bad entry: a gap (removed), a
prev_hash that is not the previous entry's hash (reordered or removed), a hash that does not
match the content (changed); then each checkpoint: a bad signature, a seq past the end
(entries cut off), or a hash that differs from the entry's (the chain rewritten up to there).
Not detectable: entries appended after the last checkpoint and then removed; the periodic
checkpoint keeps that window short.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from llmesh.events.v1 import events_pb2
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.logging import get_logger
from llmesh.kit.streams import SUBJECT_TOKEN
from llmesh.services.tenancy.models import AuditEntry, Checkpoint, validate_free_text
from llmesh.services.tenancy.repository import Repository, now_us

log = get_logger("llmesh.tenancy.audit")

GENESIS = "0" * 64
ACTION = re.compile(r"^[a-z0-9._-]{1,64}$")
MAX_DETAIL_CHARS = 8192
MAX_TARGET_CHARS = 256
MAX_ACTOR_CHARS = 200
PAGE = 1000


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    entries: int
    checkpoints: int
    first_bad_seq: int = 0
    problem: str = ""


def chain_hash(
    prev_hash: str, seq: int, at_us: int, actor: str, action: str, tenant_id: str, target: str, detail: str
) -> str:
    canonical = json.dumps([seq, at_us, actor, action, tenant_id, target, detail], separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}:{canonical}".encode()).hexdigest()


def _recomputed(e: AuditEntry) -> str:
    return chain_hash(e.prev_hash, e.seq, e.at_us, e.actor, e.action, e.tenant_id, e.target, e.detail_json)


def canonical_detail(detail: str | dict | None) -> str:
    """A JSON object as compact, key-sorted text; INVALID_ARGUMENT for anything else."""
    if detail is None or detail == "":
        return "{}"
    if isinstance(detail, str):
        if len(detail) > MAX_DETAIL_CHARS:
            raise InvalidArgument(
                f"detail_json has {len(detail)} characters; the limit is {MAX_DETAIL_CHARS}", field="detail_json"
            )
        try:
            detail = json.loads(detail)
        except ValueError as exc:
            raise InvalidArgument(f"detail_json is not JSON: {exc}", field="detail_json") from None
        except RecursionError:
            raise InvalidArgument("detail_json is nested too deeply", field="detail_json") from None
    if not isinstance(detail, dict):
        raise InvalidArgument("detail_json must be a JSON object", field="detail_json")
    return json.dumps(detail, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


class PendingAudit:
    """An entry waiting for its place in the chain: the repository calls it with the current head
    (seq, hash), or None for an empty log, under the append lock; `entry` is then the link written."""

    def __init__(
        self, actor: str, action: str, tenant_id: str, target: str, detail_json: str, event_id: str | None = None
    ):
        self.fields = (actor, action, tenant_id, target, detail_json)
        self.event_id = event_id
        self.entry: AuditEntry | None = None

    def __call__(self, head: tuple[int, str] | None) -> AuditEntry:
        prev_seq, prev_hash = head or (0, GENESIS)
        seq, at_us = prev_seq + 1, now_us()
        self.entry = AuditEntry(seq, at_us, *self.fields, prev_hash, chain_hash(prev_hash, seq, at_us, *self.fields))
        return self.entry


class AuditLog:
    def __init__(self, repository: Repository, signing_key: str = "", checkpoint_every: int = 100):
        self._repository = repository
        self._key = signing_key.encode() if signing_key else None
        self._every = checkpoint_every

    @property
    def signing(self) -> bool:
        return self._key is not None

    def _sign(self, seq: int, entry_hash: str, signed_at_us: int) -> str:
        assert self._key is not None
        return hmac.new(self._key, f"{seq}:{entry_hash}:{signed_at_us}".encode(), hashlib.sha256).hexdigest()

    def prepare(
        self,
        actor: str,
        action: str,
        *,
        tenant_id: str = "",
        target: str = "",
        detail: str | dict | None = None,
        event_id: str | None = None,
    ) -> PendingAudit:
        """A validated entry for the repository to append, alone or inside the transaction of the
        change it records."""
        if not ACTION.match(action or ""):
            raise InvalidArgument("action must be 1-64 characters of [a-z0-9._-]", field="action")
        if tenant_id and not SUBJECT_TOKEN.match(tenant_id):
            raise InvalidArgument("tenant_id is not a valid tenant id", field="tenant_id")
        target = validate_free_text(target, "target", MAX_TARGET_CHARS)
        actor = validate_free_text(actor, "actor", MAX_ACTOR_CHARS)
        return PendingAudit(actor, action, tenant_id, target, canonical_detail(detail), event_id)

    async def append(
        self, actor: str, action: str, *, tenant_id: str = "", target: str = "", detail: str | dict | None = None
    ) -> AuditEntry:
        pending = self.prepare(actor, action, tenant_id=tenant_id, target=target, detail=detail)
        await self._repository.append_audit(pending)
        await self.appended(pending)
        assert pending.entry is not None
        return pending.entry

    async def record_message(self, data: bytes) -> None:
        """The handler of llmesh.audit.> (AuditRecorded): appends each event id once. An event
        that cannot be parsed or is invalid is logged and dropped (redelivery would not fix it)."""
        try:
            event = events_pb2.AuditRecorded.FromString(data)
            if not event.event_id or len(event.event_id) > 128:
                raise ValueError("AuditRecorded without a usable event_id")
            source = event.source.strip() or "unknown"
            pending = self.prepare(
                f"nats:{source}",
                event.action,
                tenant_id=event.tenant_id,
                target=event.target,
                detail=event.detail_json,
                event_id=event.event_id,
            )
        except (DecodeError, ValueError, InvalidArgument) as exc:
            log.error("audit_event_dropped", error=str(exc))
            return
        if await self._repository.append_audit(pending) is not None:
            await self.appended(pending)

    async def appended(self, pending: PendingAudit) -> None:
        """After the transaction that appended `pending`: a signed checkpoint when one is due."""
        if self._key is not None and pending.entry is not None and pending.entry.seq % self._every == 0:
            await self.checkpoint()

    async def checkpoint(self) -> Checkpoint | None:
        """Signs the head of the chain (once per head); None without a key or entries."""
        if self._key is None:
            return None
        head = await self._repository.audit_head()
        if head is None:
            return None
        seq, entry_hash = head
        signed_at = now_us()
        checkpoint = Checkpoint(seq, entry_hash, signed_at, self._sign(seq, entry_hash, signed_at))
        if await self._repository.insert_checkpoint(checkpoint):
            log.info("audit_checkpoint", seq=seq)
        return checkpoint

    async def entries(self, *, tenant_id: str | None, after_seq: int, limit: int) -> list[AuditEntry]:
        if after_seq < 0:
            raise InvalidArgument("after_seq must be >= 0", field="after_seq")
        if not 0 <= limit <= 1000:
            raise InvalidArgument("limit must be 0..1000 (0: 100)", field="limit")
        return await self._repository.audit_entries(after_seq, limit or 100, tenant_id)

    async def verify(self) -> Verification:
        expected_seq, prev_hash, count = 1, GENESIS, 0
        problems: list[tuple[int, str]] = []
        hashes: dict[int, str] = {}
        after = 0
        while not problems:
            page = await self._repository.audit_entries(after, PAGE, None)
            if not page:
                break
            for e in page:
                count += 1
                if e.seq != expected_seq:
                    problems.append(
                        (expected_seq, f"entry {expected_seq} is missing (the next stored entry is {e.seq})")
                    )
                elif e.prev_hash != prev_hash:
                    problems.append((e.seq, f"entry {e.seq} does not chain to entry {e.seq - 1}: removed or reordered"))
                elif _recomputed(e) != e.entry_hash:
                    problems.append((e.seq, f"entry {e.seq} was changed: its hash does not match its content"))
                if problems:
                    break
                hashes[e.seq] = e.entry_hash
                prev_hash, expected_seq = e.entry_hash, e.seq + 1
            after = page[-1].seq
        last = expected_seq - 1
        checkpoints = await self._repository.audit_checkpoints()
        for cp in checkpoints:
            if self._key is not None and not hmac.compare_digest(
                self._sign(cp.seq, cp.entry_hash, cp.signed_at_us), cp.signature
            ):
                problems.append((cp.seq, f"the checkpoint at entry {cp.seq} has a bad signature"))
            elif not problems and cp.seq > last:
                problems.append(
                    (last + 1, f"entries {last + 1}..{cp.seq} were removed (signed checkpoint at {cp.seq})")
                )
            elif cp.seq in hashes and hashes[cp.seq] != cp.entry_hash:
                problems.append(
                    (cp.seq, f"entry {cp.seq} differs from its signed checkpoint: the chain was rewritten up to it")
                )
        if not problems:
            return Verification(True, count, len(checkpoints))
        seq, problem = min(problems)
        return Verification(False, count, len(checkpoints), seq, problem)
