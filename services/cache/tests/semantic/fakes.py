"""Test support for the semantic engine."""

from __future__ import annotations

import hashlib
import re
import time

import numpy as np
from llmesh.services.cache.semantic.api import SemanticEntry, SemanticQuery
from llmesh.services.cache.semantic.embedder import normalize_rows

_WORD = re.compile(r"\w+")


class HashEmbedder:
    """Bag of hashed words in a few dimensions: texts with the same words get the same vector.

    Used where thousands of embeddings are needed in a second (the isolation property test) or
    where the test is about the index's logic, not about meaning; the real model has its own tests.
    """

    model_id = "test-hash-bow"

    def __init__(self, dim: int = 32):
        self.dim = dim
        self.calls = 0
        self.texts_embedded = 0

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        rows = [sum((self._word(w) for w in _WORD.findall(t.lower())), np.zeros(self.dim)) for t in texts]
        return normalize_rows(np.array(rows))

    async def close(self) -> None:
        pass


def entry(tenant_id: str, entry_id: str, text: str, **overrides) -> SemanticEntry:
    now = time.time()
    fields = dict(
        entry_id=entry_id,
        tenant_id=tenant_id,
        use_case="support",
        tier=2,
        context_hash="ctx",
        params_hash="params",
        text=text,
        expires_at=now + 3600,
        created_at=now,
        payload=f"answer to {text}".encode(),
    )
    fields.update(overrides)
    return SemanticEntry(**fields)


def query(tenant_id: str, text: str, **overrides) -> SemanticQuery:
    fields = dict(
        tenant_id=tenant_id,
        use_case="support",
        tier=2,
        context_hash="ctx",
        params_hash="params",
        text=text,
        now=time.time(),
    )
    fields.update(overrides)
    return SemanticQuery(**fields)
