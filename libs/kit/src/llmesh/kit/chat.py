"""Chat messages and sampling parameters as the domain sees them, converted from (and validated
against) the llmesh.common.v1 contract in one place for every service."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from llmesh.common.v1 import common_pb2
from llmesh.kit.errors import InvalidArgument

ROLE_NAMES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
}
ROLE_VALUES = {name: value for value, name in ROLE_NAMES.items()}

# Limits a caller hits with INVALID_ARGUMENT rather than a model's context overflow.
MAX_MESSAGES = 256
MAX_TOTAL_CHARS = 64_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


def messages_from_proto(
    messages: Iterable[common_pb2.ChatMessage],
    *,
    field_name: str = "messages",
    max_total_chars: int = MAX_TOTAL_CHARS,
) -> tuple[Message, ...]:
    """Validates chat messages: at least one, known roles, non-empty content, bounded size,
    and at least one user message."""
    result = []
    total = 0
    for i, m in enumerate(messages):
        if m.role not in ROLE_NAMES:
            raise InvalidArgument(
                f"{field_name}[{i}].role must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT (got {m.role})",
                field=f"{field_name}[{i}].role",
            )
        if not m.content.strip():
            raise InvalidArgument(f"{field_name}[{i}].content is empty", field=f"{field_name}[{i}].content")
        total += len(m.content)
        result.append(Message(ROLE_NAMES[m.role], m.content))
    if not result:
        raise InvalidArgument(f"{field_name} is empty: send at least one user message", field=field_name)
    if len(result) > MAX_MESSAGES:
        raise InvalidArgument(f"{field_name} has {len(result)} messages; the limit is {MAX_MESSAGES}", field=field_name)
    if total > max_total_chars:
        raise InvalidArgument(f"{field_name} hold {total} characters; the limit is {max_total_chars}", field=field_name)
    if not any(m.role == "user" for m in result):
        raise InvalidArgument(f"{field_name} has no user message", field=field_name)
    return tuple(result)


def messages_to_proto(messages: Iterable[Message]) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=ROLE_VALUES[m.role], content=m.content) for m in messages]


def sampling_from_proto(params: common_pb2.SamplingParams, *, field_name: str = "sampling") -> Sampling:
    def bad(name: str, rule: str) -> InvalidArgument:
        return InvalidArgument(f"{field_name}.{name} {rule}", field=f"{field_name}.{name}")

    temperature = params.temperature if params.HasField("temperature") else None
    if temperature is not None and not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise bad("temperature", f"must be in [0, 2] (got {temperature})")
    top_p = params.top_p if params.HasField("top_p") else None
    if top_p is not None and not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise bad("top_p", f"must be in (0, 1] (got {top_p})")
    top_k = params.top_k if params.HasField("top_k") else None
    if top_k is not None and top_k < 0:
        raise bad("top_k", f"must be >= 0 (got {top_k})")
    seed = params.seed if params.HasField("seed") else None
    stop = tuple(params.stop)
    if len(stop) > MAX_STOP_SEQUENCES:
        raise bad("stop", f"has {len(stop)} sequences; the limit is {MAX_STOP_SEQUENCES}")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stop):
        raise bad("stop", f"sequences must be 1..{MAX_STOP_CHARS} characters")
    return Sampling(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop)


def sampling_to_proto(sampling: Sampling) -> common_pb2.SamplingParams:
    params = common_pb2.SamplingParams(stop=list(sampling.stop))
    if sampling.temperature is not None:
        params.temperature = sampling.temperature
    if sampling.top_p is not None:
        params.top_p = sampling.top_p
    if sampling.top_k is not None:
        params.top_k = sampling.top_k
    if sampling.seed is not None:
        params.seed = sampling.seed
    return params
