"""The model backend interface: what the inference service needs from llama.cpp, Triton or an
OpenAI-compatible API. Domain code only (no grpc)."""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from llmesh.kit.chat import Message, Sampling
from llmesh.kit.vocabulary import FinishReason


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    sampling: Sampling = Sampling()
    request_id: str = ""
    # Batch priority class: may wait in a backend's batching window (Triton's dynamic batcher);
    # interactive requests go to instances without delay.
    batch: bool = False


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Text the model produced since the previous delta (never empty)."""

    text: str


@dataclass(frozen=True, slots=True)
class BackendCompletion:
    """The last event of a generation."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


BackendEvent = TextDelta | BackendCompletion


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    backend: str
    context_length: int
    max_concurrency: int
    max_queue: int


@dataclass(frozen=True, slots=True)
class BackendLoad:
    active: int  # generations running now
    queued: int  # admitted, waiting for a slot


# Local prompt estimate, for backends whose server reports no usage (an OpenAI-compatible API
# without a usage chunk, a Triton model without count outputs): BPE vocabularies of current models
# average about four bytes of English per token; each chat message adds a few tokens of role and
# turn markers.
BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_PROMPT = 3


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    """A server-independent estimate of a chat prompt's tokens."""
    text_tokens = sum(math.ceil(len(m.content.encode()) / BYTES_PER_TOKEN) for m in request.messages)
    return text_tokens + TOKENS_PER_MESSAGE * len(request.messages) + TOKENS_PER_PROMPT


class Backend(abc.ABC):
    """One source of models. Implementations: llama.cpp in process (`llama_cpp`), later Triton
    (decoupled streaming) and OpenAI-compatible HTTP APIs."""

    #: short name reported with every completion and metric, e.g. "llama_cpp"
    name: str

    #: called with a model's name whenever its load (active or queued) changes; set by the engine
    on_load_change: Callable[[str], None] | None = None

    def _load_changed(self, model: str) -> None:
        """For implementations: their slot pool's `on_change`."""
        if self.on_load_change is not None:
            self.on_load_change(model)

    async def start(self) -> None:
        """Loads models or connects; the service reports SERVING only after this returns."""

    async def close(self) -> None:
        """Stops running generations and releases resources."""

    @abc.abstractmethod
    def models(self) -> list[ModelInfo]:
        """The models this backend serves (valid after start)."""

    @abc.abstractmethod
    def load(self, model: str) -> BackendLoad:
        """Current load of one of `models()`."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[BackendEvent]:
        """Streams TextDelta events as tokens are produced, then one BackendCompletion.

        Implemented as an async generator. Caller mistakes (such as a prompt that does not fit
        the context) raise kit.errors.InvalidArgument and a full backend raises
        ResourceExhausted, both before the first event. Closing or cancelling the iterator stops
        the generation upstream within a token or two.
        """
