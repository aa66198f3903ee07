"""Tenancy protos ↔ domain records."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.tenancy.audit import Verification
from llmesh.services.tenancy.ledger import UsageReport, UsageTotals
from llmesh.services.tenancy.models import ApiKey, AuditEntry, Role, Tenant
from llmesh.tenancy.v1 import tenancy_pb2


def _timestamp(micros: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(micros)
    return ts


def tenant_to_proto(tenant: Tenant) -> tenancy_pb2.Tenant:
    return tenancy_pb2.Tenant(
        tenant_id=tenant.tenant_id,
        name=tenant.name,
        business_unit=tenant.business_unit,
        clearance=tenant.clearance.to_proto(),
        created_at=_timestamp(tenant.created_at_us),
    )


def key_to_proto(key: ApiKey) -> tenancy_pb2.ApiKey:
    message = tenancy_pb2.ApiKey(
        key_id=key.key_id, tenant_id=key.tenant_id, label=key.label, created_at=_timestamp(key.created_at_us)
    )
    if key.revoked_at_us is not None:
        message.revoked_at.CopyFrom(_timestamp(key.revoked_at_us))
    message.role = ROLE_TO_PROTO[key.role]
    if key.expires_at_us is not None:
        message.expires_at.CopyFrom(_timestamp(key.expires_at_us))
    return message


ROLE_TO_PROTO = {
    Role.NONE: tenancy_pb2.ADMIN_ROLE_UNSPECIFIED,
    Role.PLATFORM_ADMIN: tenancy_pb2.ADMIN_ROLE_PLATFORM_ADMIN,
    Role.TENANT_ADMIN: tenancy_pb2.ADMIN_ROLE_TENANT_ADMIN,
    Role.AUDITOR: tenancy_pb2.ADMIN_ROLE_AUDITOR,
}
_ROLE_FROM_PROTO = {v: k for k, v in ROLE_TO_PROTO.items()}


def role_from_proto(value: int) -> Role:
    if value not in _ROLE_FROM_PROTO:
        raise InvalidArgument(f"unknown role {value}", field="role")
    return _ROLE_FROM_PROTO[value]


def clearance_from_proto(value: int) -> Sensitivity | None:
    """None when unset: the tenant gets the default clearance."""
    clearance = Sensitivity.from_proto(value, field="clearance")
    return None if clearance is Sensitivity.UNSPECIFIED else clearance


# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_TIMESTAMP_S, _MAX_TIMESTAMP_S = -62_135_596_800, 253_402_300_799


def timestamp_us(message, field: str) -> int | None:
    """A Timestamp field of `message` in microseconds, None when unset; INVALID_ARGUMENT outside
    the Timestamp range (which also keeps it inside a BIGINT)."""
    if not message.HasField(field):
        return None
    ts = getattr(message, field)
    if not _MIN_TIMESTAMP_S <= ts.seconds <= _MAX_TIMESTAMP_S or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(f"{field} is outside the Timestamp range (years 1 to 9999)", field=field)
    return ts.ToMicroseconds()


def usage_row_to_proto(row: UsageTotals) -> tenancy_pb2.UsageRow:
    return tenancy_pb2.UsageRow(
        group=row.group,
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_usd=row.cost_usd,
        cost_avoided_usd=row.cost_avoided_usd,
    )


def usage_report_to_proto(report: UsageReport) -> tenancy_pb2.UsageReportResponse:
    f = report.forecast
    return tenancy_pb2.UsageReportResponse(
        rows=[usage_row_to_proto(r) for r in report.rows],
        totals=usage_row_to_proto(report.totals),
        forecast=tenancy_pb2.UsageForecast(
            month_start=_timestamp(f.month_start_us),
            month_to_date_usd=f.month_to_date_usd,
            daily_rate_usd=f.daily_rate_usd,
            month_end_usd=f.month_end_usd,
        ),
        top_use_cases=[usage_row_to_proto(r) for r in report.top_use_cases],
    )


def audit_entry_to_proto(e: AuditEntry) -> tenancy_pb2.AuditEntry:
    return tenancy_pb2.AuditEntry(
        seq=e.seq,
        at=_timestamp(e.at_us),
        actor=e.actor,
        action=e.action,
        tenant_id=e.tenant_id,
        target=e.target,
        detail_json=e.detail_json,
        prev_hash=e.prev_hash,
        entry_hash=e.entry_hash,
    )


def verification_to_proto(v: Verification) -> tenancy_pb2.VerifyAuditResponse:
    return tenancy_pb2.VerifyAuditResponse(
        ok=v.ok, entries=v.entries, checkpoints=v.checkpoints, first_bad_seq=v.first_bad_seq, problem=v.problem
    )
