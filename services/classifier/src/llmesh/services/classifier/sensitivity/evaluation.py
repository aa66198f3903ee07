"""Precision and recall of the detectors per kind on a labelled set of snippets (JSONL lines of
{"text", "pii": [{"kind", "text"}], "note"}). A finding counts as true when an expected one of the
same kind overlaps it."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

from llmesh.services.classifier.sensitivity.findings import PiiKind
from llmesh.services.classifier.sensitivity.scanner import SensitivityPolicy, SensitivityScanner

# The tenant terms the labelled set assumes.
TEST_TERMS = ("Project Falcon", "Globex Corporation")


@dataclass
class KindScore:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0


@dataclass
class DetectionReport:
    snippets: int
    by_kind: dict[PiiKind, KindScore]
    errors: list[str] = field(default_factory=list)


def load_snippets(path: str | pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def _expected_spans(snippet: dict) -> list[tuple[PiiKind, int, int]]:
    spans = []
    for item in snippet["pii"]:
        start = snippet["text"].index(item["text"])
        spans.append((PiiKind(item["kind"]), start, start + len(item["text"])))
    return spans


def evaluate(snippets: list[dict], scanner: SensitivityScanner | None = None) -> DetectionReport:
    scanner = scanner or SensitivityScanner()
    policy = SensitivityPolicy(terms=TEST_TERMS)
    by_kind = {kind: KindScore() for kind in PiiKind}
    errors = []
    for snippet in snippets:
        expected = _expected_spans(snippet)
        found = scanner.scan([snippet["text"]], policy).findings
        matched = set()
        for f in found:
            hit = next(
                (
                    i
                    for i, (kind, s, e) in enumerate(expected)
                    if kind is f.kind and f.start < e and s < f.end and i not in matched
                ),
                None,
            )
            if hit is None:
                by_kind[f.kind].false_positives += 1
                errors.append(f"false {f.kind.value} {snippet['text'][f.start : f.end]!r} in {snippet['text'][:80]!r}")
            else:
                matched.add(hit)
                by_kind[f.kind].true_positives += 1
        for i, (kind, s, e) in enumerate(expected):
            if i not in matched:
                by_kind[kind].false_negatives += 1
                errors.append(f"missed {kind.value} {snippet['text'][s:e]!r} in {snippet['text'][:80]!r}")
    return DetectionReport(len(snippets), by_kind, errors)
