"""The router's domain types: what a request, a classification, a cached answer and the events
streamed back look like, free of gRPC and protobuf."""

from __future__ import annotations

import dataclasses
import enum

from llmesh.kit.chat import Message, Sampling
from llmesh.kit.errors import Unavailable
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
    # Generate and store a new answer without reading the cache (a cache refresh).
    refresh_cache: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Classification:
    tier: int
    sensitivity: Sensitivity
    confidence: float
    # True when the classifier could not answer and the router assumed a tier.
    degraded: bool = False
    # The complexity model version that answered ("" when unknown or degraded).
    model_version: str = ""


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
    # The cache's entry: its id, when it expires (unix seconds; None when the cache did not say)
    # and was created, whether it is pinned, and the (document_id, version) pairs it was built
    # from. What the router's L1 of exact answers needs to keep a copy (docs/adr/0033).
    entry_id: str = ""
    expires_at: float | None = None
    created_at: float = 0.0
    pinned: bool = False
    content_versions: tuple[tuple[str, int], ...] = ()


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
    # Concurrent generations inference runs (0: not stated, the router does not queue for it).
    max_concurrency: int = 0

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
class RouteAttempt:
    """One try of one model for a request."""

    model: str
    backend: str
    region: str
    # "ok", or the gRPC status code name of the failure (e.g. "UNAVAILABLE").
    outcome: str
    # Why this model was tried: "tier", "fallback", "overflow", "escalation", "pinned".
    reason: str
    elapsed_ms: float
    after_first_token: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class OverflowInfo:
    reason: str
    utilization: float
    extra_cost_usd: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class EscalationInfo:
    from_tier: int
    from_model: str
    quality_score: float
    threshold: float
    first_answer_cost_usd: float


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
    # The policy experiment variant(s) the request ran under ("<experiment>/<variant>"; "" none).
    policy_variant: str = ""
    attempts: tuple[RouteAttempt, ...] = ()
    overflow: OverflowInfo | None = None
    escalation: EscalationInfo | None = None
    region: str = ""
    # Time in the router's fair queue; the class the request ran at.
    queue_wait_ms: float = 0.0
    priority: Priority | None = None


class StreamInterruptedError(Unavailable):
    """A backend failed after part of the answer was sent: what was served and billed. The
    servicer sends it as UNAVAILABLE with a router.v1.StreamInterrupted detail."""

    def __init__(
        self, message: str, *, request_id: str, model: str, usage: Usage, cost_usd: float, delivered_chars: int
    ):
        super().__init__(message)
        self.request_id = request_id
        self.model = model
        self.usage = usage
        self.cost_usd = cost_usd
        self.delivered_chars = delivered_chars


@dataclasses.dataclass(frozen=True, slots=True)
class HotEntry:
    """A cached answer hit often: the request that generates it again, and when it expires."""

    messages: tuple[Message, ...]
    model: str
    sampling: Sampling
    max_tokens: int
    hits: int
    expires_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class HotEntries:
    entries: list[HotEntry]
    hits_by_hour: list[int]  # 24 counts, UTC hour 0 first
