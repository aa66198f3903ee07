"""Speculative dispatch on an exact cache miss (docs/adr/0029).

The cache's semantic layer embeds the prompt before it can answer (about 17 ms on a small
machine); waiting for it adds that much to the first token of every miss. With speculation the
router looks up the exact layer alongside the classifier, and on an exact miss starts the semantic
lookup (the semantic layer alone; the cache began embedding on the exact miss, docs/adr/0039) and
the dispatch to the first candidate together:

- while the lookup is pending, the model's first events are held, for at most `hold_ms` after the
  first one arrived;
- a usable hit in that time cancels the model's stream and serves the cached answer;
- a miss releases what was held at once;
- a hit after the hold budget ran out (what was held is released then) is ignored.

Dispatch before the classification (docs/adr/0038): on an exact miss (or at once when the cache
is not asked) the router may also start the attempt before the classifier answered, on the model
this tenant's use case was sent to first lately (`FirstChoices`), when that model is self-hosted
and may receive restricted data; the classification then adopts the attempt when its own first
candidate is that model, and cancels it otherwise (`EarlyDispatch`).

Policy section (kit.policy, per tenant and use case, over the settings' defaults)::

    {"speculation": {"enabled": true, "external": false, "hold_ms": 25, "early": true}}

`external`: speculate on external candidates too. Off by default: an external API bills the
prompt even when the stream is cancelled, so the router waits for the lookup before calling one.
`early`: dispatch before the classification (self-hosted models only, whatever `external` says).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
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
    # dispatch before the classification answered (docs/adr/0038)
    early: bool = True

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
    for name in ("enabled", "external", "early"):
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


class Pumped:
    """One task drives `stream` into a queue from now on, so its events arrive while the caller
    awaits other things. `events()` yields them in order (a failure is raised where it came);
    `close()` stops the stream (cancelling a gRPC call closes it)."""

    END = object()

    def __init__(self, stream: AsyncIterator[Any]):
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._pump(stream))

    async def _pump(self, stream: AsyncIterator[Any]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for event in stream:
                    self.queue.put_nowait(event)
        except Exception as exc:
            self.queue.put_nowait(_Failed(exc))
        else:
            self.queue.put_nowait(Pumped.END)

    @staticmethod
    def failure(item: Any) -> Exception | None:
        return item.error if isinstance(item, _Failed) else None

    async def events(self) -> AsyncIterator[Any]:
        try:
            while True:
                item = await self.queue.get()
                if item is Pumped.END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            await self.close()

    async def close(self) -> None:
        if not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})


@dataclasses.dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


class FirstChoices:
    """The model each (tenant, use case) was sent to first lately: exponentially decayed counts of
    the first candidate of its recent plans, with the tier it served there last. A prediction is
    made only when one model holds at least half of the weight after two or more plans; a bounded
    LRU of keys."""

    def __init__(self, size: int = 10_000, decay: float = 0.9):
        self._size = size
        self._decay = decay
        # (tenant, use case) -> (plans seen, model -> weight, model -> its last tier)
        self._seen: collections.OrderedDict[tuple[str, str], tuple[int, dict[str, float], dict[str, int]]] = (
            collections.OrderedDict()
        )

    def record(self, tenant_id: str, use_case: str, model: str, tier: int) -> None:
        if self._size <= 0:
            return
        key = (tenant_id, use_case)
        count, weights, tiers = self._seen.pop(key, (0, {}, {}))
        for name in list(weights):
            weights[name] *= self._decay
            if weights[name] < 0.01:
                del weights[name], tiers[name]
        weights[model] = weights.get(model, 0.0) + 1.0
        tiers[model] = tier
        self._seen[key] = (count + 1, weights, tiers)
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def predict(self, tenant_id: str, use_case: str) -> tuple[str, int] | None:
        """(model, tier) of the likely first candidate, or None."""
        found = self._seen.get((tenant_id, use_case))
        if found is None or found[0] < 2:
            return None
        _, weights, tiers = found
        model, weight = max(weights.items(), key=lambda item: item[1])
        return (model, tiers[model]) if weight >= 0.5 * sum(weights.values()) else None


class EarlyDispatch:
    """An attempt started before the classification answered (docs/adr/0038). The pipeline either
    adopts it as its first attempt (`adopt`: the events so far and to come, the breaker's probe
    with it) or discards it (`discard`: the stream is closed, which cancels inference's call and
    frees its slot; nothing of it was sent to the client or billed). Exactly one outcome is
    counted in llmesh_router_early_dispatch_total."""

    def __init__(
        self,
        *,
        model: ModelInfo,
        stream: AsyncIterator[Any],
        inference: Any,
        region: str,
        ticket: Any,
        release_breaker: Callable[[], None],
    ):
        self.model = model
        self.inference = inference
        self.region = region
        self.ticket = ticket
        self.started_at = time.perf_counter()
        self._release_breaker = release_breaker
        self._pumped = Pumped(stream)
        self._settled = False

    def matches(self, model: ModelInfo, region: str) -> bool:
        """Is this the attempt the plan starts with: the same model, served from the same region?"""
        return not self._settled and model.name == self.model.name and region == self.region

    def adopt(self) -> AsyncIterator[Any]:
        """The attempt's stream, from its first event (the breaker probe is the caller's now)."""
        assert not self._settled
        self._settled = True
        metrics.EARLY_DISPATCH.labels("adopted").inc()
        return self._pumped.events()

    def discard(self) -> None:
        if self._settled:
            return
        self._settled = True
        metrics.EARLY_DISPATCH.labels("discarded").inc()
        self._release_breaker()
        self._pumped.task.cancel()  # closes the stream: inference's call is cancelled
