"""The inference service's domain: finds the backend serving a model, checks the request against
the model's limits, streams the backend's events and adds timings, load and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from llmesh.kit.errors import InvalidArgument, LlmeshError, NotFound, Unavailable
from llmesh.kit.logging import get_logger
from llmesh.services.inference import metrics
from llmesh.services.inference.backend import (
    Backend,
    BackendCompletion,
    BackendLoad,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    TextDelta,
)

log = get_logger("llmesh.inference")

MAX_MODEL_NAME_CHARS = 128


@dataclass(frozen=True, slots=True)
class Completion:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    time_to_first_token_ms: float
    total_time_ms: float
    model: str
    backend: str


@dataclass(frozen=True, slots=True)
class ModelStatus:
    info: ModelInfo
    load: BackendLoad


class InferenceEngine:
    def __init__(self, backends: Sequence[Backend]):
        self._backends = list(backends)
        self._by_model: dict[str, tuple[Backend, ModelInfo]] = {}
        self._ready = False

    async def start(self) -> None:
        for backend in self._backends:
            await backend.start()
            for info in backend.models():
                if info.name in self._by_model:
                    raise ValueError(f"model {info.name!r} is served by two backends")
                self._by_model[info.name] = (backend, info)
                labels = (info.name, backend.name)
                metrics.ACTIVE_GENERATIONS.labels(*labels).set_function(lambda b=backend, m=info.name: b.load(m).active)
                metrics.QUEUED_GENERATIONS.labels(*labels).set_function(lambda b=backend, m=info.name: b.load(m).queued)
        self._ready = True

    async def close(self) -> None:
        self._ready = False
        for backend in reversed(self._backends):
            await backend.close()

    def models(self) -> list[ModelStatus]:
        return [ModelStatus(info, backend.load(name)) for name, (backend, info) in sorted(self._by_model.items())]

    def _model(self, name: str) -> tuple[Backend, ModelInfo]:
        if not self._ready:
            raise Unavailable("models are loading or unloading; retry shortly", retry_after_s=1.0)
        if not name:
            raise InvalidArgument(f"model is required; served here: {', '.join(sorted(self._by_model))}", field="model")
        if len(name) > MAX_MODEL_NAME_CHARS:
            raise InvalidArgument(f"model names are at most {MAX_MODEL_NAME_CHARS} characters", field="model")
        try:
            return self._by_model[name]
        except KeyError:
            raise NotFound(
                f"model {name!r} is not served here; served: {', '.join(sorted(self._by_model)) or 'none'}"
            ) from None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        """Text deltas as the backend produces them, then one Completion. Closing the iterator
        stops the generation upstream."""
        started = time.perf_counter()
        backend, info = self._model(request.model)
        if not 1 <= request.max_tokens <= info.context_length:
            raise InvalidArgument(
                f"max_tokens must be in 1..{info.context_length} for {info.name} (got {request.max_tokens})",
                field="max_tokens",
            )
        labels = (info.name, backend.name)
        first_delta_at: float | None = None
        completed = False
        try:
            async with contextlib.aclosing(backend.generate(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        if first_delta_at is None:
                            first_delta_at = time.perf_counter()
                            metrics.TIME_TO_FIRST_TOKEN.labels(*labels).observe(first_delta_at - started)
                        yield event
                    elif isinstance(event, BackendCompletion):
                        completed = True
                        yield self._complete(event, labels, started, first_delta_at)
                        return
        except (asyncio.CancelledError, GeneratorExit):
            if not completed:
                metrics.GENERATIONS.labels(*labels, FinishReason.CANCELLED.value).inc()
            raise
        except LlmeshError as exc:
            # A backend that fails after its first delta (e.g. Triton died): the deltas sent stand
            # (the backend counted their tokens), the caller's stream ends with the error's status.
            if first_delta_at is not None:
                metrics.GENERATIONS.labels(*labels, "error").inc()
                log.warning("generation_failed_midstream", model=info.name, backend=backend.name, error=exc.message)
            raise

    @staticmethod
    def _complete(
        event: BackendCompletion, labels: tuple[str, str], started: float, first_delta_at: float | None
    ) -> Completion:
        ended = time.perf_counter()
        first = first_delta_at if first_delta_at is not None else ended
        decode_s = ended - first
        if event.completion_tokens > 1 and decode_s > 0:
            metrics.TOKENS_PER_SECOND.labels(*labels).observe((event.completion_tokens - 1) / decode_s)
        metrics.GENERATIONS.labels(*labels, event.finish_reason.value).inc()
        return Completion(
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            finish_reason=event.finish_reason,
            time_to_first_token_ms=(first - started) * 1000,
            total_time_ms=(ended - started) * 1000,
            model=labels[0],
            backend=labels[1],
        )
