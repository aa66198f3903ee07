"""Tenancy protos ↔ domain records."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.tenancy.models import ApiKey, Tenant
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
    return message


def clearance_from_proto(value: int) -> Sensitivity | None:
    """None when unset: the tenant gets the default clearance."""
    clearance = Sensitivity.from_proto(value, field="clearance")
    return None if clearance is Sensitivity.UNSPECIFIED else clearance
