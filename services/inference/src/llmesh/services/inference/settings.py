"""Inference configuration from the environment."""

from __future__ import annotations

import dataclasses

from llmesh.kit.config import ServerSettings, non_negative, one_of, port_check, positive, setting
from llmesh.kit.defaults import DEFAULT_PORTS

# Below this a chat prompt and a useful answer do not fit together.
MIN_CONTEXT_LENGTH = 256


def _context_length_check(value: int) -> str | None:
    return None if value >= MIN_CONTEXT_LENGTH else f"must be >= {MIN_CONTEXT_LENGTH}"


def _max_queue_check(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0 (0: no waiting, reject when every slot is busy)"


@dataclasses.dataclass(frozen=True)
class InferenceSettings(ServerSettings):
    port: int = setting("LLMESH_PORT", DEFAULT_PORTS["inference"], "gRPC port (0 picks a free one)", port_check)
    model_name: str = setting(
        "LLMESH_INFERENCE_MODEL_NAME", "gemma-3-270m", "name the local llama.cpp model is served under"
    )
    model_path: str = setting(
        "LLMESH_INFERENCE_MODEL_PATH",
        "",
        "GGUF file of the local model (empty: the bundled Gemma 3 270M, assembled on first use)",
    )
    context_length: int = setting(
        "LLMESH_INFERENCE_CONTEXT_LENGTH", 2048, "context window in tokens (prompt + answer)", _context_length_check
    )
    threads: int = setting("LLMESH_INFERENCE_THREADS", 1, "llama.cpp threads per generation (docs/adr/0003)", positive)
    max_concurrency: int = setting(
        "LLMESH_INFERENCE_MAX_CONCURRENCY", 2, "generations running at once (one model context each)", positive
    )
    max_queue: int = setting(
        "LLMESH_INFERENCE_MAX_QUEUE",
        2,
        "requests that may wait for a busy slot before RESOURCE_EXHAUSTED",
        _max_queue_check,
    )
    retry_after_s: float = setting(
        "LLMESH_INFERENCE_RETRY_AFTER_S", 1.0, "retry delay suggested to callers turned away when full", non_negative
    )
    chat_format: str = setting(
        "LLMESH_INFERENCE_CHAT_FORMAT",
        "auto",
        "prompt format: auto (the GGUF's chat template, else Gemma turns) or gemma",
        one_of("auto", "gemma"),
    )
