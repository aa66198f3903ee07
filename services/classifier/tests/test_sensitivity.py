"""PII and secret detection: the labelled snippet set, look-alikes, levels and speed sanity."""

from __future__ import annotations

import pytest
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.classifier.sensitivity.evaluation import TEST_TERMS, evaluate, load_snippets
from llmesh.services.classifier.sensitivity.findings import PiiKind
from llmesh.services.classifier.sensitivity.scanner import SensitivityPolicy, SensitivityScanner

from services.classifier.tests.conftest import DATA

SNIPPETS = load_snippets(DATA / "pii_snippets.jsonl")
scanner = SensitivityScanner()


def kinds(text: str, **policy) -> list[tuple[str, str]]:
    result = scanner.scan([text], SensitivityPolicy(**policy))
    return [(f.kind.value, text[f.start : f.end]) for f in result.findings]


def test_labelled_set_is_large_and_varied():
    assert len(SNIPPETS) >= 200
    assert sum(1 for s in SNIPPETS if not s["pii"]) >= 80  # look-alikes and plain text
    assert {item["kind"] for s in SNIPPETS for item in s["pii"]} == {k.value for k in PiiKind}


def test_precision_and_recall_per_kind_on_the_labelled_set():
    report = evaluate(SNIPPETS, scanner)
    for kind, score in report.by_kind.items():
        assert score.precision >= 0.95, (kind, report.errors)
        assert score.recall >= 0.9, (kind, report.errors)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("card 4111 1111 1111 1111 please", [("payment_card", "4111 1111 1111 1111")]),
        ("Your order number is 4111111111111111.", []),  # passes Luhn, but an order number
        ("4111 1111 1111 1112", []),  # fails Luhn
        ("SSN 123-45-6789", [("national_id", "123-45-6789")]),
        ("SSN 666-12-3456", []),  # never issued
        ("IBAN GB82 WEST 1234 5698 7654 32", [("iban", "GB82 WEST 1234 5698 7654 32")]),
        ("IBAN GB82 WEST 1234 5698 7654 33", []),  # bad check digits
        ("call (415) 555-0132", [("phone", "(415) 555-0132")]),
        ("the meeting is on 2023-10-15", []),
        ("password: <your-password-here>", []),
        ("-----BEGIN PUBLIC KEY-----", []),
    ],
)
def test_true_and_false_positives(text, expected):
    assert kinds(text) == expected


def test_spans_index_the_original_text_of_each_message():
    result = scanner.scan(["no pii here", "mail ops@acme.com now"])
    (finding,) = result.findings
    assert finding.message_index == 1
    assert "mail ops@acme.com now"[finding.start : finding.end] == "ops@acme.com"


def test_levels_follow_the_most_sensitive_finding_and_the_policy():
    assert scanner.scan(["hello"]).level is Sensitivity.INTERNAL
    assert scanner.scan(["hello"], SensitivityPolicy(default_level=Sensitivity.PUBLIC)).level is Sensitivity.PUBLIC
    assert scanner.scan(["mail a.b@corp.com"]).level is Sensitivity.CONFIDENTIAL
    assert scanner.scan(["mail a.b@corp.com, key AKIAIOSFODNN7EXAMPLE"]).level is Sensitivity.RESTRICTED
    term_policy = SensitivityPolicy(terms=TEST_TERMS, terms_level=Sensitivity.RESTRICTED)
    assert scanner.scan(["news on project falcon"], term_policy).level is Sensitivity.RESTRICTED
    # A term never lowers the level below the default.
    low_terms = SensitivityPolicy(terms=TEST_TERMS, terms_level=Sensitivity.PUBLIC)
    assert scanner.scan(["Project Falcon"], low_terms).level is Sensitivity.INTERNAL


def test_tenant_terms_match_whole_words_case_insensitively():
    assert kinds("PROJECT  falcon is late", terms=TEST_TERMS) == [("tenant_term", "PROJECT  falcon")]
    assert kinds("Project Falconry", terms=TEST_TERMS) == []
    assert kinds("a (regex) term? [x]", terms=("(regex) term?",)) == [("tenant_term", "(regex) term?")]


def test_overlapping_findings_keep_the_more_sensitive_kind():
    # A card number written like a phone number is reported once, as a card.
    assert kinds("pay with 4111-1111-1111-1111") == [("payment_card", "4111-1111-1111-1111")]
