"""A short-lived, bounded cache of authenticated principals, so most requests skip the tenancy
round trip. Keys are held only as keyed hashes (a per-process secret), never in the clear."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable

from llmesh.kit.vocabulary import Principal


class PrincipalCache:
    def __init__(self, ttl_s: float, max_entries: int, *, clock: Callable[[], float] = time.monotonic):
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._secret = os.urandom(32)
        self._entries: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        # Bumped by every revocation or flush: a lookup that started before it must not re-insert
        # a principal that may have just been revoked.
        self._epoch = 0

    def _fingerprint(self, api_key: str) -> bytes:
        return hmac.new(self._secret, api_key.encode(), hashlib.sha256).digest()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def epoch(self) -> int:
        return self._epoch

    def get(self, api_key: str) -> Principal | None:
        fingerprint = self._fingerprint(api_key)
        found = self._entries.get(fingerprint)
        if found is None:
            return None
        principal, expires_at = found
        if self._clock() >= expires_at:
            del self._entries[fingerprint]
            return None
        self._entries.move_to_end(fingerprint)
        return principal

    def put(self, api_key: str, principal: Principal, *, epoch: int) -> bool:
        """Caches `principal` unless a revocation or flush happened since `epoch` was read."""
        if epoch != self._epoch or self._ttl_s <= 0:
            return False
        fingerprint = self._fingerprint(api_key)
        self._entries[fingerprint] = (principal, self._clock() + self._ttl_s)
        self._entries.move_to_end(fingerprint)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return True

    def revoke(self, key_id: str, tenant_id: str = "") -> int:
        """Drops the entries of a revoked key (or of a whole tenant when no key id is given)."""
        self._epoch += 1
        if key_id:
            doomed = [f for f, (p, _) in self._entries.items() if p.key_id == key_id]
        elif tenant_id:
            doomed = [f for f, (p, _) in self._entries.items() if p.tenant_id == tenant_id]
        else:
            doomed = []
        for fingerprint in doomed:
            del self._entries[fingerprint]
        return len(doomed)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()
