"""PII and secret detectors: a regular expression finds candidates, a well-kept library validates
them (phonenumbers for phone numbers, python-stdnum checksums for cards, IBANs and national ids),
and context words separate look-alikes (an order number that passes the Luhn check) from the real
thing. Each detector returns character spans of the text it was given."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import phonenumbers
from llmesh.services.classifier.sensitivity.findings import Finding, PiiKind
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.br import cpf
from stdnum.ca import sin
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.se import personnummer
from stdnum.us import ssn

# How far before a candidate a context word may stand (characters).
CONTEXT_WINDOW = 40

_NON_DIGIT = re.compile(r"\D")


def _digits(text: str) -> str:
    return _NON_DIGIT.sub("", text)


def _context_before(text: str, start: int, window: int = CONTEXT_WINDOW) -> str:
    return text[max(0, start - window) : start].lower()


# --- email -----------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])"
)


def find_emails(text: str) -> Iterator[Finding]:
    for m in _EMAIL.finditer(text):
        yield Finding(PiiKind.EMAIL, m.start(), m.end(), "email")


# --- phone numbers ----------------------------------------------------------------------------

_PHONE_CANDIDATE = re.compile(
    r"(?<![\w+/.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,5}(?![\w/]|[.-]\d)"
)
_PHONE_CONTEXT = re.compile(r"\b(?:phone|tel|telephone|call|mobile|cell|fax|whatsapp|sms|text me|reach me|contact)\b")
_NUMBER_CONTEXT = re.compile(
    r"\b(?:order|invoice|tracking|ticket|ref|reference|serial|isbn|sku|part|case|id|no\.?|number|account|"
    r"version|build|page|batch|lot|po)\s*[#:]?\s*$"
)
_DATE_LIKE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


@dataclass(frozen=True)
class PhoneDetector:
    default_region: str = "US"

    def find(self, text: str) -> Iterator[Finding]:
        for m in _PHONE_CANDIDATE.finditer(text):
            candidate = m.group(0)
            digits = _digits(candidate)
            if not 7 <= len(digits) <= 15 or _DATE_LIKE.match(candidate):
                continue
            before = _context_before(text, m.start())
            formatted = candidate.startswith("+") or bool(re.search(r"[\s().-]", candidate))
            if _NUMBER_CONTEXT.search(before) and not _PHONE_CONTEXT.search(before):
                continue
            if not formatted and not _PHONE_CONTEXT.search(before):
                # A bare run of digits is an id or an amount far more often than a phone number.
                continue
            region = None if candidate.startswith("+") else self.default_region
            try:
                number = phonenumbers.parse(candidate, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                region_code = phonenumbers.region_code_for_number(number) or "intl"
                yield Finding(PiiKind.PHONE, m.start(), m.end(), f"phone_{region_code.lower()}")


# --- payment cards ----------------------------------------------------------------------------

_CARD_CANDIDATE = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_CARD_CONTEXT = re.compile(
    r"\b(?:card|visa|mastercard|master card|amex|american express|discover|credit|debit|cc|cvv|pan|payment|"
    r"pay with|charge)\b"
)
_LOOKALIKE_CONTEXT = re.compile(
    r"\b(?:order|invoice|tracking|shipment|parcel|ticket|ref|reference|serial|isbn|imei|sku|confirmation|"
    r"booking|transaction id|customer id|member id|policy)\b"
)
# Issuer prefixes (IIN ranges) and the lengths each issues, from the card networks' published ranges.
_CARD_NETWORKS: tuple[tuple[str, Callable[[str], bool], tuple[int, ...]], ...] = (
    ("visa", lambda d: d.startswith("4"), (13, 16, 19)),
    ("mastercard", lambda d: 51 <= int(d[:2]) <= 55 or 2221 <= int(d[:4]) <= 2720, (16,)),
    ("amex", lambda d: d[:2] in ("34", "37"), (15,)),
    ("discover", lambda d: d.startswith("6011") or d.startswith("65") or 644 <= int(d[:3]) <= 649, (16, 17, 18, 19)),
    ("diners", lambda d: d[:2] in ("36", "38", "39") or 300 <= int(d[:3]) <= 305, (14, 15, 16, 17, 18, 19)),
    ("jcb", lambda d: 3528 <= int(d[:4]) <= 3589, (16, 17, 18, 19)),
    ("unionpay", lambda d: d.startswith("62"), (16, 17, 18, 19)),
    (
        "maestro",
        lambda d: d[:4] in ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763"),
        (12, 13, 14, 15, 16, 17, 18, 19),
    ),
)


def _card_network(digits: str) -> str | None:
    for name, matches, lengths in _CARD_NETWORKS:
        if len(digits) in lengths and matches(digits):
            return name
    return None


def _consistent_grouping(candidate: str) -> bool:
    """Cards are written unbroken or in groups of 4 (Amex 4-6-5); other groupings are something else."""
    groups = re.split(r"[ -]", candidate)
    if len(groups) == 1:
        return True
    sizes = [len(g) for g in groups]
    return sizes in ([4, 6, 5], [4, 6, 4]) or (all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4)


def find_payment_cards(text: str) -> Iterator[Finding]:
    for m in _CARD_CANDIDATE.finditer(text):
        candidate = m.group(0)
        digits = _digits(candidate)
        if not _consistent_grouping(candidate) or not luhn.is_valid(digits):
            continue
        network = _card_network(digits)
        if network is None:
            continue
        before = _context_before(text, m.start())
        if _LOOKALIKE_CONTEXT.search(before) and not _CARD_CONTEXT.search(before):
            continue
        yield Finding(PiiKind.PAYMENT_CARD, m.start(), m.end(), network)


# --- IBAN --------------------------------------------------------------------------------------

_IBAN_CANDIDATE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")


def find_ibans(text: str) -> Iterator[Finding]:
    for m in _IBAN_CANDIDATE.finditer(text):
        if stdnum_iban.is_valid(m.group(0)):
            yield Finding(PiiKind.IBAN, m.start(), m.end(), f"iban_{m.group(0)[:2].lower()}")


# --- national ids ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NationalId:
    detail: str
    pattern: re.Pattern
    is_valid: Callable[[str], bool]
    # Context words required before the candidate; None when the format alone is distinctive.
    context: re.Pattern | None = None
    # Ids made of one run of digits (with separators) are only looked for around such runs,
    # which saves a pass over the whole text per id kind.
    digit_run: bool = True


def _ctx(words: str) -> re.Pattern:
    return re.compile(rf"\b(?:{words})\b", re.IGNORECASE)


def _gb_nino_valid(value: str) -> bool:
    # HMRC's allocation rules (no checksum exists): these prefixes are never issued.
    prefix = value.replace(" ", "")[:2].upper()
    return prefix not in {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}


NATIONAL_IDS: tuple[NationalId, ...] = (
    NationalId("us_ssn", re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"), ssn.is_valid),
    NationalId("us_ssn", re.compile(r"(?<![\w-])\d{9}(?![\w-])"), ssn.is_valid, _ctx(r"ssn|social security")),
    NationalId(
        "gb_nino",
        re.compile(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
        _gb_nino_valid,
        digit_run=False,
    ),
    NationalId(
        "ca_sin",
        re.compile(r"(?<![\w-])\d{3}[ -]?\d{3}[ -]?\d{3}(?![\w-])"),
        sin.is_valid,
        _ctx(r"sin|social insurance|nas"),
    ),
    NationalId(
        "in_aadhaar",
        re.compile(r"(?<![\w-])\d{4}[ -]\d{4}[ -]\d{4}(?![\w-])"),
        aadhaar.is_valid,
        _ctx(r"aadhaar|aadhar|uidai|uid"),
    ),
    NationalId("br_cpf", re.compile(r"(?<![\w.-])\d{3}\.\d{3}\.\d{3}-\d{2}(?![\w-])"), cpf.is_valid),
    NationalId(
        "fr_nir",
        re.compile(r"\b[12] ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b"),
        nir.is_valid,
    ),
    NationalId("es_dni", re.compile(r"\b\d{8}-?[A-HJ-NP-TV-Z]\b"), dni.is_valid),
    NationalId("es_nie", re.compile(r"\b[XYZ]-?\d{7}-?[A-HJ-NP-TV-Z]\b"), nie.is_valid, digit_run=False),
    NationalId(
        "it_codice_fiscale",
        re.compile(r"\b[A-Z]{6}\d{2}[A-EHLMPR-T]\d{2}[A-Z]\d{3}[A-Z]\b"),
        codicefiscale.is_valid,
        digit_run=False,
    ),
    NationalId("se_personnummer", re.compile(r"(?<![\w-])(?:\d{2})?\d{6}[-+]\d{4}(?![\w-])"), personnummer.is_valid),
    NationalId(
        "nl_bsn", re.compile(r"(?<![\w-])\d{9}(?![\w-])"), bsn.is_valid, _ctx(r"bsn|burgerservicenummer|sofinummer")
    ),
    NationalId("pl_pesel", re.compile(r"(?<![\w-])\d{11}(?![\w-])"), pesel.is_valid, _ctx(r"pesel")),
    NationalId(
        "de_idnr",
        re.compile(r"(?<![\w-])\d{2} ?\d{3} ?\d{3} ?\d{3}(?![\w-])"),
        idnr.is_valid,
        _ctx(r"steuer-?id|steueridentifikationsnummer|idnr|identifikationsnummer|tax id"),
    ),
)


_DIGIT_RUN = re.compile(r"\d+(?:[ .+-]\d+)*")
_DIGIT_RUN_IDS = tuple(spec for spec in NATIONAL_IDS if spec.digit_run)
_OTHER_IDS = tuple(spec for spec in NATIONAL_IDS if not spec.digit_run)


def _id_matches(spec: NationalId, text: str, pos: int, endpos: int) -> Iterator[Finding]:
    for m in spec.pattern.finditer(text, pos, endpos):
        if spec.context is not None and not spec.context.search(_context_before(text, m.start())):
            continue
        try:
            valid = spec.is_valid(m.group(0))
        except Exception:  # a validator that rejects by raising is a rejection
            valid = False
        if valid:
            yield Finding(PiiKind.NATIONAL_ID, m.start(), m.end(), spec.detail)


def find_national_ids(text: str) -> Iterator[Finding]:
    for run in _DIGIT_RUN.finditer(text):
        if sum(ch.isdigit() for ch in run.group(0)) < 8:
            continue
        # Widened by a character each side so the patterns' own boundary checks still see them,
        # and by two after for a trailing check letter (es_dni).
        pos, endpos = max(0, run.start() - 1), min(len(text), run.end() + 2)
        for spec in _DIGIT_RUN_IDS:
            yield from _id_matches(spec, text, pos, endpos)
    for spec in _OTHER_IDS:
        yield from _id_matches(spec, text, 0, len(text))


# --- secrets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretPattern:
    detail: str
    # Literals one of which every match contains (lower-case ones are looked up in the lower-cased
    # text): a substring test is far cheaper than a regex pass, and most texts hold no secret.
    gate: tuple[str, ...]
    pattern: re.Pattern
    # The group holding the secret itself (0: the whole match).
    group: int = 0
    min_entropy_bits_per_char: float = 0.0


def _shannon_bits_per_char(value: str) -> float:
    counts: dict[str, int] = {}
    for ch in value:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


_PLACEHOLDER = re.compile(
    r"^(?:<[^>]*>|\$\{?\w+\}?|\{\{.*\}\}|x+|\*+|\.+|your[_-]?\w*|changeme|example\w*|dummy\w*|redacted)$", re.IGNORECASE
)

SECRETS: tuple[SecretPattern, ...] = (
    SecretPattern(
        "private_key",
        ("PRIVATE KEY",),
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?"
        ),
    ),
    SecretPattern(
        "aws_access_key_id", ("AKIA", "ASIA", "ABIA", "ACCA"), re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")
    ),
    SecretPattern(
        "aws_secret_access_key",
        ("aws_secret", "awssecret"),
        re.compile(r"(?i)aws_?secret_?(?:access_?)?key\W{0,4}([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"),
        group=1,
    ),
    SecretPattern(
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"),
    ),
    SecretPattern("gitlab_token", ("glpat-",), re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}\b")),
    SecretPattern(
        "slack_token",
        ("xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxs-", "xoxr-"),
        re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
    ),
    SecretPattern(
        "slack_webhook", ("hooks.slack.com",), re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}")
    ),
    SecretPattern(
        "stripe_key",
        ("sk_live_", "sk_test_", "rk_live_", "rk_test_"),
        re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b"),
    ),
    SecretPattern("google_api_key", ("AIza",), re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    SecretPattern(
        "api_key",
        ("sk-",),
        re.compile(r"\bsk-(?:proj-|svcacct-|admin-|ant-(?:api\d{2}-)?)?[A-Za-z0-9_-]{20,}\b"),
        min_entropy_bits_per_char=3.5,
    ),
    SecretPattern("jwt", ("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    SecretPattern(
        "bearer_token",
        ("bearer",),
        re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{20,}=*)"),
        group=1,
        min_entropy_bits_per_char=3.5,
    ),
    SecretPattern(
        "url_credentials",
        ("://",),
        re.compile(r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:([^\s@/]{3,128})@[^\s]"),
        group=1,
    ),
    SecretPattern(
        "password",
        ("pass", "pwd", "secret", "key", "token"),
        re.compile(
            r"(?i)\b(?:password|passwd|pwd|passphrase|secret|api[_-]?key|access[_-]?token|auth[_-]?token|"
            r"client[_-]?secret|private[_-]?token)[\"']?\s*[:=]\s*[\"']?([^\s\"',;]{8,128})"
        ),
        group=1,
        min_entropy_bits_per_char=2.5,
    ),
)


def _may_contain(spec: SecretPattern, text: str, lowered: str) -> bool:
    return any(g in (lowered if g.islower() else text) for g in spec.gate)


def find_secrets(text: str) -> Iterator[Finding]:
    lowered = text.lower()
    for spec in SECRETS:
        if not _may_contain(spec, text, lowered):
            continue
        for m in spec.pattern.finditer(text):
            value = m.group(spec.group)
            if spec.group and _PLACEHOLDER.match(value):
                continue
            if spec.min_entropy_bits_per_char and _shannon_bits_per_char(value) < spec.min_entropy_bits_per_char:
                continue
            yield Finding(PiiKind.SECRET, m.start(spec.group), m.end(spec.group), spec.detail)


# --- tenant terms ------------------------------------------------------------------------------


def compile_terms(terms: tuple[str, ...]) -> re.Pattern | None:
    """One case-insensitive pattern matching any of the terms as whole words (any whitespace inside)."""
    parts = []
    for term in sorted({t.strip() for t in terms if t and t.strip()}, key=len, reverse=True):
        words = [re.escape(w) for w in term.split()]
        parts.append(r"\s+".join(words))
    if not parts:
        return None
    return re.compile(rf"(?<!\w)(?:{'|'.join(parts)})(?!\w)", re.IGNORECASE)


def find_terms(text: str, pattern: re.Pattern | None) -> Iterator[Finding]:
    if pattern is None:
        return
    for m in pattern.finditer(text):
        yield Finding(PiiKind.TENANT_TERM, m.start(), m.end(), "tenant_term")
