"""TenancyService over gRPC: checks the admin token, converts (convert.py), calls the domain."""

from __future__ import annotations

from llmesh.kit.auth import AdminGuard
from llmesh.kit.errors import InvalidArgument
from llmesh.services.tenancy.audit import AuditLog
from llmesh.services.tenancy.convert import (
    audit_entry_to_proto,
    clearance_from_proto,
    key_to_proto,
    tenant_to_proto,
    timestamp_us,
    usage_report_to_proto,
    verification_to_proto,
)
from llmesh.services.tenancy.core import Tenancy
from llmesh.services.tenancy.ledger import Ledger
from llmesh.services.tenancy.models import validate_id
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

SERVICE_NAME = tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].full_name


class TenancyServicer(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self, tenancy: Tenancy, ledger: Ledger, audit: AuditLog, admin: AdminGuard):
        self._tenancy = tenancy
        self._ledger = ledger
        self._audit = audit
        self._admin = admin

    async def Authenticate(self, request, context):
        principal = await self._tenancy.authenticate(request.api_key)
        return tenancy_pb2.AuthenticateResponse(principal=principal.to_proto())

    async def CreateTenant(self, request, context):
        self._admin.check(context.invocation_metadata())
        tenant = await self._tenancy.create_tenant(
            request.name, request.business_unit, clearance_from_proto(request.clearance)
        )
        return tenancy_pb2.CreateTenantResponse(tenant=tenant_to_proto(tenant))

    async def GetTenant(self, request, context):
        self._admin.check(context.invocation_metadata())
        selector = request.WhichOneof("selector")
        if selector == "tenant_id":
            tenant = await self._tenancy.tenant_by_id(request.tenant_id)
        elif selector == "name":
            tenant = await self._tenancy.tenant_by_name(request.name)
        else:
            raise InvalidArgument("set tenant_id or name", field="selector")
        return tenancy_pb2.GetTenantResponse(tenant=tenant_to_proto(tenant))

    async def ListTenants(self, request, context):
        self._admin.check(context.invocation_metadata())
        tenants = await self._tenancy.list_tenants()
        return tenancy_pb2.ListTenantsResponse(tenants=[tenant_to_proto(t) for t in tenants])

    async def CreateApiKey(self, request, context):
        self._admin.check(context.invocation_metadata())
        key, api_key = await self._tenancy.create_key(request.tenant_id, request.label)
        return tenancy_pb2.CreateApiKeyResponse(key=key_to_proto(key), api_key=api_key)

    async def RevokeApiKey(self, request, context):
        self._admin.check(context.invocation_metadata())
        key = await self._tenancy.revoke_key(request.key_id)
        return tenancy_pb2.RevokeApiKeyResponse(key=key_to_proto(key))

    async def UsageReport(self, request, context):
        self._admin.check(context.invocation_metadata())
        tenant_id = validate_id(request.tenant_id, "tenant_id", "tenant") if request.tenant_id else None
        report = await self._ledger.report(
            list(request.group_by),
            since_us=timestamp_us(request, "since"),
            until_us=timestamp_us(request, "until"),
            tenant_id=tenant_id,
            top=request.top_use_cases,
        )
        return usage_report_to_proto(report)

    async def AppendAudit(self, request, context):
        actor = self._admin.check(context.invocation_metadata()) or "admin-token"
        source = request.source.strip()
        entry = await self._audit.append(
            f"{actor} via {source}" if source else actor,
            request.action,
            tenant_id=request.tenant_id,
            target=request.target,
            detail=request.detail_json,
        )
        return tenancy_pb2.AppendAuditResponse(entry=audit_entry_to_proto(entry))

    async def ListAudit(self, request, context):
        self._admin.check(context.invocation_metadata())
        tenant_id = validate_id(request.tenant_id, "tenant_id", "tenant") if request.tenant_id else None
        entries = await self._audit.entries(tenant_id=tenant_id, after_seq=request.after_seq, limit=request.limit)
        return tenancy_pb2.ListAuditResponse(entries=[audit_entry_to_proto(e) for e in entries])

    async def VerifyAudit(self, request, context):
        self._admin.check(context.invocation_metadata())
        return verification_to_proto(await self._audit.verify())
