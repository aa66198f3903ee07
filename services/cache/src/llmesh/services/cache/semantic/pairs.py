"""Labelled question pairs (question1, question2, is_duplicate) and a split that never shares a
question between train, validation and test: Quora questions repeat, so pairs are grouped by the
connected components of the "appears in a pair with" graph before they are assigned."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import pathlib

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Pair:
    a: str
    b: str
    duplicate: bool


def read_pairs(path: str | pathlib.Path) -> list[Pair]:
    with open(path, newline="", encoding="utf-8") as f:
        return [
            Pair(row["question1"].strip(), row["question2"].strip(), row["is_duplicate"].strip() == "1")
            for row in csv.DictReader(f)
        ]


def read_text_pairs(path: str | pathlib.Path) -> list[tuple[str, str]]:
    """A two-column CSV with a header (the rewording and near-miss sets)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [(a.strip(), b.strip()) for a, b in rows[1:]]


def split_by_question(pairs: list[Pair], fractions=(0.6, 0.2, 0.2), salt: str = "llmesh") -> dict[str, list[Pair]]:
    parent: dict[str, str] = {}

    def root(q: str) -> str:
        parent.setdefault(q, q)
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    for p in pairs:
        ra, rb = root(p.a), root(p.b)
        if ra != rb:
            parent[ra] = rb
    # A component is named by its smallest question, so the split does not depend on row order.
    members: dict[str, str] = {}
    for q in list(parent):
        r = root(q)
        members[r] = min(members.get(r, q), q)
    edges = (fractions[0], fractions[0] + fractions[1])
    out: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for p in pairs:
        name = members[root(p.a)]
        u = int.from_bytes(hashlib.sha256(f"{salt}:{name}".encode()).digest()[:8], "big") / 2**64
        out["train" if u < edges[0] else "val" if u < edges[1] else "test"].append(p)
    return out


def question_key(question: str) -> str:
    """How the rewording sets name a dev-set question without copying its text."""
    return hashlib.sha1(question.strip().encode()).hexdigest()[:16]


def rewordings_by_split(path: str | pathlib.Path, splits: dict[str, list[Pair]]) -> dict[str, list[tuple[str, str]]]:
    """(question, rewording) pairs from a `question_sha1,rewording` CSV, each in the split of its
    question: a rewording of a held-out question is never trained on. Rows whose question is not
    in `splits` (another data file) are left out."""
    where = {question_key(q): (name, q) for name, pairs in splits.items() for p in pairs for q in (p.a, p.b)}
    out: dict[str, list[tuple[str, str]]] = {name: [] for name in splits}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            found = where.get(row["question_sha1"])
            if found:
                out[found[0]].append((found[1], row["rewording"].strip()))
    return out
