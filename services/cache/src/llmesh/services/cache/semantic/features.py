"""Cheap pairwise features of two questions, for a second stage: what a sentence embedding tends
to blur (a different number, name or negation in an otherwise identical question)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_NEGATIONS = {"not", "no", "never", "nor", "none", "nothing", "cannot", "without", "neither", "nobody", "non"}
# Negated without a negation word ("can't" / "unable"), and contractions typed without the
# apostrophe, as Quora questions often are ("dont", "cant").
_NEGATIONS |= {"unable", "unaware", "impossible"}
_NEGATIONS |= set(
    "dont doesnt didnt isnt arent wasnt werent hasnt havent hadnt cant wont shouldnt wouldnt couldnt mustnt "
    "neednt aint".split()
)
_ORDINAL_OR_NUMBER = re.compile(r"(\d+)(?:st|nd|rd|th)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER_WORDS = {
    word: value
    for value, names in enumerate(
        (
            ("zero",),
            ("one", "first"),
            ("two", "second"),
            ("three", "third"),
            ("four", "fourth"),
            ("five", "fifth"),
            ("six", "sixth"),
            ("seven", "seventh"),
            ("eight", "eighth"),
            ("nine", "ninth"),
            ("ten", "tenth"),
            ("eleven", "eleventh"),
            ("twelve", "twelfth"),
        )
    )
    for word in names
} | {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "hundred": 100, "thousand": 1000, "million": 1000000}
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
    negated and the other not ("can I cancel" / "can I not cancel"), their numbers differ
    ("JEE 2016" / "JEE 2017"), or the same words swap sides of a direction ("Celsius to
    Fahrenheit" / "Fahrenheit to Celsius"). None when nothing forbids it."""
    ta, tb = words(a), words(b)
    if (_negations(ta) > 0) != (_negations(tb) > 0):
        return "negation"
    if numbers_differ(a, b):
        return "number"
    if swapped(ta, tb):
        return "order"
    return None


# Words that give the two things around them different roles; "vs", "with" and "from" are left
# out: "A vs B", "reacts with", "different from" read the same both ways round.
_DIRECTIONAL = {"to", "into", "than", "before", "after", "over"}
_SYMMETRIC_BEFORE = {"compare", "compared", "compares", "similar", "equal", "equivalent", "close", "related"}
_FILLERS = {"a", "an", "the", "my", "your", "our", "their", "his", "her", "its", "this", "that", "be", "get"}


def _next_content_word(tokens: list[str], i: int) -> str | None:
    return next((t for t in tokens[i + 1 :] if t not in _FILLERS), None)


def swapped(ta: list[str], tb: list[str]) -> bool:
    """The words after a directional word differ, and each one stands before that word in the
    other question: the roles swapped ("convert a string to an integer" / "an integer to a
    string", "Messi better than Ronaldo" / "Ronaldo better than Messi")."""
    for word in _DIRECTIONAL:
        if ta.count(word) != 1 or tb.count(word) != 1:
            continue
        ia, ib = ta.index(word), tb.index(word)
        if ia and ta[ia - 1] in _SYMMETRIC_BEFORE or ib and tb[ib - 1] in _SYMMETRIC_BEFORE:
            continue
        x, y = _next_content_word(ta, ia), _next_content_word(tb, ib)
        if x and y and x != y and x in tb[:ib] and y in ta[:ia]:
            return True
    return False


def _numbers(text: str) -> tuple[set[int | str], set[int]]:
    """The tokens written with digits, as values where they are numbers ("60,000" is 60000, "10th"
    is 10) and as they are otherwise ("5g", "6s"); and the values of the numbers spelled out."""
    written: set[int | str] = set()
    spelled: set[int] = set()
    for token in words(_THOUSANDS.sub("", text)):
        if token in _NUMBER_WORDS:
            spelled.add(_NUMBER_WORDS[token])
        elif any(ch.isdigit() for ch in token):
            number = _ORDINAL_OR_NUMBER.fullmatch(token)
            written.add(int(number[1]) if number else token)
    return written, spelled


def numbers_differ(a: str, b: str) -> bool:
    """A number in digits on one side that the other has neither in digits nor in words ("4th" /
    "fourth" and "100" / "a hundred" agree; words alone are not compared: "one" is often no number)."""
    (written_a, spelled_a), (written_b, spelled_b) = _numbers(a), _numbers(b)
    return bool(written_a - written_b - spelled_b or written_b - written_a - spelled_a)


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
    ca, cb = _trigrams(a), _trigrams(b)
    return [
        float(similarity),
        len(sa & sb) / max(1, len(sa | sb)),
        unmatched_a,
        unmatched_b,
        max(unmatched_a, unmatched_b),
        max((df.idf(w) for w in only_a | only_b), default=0.0),
        float(numbers_differ(a, b)),
        float((_negations(ta) > 0) != (_negations(tb) > 0)),
        float(ta[:1] == tb[:1]),
        float(len(ta)),
        float(len(tb)),
        min(len(ta), len(tb)) / max(1, len(ta), len(tb)),
        len(ca & cb) / max(1, len(ca | cb)),
    ]
