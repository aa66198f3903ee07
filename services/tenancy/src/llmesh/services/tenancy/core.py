"""Tenancy's use cases: tenants, keys (roles, expiry, rotation, revocation), authentication, and
who may do which (access.py). Every admin change writes its audit entry in its own transaction."""

from __future__ import annotations

import uuid

from google.protobuf import timestamp_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.auth import AdminGuard
from llmesh.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from llmesh.kit.logging import bind_contextvars, get_logger
from llmesh.kit.streams import KEY_REVOKED_SUBJECT
from llmesh.kit.vocabulary import Principal, Sensitivity
from llmesh.services.tenancy import keys
from llmesh.services.tenancy.access import Caller, admin_caller
from llmesh.services.tenancy.audit import AuditLog
from llmesh.services.tenancy.models import (
    DEFAULT_CLEARANCE,
    MAX_BUSINESS_UNIT_CHARS,
    MAX_LABEL_CHARS,
    ApiKey,
    Role,
    Tenant,
    new_key_id,
    new_tenant_id,
    validate_free_text,
    validate_id,
    validate_tenant_name,
)
from llmesh.services.tenancy.outbox import OutboxRelay, outbox_event
from llmesh.services.tenancy.repository import Credentials, Repository, now_us

log = get_logger("llmesh.tenancy")

DEFAULT_OVERLAP_S = 24 * 3600
MAX_OVERLAP_S = 30 * 24 * 3600


