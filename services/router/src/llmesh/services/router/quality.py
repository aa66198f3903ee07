"""Quality score of a tier-1 answer (0..1) and the escalation policy (ADR 0012).

Inference exposes no token log-probabilities, so the score is built from what the router sees:

  empty       an answer with no visible text                          score 0
  refusal     starts like a refusal ("I can't", "I'm sorry", "As an AI") × 0.4
  repetition  share of repeated word 3-grams r (small models loop):   × (1 - r)
  truncated   stopped at max_tokens (FINISH_REASON_LENGTH):            × 0.85
  confidence  the classifier's confidence c that the request is tier 1: × (0.75 + 0.25 c)

Each factor is a failure mode that small models show and that a stronger model fixes: loops
(degenerate repetition), reflexive refusals, empty answers. Truncation is a mild signal only (the
stronger model has the same max_tokens). A low classifier confidence means the request sat near
the tier boundary, so the same surface quality is worth less there. With the default threshold 0.7
a clean answer (1.0) never escalates, one refusal or a 30 % repeated answer does, and a confident
classification keeps a slightly repetitive answer (r = 0.2 → 0.8).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any

from llmesh.kit.logging import get_logger
from llmesh.kit.vocabulary import FinishReason

log = get_logger("llmesh.router.quality")

REFUSAL = re.compile(
    r"^\W*(i\s*(?:am|'m)\s+sorry|sorry,|i\s+(?:can(?:no|')t|cannot|am\s+unable|'m\s+unable|won't)|"
    r"as\s+an\s+ai|i\s+do\s+not\s+know|i\s+don't\s+know)",
    re.IGNORECASE,
)
WORD = re.compile(r"\w+")


class StreamMode(enum.Enum):
    # Stream at once; escalate only an answer that completed before any text was released (empty).
    RELEASE = "release"
    # Hold the first `hold_tokens` deltas (or the whole answer when shorter), score, then release
    # or escalate.
    HOLD = "hold"


@dataclasses.dataclass(frozen=True)
class EscalationPolicy:
    enabled: bool = True
    threshold: float = 0.7
    stream_mode: StreamMode = StreamMode.RELEASE
    hold_tokens: int = 32


def parse_escalation(section: Any, defaults: EscalationPolicy) -> EscalationPolicy:
    if section is None:
        return defaults
    if not isinstance(section, dict):
        log.warning("policy_entry_ignored", field="escalation", key="")
        return defaults
    values = dataclasses.asdict(defaults)
    enabled = section.get("enabled")
    if isinstance(enabled, bool):
        values["enabled"] = enabled
    elif enabled is not None:
        log.warning("policy_entry_ignored", field="escalation.enabled", key=str(enabled))
    threshold = section.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            log.warning("policy_entry_ignored", field="escalation.threshold", key=str(threshold))
        else:
            values["threshold"] = float(threshold)
    mode = section.get("stream_mode")
    if mode is not None:
        try:
            values["stream_mode"] = StreamMode(mode)
        except ValueError:
            log.warning("policy_entry_ignored", field="escalation.stream_mode", key=str(mode))
    hold = section.get("hold_tokens")
    if hold is not None:
        if isinstance(hold, bool) or not isinstance(hold, int) or not 1 <= hold <= 4096:
            log.warning("policy_entry_ignored", field="escalation.hold_tokens", key=str(hold))
        else:
            values["hold_tokens"] = hold
    return EscalationPolicy(**values)


@dataclasses.dataclass(frozen=True, slots=True)
class QualityScore:
    score: float
    signals: tuple[str, ...]


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of the word n-grams that repeat an earlier one (0: none, near 1: a loop)."""
    words = WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 4:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def score(
    text: str, *, finish_reason: FinishReason | None = None, classifier_confidence: float | None = None
) -> QualityScore:
    """`finish_reason` None: a prefix of an answer still running (held tokens)."""
    if not text.strip():
        return QualityScore(0.0, ("empty",))
    value, signals = 1.0, []
    if REFUSAL.match(text):
        value *= 0.4
        signals.append("refusal")
    repeated = repetition_ratio(text)
    if repeated > 0:
        value *= 1.0 - repeated
        signals.append(f"repetition {repeated:.2f}")
    if finish_reason is FinishReason.LENGTH:
        value *= 0.85
        signals.append("truncated")
    if classifier_confidence is not None and 0.0 <= classifier_confidence <= 1.0:
        value *= 0.75 + 0.25 * classifier_confidence
    return QualityScore(max(0.0, min(1.0, value)), tuple(signals))
