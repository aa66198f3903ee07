"""The admin-token guard shared by the services' admin RPCs."""

from __future__ import annotations

import pytest
from llmesh.kit.auth import AdminGuard
from llmesh.kit.errors import PermissionDenied, Unauthenticated


def test_admin_guard():
    token = "an-admin-token-of-some-length"
    guard = AdminGuard(token)
    guard.check([("authorization", f"Bearer {token}")])
    guard.check([("authorization", f"bearer  {token} ")])
    with pytest.raises(Unauthenticated, match="missing admin token"):
        guard.check([])
    with pytest.raises(Unauthenticated, match="malformed"):
        guard.check([("authorization", token)])
    with pytest.raises(Unauthenticated, match="malformed"):
        guard.check([("authorization", "Bearer ")])
    with pytest.raises(PermissionDenied, match="not valid") as wrong:
        guard.check([("authorization", f"Bearer {token}x")])
    assert token not in wrong.value.message
    with pytest.raises(PermissionDenied, match="LLMESH_ADMIN_TOKEN is not set"):
        AdminGuard("").check([("authorization", f"Bearer {token}")])
    guard.check([("x-other", "1"), ("authorization", f"Bearer {token}".encode())])
