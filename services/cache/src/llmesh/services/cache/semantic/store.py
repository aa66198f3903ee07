"""The vector store seen by the index: points are cached entries with their embedding.

Reads and tenant-level deletes take a `TenantScope` (see scope.py), never a bare filter.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from .api import SemanticEntry
from .scope import TenantScope


@dataclasses.dataclass(frozen=True)
class Candidate:
    similarity: float
    entry: SemanticEntry


class VectorStore(Protocol):
    async def upsert(self, entries: list[SemanticEntry], vectors: np.ndarray) -> None: ...

    async def nearest(self, scope: TenantScope, vector: np.ndarray, limit: int = 1) -> list[Candidate]:
        """The closest entries inside the scope, best first."""
        ...

    async def holds_any(self, scope: TenantScope) -> bool:
        """Whether any entry is inside the scope: a lookup without one is a miss whatever its vector."""
        ...

    async def count(self, scope: TenantScope) -> int: ...

    async def delete_ids(self, tenant_id: str, entry_ids: list[str]) -> int: ...

    async def delete_scope(self, scope: TenantScope) -> int: ...

    async def purge_expired(self, now: float) -> int:
        """Removes every tenant's entries whose expiry is at or before `now`."""
        ...

    async def close(self) -> None: ...
