"""Tenancy's domain records, independent of the wire format and of the database."""

from __future__ import annotations

import enum
import re
import secrets
from dataclasses import dataclass

from llmesh.kit.errors import InvalidArgument
from llmesh.kit.streams import SUBJECT_TOKEN
from llmesh.kit.vocabulary import Sensitivity

TENANT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_BUSINESS_UNIT_CHARS = 128
MAX_LABEL_CHARS = 128


# A tenant's clearance: the most sensitive level of data it may send.
DEFAULT_CLEARANCE = Sensitivity.INTERNAL


def new_tenant_id() -> str:
    return f"t_{secrets.token_hex(8)}"


def new_key_id() -> str:
    return f"k_{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    name: str
    business_unit: str
    clearance: Sensitivity
    created_at_us: int


class Role(enum.Enum):
    """What a key may do on the admin RPCs (access.py). NONE: an ordinary key of the mesh."""

    NONE = ""
    PLATFORM_ADMIN = "platform_admin"
    TENANT_ADMIN = "tenant_admin"
    AUDITOR = "auditor"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant_id: str
    label: str
    created_at_us: int
    revoked_at_us: int | None = None
    role: Role = Role.NONE
    expires_at_us: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at_us is not None

    def expired(self, at_us: int) -> bool:
        return self.expires_at_us is not None and at_us >= self.expires_at_us


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One link of the audit chain (audit.py)."""

    seq: int
    at_us: int
    actor: str
    action: str
    tenant_id: str
    target: str
    detail_json: str
    prev_hash: str
    entry_hash: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    entry_hash: str
    signed_at_us: int
    signature: str


def validate_tenant_name(name: str, field: str = "name") -> str:
    if not name:
        raise InvalidArgument(f"{field} is empty", field=field)
    if not TENANT_NAME.match(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise InvalidArgument(
            f"{field} {shown!r} must be 1-64 characters of letters, digits, '.', '_' or '-'", field=field
        )
    return name


def validate_free_text(value: str, field: str, max_chars: int) -> str:
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} has {len(value)} characters; the limit is {max_chars}", field=field)
    if any(not ch.isprintable() for ch in value):
        raise InvalidArgument(f"{field} contains control characters", field=field)
    return value.strip()


def validate_id(value: str, field: str, kind: str) -> str:
    """Ids become NATS subject tokens, so anything else cannot name a record here."""
    if not value:
        raise InvalidArgument(f"{field} is empty", field=field)
    if not SUBJECT_TOKEN.match(value):
        raise InvalidArgument(f"{field} is not a valid {kind} id", field=field)
    return value
