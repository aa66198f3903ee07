"""Features of a request's text that predict whether a cheap model will fail where a strong one
succeeds. They describe the kind of work a prompt asks for (calculation, multi-step reasoning,
logic, negation, comparison of options) rather than its topic, so that they carry over to
subjects and task families the model was not trained on.

A prompt is split into a stem and, when it has them, lettered answer options ("A. ..."); a plain
question (a chat message, a math word problem) is all stem.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Names the feature definitions; a model records it and is only used with the same definitions.
FEATURE_SET = "prompt-features/4"

_OPTION_LINE = re.compile(r"^\s*\(?([A-Ja-j])[\.\)]\s+(.*)$")
_TRAILING_ANSWER = re.compile(r"\n\s*Answer\s*:?\s*$", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_NUMBER = re.compile(r"(?<![A-Za-z])[-+]?\$?\d[\d,]*(?:\.\d+)?%?")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_MATH_SYMBOL = re.compile(r"[=+*/^<>≤≥≠±×÷√∑∫∞πθλμσ∂∈∀∃⊃≡∨∧¬→↔•]|\\[a-z]+")
_LOGIC_SYMBOL = re.compile(r"[∀∃⊃≡∨∧¬→↔•~]")
_ENUMERATION = re.compile(r"(?m)^\s*(?:I{1,3}V?|IV|V|[1-9])[\.\)]\s")
_QUOTE = re.compile(r"[\"“”]")
_DROP_DIGITS = str.maketrans("", "", "0123456789")
_CODE_MARKS = ("{", "}", ";", "==", "!=", "++")

# Word lists, looked up per token (one pass over the words instead of one regex per list).
_WORD_LISTS: dict[str, str] = {
    "calculation": "calculate calculated compute computed solve evaluate simplify estimate approximately",
    "quantity": (
        "each every per total twice thrice half third quarter double triple times percent percentage fraction "
        "ratio average remaining left fewer increase decrease profit discount interest rate hour hours minute "
        "minutes second seconds day days week weeks month months year years dollar dollars cent cents mile miles "
        "km meter meters metre metres pound pounds kg gram grams liter liters litre litres gallon gallons inch "
        "inches foot feet cup cups piece pieces dozen"
    ),
    "step": (
        "then after afterwards later next finally if suppose assume given remaining rest already instead until "
        "while before start starts started end ends buy buys bought sell sells sold spend spends spent give gives "
        "gave earn earns earned pay pays paid save saves saved split splits share shares use uses used"
    ),
    "negation": "not except least false incorrect untrue never",
    "logic": (
        "valid invalid argument premise conclusion implies entails necessarily sufficient consistent "
        "contradiction fallacy translation predicate proposition statement true false"
    ),
    "judgement": (
        "best most strongest weakest primarily main correct appropriate likely should would could probably "
        "reasonable justified liable guilty wrong morally ethical"
    ),
    "recall": "who when where called",
    "change": (
        "increase increases increased decrease decreases decreased rise rises risen rose fall falls fallen fell "
        "shift shifts shifted higher lower more less greater smaller larger remain remains remained unchanged "
        "same constant double doubles halve halves halved"
    ),
    "code": "def elif lambda void println printf const null nullptr struct",
}
_CATEGORIES_OF: dict[str, tuple[str, ...]] = {}
for _category, _words in _WORD_LISTS.items():
    for _w in _words.split():
        _CATEGORIES_OF[_w] = _CATEGORIES_OF.get(_w, ()) + (_category,)
# Phrases the word lookup cannot see, matched in the lower-cased text (case-sensitive scans are
# several times faster than case-insensitive ones).
_CALCULATION_PHRASE = re.compile(
    r"\b(?:how (?:many|much|long|far|fast|old)|what is the (?:value|probability|total|sum|product|difference|ratio|"
    r"area|volume|rate|speed|average|mean|median|expected|minimum|maximum|number|cost|price)|find the|determine the)\b",
)
_QUANTITY_PHRASE = re.compile(r"\b(?:more|less) than\b")
_RECALL_PHRASE = re.compile(
    r"\b(?:which of the following is a|what is the name|known as|refers to|is defined|according to|in which year|"
    r"capital of)\b",
)
_PASSAGE_MARKER = re.compile(
    r"\b(?:refers to the following|following (?:passage|information|excerpt|text|table|data|quote|poem|source)|"
    r"read the|passage)\b",
)
_CHANGE_WORD = re.compile(
    r"\b(?:increase[sd]?|decrease[sd]?|rise[sn]?|rose|fall[sn]?|fell|shift[sd]?|higher|lower|more|less|greater|"
    r"smaller|larger|remain[sd]?|unchanged|same|constant|doubles?|halve[sd]?)\b",
    re.IGNORECASE,
)
# A stem that stops mid-sentence is completed by the options: reasoning about which ending holds.
_COMPLETE_STEM_END = re.compile(r"[?.:!]\s*$")
_COMBINED_OPTION = re.compile(
    r"^(?:I{1,3}V?|IV)(?:\s*(?:,|and|only|&)\s*(?:I{1,3}V?|IV))*(?:\s*only)?\s*$|\b(?:both|all of the above|none of the "
    r"above|neither)\b|^(?:true|false|wrong|not wrong)\s*,\s*(?:true|false|wrong|not wrong)$",
    re.IGNORECASE,
)


# Negations the question writer set in capitals ("Which is NOT ..."): the question turns on excluding.
_CAPS_NEGATION = re.compile(r"\b(?:NOT|EXCEPT|LEAST|FALSE|INCORRECT)\b")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")
_NO_VOWEL_WORD = re.compile(r"(?:^| )[^aeiouy ]+(?= |$)")
_LAST_SENTENCE_REVERSED = re.compile(r"\s+(?=[.!?])")
# The question word of the last sentence (the question itself, after any scenario or passage).
_QUESTION_WORDS = ("how", "why", "which", "what")
_QUESTION_WORD = re.compile(r"\b(how|why|which|what)\b")


@dataclass(frozen=True, slots=True)
class PromptParts:
    stem: str
    options: tuple[str, ...]


def split_prompt(text: str) -> PromptParts:
    """Separates lettered answer options (at least two consecutive "A. ..." lines) from the stem."""
    text = _TRAILING_ANSWER.sub("", text.strip())
    lines = text.split("\n")
    end = len(lines)
    start = end
    while start > 0:
        match = _OPTION_LINE.match(lines[start - 1])
        if not match:
            break
        start -= 1
    if end - start >= 2 and _OPTION_LINE.match(lines[start]).group(1).upper() == "A":
        options = tuple(_OPTION_LINE.match(line).group(2).strip() for line in lines[start:end])
        return PromptParts("\n".join(lines[:start]).strip(), options)
    return PromptParts(text, ())


def _log1p(x: float) -> float:
    return math.log1p(max(x, 0.0))


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _stem_features(stem: str) -> dict[str, float]:
    chars = len(stem)
    words = _WORD.findall(stem)
    n_words = len(words)
    counts = dict.fromkeys(_WORD_LISTS, 0)
    long_words = capitalized = variables = 0
    for w in words:
        if len(w) >= 8:
            long_words += 1
        elif len(w) == 1 and w not in ("a", "A", "I"):
            variables += 1
        if w[0].isupper():
            capitalized += 1
        for category in _CATEGORIES_OF.get(w.lower(), ()):
            counts[category] += 1
    numbers = _NUMBER.findall(stem)
    sentences = max(1, len(_SENTENCE_END.findall(stem)))
    lines = stem.count("\n") + 1
    digits = chars - len(stem.translate(_DROP_DIGITS))
    non_ascii = chars - len(stem.encode("ascii", "ignore"))
    code = sum(stem.count(mark) for mark in _CODE_MARKS) + counts["code"]
    per_100_words = 100.0 / max(n_words, 10)
    lowered = stem.lower()
    calculation = counts["calculation"] + len(_CALCULATION_PHRASE.findall(lowered))
    quantity = counts["quantity"] + len(_QUANTITY_PHRASE.findall(lowered))
    recall = counts["recall"] + len(_RECALL_PHRASE.findall(lowered))
    return {
        "stem_chars_log": _log1p(chars),
        "stem_words_log": _log1p(n_words),
        "sentences_log": _log1p(sentences),
        "words_per_sentence": min(n_words / sentences, 80.0) / 20.0,
        "lines_log": _log1p(lines - 1),
        "mean_word_len": (sum(map(len, words)) / n_words if n_words else 0.0) / 5.0,
        "long_word_share": _share(long_words, n_words),
        "numbers_log": _log1p(len(numbers)),
        "distinct_numbers_log": _log1p(len(set(numbers))),
        "digit_share": _share(digits, chars),
        "math_symbols_log": _log1p(len(_MATH_SYMBOL.findall(stem))),
        "logic_symbols_log": _log1p(len(_LOGIC_SYMBOL.findall(stem))),
        "variables_log": _log1p(variables),
        "code_tokens_log": _log1p(code),
        "non_ascii_share": _share(non_ascii, chars),
        "calculation_cues": min(calculation, 4) / 2.0,
        "quantity_words_rate": quantity * per_100_words / 10.0,
        "step_words_rate": counts["step"] * per_100_words / 10.0,
        "negation": min(counts["negation"], 3) / 3.0,
        "logic_words_rate": counts["logic"] * per_100_words / 10.0,
        "judgement_words_rate": counts["judgement"] * per_100_words / 10.0,
        "recall_cues": min(recall, 3) / 3.0,
        "passage": 1.0 if _PASSAGE_MARKER.search(lowered) else 0.0,
        "enumerated_items_log": _log1p(len(_ENUMERATION.findall(stem))),
        "separators_log": _log1p(stem.count("|")),
        "quotes_log": _log1p(len(_QUOTE.findall(stem))),
        "capitalized_rate": capitalized * per_100_words / 10.0,
        "question_mark": 1.0 if "?" in stem else 0.0,
        "change_words_rate": counts["change"] * per_100_words / 10.0,
        "completion_stem": 1.0 if stem and not _COMPLETE_STEM_END.search(stem) else 0.0,
        "caps_negation": 1.0 if _CAPS_NEGATION.search(stem) else 0.0,
        **_question_word(lowered),
        "syllables_per_word": _syllables_per_word(words),
    }


def _syllables_per_word(words: list[str]) -> float:
    """Readability: vowel groups per word, at least one per word (one scan of the joined words,
    which a space keeps apart, instead of one per word)."""
    if not words:
        return 0.0
    joined = " ".join(words).lower()
    return (len(_VOWEL_GROUP.findall(joined)) + len(_NO_VOWEL_WORD.findall(joined))) / len(words)


def _question_word(lowered: str) -> dict[str, float]:
    stripped = lowered.strip()
    # The last sentence: what follows the last whitespace after a sentence end, found by searching
    # the reversed text from its start (the end of the prompt) instead of splitting all of it.
    found = _LAST_SENTENCE_REVERSED.search(stripped[::-1])
    last = stripped[len(stripped) - found.start() :] if found else stripped
    asked = set(_QUESTION_WORD.findall(last))
    return {f"asks_{w}": 1.0 if w in asked else 0.0 for w in _QUESTION_WORDS}


def _option_features(options: tuple[str, ...], stem_chars: int = 0) -> dict[str, float]:
    if not options:
        return {
            "has_options": 0.0,
            "option_words_log": 0.0,
            "option_numeric_share": 0.0,
            "option_math_share": 0.0,
            "option_combined_share": 0.0,
            "option_length_spread": 0.0,
            "option_change_share": 0.0,
            "option_sentences": 0.0,
            "option_overlap": 0.0,
            "options_all_numeric": 0.0,
            "option_stem_ratio_log": 0.0,
            "longest_option_log": 0.0,
        }
    # Options that share most of their words differ in a detail: a fine distinction to make.
    word_sets = [{w.lower() for w in _WORD.findall(o)} | set(_NUMBER.findall(o)) for o in options]
    overlaps = [len(a & b) / len(a | b) for i, a in enumerate(word_sets) for b in word_sets[i + 1 :] if a | b]
    chars = [len(o) for o in options]
    lengths = [len(_WORD.findall(o)) + len(_NUMBER.findall(o)) for o in options]
    mean_len = sum(lengths) / len(lengths)
    spread = (max(lengths) - min(lengths)) / (mean_len + 1.0)
    return {
        "has_options": 1.0,
        "option_words_log": _log1p(mean_len),
        "option_numeric_share": _share(sum(1 for o in options if _NUMBER.search(o)), len(options)),
        "option_math_share": _share(sum(1 for o in options if _MATH_SYMBOL.search(o)), len(options)),
        "option_combined_share": _share(sum(1 for o in options if _COMBINED_OPTION.search(o)), len(options)),
        "option_length_spread": min(spread, 3.0),
        "option_change_share": _share(sum(1 for o in options if _CHANGE_WORD.search(o)), len(options)),
        "option_sentences": 1.0 if mean_len > 8 else 0.0,
        "option_overlap": sum(overlaps) / len(overlaps) if overlaps else 0.0,
        "options_all_numeric": 1.0 if all(_NUMBER.search(o) and len(_WORD.findall(o)) <= 2 for o in options) else 0.0,
        "option_stem_ratio_log": math.log1p(sum(chars) / len(chars)) - math.log1p(stem_chars),
        "longest_option_log": math.log1p(max(chars)),
    }


FEATURE_NAMES: tuple[str, ...] = tuple(list(_stem_features("x").keys()) + list(_option_features(()).keys()))


def prompt_features(text: str) -> list[float]:
    """The feature vector of one prompt, in FEATURE_NAMES order."""
    parts = split_prompt(text)
    values = {**_stem_features(parts.stem), **_option_features(parts.options, len(parts.stem))}
    return [values[name] for name in FEATURE_NAMES]


def strip_options(text: str) -> str:
    """The prompt without its answer options: how an open question of the same content reads."""
    return split_prompt(text).stem
