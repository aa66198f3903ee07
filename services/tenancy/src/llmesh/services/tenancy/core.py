"""Tenancy's use cases: tenants, keys, authentication and revocation."""

from __future__ import annotations

import uuid

from google.protobuf import timestamp_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.errors import NotFound, Unauthenticated
from llmesh.kit.logging import bind_contextvars, get_logger
from llmesh.kit.streams import KEY_REVOKED_SUBJECT
from llmesh.kit.vocabulary import Principal, Sensitivity
from llmesh.services.tenancy import keys
from llmesh.services.tenancy.audit import AuditLog
from llmesh.services.tenancy.models import (
    DEFAULT_CLEARANCE,
    MAX_BUSINESS_UNIT_CHARS,
    MAX_LABEL_CHARS,
    ApiKey,
    Tenant,
    new_key_id,
    new_tenant_id,
    validate_free_text,
    validate_id,
    validate_tenant_name,
)
from llmesh.services.tenancy.outbox import OutboxRelay, outbox_event
from llmesh.services.tenancy.repository import Repository, now_us

log = get_logger("llmesh.tenancy")


class Tenancy:
    def __init__(self, repository: Repository, relay: OutboxRelay, audit: AuditLog):
        self._repository = repository
        self._relay = relay
        self._audit = audit

    async def create_tenant(
        self, name: str, business_unit: str = "", clearance: Sensitivity | None = None, *, actor: str = "system"
    ) -> Tenant:
        tenant = Tenant(
            tenant_id=new_tenant_id(),
            name=validate_tenant_name(name),
            business_unit=validate_free_text(business_unit, "business_unit", MAX_BUSINESS_UNIT_CHARS),
            clearance=clearance or DEFAULT_CLEARANCE,
            created_at_us=now_us(),
        )
        await self._repository.insert_tenant(tenant)
        log.info(
            "tenant_created",
            tenant_id=tenant.tenant_id,
            tenant_name=tenant.name,
            clearance=tenant.clearance.name.lower(),
        )
        await self._audit.append(
            actor,
            "tenant.created",
            tenant_id=tenant.tenant_id,
            target=tenant.name,
            detail={"business_unit": tenant.business_unit, "clearance": tenant.clearance.name.lower()},
        )
        return tenant

    async def tenant_by_id(self, tenant_id: str) -> Tenant:
        validate_id(tenant_id, "tenant_id", "tenant")
        tenant = await self._repository.tenant_by_id(tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant with id {tenant_id}", field="tenant_id")
        return tenant

    async def tenant_by_name(self, name: str) -> Tenant:
        validate_tenant_name(name)
        tenant = await self._repository.tenant_by_name(name)
        if tenant is None:
            raise NotFound(f"no tenant named {name!r}", field="name")
        return tenant

    async def list_tenants(self) -> list[Tenant]:
        return await self._repository.list_tenants()

    async def create_key(self, tenant_id: str, label: str = "", *, actor: str = "system") -> tuple[ApiKey, str]:
        """A new key and its secret form, which is returned here once and never stored."""
        tenant = await self.tenant_by_id(tenant_id)
        key = ApiKey(
            key_id=new_key_id(),
            tenant_id=tenant.tenant_id,
            label=validate_free_text(label, "label", MAX_LABEL_CHARS),
            created_at_us=now_us(),
        )
        secret = keys.new_secret()
        await self._repository.insert_key(key, keys.hash_secret(secret))
        log.info("api_key_created", tenant_id=tenant.tenant_id, key_id=key.key_id)
        await self._audit.append(actor, "key.created", tenant_id=tenant.tenant_id, target=key.key_id)
        return key, keys.format_key(key.key_id, secret)

    async def authenticate(self, api_key: str) -> Principal:
        key_id, secret = keys.parse_key(api_key)
        found = await self._repository.credentials(key_id)
        valid = keys.verify_secret(secret, found.secret if found else keys.DECOY)
        if found is None or not valid:
            raise Unauthenticated("invalid API key", field="api_key")
        if found.key.revoked:
            raise Unauthenticated(f"API key {key_id} has been revoked", field="api_key")
        tenant = found.tenant
        bind_contextvars(tenant=tenant.tenant_id)
        return Principal(tenant.tenant_id, tenant.name, tenant.business_unit, tenant.clearance, key_id)

    async def revoke_key(self, key_id: str, *, actor: str = "system") -> ApiKey:
        """Revokes a key (idempotent) and publishes ApiKeyRevoked once, after the commit."""
        validate_id(key_id, "key_id", "key")
        revoked_at_us = now_us()
        existing = await self._repository.key_by_id(key_id)
        if existing is None:
            raise NotFound(f"no API key with id {key_id}", field="key_id")
        event_id = uuid.uuid4().hex
        revoked_at = timestamp_pb2.Timestamp()
        revoked_at.FromMicroseconds(revoked_at_us)
        event = events_pb2.ApiKeyRevoked(
            event_id=event_id, key_id=key_id, tenant_id=existing.tenant_id, revoked_at=revoked_at
        )
        result = await self._repository.revoke_key(
            key_id, revoked_at_us, outbox_event(event_id, KEY_REVOKED_SUBJECT, event, revoked_at_us)
        )
        if result is None:
            raise NotFound(f"no API key with id {key_id}", field="key_id")
        key, newly_revoked = result
        if newly_revoked:
            log.info("api_key_revoked", tenant_id=key.tenant_id, key_id=key_id, event_id=event_id)
            await self._audit.append(actor, "key.revoked", tenant_id=key.tenant_id, target=key_id)
            await self._relay.flush()
        return key
