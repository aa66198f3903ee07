"""The usage ledger: every request's UsageRecorded (published by the router on
`llmesh.usage.<tenant>`, JetStream stream LLMESH_USAGE, alone or in a UsageRecordedBatch of its
tenant's records, docs/adr/0035) written once, keyed by request id, and the
chargeback report over it (grouped totals, a month-end forecast, the top use cases by cost).

Exactly once: JetStream redelivers a message until it is acked, and the ack follows the write; a
redelivered or republished request id hits the primary key and is skipped, so a restart mid-load
neither loses nor doubles an entry. A batch is one write (one statement, or one transaction): its
records are in the ledger together, each of them once, whichever batches or singles overlap it.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.logging import get_logger
from llmesh.kit.usage import usage_records
from llmesh.services.tenancy.repository import Repository, now_us

log = get_logger("llmesh.tenancy.ledger")

# Report group names → ledger columns (a fixed map: no caller text ever reaches the SQL).
GROUPS: dict[str, str] = {
    "tenant": "tenant_id",
    "business_unit": "business_unit",
    "use_case": "use_case",
    "model": "model",
    "tier": "tier",
    "backend": "backend",
    "region": "region",
    "api_key": "key_id",
    "cache_outcome": "cache_outcome",
}
DEFAULT_TOP = 5
MAX_TOP = 100
TREND_DAYS = 7
DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True, slots=True)
class UsageEntry:
    request_id: str
    tenant_id: str
    business_unit: str
    use_case: str
    key_id: str
    model: str
    tier: str
    backend: str
    region: str
    cache_outcome: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cost_avoided_usd: float
    occurred_at_us: int


@dataclass(slots=True)
class UsageTotals:
    group: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_avoided_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Forecast:
    month_start_us: int
    month_to_date_usd: float
    daily_rate_usd: float
    month_end_usd: float


@dataclass(frozen=True, slots=True)
class UsageReport:
    rows: list[UsageTotals]
    totals: UsageTotals
    forecast: Forecast
    top_use_cases: list[UsageTotals]


def entry_from_event(event: events_pb2.UsageRecorded, received_at_us: int) -> UsageEntry:
    if not event.request_id or not event.tenant_id:
        raise ValueError("UsageRecorded without request_id or tenant_id")
    tier = common_pb2.Tier.Name(event.tier).removeprefix("TIER_").lower() if event.tier in (1, 2, 3) else ""
    occurred = event.occurred_at.ToMicroseconds() if event.HasField("occurred_at") else received_at_us
    return UsageEntry(
        request_id=event.request_id,
        tenant_id=event.tenant_id,
        business_unit=event.business_unit,
        use_case=event.use_case,
        key_id=event.key_id,
        model=event.model,
        tier=tier,
        backend=event.backend,
        region=event.region,
        cache_outcome=event.cache_outcome,
        prompt_tokens=event.usage.prompt_tokens,
        completion_tokens=event.usage.completion_tokens,
        cost_usd=event.cost_usd,
        cost_avoided_usd=event.cost_avoided_usd,
        occurred_at_us=occurred,
    )


def parse_group_by(names: list[str]) -> list[str]:
    seen: list[str] = []
    for raw in names:
        for name in (part.strip() for part in raw.split(",")):
            if not name:
                continue
            if name not in GROUPS:
                raise InvalidArgument(
                    f"cannot group by {name[:40]!r}: use any of {', '.join(GROUPS)}", field="group_by"
                )
            if name not in seen:
                seen.append(name)
    return seen


def month_start_us(at_us: int) -> tuple[int, int]:
    """(start of the UTC month holding `at_us`, start of the next one)."""
    at = dt.datetime.fromtimestamp(at_us / 1e6, tz=dt.UTC)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(at.year, at.month)[1]
    return int(start.timestamp() * 1e6), int((start + dt.timedelta(days=days)).timestamp() * 1e6)


def forecast(month_start: int, month_end: int, now: int, month_to_date: float, trend_spend: float) -> Forecast:
    """Month-to-date plus the mean daily spend of the last TREND_DAYS (or the days so far) times
    the days left."""
    trend_span_us = max(min(now - month_start, TREND_DAYS * DAY_US), 1)
    daily = trend_spend / (trend_span_us / DAY_US) if now > month_start else 0.0
    days_left = max(month_end - now, 0) / DAY_US
    return Forecast(month_start, month_to_date, daily, month_to_date + daily * days_left)


class Ledger:
    def __init__(self, repository: Repository):
        self._repository = repository

    async def record_message(self, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        """The JetStream handler: writes the message's entries, one UsageRecorded or a
        UsageRecordedBatch (docs/adr/0035), in one statement (raising makes JetStream redeliver the
        whole message; the entries written before are skipped then). What cannot be parsed, a
        message or a record of a batch, is logged and dropped: redelivering it would not help."""
        try:
            records = usage_records(data, headers)
        except DecodeError as exc:
            log.error("usage_record_dropped", error=str(exc))
            return
        received = now_us()
        entries = []
        for record in records:
            try:
                entries.append(entry_from_event(record, received))
            except ValueError as exc:
                log.error("usage_record_dropped", error=str(exc), request_id=record.request_id)
        if entries:
            await self.record_many(entries)

    async def record(self, entry: UsageEntry) -> bool:
        """True when written now, False when the request id was already in the ledger."""
        return entry.request_id in await self.record_many([entry])

    async def record_many(self, entries: list[UsageEntry]) -> set[str]:
        """Writes the entries all or none; returns the request ids that were not in the ledger yet."""
        return await self._repository.insert_usage(entries, now_us())

    async def report(
        self,
        group_by: list[str],
        *,
        since_us: int | None,
        until_us: int | None,
        tenant_id: str | None,
        top: int = 0,
        now: int | None = None,
    ) -> UsageReport:
        groups = parse_group_by(group_by)
        if top < 0 or top > MAX_TOP:
            raise InvalidArgument(f"top_use_cases must be 0..{MAX_TOP}", field="top_use_cases")
        if since_us is not None and until_us is not None and since_us >= until_us:
            raise InvalidArgument("since must be before until", field="since")
        now = now_us() if now is None else now
        columns = [GROUPS[g] for g in groups]
        repo = self._repository
        rows = [
            UsageTotals(dict(zip(groups, values, strict=True)), *sums)
            for values, sums in await repo.usage_totals(columns, since_us, until_us, tenant_id)
        ]
        ((_, total),) = await repo.usage_totals([], since_us, until_us, tenant_id)
        top_rows = await repo.usage_totals(
            ["use_case"], since_us, until_us, tenant_id, order_by_cost=True, limit=top or DEFAULT_TOP
        )
        start, end = month_start_us(now)
        ((_, mtd),) = await repo.usage_totals([], start, now + 1, tenant_id)
        ((_, trend),) = await repo.usage_totals([], max(start, now - TREND_DAYS * DAY_US), now + 1, tenant_id)
        return UsageReport(
            rows=rows,
            totals=UsageTotals({}, *total),
            forecast=forecast(start, end, now, mtd[3], trend[3]),
            top_use_cases=[UsageTotals({"use_case": v[0]}, *s) for v, s in top_rows],
        )
