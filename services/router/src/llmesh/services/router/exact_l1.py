"""The router's L1 of exact answers (docs/adr/0033): a repeated request is answered from a copy of
the exact hit the cache returned for it before, without the cache hop.

An entry is filled only from an exact hit the cache answered (never a semantic hit, never from the
router's own stores: the cache may decline or alter those) and keyed like the exact cache key
(tenant, use case, messages, pinned model, sampling, max_tokens, memo.content_digest) plus the
policy KV revision (cache TTLs, restricted rules: any change makes new keys). It lives until the
earlier of the cache's own expiry and `ttl_s`, and is dropped by the cache's invalidation events
(all, use case, content version: applied as the cache applies them), by single-entry removals
(thumbs-down eviction, DeleteEntry) and by everything when the events may have been missed (NATS
disconnected: nothing is served or kept until it reconnects).

The hits it serves are counted by the cache through `HitReports`, batched by the adapter.

No gRPC or NATS here: the adapter in upstreams.py and the app drive it.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

from llmesh.services.router.domain import CachedAnswer

# How long an invalidation or a removal is remembered to refuse an answer looked up before it
# (an answer in flight, or a cache replica that applies the event later than this router).
REMEMBER_EVENTS_S = 60.0
# Events remembered per tenant (the oldest forgotten first).
MAX_EVENTS_PER_TENANT = 256


@dataclasses.dataclass(frozen=True, slots=True)
class L1Key:
    tenant_id: str
    use_case: str
    policy_revision: int
    digest: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Removal:
    """An invalidation (scope: all, a use case, or a document's versions older than `version`) or a
    single entry's removal (`entry_id`): what it removes from a tenant's entries created before
    `issued_at` (unix seconds, the cache's clock)."""

    tenant_id: str
    issued_at: float
    use_case: str | None = None
    document_id: str | None = None
    version: int | None = None
    entry_id: str | None = None

    def matches(self, answer: CachedAnswer, use_case: str) -> bool:
        """Whether the cache removes this entry (created_at aside: see `removes`)."""
        if self.entry_id is not None:
            return answer.entry_id == self.entry_id
        if self.document_id is not None:
            return any(d == self.document_id and v < (self.version or 0) for d, v in answer.content_versions)
        if self.use_case is not None:
            return use_case == self.use_case
        return True

    def removes(self, answer: CachedAnswer, use_case: str) -> bool:
        """Whether the cache removes this entry: as `matches`, for an entry created before the event."""
        return answer.created_at < self.issued_at and self.matches(answer, use_case)


_NO_EVENTS: collections.deque[tuple[float, Removal]] = collections.deque(maxlen=0)


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    answer: CachedAnswer
    expires_at: float


class ExactL1:
    """Bounded LRU of exact answers, each kept until min(the cache's expiry, now + ttl_s)."""

    def __init__(self, *, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.time):
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[L1Key, _Entry] = OrderedDict()
        # invalidations and removals heard lately, per tenant: (heard at, event)
        self._events: dict[str, collections.deque[tuple[float, Removal]]] = {}
        # bumped by every flush: an answer looked up before it is not kept
        self._epoch = 0
        #: False while events may be missed (NATS disconnected): nothing is served or kept
        self.live = True
        self._revision = 0

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0 and self._ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    def token(self) -> int:
        """Taken before a lookup and given to `put`: an answer looked up across a flush is not kept."""
        return self._epoch

    def get(self, key: L1Key) -> tuple[CachedAnswer | None, bool]:
        """The answer kept for the key, and True when one was kept but has expired (now dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None, False
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None, True
        self._entries.move_to_end(key)
        return entry.answer, False

    def put(self, key: L1Key, answer: CachedAnswer, token: int) -> bool:
        """Keeps an exact hit the cache answered; False when it may not be kept."""
        if (
            not self.enabled
            or not self.live
            or token != self._epoch
            or answer.semantic
            or not answer.entry_id
            or (answer.expires_at is None and not answer.pinned)
        ):
            return False
        if key.policy_revision != self._revision:
            if key.policy_revision < self._revision:
                return False  # looked up under a revision older than one seen since
            self._entries.clear()  # keyed on the revision: the older entries can never be read again
            self._revision = key.policy_revision
        now = self._clock()
        expires_at = now + self._ttl_s
        if not answer.pinned:
            expires_at = min(expires_at, answer.expires_at or 0.0)
        if expires_at <= now:
            return False
        for _, event in self._recent(key.tenant_id, now):
            if event.removes(answer, key.use_case):
                return False  # removed by an event heard while it was on its way
        self._entries[key] = _Entry(answer, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return True

    def drop(self, key: L1Key) -> None:
        self._entries.pop(key, None)

    def remove(self, event: Removal) -> int:
        """Applies an invalidation or an entry's removal; returns the entries dropped."""
        now = self._clock()
        recent = self._recent(event.tenant_id, now) or self._events.setdefault(event.tenant_id, collections.deque())
        recent.append((now, event))
        while len(recent) > MAX_EVENTS_PER_TENANT:
            recent.popleft()
        # Every matching entry goes, also one created after the event (the cache keeps that one:
        # the next lookup finds it again).
        doomed = [
            key
            for key, entry in self._entries.items()
            if key.tenant_id == event.tenant_id and event.matches(entry.answer, key.use_case)
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        """Forgets every entry; answers on their way are not kept."""
        self._entries.clear()
        self._epoch += 1

    def suspend(self) -> None:
        """Events may be missed from now on (NATS disconnected): nothing is served or kept."""
        self.live = False
        self.clear()

    def resume(self) -> None:
        """Events are heard again (NATS reconnected); what was missed meanwhile is unknown."""
        self.clear()
        self.live = True

    def _recent(self, tenant_id: str, now: float) -> collections.deque[tuple[float, Removal]]:
        """The tenant's events of the last REMEMBER_EVENTS_S (empty: none, and none kept for it)."""
        recent = self._events.get(tenant_id)
        if recent is None:
            return _NO_EVENTS
        while recent and recent[0][0] < now - REMEMBER_EVENTS_S:
            recent.popleft()
        if not recent:
            del self._events[tenant_id]  # a tenant quiet for a while costs nothing
        return recent


@dataclasses.dataclass(slots=True)
class HitCount:
    """The hits of one entry by one (tenant, business unit, use case) since the last report."""

    tenant_id: str
    business_unit: str
    use_case: str
    entry_id: str
    tokens: int
    cost_usd: float
    hits: int = 0
    last_hit_at: float = 0.0


class HitReports:
    """The L1's hits not yet reported to the cache, by entry and scope; at most `max_rows` rows
    (hits of further rows are dropped and counted in `dropped`)."""

    def __init__(self, *, max_rows: int = 10_000):
        self._rows: dict[tuple[str, str, str, str], HitCount] = {}
        self._max_rows = max_rows
        #: hits since the last `take`
        self.pending = 0
        #: hits dropped because too many rows waited (NATS could not take them)
        self.dropped = 0

    def record(self, tenant_id: str, business_unit: str, use_case: str, answer: CachedAnswer, now: float) -> int:
        """Counts one hit; returns the hits pending."""
        key = (tenant_id, business_unit, use_case, answer.entry_id)
        row = self._rows.get(key)
        if row is None:
            if len(self._rows) >= self._max_rows:
                self.dropped += 1
                return self.pending
            tokens = answer.usage.prompt_tokens + answer.usage.completion_tokens
            row = self._rows[key] = HitCount(
                tenant_id, business_unit, use_case, answer.entry_id, tokens, answer.cost_usd
            )
        row.hits += 1
        row.last_hit_at = now
        self.pending += 1
        return self.pending

    def take(self) -> list[HitCount]:
        rows = list(self._rows.values())
        self._rows.clear()
        self.pending = 0
        return rows
