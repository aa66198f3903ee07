"""TenancyService over gRPC: resolves the admin caller from the bearer credential, converts
(convert.py), calls the domain (which checks what the caller's role allows)."""

from __future__ import annotations

from llmesh.kit.auth import authorization_header, bearer_token
from llmesh.kit.errors import InvalidArgument
from llmesh.services.tenancy.access import Caller
from llmesh.services.tenancy.audit import AuditLog
from llmesh.services.tenancy.convert import (
    ROLE_TO_PROTO,
    audit_entry_to_proto,
    clearance_from_proto,
    key_to_proto,
    role_from_proto,
    tenant_to_proto,
    timestamp_us,
    usage_report_to_proto,
    verification_to_proto,
)
from llmesh.services.tenancy.core import Tenancy
from llmesh.services.tenancy.ledger import Ledger
from llmesh.services.tenancy.models import Role, validate_id
from llmesh.services.tenancy.tokens import TenantTokens
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

SERVICE_NAME = tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].full_name


def _optional_tenant(tenant_id: str) -> str | None:
    return validate_id(tenant_id, "tenant_id", "tenant") if tenant_id else None


class TenancyServicer(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self, tenancy: Tenancy, ledger: Ledger, audit: AuditLog, tokens: TenantTokens):
        self._tenancy = tenancy
        self._ledger = ledger
        self._audit = audit
        self._tokens = tokens

    async def _caller(self, context) -> Caller:
        token = bearer_token(
            authorization_header(context.invocation_metadata()), credential="admin token", missing="admin token"
        )
        return await self._tenancy.caller(token)

    async def Authenticate(self, request, context):
        principal = await self._tenancy.authenticate(request.api_key)
        response = tenancy_pb2.AuthenticateResponse(principal=principal.to_proto())
        issued = self._tokens.issue(principal)
        if issued is not None:
            response.tenant_token = issued.token
            response.tenant_token_expires_at.FromSeconds(int(issued.expires_at))
        return response

    async def RenewTenantToken(self, request, context):
        principal = await self._tenancy.principal_of_key(request.key_id)
        response = tenancy_pb2.RenewTenantTokenResponse(principal=principal.to_proto())
        issued = self._tokens.issue(principal)
        if issued is not None:
            response.tenant_token = issued.token
            response.tenant_token_expires_at.FromSeconds(int(issued.expires_at))
        return response

    async def IssueAdminToken(self, request, context):
        caller = await self._caller(context)
        issued = self._tokens.issue_admin(caller)
        response = tenancy_pb2.IssueAdminTokenResponse(
            admin_token=issued.token, role=ROLE_TO_PROTO[caller.role], tenant_id=caller.tenant_id or ""
        )
        response.expires_at.FromSeconds(int(issued.expires_at))
        return response

    async def CreateTenant(self, request, context):
        caller = await self._caller(context)
        tenant = await self._tenancy.create_tenant(
            caller, request.name, request.business_unit, clearance_from_proto(request.clearance)
        )
        return tenancy_pb2.CreateTenantResponse(tenant=tenant_to_proto(tenant))

    async def GetTenant(self, request, context):
        caller = await self._caller(context)
        selector = request.WhichOneof("selector")
        if selector == "tenant_id":
            tenant = await self._tenancy.tenant_by_id(caller, request.tenant_id)
        elif selector == "name":
            tenant = await self._tenancy.tenant_by_name(caller, request.name)
        else:
            raise InvalidArgument("set tenant_id or name", field="selector")
        return tenancy_pb2.GetTenantResponse(tenant=tenant_to_proto(tenant))

    async def ListTenants(self, request, context):
        caller = await self._caller(context)
        tenants = await self._tenancy.list_tenants(caller)
        return tenancy_pb2.ListTenantsResponse(tenants=[tenant_to_proto(t) for t in tenants])

    async def CreateApiKey(self, request, context):
        caller = await self._caller(context)
        key, api_key = await self._tenancy.create_key(
            caller,
            request.tenant_id,
            request.label,
            role=role_from_proto(request.role),
            expires_at_us=timestamp_us(request, "expires_at"),
        )
        return tenancy_pb2.CreateApiKeyResponse(key=key_to_proto(key), api_key=api_key)

    async def RevokeApiKey(self, request, context):
        caller = await self._caller(context)
        key = await self._tenancy.revoke_key(caller, request.key_id)
        return tenancy_pb2.RevokeApiKeyResponse(key=key_to_proto(key))

    async def ListApiKeys(self, request, context):
        caller = await self._caller(context)
        keys = await self._tenancy.list_keys(caller, request.tenant_id, request.include_revoked)
        return tenancy_pb2.ListApiKeysResponse(keys=[key_to_proto(k) for k in keys])

    async def RotateApiKey(self, request, context):
        caller = await self._caller(context)
        overlap = request.overlap.seconds + request.overlap.nanos / 1e9 if request.HasField("overlap") else None
        old, new, api_key = await self._tenancy.rotate_key(caller, request.key_id, overlap)
        return tenancy_pb2.RotateApiKeyResponse(old_key=key_to_proto(old), new_key=key_to_proto(new), api_key=api_key)

    async def UsageReport(self, request, context):
        caller = await self._caller(context)
        tenant_id = caller.scope(_optional_tenant(request.tenant_id))
        report = await self._ledger.report(
            list(request.group_by),
            since_us=timestamp_us(request, "since"),
            until_us=timestamp_us(request, "until"),
            tenant_id=tenant_id,
            top=request.top_use_cases,
        )
        return usage_report_to_proto(report)

    async def AppendAudit(self, request, context):
        caller = await self._caller(context)
        caller.may_manage(None)
        source = request.source.strip()
        entry = await self._audit.append(
            f"{caller.actor} via {source}" if source else caller.actor,
            request.action,
            tenant_id=request.tenant_id,
            target=request.target,
            detail=request.detail_json,
        )
        return tenancy_pb2.AppendAuditResponse(entry=audit_entry_to_proto(entry))

    async def ListAudit(self, request, context):
        caller = await self._caller(context)
        tenant_id = caller.scope(_optional_tenant(request.tenant_id))
        entries = await self._audit.entries(tenant_id=tenant_id, after_seq=request.after_seq, limit=request.limit)
        return tenancy_pb2.ListAuditResponse(entries=[audit_entry_to_proto(e) for e in entries])

    async def VerifyAudit(self, request, context):
        caller = await self._caller(context)
        if caller.role is Role.TENANT_ADMIN:
            caller.may_read(None)
        return verification_to_proto(await self._audit.verify())
