"""A short-lived, bounded cache of authenticated principals, so most requests skip the tenancy
round trip. Keys are held only as keyed hashes (a per-process secret), never in the clear."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from llmesh.kit.vocabulary import Principal

# A principal whose tenant token expires within this many seconds is fetched again (its token
# renewed) rather than served from the cache: a call made with it must not outlive the token.
TOKEN_RENEW_MARGIN_S = 60.0


class TokenRenewer:
    """Fresh tenant tokens for principals kept longer than a token lives (a batch job's), one
    tenancy call per key and token lifetime. `renew(key_id)` asks tenancy."""

    def __init__(
        self,
        renew: Callable[[str], Awaitable[Principal]],
        *,
        max_entries: int = 1024,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._renew = renew
        self._max_entries = max_entries
        self._wall_clock = wall_clock
        self._fresh: OrderedDict[str, Principal] = OrderedDict()

    def _usable(self, principal: Principal) -> bool:
        return principal.tenant_token_expires_at - self._wall_clock() >= TOKEN_RENEW_MARGIN_S

    async def fresh(self, principal: Principal) -> Principal:
        if self._usable(principal):
            return principal
        known = self._fresh.get(principal.key_id)
        if known is None or not self._usable(known):
            known = await self._renew(principal.key_id)
            self._fresh[principal.key_id] = known
            while len(self._fresh) > self._max_entries:
                self._fresh.popitem(last=False)
        self._fresh.move_to_end(principal.key_id)
        return known

    def revoke(self, key_id: str) -> None:
        self._fresh.pop(key_id, None)


class PrincipalCache:
    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        *,
        stale_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._ttl_s = ttl_s
        # How long after its TTL an entry may still answer while tenancy cannot (stale_get).
        self._stale_s = stale_s
        #: False while revocation events may be missed (NATS disconnected): nothing stale is served.
        self.stale_allowed = True
        self._max_entries = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
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
        token_renewal_due = (
            principal.tenant_token and principal.tenant_token_expires_at - self._wall_clock() < TOKEN_RENEW_MARGIN_S
        )
        if self._clock() >= expires_at or token_renewal_due:
            if self._clock() >= expires_at + self._stale_s:
                del self._entries[fingerprint]  # kept until then for stale_get
            return None
        self._entries.move_to_end(fingerprint)
        return principal

    def stale_get(self, api_key: str) -> Principal | None:
        """For when tenancy cannot answer (unavailable, not a rejection): the principal this key
        had within `stale_s` after its TTL, if its tenant token still has TOKEN_RENEW_MARGIN_S to
        live and no revocation or flush dropped it. A revocation drops entries at once (the event
        on NATS), and none is served while NATS is disconnected (stale_allowed)."""
        if not self.stale_allowed or self._stale_s <= 0:
            return None
        found = self._entries.get(self._fingerprint(api_key))
        if found is None:
            return None
        principal, expires_at = found
        if self._clock() >= expires_at + self._stale_s:
            return None
        if principal.tenant_token and principal.tenant_token_expires_at - self._wall_clock() < TOKEN_RENEW_MARGIN_S:
            return None
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
