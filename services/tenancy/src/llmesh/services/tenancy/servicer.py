"""TenancyService over gRPC: checks the admin token, converts, calls the domain."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from llmesh.common.v1 import common_pb2
from llmesh.kit.auth import AdminGuard
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.tenancy.models import ApiKey, Tenant
from llmesh.services.tenancy.tenancy import Tenancy
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

SERVICE_NAME = tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].full_name


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


class TenancyServicer(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self, tenancy: Tenancy, admin: AdminGuard):
        self._tenancy = tenancy
        self._admin = admin

    async def Authenticate(self, request, context):
        principal = await self._tenancy.authenticate(request.api_key)
        return tenancy_pb2.AuthenticateResponse(
            principal=common_pb2.Principal(
                tenant_id=principal.tenant_id,
                tenant_name=principal.tenant_name,
                business_unit=principal.business_unit,
                clearance=principal.clearance.to_proto(),
                key_id=principal.key_id,
            )
        )

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
