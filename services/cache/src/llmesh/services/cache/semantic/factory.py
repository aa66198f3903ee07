"""Builds the configured index: embedder, calibration, second stage, store."""

from __future__ import annotations

import pathlib

from llmesh.kit import errors
from llmesh.kit.logging import get_logger

from .config import SemanticConfig
from .decision import Calibration, HitPolicy
from .embedder import Embedder, TritonEmbedder, collection_name
from .index import QdrantSemanticIndex
from .stage2 import SecondStage

log = get_logger("llmesh.cache.semantic")

MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"


def calibration_file(model_id: str) -> pathlib.Path:
    return MODELS_DIR / f"calibration.{collection_name(model_id).removeprefix('llmesh_semantic_')}.json"


def load_calibration(config: SemanticConfig, model_id: str) -> Calibration:
    path = pathlib.Path(config.calibration_path) if config.calibration_path else calibration_file(model_id)
    if not path.is_file():
        raise errors.FailedPrecondition(
            f"no calibration for embedding model {model_id} at {path}: calibrate it "
            "(python -m llmesh.services.cache.semantic.train) or set LLMESH_CACHE_SEMANTIC_CALIBRATION"
        )
    calibration = Calibration.load(path)
    if calibration.embedder != model_id:
        raise errors.FailedPrecondition(
            f"calibration {path} was made for {calibration.embedder}, the embedder is {model_id}"
        )
    return calibration


async def make_embedder(config: SemanticConfig) -> Embedder:
    if config.embedder == "triton":
        return TritonEmbedder(
            config.triton_url,
            config.triton_model,
            dim=config.triton_dim,
            input_name=config.triton_input,
            output_name=config.triton_output,
            timeout_s=config.triton_timeout_s,
        )
    from .tuned import tuned_minilm

    embedder = tuned_minilm(threads=config.embed_threads, runtime=config.embed_runtime, onnx_dir=config.onnx_dir)
    await embedder.start()
    return embedder


def make_stage2(calibration: Calibration, config: SemanticConfig) -> SecondStage | None:
    if not calibration.stage2:
        return None
    from .verifier import PairVerifier

    path = pathlib.Path(config.verifier_path) if config.verifier_path else MODELS_DIR / calibration.stage2
    return PairVerifier.load(path)


async def open_store(config: SemanticConfig, collection: str, dim: int):
    if config.qdrant_url:
        from .server_store import QdrantServerStore

        return await QdrantServerStore.open(collection, dim, url=config.qdrant_url, api_key=config.qdrant_api_key)
    from . import default_store_path
    from .edge_store import EdgeStore

    root = pathlib.Path(config.store_path) if config.store_path else default_store_path()
    path = root / collection
    if config.min_free_mb <= 0:
        return await EdgeStore.open(path, dim)
    from .disk import MIB, DiskGuard, GuardedStore

    return await GuardedStore.open(
        lambda: EdgeStore.open(path, dim), DiskGuard(path, config.min_free_mb * MIB), config.disk_check_s
    )


async def build_index(
    config: SemanticConfig,
    *,
    embedder: Embedder | None = None,
    calibration: Calibration | None = None,
    stage2: SecondStage | None = None,
) -> QdrantSemanticIndex:
    owned_embedder = embedder is None
    embedder = embedder or await make_embedder(config)
    try:
        calibration = calibration or load_calibration(config, embedder.model_id)
        if stage2 is None:
            stage2 = make_stage2(calibration, config)
        store = await open_store(config, collection_name(embedder.model_id), embedder.dim)
    except BaseException:
        if owned_embedder:
            await embedder.close()
        raise
    log.info(
        "semantic_index_open",
        embedder=embedder.model_id,
        store="qdrant-server" if config.qdrant_url else "qdrant-edge",
        stage2=getattr(stage2, "name", None),
        target_false_hit_rate=config.target_false_hit_rate,
    )
    return QdrantSemanticIndex(
        embedder,
        store,
        HitPolicy(calibration, config.target_false_hit_rate),
        stage2,
        max_chars=config.max_chars,
        purge_interval_s=config.purge_interval_s,
    )
