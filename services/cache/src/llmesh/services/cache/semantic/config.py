"""Settings of the semantic engine, read from the environment with the kit's `setting` fields.

The cache service loads them with `load_settings(SemanticConfig)` (or builds one in tests) and
passes them to `open_semantic_index`.
"""

from __future__ import annotations

import dataclasses

from llmesh.kit.config import non_negative, one_of, positive, setting


def _rate(value: float) -> str | None:
    return None if 0 < value < 1 else "must be a fraction in (0, 1), e.g. 0.01 for 1 %"


def _threads(value: int) -> str | None:
    return None if 1 <= value <= 64 else "must be in 1..64"


@dataclasses.dataclass(frozen=True)
class SemanticConfig:
    qdrant_url: str = setting(
        "LLMESH_QDRANT_URL",
        "",
        "Qdrant server (e.g. http://qdrant:6334, gRPC is used); empty: the embedded qdrant-edge store",
    )
    qdrant_api_key: str = setting("LLMESH_QDRANT_API_KEY", "", "API key of the Qdrant server", secret=True)
    store_path: str = setting(
        "LLMESH_CACHE_SEMANTIC_PATH",
        "",
        "directory of the embedded store; empty: $LLMESH_HOME/cache/semantic",
    )
    min_free_mb: int = setting(
        "LLMESH_CACHE_SEMANTIC_MIN_FREE_MB",
        256,
        "free space (MiB) the embedded store's file system must keep: below it the store refuses writes (answers "
        "are cached for exact matches only) and resumes by itself when space returns; its memory-mapped files "
        "make a full disk a SIGBUS, not an error (0: no guard)",
        non_negative,
    )
    disk_check_s: float = setting(
        "LLMESH_CACHE_SEMANTIC_DISK_CHECK_S",
        1.0,
        "seconds between free-space checks of the embedded store's file system (writes check it too)",
        positive,
    )
    embedder: str = setting(
        "LLMESH_CACHE_EMBEDDER",
        "minilm",
        "minilm (all-MiniLM-L6-v2 in process, CPU) or triton (an embedding model served by Triton)",
        one_of("minilm", "triton"),
    )
    embed_runtime: str = setting(
        "LLMESH_CACHE_EMBED_RUNTIME",
        "onnx",
        "runs the minilm embedder: onnx (ONNX Runtime on a one-time export of the same weights: the same "
        "vectors, 2-3x faster) or torch (sentence-transformers)",
        one_of("onnx", "torch"),
    )
    embed_threads: int = setting(
        "LLMESH_CACHE_EMBED_THREADS",
        1,
        "threads of the in-process embedder, torch or ONNX Runtime intra-op (docs/adr/0003)",
        _threads,
    )
    onnx_dir: str = setting(
        "LLMESH_CACHE_ONNX_DIR",
        "",
        "where the ONNX export of the minilm embedder is kept, one file per weights hash; "
        "empty: $XDG_CACHE_HOME/llmesh/onnx, else ~/.cache/llmesh/onnx",
    )
    triton_url: str = setting(
        "LLMESH_CACHE_TRITON_URL", "127.0.0.1:8001", "Triton gRPC address for the triton embedder"
    )
    triton_model: str = setting(
        "LLMESH_CACHE_TRITON_MODEL", "all-MiniLM-L6-v2", "Triton model that maps TEXT (BYTES) to an embedding"
    )
    triton_input: str = setting("LLMESH_CACHE_TRITON_INPUT", "TEXT", "name of the model's text input tensor")
    triton_output: str = setting("LLMESH_CACHE_TRITON_OUTPUT", "EMBEDDING", "name of the model's embedding output")
    triton_dim: int = setting("LLMESH_CACHE_TRITON_DIM", 384, "dimension of the Triton model's embeddings", positive)
    triton_timeout_s: float = setting("LLMESH_CACHE_TRITON_TIMEOUT_S", 2.0, "deadline of one embedding call", positive)
    target_false_hit_rate: float = setting(
        "LLMESH_CACHE_SEMANTIC_TARGET_FHR",
        0.01,
        "default target false-hit rate of a use case (the policy may set one per use case)",
        _rate,
    )
    calibration_path: str = setting(
        "LLMESH_CACHE_SEMANTIC_CALIBRATION",
        "",
        "operating points of the embedder (JSON); empty: the one shipped for the configured embedder",
    )
    max_chars: int = setting(
        "LLMESH_CACHE_SEMANTIC_MAX_CHARS",
        1000,
        "longer user messages are never compared by meaning (the embedder reads 256 tokens)",
        positive,
    )
    verifier_path: str = setting(
        "LLMESH_CACHE_SEMANTIC_VERIFIER",
        "",
        "second-stage model file; empty: the one shipped in the package",
    )
    purge_interval_s: float = setting(
        "LLMESH_CACHE_SEMANTIC_PURGE_S",
        60.0,
        "seconds between background purges of expired entries (0: off)",
        non_negative,
    )
