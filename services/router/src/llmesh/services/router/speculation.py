"""Speculative dispatch on an exact cache miss (docs/adr/0029).

The cache's semantic layer embeds the prompt before it can answer (about 17 ms on a small
machine); waiting for it adds that much to the first token of every miss. With speculation the
router looks up the exact layer alongside the classifier, and on an exact miss starts the semantic
lookup (the semantic layer alone; the cache began embedding on the exact miss, docs/adr/0040) and
the dispatch to the first candidate together:

- while the lookup is pending, the model's first events are held, for at most `hold_ms` after the
  first one arrived;
- a usable hit in that time cancels the model's stream and serves the cached answer;
- a miss releases what was held at once;
- a hit after the hold budget ran out (what was held is released then) is ignored.

Policy section (kit.policy, per tenant and use case, over the settings' defaults)::

    {"speculation": {"enabled": true, "external": false, "hold_ms": 25}}

`external`: speculate on external candidates too. Off by default: an external API bills the
prompt even when the stream is cancelled, so the router waits for the lookup before calling one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from llmesh.kit.logging import get_logger
from llmesh.services.router import metrics
from llmesh.services.router.domain import CachedAnswer, ModelInfo

log = get_logger("llmesh.router.speculation")

MAX_HOLD_MS = 10_000.0


@dataclasses.dataclass(frozen=True)
class SpeculationPolicy:
    enabled: bool = True
    external: bool = False
    hold_ms: float = 25.0

    def allows(self, model: ModelInfo) -> bool:
        """May a request be dispatched to `model` before its semantic lookup answered?"""
        return self.enabled and (model.self_hosted or self.external)


def parse_speculation(section: Any, defaults: SpeculationPolicy) -> SpeculationPolicy:
    if section is None:
        return defaults
    if not isinstance(section, dict):
        log.warning("policy_entry_ignored", field="speculation", key="")
        return defaults
    values = dataclasses.asdict(defaults)
    for name in ("enabled", "external"):
        value = section.get(name)
        if isinstance(value, bool):
            values[name] = value
        elif value is not None:
            log.warning("policy_entry_ignored", field=f"speculation.{name}", key=str(value))
    hold = section.get("hold_ms")
    if hold is not None:
        if isinstance(hold, bool) or not isinstance(hold, int | float) or not 0 <= hold <= MAX_HOLD_MS:
            log.warning("policy_entry_ignored", field="speculation.hold_ms", key=str(hold))
        else:
            values["hold_ms"] = float(hold)
    return SpeculationPolicy(**values)


class Speculation:
    """One request's pending semantic lookup, raced against its dispatch.

    Ends in exactly one outcome, counted once in llmesh_router_speculation_total:
      won     the lookup missed (or failed): the model's answer was the one to serve
      lost    a usable hit came in time: the speculative attempt was cancelled, the hit served
      wasted  a usable hit came too late (hold budget spent, tokens released): ignored
    """

    def __init__(self, lookup: asyncio.Task[CachedAnswer | None], *, hold_s: float, needed_tier: int):
        self.lookup = lookup
        self.hold_s = hold_s
        self._needed_tier = needed_tier
        self.pending = True
        # an attempt was dispatched while the lookup was pending (only then is an outcome counted)
        self.dispatched = False

    def usable(self, cached: CachedAnswer | None) -> bool:
        if cached is None:
            return False
        if cached.tier < self._needed_tier:
            metrics.CACHE_TIER_REJECTED.inc()
            log.info("cache_hit_tier_too_low", cached_tier=cached.tier, needed_tier=self._needed_tier)
            return False
        return True

    def settle(self) -> CachedAnswer | None:
        """The lookup has finished: its usable hit (outcome lost), or None (won)."""
        assert self.lookup.done() and self.pending
        self.pending = False
        cached = self.lookup.result() if self.usable(self.lookup.result()) else None
        if self.dispatched:
            metrics.SPECULATION.labels("lost" if cached is not None else "won").inc()
        return cached

    async def wait(self) -> CachedAnswer | None:
        """Waits for the lookup (before a dispatch that may not speculate)."""
        await asyncio.shield(self.lookup)
        return self.settle()

    def ignore(self) -> None:
        """The hold budget ran out: whatever the lookup answers now is not served."""
        if not self.pending:
            return
        self.pending = False
        log.debug("speculation_hold_spent", hold_ms=round(self.hold_s * 1000.0, 1))

        def count(task: asyncio.Task[CachedAnswer | None]) -> None:
            hit = not task.cancelled() and task.exception() is None and self.usable(task.result())
            metrics.SPECULATION.labels("wasted" if hit else "won").inc()

        self.lookup.add_done_callback(count)
