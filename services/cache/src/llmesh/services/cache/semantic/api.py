"""The semantic layer as the cache service sees it (the contract between the cache service and
its semantic engine). Domain types only: no gRPC, no Qdrant types.

The cache service opens the engine with `llmesh.services.cache.semantic.open_semantic_index(config)`
(exported by the package; `config` is a `SemanticConfig`; sync or async), closes it with `close()`,
and leaves purging expired entries to the engine (every `SemanticConfig.purge_interval_s`).
When neither `store_path` nor `qdrant_url` is set, the service sets `store_path` to
`$LLMESH_HOME/cache/semantic/<replica>`: two replicas on one host cannot share an embedded store.
Entries always carry a tier in 1..3 (the service stores an answer of unknown tier as tier 1).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol


class Decision(enum.Enum):
    HIT = "hit"  # similarity >= the upper threshold
    GRAY_HIT = "gray_hit"  # between the thresholds, and the second stage said "same question"
    GRAY_MISS = "gray_miss"  # between the thresholds, and the second stage said "different"
    MISS = "miss"  # below the lower threshold, or no candidate


@dataclasses.dataclass(frozen=True)
class SemanticEntry:
    """One cached answer, indexed by the meaning of its last user message."""

    entry_id: str
    tenant_id: str
    use_case: str
    tier: int  # 1..3: the tier that generated the answer
    context_hash: str  # hash of the system prompt and earlier turns (all but the last user message)
    params_hash: str  # hash of the sampling parameters, max_tokens and pinned model
    text: str  # the last user message: what is compared by meaning
    expires_at: float  # unix seconds, kept to the microsecond
    created_at: float  # unix seconds, kept to the microsecond
    content_class: str = ""
    # document_id -> version the answer was built from
    content_versions: dict[str, int] = dataclasses.field(default_factory=dict)
    # The answer itself (content, model, backend, usage, cost) as the cache service serialises it.
    payload: bytes = b""
    pinned: bool = False

    def __post_init__(self):
        # The stores keep whole microseconds; rounding here makes an entry read back equal the
        # one written.
        for name in ("expires_at", "created_at"):
            object.__setattr__(self, name, round(getattr(self, name) * 1_000_000) / 1_000_000)


@dataclasses.dataclass(frozen=True)
class SemanticQuery:
    tenant_id: str
    use_case: str
    tier: int  # an entry of this tier or a stronger one may answer; 0: any (the router checks)
    context_hash: str
    params_hash: str
    text: str
    now: float


@dataclasses.dataclass(frozen=True)
class SemanticMatch:
    decision: Decision
    similarity: float  # cosine of the best candidate, 0 when none
    entry: SemanticEntry | None  # the best candidate (also on a miss, for gray-zone records)
    stage2_score: float | None = None  # the second stage's score when it ran


class SemanticIndex(Protocol):
    """Implemented by llmesh.services.cache.semantic; every method is tenant-scoped by construction."""

    async def lookup(self, query: SemanticQuery) -> SemanticMatch: ...

    async def add(self, entry: SemanticEntry) -> None: ...

    async def add_many(self, entries: list[SemanticEntry]) -> None: ...

    async def delete(self, tenant_id: str, entry_ids: list[str]) -> int: ...

    async def delete_matching(
        self,
        tenant_id: str,
        *,
        use_case: str | None = None,
        document_id: str | None = None,
        older_than_version: int | None = None,
        created_before: float | None = None,
    ) -> int:
        """Deletes the tenant's entries that match every given condition; returns how many."""
        ...

    async def purge_expired(self, now: float) -> int: ...

    def tighten(self, tenant_id: str, use_case: str) -> None:
        """A thumbs-down on a cached answer: make this use case's operating point stricter."""
        ...

    def set_target(self, tenant_id: str, use_case: str, false_hit_rate: float) -> None:
        """The use case's policy: the false-hit rate it accepts (0 < rate < 1; default 1 %).
        Raises llmesh.kit.errors.InvalidArgument for a rate outside (0, 1)."""
        ...

    async def close(self) -> None: ...
