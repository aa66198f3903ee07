"""Bearer credentials from gRPC metadata, and the admin-token guard of the admin RPCs
(tenancy's tenant/key management, the cache's pin/delete/warm)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from llmesh.kit.errors import PermissionDenied, Unauthenticated

Metadata = Iterable[tuple[str, str | bytes]] | None


def authorization_header(metadata: Metadata) -> str | None:
    """The `authorization` metadata value of a call, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


class AdminGuard:
    def __init__(self, token: str):
        # Digests have one length, so the comparison time reveals nothing about the token's.
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    def check(self, metadata: Metadata) -> None:
        """Raises unless the call carries `authorization: Bearer <admin token>`."""
        if self._digest is None:
            raise PermissionDenied("admin RPCs are disabled: LLMESH_ADMIN_TOKEN is not set")
        header = authorization_header(metadata)
        if not header:
            raise Unauthenticated("missing admin token: send metadata 'authorization: Bearer <admin token>'")
        scheme, _, presented = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthenticated("malformed authorization metadata: expected 'Bearer <admin token>'")
        offered = hashlib.sha256(presented.strip().encode()).digest()
        if not hmac.compare_digest(offered, self._digest):
            raise PermissionDenied("the admin token is not valid")
