"""The admin bearer token that guards pinning, deleting and warming cached answers."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from llmesh.kit.errors import PermissionDenied, Unauthenticated


class AdminGuard:
    def __init__(self, token: str):
        self._token = token

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        if not self._token:
            raise PermissionDenied("admin RPCs are disabled: LLMESH_ADMIN_TOKEN is not set")
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            raise Unauthenticated("missing admin token: send metadata 'authorization: Bearer <admin token>'")
        if isinstance(header, bytes):
            header = header.decode("utf-8", "replace")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthenticated("malformed authorization metadata: expected 'Bearer <admin token>'")
        if not hmac.compare_digest(presented.strip().encode(), self._token.encode()):
            raise PermissionDenied("the admin token is not valid")
