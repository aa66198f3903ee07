"""Inference configuration from the environment."""

from __future__ import annotations

import dataclasses

from llmesh.kit.config import ServerSettings, non_negative, one_of, parses, port_check, positive, setting
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
    openai_url: str = setting(
        "LLMESH_INFERENCE_OPENAI_URL",
        "",
        "root of an OpenAI-compatible API with its version, e.g. https://api.openai.com/v1 (empty: no API backend)",
    )
    openai_api_key: str = setting(
        "LLMESH_INFERENCE_OPENAI_API_KEY", "", "API key sent to that API as a bearer token", secret=True
    )
    openai_models: tuple[str, ...] = setting(
        "LLMESH_INFERENCE_OPENAI_MODELS",
        (),
        "models served from the API: `name=remote-id` or `name=remote-id:context-length`, comma-separated "
        "(e.g. `gpt-frontier=gpt-4o:128000`)",
        parses(lambda v: parse_openai_models(v)),
    )
    openai_max_concurrency: int = setting(
        "LLMESH_INFERENCE_OPENAI_MAX_CONCURRENCY", 8, "API generations running at once, per model", positive
    )
    openai_max_queue: int = setting(
        "LLMESH_INFERENCE_OPENAI_MAX_QUEUE",
        8,
        "API requests that may wait for a busy slot before RESOURCE_EXHAUSTED, per model",
        _max_queue_check,
    )
    openai_timeout_s: float = setting(
        "LLMESH_INFERENCE_OPENAI_TIMEOUT_S", 120.0, "deadline of one API generation, retries included", positive
    )
    openai_connect_timeout_s: float = setting(
        "LLMESH_INFERENCE_OPENAI_CONNECT_TIMEOUT_S", 5.0, "deadline to connect to the API", positive
    )
    openai_read_timeout_s: float = setting(
        "LLMESH_INFERENCE_OPENAI_READ_TIMEOUT_S",
        30.0,
        "longest wait for the API's response headers or its next streamed chunk",
        positive,
    )
    openai_max_retries: int = setting(
        "LLMESH_INFERENCE_OPENAI_MAX_RETRIES",
        2,
        "retries of a 429, 5xx or connection failure, only before the first token",
        _max_queue_check,
    )


DEFAULT_OPENAI_CONTEXT_LENGTH = 8192


def parse_openai_models(entries) -> list[tuple[str, str, int]]:
    """(name, remote id, context length) of each `name=remote-id[:context-length]` entry."""
    if isinstance(entries, str):
        entries = [part.strip() for part in entries.split(",") if part.strip()]
    result = []
    for entry in entries:
        name, sep, remote = entry.partition("=")
        name, remote = name.strip(), remote.strip()
        if not sep or not name or not remote:
            raise ValueError(f"{entry!r} is not name=remote-id[:context-length]")
        context = DEFAULT_OPENAI_CONTEXT_LENGTH
        remote_id, colon, length = remote.rpartition(":")
        if colon and length.isdigit():
            remote, context = remote_id, int(length)
        if context < MIN_CONTEXT_LENGTH:
            raise ValueError(f"{entry!r}: context length must be >= {MIN_CONTEXT_LENGTH}")
        result.append((name, remote, context))
    names = [n for n, _, _ in result]
    if len(set(names)) != len(names):
        raise ValueError(f"model names repeat: {', '.join(names)}")
    return result
