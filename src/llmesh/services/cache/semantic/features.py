"""Cheap pairwise features of two questions, for a second stage: what a sentence embedding tends
to blur (a different number, name or negation in an otherwise identical question)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_NEGATIONS = {"not", "no", "never", "nor", "none", "nothing", "cannot", "without", "neither", "nobody"}
NAMES = (
    "similarity",
    "word_jaccard",
    "unmatched_weight_a",
    "unmatched_weight_b",
    "unmatched_weight_max",
    "unmatched_idf_max",
    "number_mismatch",
    "negation_mismatch",
    "first_word_equal",
    "length_a",
    "length_b",
    "length_ratio",
    "char3_jaccard",
)


def veto(a: str, b: str) -> str | None:
    """Why two questions must never share an answer however close their embeddings are: one is
    negated and the other not ("can I cancel" / "can I not cancel"), or their numbers differ
    ("JEE 2016" / "JEE 2017"). None when nothing forbids it."""
    ta, tb = words(a), words(b)
    if (_negations(ta) > 0) != (_negations(tb) > 0):
        return "negation"
    if _numbers(ta) != _numbers(tb):
        return "number"
    return None


def _numbers(tokens: list[str]) -> set[str]:
    return {t for t in tokens if any(ch.isdigit() for ch in t)}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _negations(tokens: list[str]) -> int:
    return sum(1 for t in tokens if t in _NEGATIONS or t.endswith("n't"))


def _trigrams(text: str) -> set[str]:
    t = " ".join(words(text))
    return {t[i : i + 3] for i in range(len(t) - 2)}


class DocumentFrequencies:
    """IDF from a corpus of questions: a rare word left unmatched matters more than "the"."""

    def __init__(self, counts: dict[str, int], documents: int):
        self.counts = counts
        self.documents = documents

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 2) -> DocumentFrequencies:
        counts: Counter[str] = Counter()
        n = 0
        for text in texts:
            n += 1
            counts.update({_stem(w) for w in words(text)})
        return cls({w: c for w, c in counts.items() if c >= min_count}, n)

    def idf(self, word: str) -> float:
        return math.log((self.documents + 1) / (self.counts.get(word, 0) + 1))


def pair_features(a: str, b: str, similarity: float, df: DocumentFrequencies) -> list[float]:
    ta, tb = words(a), words(b)
    sa, sb = {_stem(w) for w in ta}, {_stem(w) for w in tb}
    only_a, only_b = sa - sb, sb - sa
    weight_a = sum(df.idf(w) for w in sa) or 1.0
    weight_b = sum(df.idf(w) for w in sb) or 1.0
    unmatched_a = sum(df.idf(w) for w in only_a) / weight_a
    unmatched_b = sum(df.idf(w) for w in only_b) / weight_b
    numbers_a, numbers_b = _numbers(ta), _numbers(tb)
    ca, cb = _trigrams(a), _trigrams(b)
    return [
        float(similarity),
        len(sa & sb) / max(1, len(sa | sb)),
        unmatched_a,
        unmatched_b,
        max(unmatched_a, unmatched_b),
        max((df.idf(w) for w in only_a | only_b), default=0.0),
        float(numbers_a != numbers_b),
        float((_negations(ta) > 0) != (_negations(tb) > 0)),
        float(ta[:1] == tb[:1]),
        float(len(ta)),
        float(len(tb)),
        min(len(ta), len(tb)) / max(1, len(ta), len(tb)),
        len(ca & cb) / max(1, len(ca | cb)),
    ]
