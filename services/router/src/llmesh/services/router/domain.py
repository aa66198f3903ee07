"""The router's domain types: what a request, a classification, a cached answer and the events
streamed back look like, free of gRPC and protobuf."""

from __future__ import annotations

import dataclasses
import enum

from llmesh.kit.chat import Message, Sampling
from llmesh.kit.vocabulary import FinishReason, Sensitivity

TIERS = (1, 2, 3)


class Priority(enum.Enum):
    INTERACTIVE = "interactive"
    STANDARD = "standard"
    BATCH = "batch"


class CacheOutcome(enum.Enum):
    MISS = "miss"
    EXACT_HIT = "exact_hit"
    SEMANTIC_HIT = "semantic_hit"
    BYPASSED = "bypassed"


@dataclasses.dataclass(frozen=True, slots=True)
class GenerateCommand:
    """A validated client request."""

    messages: tuple[Message, ...]
    max_tokens: int
    sampling: Sampling
    use_case: str
    priority: Priority
    use_cache: bool
    pinned_model: str


@dataclasses.dataclass(frozen=True, slots=True)
class Classification:
    tier: int
    sensitivity: Sensitivity
    confidence: float
    # True when the classifier could not answer and the router assumed a tier.
    degraded: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class CacheKey:
    tenant_id: str
    use_case: str
    messages: tuple[Message, ...]
    pinned_model: str
    sampling: Sampling
    max_tokens: int


@dataclasses.dataclass(frozen=True, slots=True)
class CachedAnswer:
    content: str
    model: str
    backend: str
    tier: int
    usage: Usage
    cost_usd: float
    semantic: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class AnswerToStore:
    content: str
    model: str
    backend: str
    tier: int
    usage: Usage
    cost_usd: float


@dataclasses.dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model of inference's catalog, as routing needs it."""

    name: str
    backend: str
    tiers: tuple[int, ...] = ()
    self_hosted: bool = False
    # The most sensitive data the model may receive (PUBLIC when inference does not say).
    max_sensitivity: Sensitivity = Sensitivity.PUBLIC
    # USD per 1k tokens from the catalog; None when the catalog gives no price.
    prompt_price_per_1k: float | None = None
    completion_price_per_1k: float | None = None
    region: str = ""
    fallback: bool = False

    def allows(self, sensitivity: Sensitivity) -> bool:
        return sensitivity <= self.max_sensitivity


@dataclasses.dataclass(frozen=True, slots=True)
class Completion:
    """The end of an upstream generation."""

    usage: Usage
    finish_reason: FinishReason
    model: str
    backend: str


@dataclasses.dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    request_id: str
    tier: int
    model: str
    backend: str
    cache_outcome: CacheOutcome
    usage: Usage
    # What this request cost the tenant: 0 when the cache answered it.
    cost_usd: float
    time_to_first_token_ms: float
    total_time_ms: float
    finish_reason: FinishReason
    region: str = ""  # regions12: the region whose inference answered ("" when single-region)
