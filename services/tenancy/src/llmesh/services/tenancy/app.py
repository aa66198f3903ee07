"""Wires the tenancy service: repository (SQLite or PostgreSQL), NATS bus, outbox relay, servicer."""

from __future__ import annotations

import grpc
from llmesh.kit.auth import AdminGuard
from llmesh.kit.bus import Bus
from llmesh.kit.config import ConfigError
from llmesh.kit.identity import PUBLIC, Signer
from llmesh.kit.logging import get_logger
from llmesh.kit.server import ServiceApp
from llmesh.kit.streams import AUDIT, AUDIT_SUBJECTS, TENANCY, USAGE, USAGE_SUBJECTS
from llmesh.services.tenancy.audit import AuditLog
from llmesh.services.tenancy.core import Tenancy
from llmesh.services.tenancy.ledger import Ledger
from llmesh.services.tenancy.outbox import OutboxRelay
from llmesh.services.tenancy.repository import Repository
from llmesh.services.tenancy.servicer import SERVICE_NAME, TenancyServicer
from llmesh.services.tenancy.settings import TenancySettings
from llmesh.services.tenancy.tokens import TenantTokens
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

log = get_logger("llmesh.tenancy")

LEDGER_CONSUMER = "tenancy-ledger"
AUDIT_CONSUMER = "tenancy-audit"


class TenancyApp(ServiceApp):
    name = "tenancy"
    # Authenticate: the router and the edge (GET /v1/models); the admin RPCs check their own
    # bearer credential (an admin key or the admin token), so any caller may present one.
    callers = {
        f"{SERVICE_NAME}/{method}": PUBLIC
        for method in tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].methods_by_name
    } | {
        f"{SERVICE_NAME}/Authenticate": frozenset({"router", "edge"}),
        f"{SERVICE_NAME}/RenewTenantToken": frozenset({"router"}),
    }

    def __init__(self, settings: TenancySettings):
        self.settings = settings
        self.repository = Repository(settings.store_url, pool_size=settings.db_pool_size)
        self.bus: Bus | None = None
        self.relay = OutboxRelay(self.repository, self._publish)
        self.audit = AuditLog(self.repository, settings.audit_key, settings.audit_checkpoint_every)
        self.tenancy = Tenancy(self.repository, self.relay, self.audit, AdminGuard(settings.admin_token))
        self.ledger = Ledger(self.repository)

    async def _publish(self, subject, message, msg_id) -> None:
        if self.bus is None:
            raise RuntimeError("NATS is not connected")
        # One quick attempt on the request path; the relay's loop retries what is left.
        await self.bus.publish(subject, message, msg_id=msg_id, timeout_s=1.0, attempts=1)

    def register(self, server: grpc.aio.Server) -> list[str]:
        servicer = TenancyServicer(
            self.tenancy, self.ledger, self.audit, TenantTokens(self._signer(), self.settings.token_ttl_s)
        )
        tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    def _signer(self) -> Signer | None:
        """The tenant-token key: its file, or the one of an identity installed in this process
        (tests); none only where identity checks are off."""
        if self.settings.token_key_file:
            try:
                return Signer.from_file(self.settings.token_key_file)
            except ValueError as exc:
                raise ConfigError(f"LLMESH_TENANCY_TOKEN_KEY_FILE: {exc}") from None
        if self.identity is not None and self.identity.tenant_signer is None:
            raise ConfigError("LLMESH_TENANCY_TOKEN_KEY_FILE is required where identity checks are on")
        return self.identity.tenant_signer if self.identity is not None else None

    async def start(self) -> None:
        applied = await self.repository.open()
        log.info("database_ready", store=self.repository.dialect, migrations_applied=applied)
        self.bus = await Bus.connect(self.settings.nats_url, "llmesh-tenancy")
        await self.bus.ensure_stream(TENANCY)
        await self.bus.ensure_stream(USAGE)
        # The ledger: every UsageRecorded once (alone or in a batch), also those published while tenancy was down;
        # replicas share the consumer (the request id key makes a double delivery harmless).
        await self.bus.consume_durable(
            USAGE, USAGE_SUBJECTS, LEDGER_CONSUMER, self.ledger.record_message, shared=True, with_headers=True
        )
        # Audit events of other services (policy changes, budget decisions, routing digests).
        await self.bus.ensure_stream(AUDIT)
        await self.bus.consume_durable(AUDIT, AUDIT_SUBJECTS, AUDIT_CONSUMER, self.audit.record_message, shared=True)
        # Events a previous run recorded but could not publish.
        await self.relay.flush()
        self.every(self.settings.outbox_retry_s, self.relay.flush, name="outbox-retry")
        if self.audit.signing:
            self.every(self.settings.audit_checkpoint_s, self.audit.checkpoint, name="audit-checkpoint")
        else:
            log.warning("audit_checkpoints_off", reason="LLMESH_TENANCY_AUDIT_KEY is not set")
        if not self.settings.admin_token:
            log.warning("admin_rpcs_disabled", reason="LLMESH_ADMIN_TOKEN is not set")

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.close()
        await self.repository.close()
