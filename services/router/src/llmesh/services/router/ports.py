"""What the pipeline needs from the other services. The gRPC adapters in upstreams.py implement
these; failures arrive as llmesh.kit.errors classes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from llmesh.kit.vocabulary import Principal, Sensitivity
from llmesh.services.router.domain import (
    AnswerToStore,
    CachedAnswer,
    CacheKey,
    Classification,
    Completion,
    Delta,
    GenerateCommand,
    HotEntries,
    ModelInfo,
)


class Tenancy(Protocol):
    async def authenticate(self, api_key: str, *, timeout_s: float) -> Principal: ...


class Classifier(Protocol):
    async def classify(
        self, command: GenerateCommand, *, tenant_id: str, request_id: str, timeout_s: float
    ) -> Classification: ...


class Cache(Protocol):
    async def lookup(
        self,
        key: CacheKey,
        *,
        business_unit: str,
        timeout_s: float,
        exact_only: bool = False,
        semantic_only: bool = False,
    ) -> CachedAnswer | None:
        """A cached answer for the request; `exact_only`: the exact layer alone (no embedding), and
        a miss is followed by a semantic lookup, which the cache counts instead (and starts embedding
        for at once); `semantic_only`: that lookup, the semantic layer alone."""

    async def store(
        self, key: CacheKey, answer: AnswerToStore, *, business_unit: str, sensitivity: Sensitivity, timeout_s: float
    ) -> str | None:
        """Stores the answer; returns why the cache declined it, or None once stored."""

    async def hot_entries(
        self, tenant_id: str, use_case: str, min_hits: int, expiring_within_s: float, limit: int, *, timeout_s: float
    ) -> HotEntries:
        """The tenant's entries hit at least `min_hits` times that expire soon, and its hits by hour."""


class Inference(Protocol):
    async def list_models(self, *, timeout_s: float) -> list[ModelInfo]: ...

    def generate(
        self, model: str, command: GenerateCommand, *, request_id: str, timeout_s: float
    ) -> AsyncIterator[Delta | Completion]: ...
