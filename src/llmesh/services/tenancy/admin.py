"""The admin bearer token that guards tenant and key management."""

from __future__ import annotations

import hashlib
import hmac

from llmesh.kit.errors import PermissionDenied, Unauthenticated

_BEARER = "bearer "


class AdminGuard:
    def __init__(self, token: str):
        # Digests have one length, so the comparison time reveals nothing about the token's.
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    def check(self, authorization: str | None) -> None:
        """`authorization` is the request's `authorization` metadata value, if any."""
        if self._digest is None:
            raise PermissionDenied("admin RPCs are disabled: LLMESH_ADMIN_TOKEN is not set")
        if not authorization:
            raise Unauthenticated("missing admin token: send metadata 'authorization: Bearer <admin token>'")
        if not authorization[: len(_BEARER)].lower() == _BEARER or not authorization[len(_BEARER):].strip():
            raise Unauthenticated("malformed authorization metadata: expected 'Bearer <admin token>'")
        offered = hashlib.sha256(authorization[len(_BEARER):].strip().encode()).digest()
        if not hmac.compare_digest(offered, self._digest):
            raise PermissionDenied("the admin token is not valid")
