"""Inference configuration from the environment."""

from __future__ import annotations

import dataclasses

from llmesh.kit.config import non_negative, one_of, port_check, positive, setting
from llmesh.kit.defaults import DEFAULT_PORTS
from llmesh.kit.forecast import ForecastSettings

# Below this a chat prompt and a useful answer do not fit together.
MIN_CONTEXT_LENGTH = 256


def _context_length_check(value: int) -> str | None:
    return None if value >= MIN_CONTEXT_LENGTH else f"must be >= {MIN_CONTEXT_LENGTH}"


def _max_queue_check(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0 (0: no waiting, reject when every slot is busy)"


def _repeat_penalty_check(value: float) -> str | None:
    return None if 1.0 <= value <= 2.0 else "must be in 1.0..2.0 (1.0: no penalty)"


def _repeated_line_check(value: int) -> str | None:
    return None if value == 0 or value >= 2 else "must be 0 (off) or >= 2"


@dataclasses.dataclass(frozen=True)
class InferenceSettings(ForecastSettings):
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
    catalog: str = setting(
        "LLMESH_INFERENCE_CATALOG",
        "",
        "model catalog: path of a JSON file or inline JSON (services/inference/README.md); empty: the local "
        "llama.cpp model alone, serving every tier, as the fallback of last resort",
    )
    repeat_penalty: float = setting(
        "LLMESH_INFERENCE_REPEAT_PENALTY",
        1.1,
        "llama.cpp repetition penalty on recent tokens (1.0: off)",
        _repeat_penalty_check,
    )
    repeated_line_stop: int = setting(
        "LLMESH_INFERENCE_REPEATED_LINE_STOP",
        3,
        "stop a generation (finish reason STOP) when the same non-empty line comes this many times in a row (0: never)",
        _repeated_line_check,
    )
    coalesce_deltas: bool = setting(
        "LLMESH_INFERENCE_COALESCE_DELTAS",
        True,
        "send the text that arrived while the previous stream message was being written as one message "
        "(nothing waits for more text; false: one message per backend delta)",
    )
    load_window_s: float = setting(
        "LLMESH_INFERENCE_LOAD_WINDOW_S", 60.0, "window of the TTFT and tokens/s percentiles in load reports", positive
    )
    load_interval_s: float = setting(
        "LLMESH_INFERENCE_LOAD_INTERVAL_S",
        1.0,
        "seconds between load snapshots on llmesh.inference.load.<region>.<model>",
        positive,
    )
    replay_entries: int = setting(
        "LLMESH_INFERENCE_REPLAY_ENTRIES",
        1024,
        "completed generations kept to answer a repeated Generate of the same caller request id and request "
        "without generating again (docs/adr/0018; 0: off)",
        non_negative,
    )
    replay_ttl_s: float = setting(
        "LLMESH_INFERENCE_REPLAY_TTL_S", 900.0, "how long a completed generation may be replayed (0: off)", non_negative
    )
    replay_max_chars: int = setting(
        "LLMESH_INFERENCE_REPLAY_MAX_CHARS",
        4_000_000,
        "characters of answer text kept for replays in all (the oldest go first; 0: off)",
        non_negative,
    )
    openai_api_key: str = setting(
        "LLMESH_INFERENCE_OPENAI_API_KEY",
        "",
        "API key sent to the catalog's OpenAI-compatible endpoints as a bearer token (an entry's api_key_env overrides it)",
        secret=True,
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
