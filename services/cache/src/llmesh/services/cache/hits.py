"""Hit history: how often each entry was served and when, and the hour of day of a tenant's hits.
What a cache refresh reads to pick the entries worth regenerating (hit often, about to expire) and
the quiet hours to regenerate them in. Kept in this process (each replica counts its own hits),
bounded: the entries hit least recently are forgotten first."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict

HOURS = 24
DEFAULT_MAX_ENTRIES = 100_000


@dataclasses.dataclass(slots=True)
class EntryHits:
    tenant_id: str
    use_case: str
    entry_id: str
    hits: int = 0
    last_hit_at: float = 0.0


class HitHistory:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        # Touched only from the event loop: no lock needed.
        self._entries: OrderedDict[tuple[str, str], EntryHits] = OrderedDict()
        self._hours: dict[tuple[str, str], list[int]] = {}
        self._max_entries = max_entries

    def record(self, tenant_id: str, use_case: str, entry_id: str, now: float, count: int = 1) -> None:
        """`count` hits of the entry, the last at `now`."""
        key = (tenant_id, entry_id)
        row = self._entries.pop(key, None) or EntryHits(tenant_id, use_case, entry_id)
        row.hits += count
        row.last_hit_at = now
        self._entries[key] = row  # most recently hit last
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        hours = self._hours.setdefault((tenant_id, use_case), [0] * HOURS)
        hours[time.gmtime(now).tm_hour] += count

    def hits_by_hour(self, tenant_id: str, use_case: str = "") -> list[int]:
        """Hits per UTC hour of day (24 counts) of the tenant's use case, or of all its use cases."""
        total = [0] * HOURS
        for (tenant, case), hours in self._hours.items():
            if tenant == tenant_id and (not use_case or case == use_case):
                total = [a + b for a, b in zip(total, hours)]
        return total

    def often_hit(self, tenant_id: str, use_case: str, min_hits: int) -> list[EntryHits]:
        """The tenant's entries hit at least `min_hits` times, the most hit first."""
        rows = [
            dataclasses.replace(row)
            for row in self._entries.values()
            if row.tenant_id == tenant_id and (not use_case or row.use_case == use_case) and row.hits >= min_hits
        ]
        rows.sort(key=lambda row: (-row.hits, row.entry_id))
        return rows
