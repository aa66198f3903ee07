"""Scans a request's messages for PII and secrets and decides its sensitivity level
(docs/adr/0004-sensitivity-levels.md)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.classifier.sensitivity import detectors
from llmesh.services.classifier.sensitivity.findings import Finding, PiiKind

# Data whose leak is a reportable incident (credentials, government ids, financial accounts)
# never leaves self-hosted models; contact details are personal data, kept to approved providers.
LEVEL_BY_KIND: dict[PiiKind, Sensitivity] = {
    PiiKind.SECRET: Sensitivity.RESTRICTED,
    PiiKind.PAYMENT_CARD: Sensitivity.RESTRICTED,
    PiiKind.IBAN: Sensitivity.RESTRICTED,
    PiiKind.NATIONAL_ID: Sensitivity.RESTRICTED,
    PiiKind.EMAIL: Sensitivity.CONFIDENTIAL,
    PiiKind.PHONE: Sensitivity.CONFIDENTIAL,
}

# When two findings overlap, the one of the more specific / more sensitive kind is kept.
_PRIORITY = {
    PiiKind.SECRET: 0,
    PiiKind.PAYMENT_CARD: 1,
    PiiKind.IBAN: 2,
    PiiKind.NATIONAL_ID: 3,
    PiiKind.EMAIL: 4,
    PiiKind.PHONE: 5,
    PiiKind.TENANT_TERM: 6,
}


@dataclass(frozen=True)
class SensitivityPolicy:
    """The tenant's part of the policy: its own sensitive terms and the levels to apply."""

    terms: tuple[str, ...] = ()
    terms_level: Sensitivity = Sensitivity.CONFIDENTIAL
    # The level of a request in which nothing was found.
    default_level: Sensitivity = Sensitivity.INTERNAL


@dataclass(frozen=True)
class SensitivityResult:
    level: Sensitivity
    findings: tuple[Finding, ...]


@functools.lru_cache(maxsize=512)
def _terms_pattern(terms: tuple[str, ...]) -> re.Pattern | None:
    return detectors.compile_terms(terms)


def _drop_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    ranked = sorted(findings, key=lambda f: (_PRIORITY[f.kind], -(f.end - f.start), f.start))
    kept: list[Finding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


class SensitivityScanner:
    def __init__(self, phone_region: str = "US"):
        self._phones = detectors.PhoneDetector(phone_region)

    def scan_text(self, text: str, terms: tuple[str, ...] = ()) -> list[Finding]:
        found: list[Finding] = []
        found.extend(detectors.find_secrets(text))
        found.extend(detectors.find_payment_cards(text))
        found.extend(detectors.find_ibans(text))
        found.extend(detectors.find_national_ids(text))
        found.extend(detectors.find_emails(text))
        found.extend(self._phones.find(text))
        found.extend(detectors.find_terms(text, _terms_pattern(terms)))
        return _drop_overlaps(found)

    def scan(self, texts: Sequence[str], policy: SensitivityPolicy = SensitivityPolicy()) -> SensitivityResult:
        findings: list[Finding] = []
        for index, text in enumerate(texts):
            for f in self.scan_text(text, policy.terms):
                findings.append(Finding(f.kind, f.start, f.end, f.detail, message_index=index))
        level = policy.default_level
        for f in findings:
            kind_level = policy.terms_level if f.kind is PiiKind.TENANT_TERM else LEVEL_BY_KIND[f.kind]
            level = max(level, kind_level)
        return SensitivityResult(level=level, findings=tuple(findings))
