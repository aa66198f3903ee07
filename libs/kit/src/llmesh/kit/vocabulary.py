"""The words every service shares: the enums and the principal of llmesh.common.v1 as domain
types, and the rules for the names and ids callers send. Each is defined here once, and converted from and to the protos
here and nowhere else, so domain modules use these types and never the generated enums."""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass

from llmesh.common.v1 import common_pb2
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.streams import SUBJECT_TOKEN


class Sensitivity(enum.IntEnum):
    """How sensitive a request's data is, ordered like llmesh.common.v1.Sensitivity: a higher value
    is more sensitive. A tenant's clearance is a Sensitivity too: the most sensitive level it may
    send (docs/adr/0006-sensitivity-levels.md)."""

    UNSPECIFIED = 0
    PUBLIC = 1
    INTERNAL = 2
    CONFIDENTIAL = 3
    RESTRICTED = 4

    @classmethod
    def parse(cls, name: str) -> Sensitivity:
        """A level named in configuration or policy: public, internal, confidential or restricted."""
        level = cls.__members__.get(name.strip().upper())
        if level is None or level is cls.UNSPECIFIED:
            raise ValueError(f"unknown sensitivity {name!r}: use public, internal, confidential or restricted")
        return level

    @classmethod
    def from_proto(cls, value: int, *, field: str = "sensitivity", unknown: Sensitivity | None = None) -> Sensitivity:
        """The level of a llmesh.common.v1.Sensitivity number. proto3 keeps numbers it does not know
        (a newer peer's): such a number is `unknown` when given, else INVALID_ARGUMENT on `field`."""
        level = _SENSITIVITY_FROM_PROTO.get(value)
        if level is not None:
            return level
        if unknown is not None:
            return unknown
        raise InvalidArgument(
            f"{field} {value} is not a known Sensitivity (PUBLIC, INTERNAL, CONFIDENTIAL or RESTRICTED)", field=field
        )

    def to_proto(self) -> int:
        return _SENSITIVITY_TO_PROTO[self]


class FinishReason(enum.Enum):
    """Why a generation ended. The values are the names used in logs and metric labels."""

    UNSPECIFIED = "unspecified"  # not known, e.g. an answer served from the cache
    STOP = "stop"  # the model ended its answer or hit a stop sequence
    LENGTH = "length"  # max_tokens was reached
    CANCELLED = "cancelled"  # the caller went away

    @property
    def complete(self) -> bool:
        """Only a complete answer may be cached."""
        return self in (FinishReason.STOP, FinishReason.LENGTH)

    @classmethod
    def from_proto(cls, value: int) -> FinishReason:
        """A number this build does not know (a newer peer's) reads as UNSPECIFIED."""
        return _FINISH_FROM_PROTO.get(value, cls.UNSPECIFIED)

    def to_proto(self) -> int:
        return _FINISH_TO_PROTO[self]


# Matched by name with the generated enums, so a level added to the proto and not here (or the
# reverse) fails at import rather than mapping to the wrong number.
_SENSITIVITY_TO_PROTO = {level: common_pb2.Sensitivity.Value(f"SENSITIVITY_{level.name}") for level in Sensitivity}
_SENSITIVITY_FROM_PROTO = {number: level for level, number in _SENSITIVITY_TO_PROTO.items()}
_FINISH_TO_PROTO = {reason: common_pb2.FinishReason.Value(f"FINISH_REASON_{reason.name}") for reason in FinishReason}
_FINISH_FROM_PROTO = {number: reason for reason, number in _FINISH_TO_PROTO.items()}
assert len(_SENSITIVITY_FROM_PROTO) == len(common_pb2.Sensitivity.values()), "Sensitivity differs from the proto"
assert len(_FINISH_FROM_PROTO) == len(common_pb2.FinishReason.values()), "FinishReason differs from the proto"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from: tenancy answers it for an API key, the router acts on it."""

    tenant_id: str
    tenant_name: str
    business_unit: str
    clearance: Sensitivity
    key_id: str
    # The tenant token tenancy signed for this principal (docs/adr/0023), forwarded on the calls
    # made for the tenant, and when it expires (unix seconds); not part of the proto message.
    tenant_token: str = dataclasses.field(default="", repr=False, compare=False)
    tenant_token_expires_at: float = dataclasses.field(default=0.0, compare=False)

    @classmethod
    def from_proto(cls, p: common_pb2.Principal) -> Principal:
        # A clearance this build does not know is no clearance rather than a guess.
        clearance = Sensitivity.from_proto(p.clearance, unknown=Sensitivity.UNSPECIFIED)
        return cls(p.tenant_id, p.tenant_name, p.business_unit, clearance, p.key_id)

    def to_proto(self) -> common_pb2.Principal:
        return common_pb2.Principal(
            tenant_id=self.tenant_id,
            tenant_name=self.tenant_name,
            business_unit=self.business_unit,
            clearance=self.clearance.to_proto(),
            key_id=self.key_id,
        )


DEFAULT_USE_CASE = "default"
# A use case names a namespace for caching, policy (`use_case.<tenant>.<use case>`) and reporting.
USE_CASE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_REQUEST_ID_CHARS = 128
# Upper bounds on what callers may claim about one generation, so sums (statistics, ledgers,
# budgets) stay finite and meaningful: no model here has a context near a million tokens, and no
# single answer costs a thousand dollars.
MAX_TOKENS_BOUND = 1_000_000
MAX_USAGE_TOKENS = 10_000_000
MAX_ANSWER_COST_USD = 1_000.0


def use_case_from(value: str, field: str = "use_case") -> str:
    """A caller's use case: 1-64 characters of letters, digits, '.', '_' or '-'; empty is the default."""
    if not value:
        return DEFAULT_USE_CASE
    if not USE_CASE.match(value):
        raise InvalidArgument(f"{field} must be 1-64 characters of [A-Za-z0-9._-] (got {value[:80]!r})", field=field)
    return value


def tenant_id_from(value: str, field: str = "tenant_id") -> str:
    """A tenant id: it becomes a NATS subject token, so 1-64 characters of [A-Za-z0-9_-]."""
    if not SUBJECT_TOKEN.match(value):
        shown = "empty" if not value else f"got {value[:80]!r}"
        raise InvalidArgument(f"{field} must be 1-64 characters of [A-Za-z0-9_-] ({shown})", field=field)
    return value


def request_id_from(value: str, field: str = "request_id", *, required: bool = False) -> str:
    """A caller's request id: at most MAX_REQUEST_ID_CHARS printable characters; empty unless required."""
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required", field=field)
        return ""
    if len(value) > MAX_REQUEST_ID_CHARS or not value.isprintable():
        raise InvalidArgument(f"{field} must be at most {MAX_REQUEST_ID_CHARS} printable characters", field=field)
    return value