class Tenancy:
    def __init__(self, repository: Repository, relay: OutboxRelay, audit: AuditLog, guard: AdminGuard):
        self._repository = repository
        self._relay = relay
        self._audit = audit
        self._guard = guard

    # Who is calling

    async def caller(self, token: str) -> Caller:
        """The admin caller behind a bearer token: the bootstrap admin token or an API key with a
        role. UNAUTHENTICATED for a bad key, PERMISSION_DENIED for a key without a role."""
        found = admin_caller(token, self._guard)
        if found is not None:
            return found
        credentials = await self._verified(token)
        key = credentials.key
        if key.role is Role.NONE:
            raise PermissionDenied(f"API key {key.key_id} has no admin role")
        tenant_id = key.tenant_id if key.role is Role.TENANT_ADMIN else None
        return Caller(f"key:{key.key_id}", key.role, tenant_id)

    async def _verified(self, api_key: str) -> Credentials:
        key_id, secret = keys.parse_key(api_key)
        found = await self._repository.credentials(key_id)
        valid = keys.verify_secret(secret, found.secret if found else keys.DECOY)
        if found is None or not valid:
            raise Unauthenticated("invalid API key", field="api_key")
        if found.key.revoked:
            raise Unauthenticated(f"API key {key_id} has been revoked", field="api_key")
        if found.key.expired(now_us()):
            raise Unauthenticated(f"API key {key_id} has expired", field="api_key")
        return found

    # Tenants

    async def create_tenant(
        self, caller: Caller, name: str, business_unit: str = "", clearance: Sensitivity | None = None
    ) -> Tenant:
        caller.may_manage(None)
        tenant = Tenant(
            tenant_id=new_tenant_id(),
            name=validate_tenant_name(name),
            business_unit=validate_free_text(business_unit, "business_unit", MAX_BUSINESS_UNIT_CHARS),
            clearance=clearance or DEFAULT_CLEARANCE,
            created_at_us=now_us(),
        )
        audit = self._audit.prepare(
            caller.actor,
            "tenant.created",
            tenant_id=tenant.tenant_id,
            target=tenant.name,
            detail={"business_unit": tenant.business_unit, "clearance": tenant.clearance.name.lower()},
        )
        await self._repository.insert_tenant(tenant, audit)
        await self._audit.appended(audit)
        log.info(
            "tenant_created",
            tenant_id=tenant.tenant_id,
            tenant_name=tenant.name,
            clearance=tenant.clearance.name.lower(),
        )
        return tenant

    async def tenant_by_id(self, caller: Caller, tenant_id: str) -> Tenant:
        validate_id(tenant_id, "tenant_id", "tenant")
        caller.may_read(tenant_id)
        tenant = await self._repository.tenant_by_id(tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant with id {tenant_id}", field="tenant_id")
        return tenant

    async def tenant_by_name(self, caller: Caller, name: str) -> Tenant:
        validate_tenant_name(name)
        tenant = await self._repository.tenant_by_name(name)
        if tenant is None or (caller.role is Role.TENANT_ADMIN and tenant.tenant_id != caller.tenant_id):
            # A tenant admin learns nothing about other tenants, not even that they exist.
            raise NotFound(f"no tenant named {name!r}", field="name")
        return tenant

    async def list_tenants(self, caller: Caller) -> list[Tenant]:
        tenants = await self._repository.list_tenants()
        scope = caller.scope(None)
        return [t for t in tenants if scope is None or t.tenant_id == scope]

    # Keys

    async def create_key(
        self,
        caller: Caller,
        tenant_id: str,
        label: str = "",
        *,
        role: Role = Role.NONE,
        expires_at_us: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret form, which is returned here once and never stored."""
        validate_id(tenant_id, "tenant_id", "tenant")
        caller.may_manage(tenant_id)
        caller.may_grant(role)
        created_at = now_us()
        if expires_at_us is not None and expires_at_us <= created_at:
            raise InvalidArgument("expires_at must be in the future", field="expires_at")
        tenant = await self.tenant_by_id(caller, tenant_id)
        key = ApiKey(
            key_id=new_key_id(),
            tenant_id=tenant.tenant_id,
            label=validate_free_text(label, "label", MAX_LABEL_CHARS),
            created_at_us=created_at,
            role=role,
            expires_at_us=expires_at_us,
        )
        secret = keys.new_secret()
        audit = self._audit.prepare(
            caller.actor,
            "key.created",
            tenant_id=tenant.tenant_id,
            target=key.key_id,
            detail={"role": role.value, "expires_at_us": expires_at_us},
        )
        await self._repository.insert_key(key, keys.hash_secret(secret), audit)
        await self._audit.appended(audit)
        log.info("api_key_created", tenant_id=tenant.tenant_id, key_id=key.key_id, role=role.value)
        return key, keys.format_key(key.key_id, secret)

    async def list_keys(self, caller: Caller, tenant_id: str, include_revoked: bool = False) -> list[ApiKey]:
        validate_id(tenant_id, "tenant_id", "tenant")
        caller.may_read(tenant_id)
        await self.tenant_by_id(caller, tenant_id)
        return await self._repository.keys_of(tenant_id, include_revoked)

    async def _key_to_manage(self, caller: Caller, key_id: str) -> ApiKey:
        validate_id(key_id, "key_id", "key")
        existing = await self._repository.key_by_id(key_id)
        if existing is None or (caller.role is Role.TENANT_ADMIN and existing.tenant_id != caller.tenant_id):
            raise NotFound(f"no API key with id {key_id}", field="key_id")
        caller.may_manage(existing.tenant_id)
        return existing

    async def rotate_key(self, caller: Caller, key_id: str, overlap_s: float | None) -> tuple[ApiKey, ApiKey, str]:
        """A new key with the old one's tenant, label and role; the old one expires after the
        overlap. Returns (old key, new key, the new key's secret form)."""
        overlap = DEFAULT_OVERLAP_S if overlap_s is None else overlap_s
        if not 0 <= overlap <= MAX_OVERLAP_S:
            raise InvalidArgument(f"overlap must be 0 to {MAX_OVERLAP_S // 86400} days", field="overlap")
        old = await self._key_to_manage(caller, key_id)
        at = now_us()
        new = ApiKey(new_key_id(), old.tenant_id, old.label, at, role=old.role)
        secret = keys.new_secret()
        updated = await self._repository.rotate_key(
            key_id, new, keys.hash_secret(secret), at + int(overlap * 1_000_000), at
        )
        if updated is None:
            raise FailedPrecondition(
                f"API key {key_id} is revoked or expired: create a new key instead", field="key_id"
            )
        log.info("api_key_rotated", tenant_id=old.tenant_id, key_id=key_id, new_key_id=new.key_id)
        await self._audit.append(
            caller.actor,
            "key.rotated",
            tenant_id=old.tenant_id,
            target=key_id,
            detail={"new_key_id": new.key_id, "old_expires_at_us": updated.expires_at_us},
        )
        return updated, new, keys.format_key(new.key_id, secret)

    async def authenticate(self, api_key: str) -> Principal:
        return self._principal(await self._verified(api_key))

    async def principal_of_key(self, key_id: str) -> Principal:
        """The principal of an active traffic key, by id (for a tenant token's renewal: the caller,
        the router, authenticated the key itself before)."""
        found = await self._repository.credentials(validate_id(key_id, "key_id", "key"))
        if found is None:
            raise Unauthenticated(f"no API key with id {key_id}", field="key_id")
        if found.key.revoked:
            raise Unauthenticated(f"API key {key_id} has been revoked", field="key_id")
        if found.key.expired(now_us()):
            raise Unauthenticated(f"API key {key_id} has expired", field="key_id")
        return self._principal(found)

    def _principal(self, found: Credentials) -> Principal:
        if found.key.role is not Role.NONE:
            raise PermissionDenied(
                f"API key {found.key.key_id} is an admin key ({found.key.role.value}): it calls the admin RPCs only"
            )
        tenant = found.tenant
        bind_contextvars(tenant=tenant.tenant_id)
        return Principal(tenant.tenant_id, tenant.name, tenant.business_unit, tenant.clearance, found.key.key_id)

    async def revoke_key(self, caller: Caller, key_id: str) -> ApiKey:
        """Revokes a key (idempotent) and publishes ApiKeyRevoked once, after the commit."""
        existing = await self._key_to_manage(caller, key_id)
        revoked_at_us = now_us()
        event_id = uuid.uuid4().hex
        revoked_at = timestamp_pb2.Timestamp()
        revoked_at.FromMicroseconds(revoked_at_us)
        event = events_pb2.ApiKeyRevoked(
            event_id=event_id, key_id=key_id, tenant_id=existing.tenant_id, revoked_at=revoked_at
        )
        audit = self._audit.prepare(caller.actor, "key.revoked", tenant_id=existing.tenant_id, target=key_id)
        result = await self._repository.revoke_key(
            key_id, revoked_at_us, outbox_event(event_id, KEY_REVOKED_SUBJECT, event, revoked_at_us), audit
        )
        if result is None:
            raise NotFound(f"no API key with id {key_id}", field="key_id")
        key, newly_revoked = result
        if newly_revoked:
            log.info("api_key_revoked", tenant_id=key.tenant_id, key_id=key_id, event_id=event_id)
            await self._audit.appended(audit)
            await self._relay.flush()
        return key
