"""Who may call which admin RPC: the bootstrap admin token (a platform admin), or an API key
created with a role. Platform admins may do everything; tenant admins act on their own tenant
only and may not mint platform or auditor keys; auditors only read.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmesh.kit.auth import AdminGuard
from llmesh.kit.errors import PermissionDenied
from llmesh.services.tenancy import keys
from llmesh.services.tenancy.models import Role


@dataclass(frozen=True, slots=True)
class Caller:
    actor: str
    role: Role
    # The tenant a tenant admin may act on; None for the platform-wide roles.
    tenant_id: str | None = None

    def may_read(self, tenant_id: str | None = None) -> None:
        """Reads: any role; a tenant admin only its own tenant (tenant_id None: everything)."""
        if self.role is Role.TENANT_ADMIN and tenant_id != self.tenant_id:
            raise PermissionDenied(
                f"{self.actor} is a tenant admin of {self.tenant_id} and may not read "
                + (f"tenant {tenant_id}" if tenant_id else "other tenants' data")
            )

    def may_manage(self, tenant_id: str | None) -> None:
        """Changes to `tenant_id` (None: platform-wide changes)."""
        if self.role is Role.PLATFORM_ADMIN:
            return
        if self.role is Role.AUDITOR:
            raise PermissionDenied(f"{self.actor} is an auditor: read-only")
        if tenant_id is None or tenant_id != self.tenant_id:
            raise PermissionDenied(
                f"{self.actor} is a tenant admin of {self.tenant_id} and may not change "
                + (f"tenant {tenant_id}" if tenant_id else "the platform")
            )

    def may_grant(self, role: Role) -> None:
        if self.role is not Role.PLATFORM_ADMIN and role in (Role.PLATFORM_ADMIN, Role.AUDITOR):
            raise PermissionDenied(f"only a platform admin may create a {role.value} key")

    def scope(self, tenant_id: str | None) -> str | None:
        """The tenant filter of a read: a tenant admin's own tenant when none is asked for."""
        if self.role is Role.TENANT_ADMIN and tenant_id is None:
            return self.tenant_id
        self.may_read(tenant_id)
        return tenant_id


BOOTSTRAP = Caller("admin-token", Role.PLATFORM_ADMIN)


def admin_caller(token: str, guard: AdminGuard) -> Caller | None:
    """The caller when `token` is the bootstrap admin token; None when it looks like an API key
    (the caller resolves it); PermissionDenied otherwise."""
    if guard.matches(token):
        return BOOTSTRAP
    if token.startswith(keys.PREFIX):
        return None
    if not guard.enabled:
        raise PermissionDenied("admin RPCs are disabled: LLMESH_ADMIN_TOKEN is not set")
    raise PermissionDenied("the admin token is not valid")
