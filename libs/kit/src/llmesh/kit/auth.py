"""Bearer credentials from gRPC metadata (the router's API keys, the admin token), and the
admin-token guard and setting of the admin RPCs (tenancy's tenant/key management, the cache's
pin/delete/warm)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from llmesh.kit.config import setting
from llmesh.kit.errors import PermissionDenied, Unauthenticated

Metadata = Iterable[tuple[str, str | bytes]] | None

MAX_BEARER_TOKEN_CHARS = 512
MIN_ADMIN_TOKEN_CHARS = 16


def authorization_header(metadata: Metadata) -> str | None:
    """The `authorization` metadata value of a call, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def bearer_token(authorization: str | None, *, credential: str = "API key", missing: str = "credentials") -> str:
    """The token of an `authorization: Bearer <token>` header value. `credential` names the token
    and `missing` what is missing without a header, in the UNAUTHENTICATED messages."""
    expected = f"Bearer <{credential.lower()}>"
    if not authorization:
        raise Unauthenticated(f"missing {missing}: send the metadata 'authorization: {expected}'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(f"malformed authorization metadata: expected '{expected}'")
    if len(token) > MAX_BEARER_TOKEN_CHARS or not _token_characters(token):
        raise Unauthenticated(f"malformed {credential} in the authorization metadata")
    return token


def _token_characters(token: str) -> bool:
    return all(c.isprintable() and not c.isspace() for c in token)


def admin_token_check(value: str) -> str | None:
    """The settings check of LLMESH_ADMIN_TOKEN: empty (admin RPCs off) or a usable bearer token."""
    if not value:
        return None
    if len(value) < MIN_ADMIN_TOKEN_CHARS:
        return f"must be empty (admin RPCs disabled) or at least {MIN_ADMIN_TOKEN_CHARS} characters"
    if len(value) > MAX_BEARER_TOKEN_CHARS or not _token_characters(value):
        return f"must be at most {MAX_BEARER_TOKEN_CHARS} printable characters without spaces"
    return None


def admin_token_setting(help: str) -> Any:
    """The LLMESH_ADMIN_TOKEN field of a service whose admin RPCs an AdminGuard checks."""
    return setting("LLMESH_ADMIN_TOKEN", "", help, admin_token_check, secret=True)


class AdminGuard:
    def __init__(self, token: str):
        # Digests have one length, so the comparison time reveals nothing about the token's.
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def matches(self, presented: str) -> bool:
        """Whether `presented` is the admin token (False while none is set)."""
        if self._digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._digest)

    def check(self, metadata: Metadata) -> None:
        """Raises unless the call carries `authorization: Bearer <admin token>`."""
        if self._digest is None:
            raise PermissionDenied("admin RPCs are disabled: LLMESH_ADMIN_TOKEN is not set")
        presented = bearer_token(authorization_header(metadata), credential="admin token", missing="admin token")
        if not self.matches(presented):
            raise PermissionDenied("the admin token is not valid")
