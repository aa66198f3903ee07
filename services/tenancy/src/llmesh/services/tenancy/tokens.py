"""Tenant tokens (docs/adr/0023): what Authenticate hands the router with a principal, so the
services it calls for the tenant can check, on their own, that the call is for that tenant; and
admin tokens: what IssueAdminToken hands an admin, so other services' admin RPCs can check its
role on their own."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from llmesh.kit.errors import FailedPrecondition
from llmesh.kit.identity import Signer
from llmesh.kit.vocabulary import Principal
from llmesh.services.tenancy.access import Caller


@dataclasses.dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: float  # unix seconds


class TenantTokens:
    def __init__(self, signer: Signer | None, ttl_s: float, *, clock: Callable[[], float] = time.time):
        self._signer = signer
        self._ttl_s = ttl_s
        self._clock = clock

    def issue(self, principal: Principal) -> IssuedToken | None:
        """A token for `principal`'s tenant; None where tenancy has no signing key (a mesh run
        without identity checks)."""
        if self._signer is None:
            return None
        token = self._signer.tenant_token(
            principal.tenant_id,
            key_id=principal.key_id,
            business_unit=principal.business_unit,
            clearance=principal.clearance.name.lower(),
            ttl_s=self._ttl_s,
        )
        return IssuedToken(token, int(self._clock()) + int(self._ttl_s))

    def issue_admin(self, caller: Caller) -> IssuedToken:
        """An admin token with `caller`'s role (and tenant, for a tenant admin)."""
        if self._signer is None:
            raise FailedPrecondition("tenancy runs without identity checks: it issues no admin tokens")
        token = self._signer.admin_token(
            caller.role.value, tenant_id=caller.tenant_id or "", key_id=caller.actor, ttl_s=self._ttl_s
        )
        return IssuedToken(token, int(self._clock()) + int(self._ttl_s))
