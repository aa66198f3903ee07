"""Admin roles and the API key lifecycle through the real service, on both stores: what a
platform admin, a tenant admin and an auditor may do; listing, expiry, rotation with overlap."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from llmesh.kit import identity
from llmesh.kit.errors import FailedPrecondition
from llmesh.kit.identity import Signer, Verifier
from llmesh.kit.testing import assert_eventually, unique
from llmesh.services.tenancy.access import BOOTSTRAP, Caller
from llmesh.services.tenancy.models import Role
from llmesh.services.tenancy.repository import now_us
from llmesh.services.tenancy.tokens import TenantTokens
from llmesh.tenancy.v1 import tenancy_pb2 as pb

pytestmark = pytest.mark.timeout(90)

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _expect(code, call, needle: str = "") -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == code, exc.value.details()
    assert needle in exc.value.details(), exc.value.details()


def _bearer(api_key: str) -> grpc.aio.Metadata:
    return grpc.aio.Metadata(("authorization", f"Bearer {api_key}"))


async def _tenant(stub, admin) -> pb.Tenant:
    return (await stub.CreateTenant(pb.CreateTenantRequest(name=unique("r")), metadata=admin)).tenant


async def _key(stub, admin, tenant_id: str, role=pb.ADMIN_ROLE_UNSPECIFIED, **fields) -> pb.CreateApiKeyResponse:
    return await stub.CreateApiKey(pb.CreateApiKeyRequest(tenant_id=tenant_id, role=role, **fields), metadata=admin)


async def test_tenant_admin_manages_its_own_tenant_only(service, admin):
    _, stub = service
    mine, theirs = await _tenant(stub, admin), await _tenant(stub, admin)
    ta = _bearer((await _key(stub, admin, mine.tenant_id, pb.ADMIN_ROLE_TENANT_ADMIN)).api_key)

    created = await _key(stub, ta, mine.tenant_id, label="svc")
    assert (
        await stub.Authenticate(pb.AuthenticateRequest(api_key=created.api_key))
    ).principal.tenant_id == mine.tenant_id
    listed = (await stub.ListTenants(pb.ListTenantsRequest(), metadata=ta)).tenants
    assert [t.tenant_id for t in listed] == [mine.tenant_id]
    keys = (await stub.ListApiKeys(pb.ListApiKeysRequest(tenant_id=mine.tenant_id), metadata=ta)).keys
    assert created.key.key_id in [k.key_id for k in keys]

    await _expect(DENIED, _key(stub, ta, theirs.tenant_id), f"tenant admin of {mine.tenant_id}")
    await _expect(DENIED, _key(stub, ta, mine.tenant_id, pb.ADMIN_ROLE_PLATFORM_ADMIN), "only a platform admin")
    await _expect(DENIED, stub.CreateTenant(pb.CreateTenantRequest(name=unique("x")), metadata=ta), "the platform")
    await _expect(DENIED, stub.ListApiKeys(pb.ListApiKeysRequest(tenant_id=theirs.tenant_id), metadata=ta))
    await _expect(DENIED, stub.UsageReport(pb.UsageReportRequest(tenant_id=theirs.tenant_id), metadata=ta))
    await _expect(DENIED, stub.AppendAudit(pb.AppendAuditRequest(action="x"), metadata=ta))
    await _expect(DENIED, stub.VerifyAudit(pb.VerifyAuditRequest(), metadata=ta))
    await _expect(
        grpc.StatusCode.NOT_FOUND, stub.GetTenant(pb.GetTenantRequest(name=theirs.name), metadata=ta), "no tenant"
    )
    other_key = await _key(stub, admin, theirs.tenant_id)
    await _expect(
        grpc.StatusCode.NOT_FOUND, stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=other_key.key.key_id), metadata=ta)
    )
    # Its own reads are scoped to its tenant without asking.
    entries = (await stub.ListAudit(pb.ListAuditRequest(), metadata=ta)).entries
    assert entries and {e.tenant_id for e in entries} == {mine.tenant_id}
    assert any(e.actor.startswith("key:") and e.action == "key.created" for e in entries)


async def test_auditor_reads_everything_and_changes_nothing(service, admin):
    _, stub = service
    tenant = await _tenant(stub, admin)
    auditor = _bearer((await _key(stub, admin, tenant.tenant_id, pb.ADMIN_ROLE_AUDITOR)).api_key)
    other = await _tenant(stub, admin)
    assert other.tenant_id in [
        t.tenant_id for t in (await stub.ListTenants(pb.ListTenantsRequest(), metadata=auditor)).tenants
    ]
    await stub.ListApiKeys(pb.ListApiKeysRequest(tenant_id=other.tenant_id), metadata=auditor)
    await stub.UsageReport(pb.UsageReportRequest(), metadata=auditor)
    assert (await stub.VerifyAudit(pb.VerifyAuditRequest(), metadata=auditor)).ok
    await _expect(DENIED, _key(stub, auditor, other.tenant_id), "auditor: read-only")
    await _expect(DENIED, stub.CreateTenant(pb.CreateTenantRequest(name=unique("x")), metadata=auditor), "read-only")
    await _expect(DENIED, stub.AppendAudit(pb.AppendAuditRequest(action="x"), metadata=auditor), "read-only")


async def test_platform_admin_key_acts_like_the_bootstrap_token_and_admin_keys_cannot_call_the_mesh(service, admin):
    _, stub = service
    tenant = await _tenant(stub, admin)
    platform = await _key(stub, admin, tenant.tenant_id, pb.ADMIN_ROLE_PLATFORM_ADMIN)
    pa = _bearer(platform.api_key)
    created = (await stub.CreateTenant(pb.CreateTenantRequest(name=unique("p")), metadata=pa)).tenant
    assert created.tenant_id.startswith("t_")
    await _expect(DENIED, stub.Authenticate(pb.AuthenticateRequest(api_key=platform.api_key)), "admin key")
    plain = await _key(stub, admin, tenant.tenant_id)
    await _expect(DENIED, stub.ListTenants(pb.ListTenantsRequest(), metadata=_bearer(plain.api_key)), "no admin role")
    await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=platform.key.key_id), metadata=admin)
    await _expect(grpc.StatusCode.UNAUTHENTICATED, stub.ListTenants(pb.ListTenantsRequest(), metadata=pa), "revoked")
    await _expect(
        DENIED, stub.ListTenants(pb.ListTenantsRequest(), metadata=_bearer("not-the-token-at-all")), "not valid"
    )


async def test_expiry_rotation_with_overlap_and_listing(service, admin):
    _, stub = service
    tenant = await _tenant(stub, admin)
    soon = timestamp_pb2.Timestamp()
    soon.FromMicroseconds(now_us() + 1_500_000)
    expiring = await _key(stub, admin, tenant.tenant_id, expires_at=soon)
    assert expiring.key.expires_at == soon
    await stub.Authenticate(pb.AuthenticateRequest(api_key=expiring.api_key))

    async def expired() -> bool:
        try:
            await stub.Authenticate(pb.AuthenticateRequest(api_key=expiring.api_key))
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED and "has expired" in exc.details()
        return False

    await assert_eventually(expired, timeout_s=10, message="the key expires")

    old = await _key(stub, admin, tenant.tenant_id, label="app")
    rotated = await stub.RotateApiKey(
        pb.RotateApiKeyRequest(key_id=old.key.key_id, overlap=duration_pb2.Duration(seconds=3600)), metadata=admin
    )
    assert rotated.new_key.label == "app" and rotated.new_key.tenant_id == tenant.tenant_id
    assert rotated.old_key.expires_at.ToMicroseconds() > now_us() + 3_500_000_000
    # Both work during the overlap.
    for api_key in (old.api_key, rotated.api_key):
        await stub.Authenticate(pb.AuthenticateRequest(api_key=api_key))
    now_rotated = await stub.RotateApiKey(
        pb.RotateApiKeyRequest(key_id=rotated.new_key.key_id, overlap=duration_pb2.Duration()), metadata=admin
    )
    await _expect(
        grpc.StatusCode.UNAUTHENTICATED, stub.Authenticate(pb.AuthenticateRequest(api_key=rotated.api_key)), "expired"
    )
    await stub.Authenticate(pb.AuthenticateRequest(api_key=now_rotated.api_key))
    await _expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.RotateApiKey(pb.RotateApiKeyRequest(key_id=rotated.new_key.key_id), metadata=admin),
        "revoked or expired",
    )
    await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=old.key.key_id), metadata=admin)
    active = (await stub.ListApiKeys(pb.ListApiKeysRequest(tenant_id=tenant.tenant_id), metadata=admin)).keys
    everything = (
        await stub.ListApiKeys(pb.ListApiKeysRequest(tenant_id=tenant.tenant_id, include_revoked=True), metadata=admin)
    ).keys
    assert old.key.key_id not in [k.key_id for k in active]
    assert [k.key_id for k in everything] == [
        expiring.key.key_id,
        old.key.key_id,
        rotated.new_key.key_id,
        now_rotated.new_key.key_id,
    ]
    actions = [
        e.action
        for e in (await stub.ListAudit(pb.ListAuditRequest(tenant_id=tenant.tenant_id), metadata=admin)).entries
    ]
    assert actions.count("key.rotated") == 2 and actions[-1] == "key.revoked"


async def test_new_rpcs_refuse_bad_input(service, admin):
    _, stub = service
    tenant = await _tenant(stub, admin)
    past = timestamp_pb2.Timestamp(seconds=1)
    await _expect(INVALID, _key(stub, admin, tenant.tenant_id, expires_at=past), "expires_at must be in the future")
    await _expect(INVALID, _key(stub, admin, tenant.tenant_id, role=42), "unknown role")
    await _expect(INVALID, stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=admin), "tenant_id is empty")
    await _expect(INVALID, stub.ListApiKeys(pb.ListApiKeysRequest(tenant_id="a b"), metadata=admin), "not a valid")
    await _expect(
        grpc.StatusCode.NOT_FOUND,
        stub.ListApiKeys(pb.ListApiKeysRequest(tenant_id="t_0000000000000000"), metadata=admin),
    )
    await _expect(INVALID, stub.RotateApiKey(pb.RotateApiKeyRequest(), metadata=admin), "key_id is empty")
    key = await _key(stub, admin, tenant.tenant_id)
    too_long = duration_pb2.Duration(seconds=31 * 86400)
    await _expect(
        INVALID,
        stub.RotateApiKey(pb.RotateApiKeyRequest(key_id=key.key.key_id, overlap=too_long), metadata=admin),
        "overlap",
    )
    await _expect(
        INVALID,
        stub.RotateApiKey(
            pb.RotateApiKeyRequest(key_id=key.key.key_id, overlap=duration_pb2.Duration(seconds=-1)), metadata=admin
        ),
        "overlap",
    )
    await _expect(
        grpc.StatusCode.NOT_FOUND,
        stub.RotateApiKey(pb.RotateApiKeyRequest(key_id="k_0000000000000000"), metadata=admin),
    )
    await _expect(grpc.StatusCode.UNAUTHENTICATED, stub.ListApiKeys(pb.ListApiKeysRequest(tenant_id=tenant.tenant_id)))


def test_admin_tokens_carry_the_callers_role_and_tenant():
    signer = Signer.generate("tenancy-1")
    trust = {"issuers": [{"key_id": "tenancy-1", "public_key": signer.public_key_b64, "issues": [identity.ADMIN]}]}
    verifier = Verifier.from_trust(trust)
    tokens = TenantTokens(signer, 300.0)
    # The roles the cache checks are tenancy's own.
    assert (identity.PLATFORM_ADMIN, identity.TENANT_ADMIN, identity.AUDITOR) == (
        Role.PLATFORM_ADMIN.value,
        Role.TENANT_ADMIN.value,
        Role.AUDITOR.value,
    )
    issued = tokens.issue_admin(Caller("key:k-1", Role.TENANT_ADMIN, "t-1"))
    claims = verifier.verify(issued.token, identity.ADMIN)
    assert (claims.role, claims.subject, claims.key_id) == ("tenant_admin", "t-1", "key:k-1")
    assert claims.expires_at == pytest.approx(issued.expires_at, abs=1)
    claims = verifier.verify(tokens.issue_admin(BOOTSTRAP).token, identity.ADMIN)
    assert (claims.role, claims.subject) == ("platform_admin", "")
    with pytest.raises(FailedPrecondition, match="without identity checks"):
        TenantTokens(None, 300.0).issue_admin(BOOTSTRAP)


async def test_issue_admin_token_wants_an_admin_credential(service, admin):
    _, stub = service
    tenant = await _tenant(stub, admin)
    plain = await _key(stub, admin, tenant.tenant_id)
    await _expect(
        DENIED, stub.IssueAdminToken(pb.IssueAdminTokenRequest(), metadata=_bearer(plain.api_key)), "no admin role"
    )
    await _expect(grpc.StatusCode.UNAUTHENTICATED, stub.IssueAdminToken(pb.IssueAdminTokenRequest()), "admin token")
    role = await _key(stub, admin, tenant.tenant_id, pb.ADMIN_ROLE_TENANT_ADMIN)
    issued = await stub.IssueAdminToken(pb.IssueAdminTokenRequest(), metadata=_bearer(role.api_key))
    assert (issued.role, issued.tenant_id) == (pb.ADMIN_ROLE_TENANT_ADMIN, tenant.tenant_id)
    assert issued.admin_token and issued.expires_at.seconds > 0
    bootstrap = await stub.IssueAdminToken(pb.IssueAdminTokenRequest(), metadata=admin)
    assert (bootstrap.role, bootstrap.tenant_id) == (pb.ADMIN_ROLE_PLATFORM_ADMIN, "")
