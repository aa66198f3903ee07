"""Load-driven overflow ("burst to cloud"): when a tier's self-hosted models are full, eligible
requests go to the external models first.

The pool of a tier is its self-hosted candidates. Its utilization is sum(active) / sum(capacity)
over the models with a fresh load snapshot (load.py); a stale or missing snapshot is unknown load,
which never by itself starts an overflow. Hysteresis per pool and threshold pair: overflowing
starts when the utilization reaches `threshold` and stops only once it falls below
`resume_below`. Independently, a request overflows when the least-waiting model of the pool would
make it miss its deadline (its queue ahead of it, then its own generation, from the load
snapshot's TTFT and tokens/s).

Not eligible (the request stays on the self-hosted models and queues there): the tenant's policy
turns overflow off; no external model may receive the request (sensitivity, data access); the
budget hook refuses the extra cost.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from llmesh.kit.logging import get_logger
from llmesh.services.router.domain import ModelInfo
from llmesh.services.router.load import LoadBoard, LoadSnapshot

log = get_logger("llmesh.router.overflow")


@dataclasses.dataclass(frozen=True)
class OverflowPolicy:
    enabled: bool = True
    threshold: float = 0.80
    resume_below: float = 0.65


def parse_overflow(section: Any, defaults: OverflowPolicy) -> OverflowPolicy:
    if section is None:
        return defaults
    if not isinstance(section, dict):
        log.warning("policy_entry_ignored", field="overflow", key="")
        return defaults
    values = dataclasses.asdict(defaults)
    if "enabled" in section:
        if isinstance(section["enabled"], bool):
            values["enabled"] = section["enabled"]
        else:
            log.warning("policy_entry_ignored", field="overflow.enabled", key=str(section["enabled"]))
    for name in ("threshold", "resume_below"):
        value = section.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            log.warning("policy_entry_ignored", field=f"overflow.{name}", key=str(value))
            continue
        values[name] = float(value)
    if values["resume_below"] > values["threshold"]:
        log.warning("policy_entry_ignored", field="overflow.resume_below", key="above threshold")
        values["resume_below"] = values["threshold"]
    return OverflowPolicy(**values)


@dataclasses.dataclass(frozen=True, slots=True)
class OverflowDecision:
    reason: str
    utilization: float


# (tenant_id, use_case, external model, estimated extra USD) → whether the budget allows it. The
# quota work fills this in; by default every extra cost is allowed.
ExtraCostAllowed = Callable[[str, str, str, float], bool]


def allow_any_cost(tenant_id: str, use_case: str, model: str, extra_usd: float) -> bool:
    return True


def pool_utilization(pool: list[ModelInfo], snapshots: Mapping[str, LoadSnapshot]) -> float | None:
    active = capacity = 0
    for model in pool:
        snap = snapshots.get(model.name)
        if snap is None or snap.capacity <= 0:
            continue
        active += snap.active
        capacity += snap.capacity
    return None if capacity == 0 else active / capacity


def expected_finish_s(snapshot: LoadSnapshot, max_tokens: int) -> float | None:
    """Seconds until a request sent now would finish on this model, from its load snapshot; None
    when the snapshot says too little (no generation measured yet)."""
    if snapshot.capacity <= 0 or snapshot.tokens_per_second_p50 <= 0:
        return None
    service_s = snapshot.ttft_p50_ms / 1000.0 + max_tokens / snapshot.tokens_per_second_p50
    ahead = snapshot.active + snapshot.queued - snapshot.capacity + 1
    waves = max(0, math.ceil(ahead / snapshot.capacity))
    return waves * service_s + service_s


class OverflowGate:
    def __init__(self, load: LoadBoard):
        self._load = load
        # (tier, threshold, resume_below) → overflowing now
        self._overflowing: dict[tuple[int, float, float], bool] = {}

    def check(
        self,
        *,
        tier: int,
        pool: list[ModelInfo],
        policy: OverflowPolicy,
        max_tokens: int,
        deadline_left_s: float | None,
    ) -> OverflowDecision | None:
        """Whether the tier's self-hosted pool is full (with hysteresis) or too slow for the
        deadline. Eligibility is the caller's business."""
        if not pool:
            return None
        snapshots = {m.name: s for m in pool if (s := self._load.current(m.name, m.region)) is not None}
        utilization = pool_utilization(pool, snapshots)
        key = (tier, policy.threshold, policy.resume_below)
        if utilization is not None:
            was = self._overflowing.get(key, False)
            now = utilization >= policy.threshold if not was else utilization >= policy.resume_below
            if now != was:
                log.info("overflow_state", tier=tier, overflowing=now, utilization=round(utilization, 3))
            self._overflowing[key] = now
            if now:
                line = policy.threshold if not was else policy.resume_below
                relation = ">=" if not was else "still >="
                return OverflowDecision(
                    f"utilization {utilization:.2f} {relation} {line:.2f} on tier {tier}", utilization
                )
        if deadline_left_s is not None and snapshots and len(snapshots) == len(pool):
            finishes = [expected_finish_s(s, max_tokens) for s in snapshots.values()]
            if all(f is not None for f in finishes):
                best = min(finishes)
                if best > deadline_left_s:
                    return OverflowDecision(
                        f"queue wait: expected to finish in {best:.1f} s > deadline {deadline_left_s:.1f} s "
                        f"on tier {tier}",
                        utilization if utilization is not None else math.nan,
                    )
        return None
