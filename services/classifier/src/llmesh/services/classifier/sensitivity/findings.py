"""What the detectors report, independent of any transport."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PiiKind(enum.Enum):
    EMAIL = "email"
    PHONE = "phone"
    PAYMENT_CARD = "payment_card"
    IBAN = "iban"
    NATIONAL_ID = "national_id"
    SECRET = "secret"
    TENANT_TERM = "tenant_term"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: PiiKind
    start: int  # half-open character span [start, end) of the scanned text
    end: int
    detail: str  # finer kind, e.g. "us_ssn", "aws_access_key_id"
    message_index: int = 0
