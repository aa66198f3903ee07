"""The inference service's domain: finds the backend serving a model (the catalog names each
model's backend), checks the request against the model's limits, streams the backend's events,
stops a generation that loops on one line, and adds timings, load and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
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
from llmesh.services.inference.catalog import Catalog, CatalogEntry
from llmesh.services.inference.load import LatencyStats, LatencyWindow, utilization
from llmesh.services.inference.replay import ReplayStore, fingerprint
from llmesh.services.inference.text_stream import RepeatedLineGuard

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
    entry: CatalogEntry | None = None
    latency: LatencyStats | None = None

    @property
    def capacity(self) -> int:
        return self.entry.capacity if self.entry is not None else self.info.max_concurrency

    @property
    def utilization(self) -> float:
        return utilization(self.load.active, self.capacity)


# Rough size of a token in characters, for the prompt tokens of a generation stopped before its
# backend reported usage.
CHARS_PER_TOKEN = 4


class InferenceEngine:
    def __init__(
        self,
        backends: Sequence[Backend],
        catalog: Catalog | None = None,
        *,
        repeated_line_stop: int = 0,
        load_window_s: float = 60.0,
        replay: ReplayStore[Completion] | None = None,
    ):
        self._backends = list(backends)
        self._replay = replay
        self._catalog = catalog
        self._repeated_line_stop = repeated_line_stop
        self._load_window_s = load_window_s
        self._by_model: dict[str, tuple[Backend, ModelInfo]] = {}
        self._windows: dict[str, LatencyWindow] = {}
        self._ready = False
        #: called with a model's name when its load changed (a backend slot taken or freed, a caller
        #: queued or served): the backends say so, as only they know when a slot is really free
        self.on_load_change: Callable[[str], None] | None = None

    async def start(self) -> None:
        for backend in self._backends:
            backend.on_load_change = self._load_changed
            await backend.start()
            for info in backend.models():
                if info.name in self._by_model:
                    raise ValueError(f"model {info.name!r} is served by two backends")
                self._by_model[info.name] = (backend, info)
                self._windows[info.name] = LatencyWindow(self._load_window_s)
                labels = (info.name, backend.name)
                metrics.ACTIVE_GENERATIONS.labels(*labels).set_function(lambda b=backend, m=info.name: b.load(m).active)
                metrics.QUEUED_GENERATIONS.labels(*labels).set_function(lambda b=backend, m=info.name: b.load(m).queued)
        if self._catalog is not None:
            missing = [n for n in self._catalog.names if n not in self._by_model]
            if missing:
                raise ValueError(f"catalog models not served by their backends: {', '.join(missing)}")
        self._ready = True

    async def close(self) -> None:
        self._ready = False
        for backend in reversed(self._backends):
            await backend.close()

    def models(self) -> list[ModelStatus]:
        return [self.status(name) for name in sorted(self._by_model)]

    def status(self, name: str, *, latency: bool = True) -> ModelStatus:
        """The model's load now; `latency=False` leaves out the percentiles (`latency()` adds them)."""
        backend, info = self._by_model[name]
        entry = self._catalog.get(name) if self._catalog is not None else None
        return ModelStatus(info, backend.load(name), entry, self._windows[name].stats() if latency else None)

    def latency(self, name: str) -> LatencyStats:
        """The model's TTFT and tokens/s percentiles over the load window."""
        return self._windows[name].stats()

    def utilization(self, name: str) -> float:
        """Active generations over capacity, without the latency percentiles of `status`."""
        backend, info = self._by_model[name]
        entry = self._catalog.get(name) if self._catalog is not None else None
        return utilization(backend.load(name).active, entry.capacity if entry is not None else info.max_concurrency)

    def _load_changed(self, model: str) -> None:
        if self.on_load_change is not None:
            try:
                self.on_load_change(model)
            except Exception:
                log.exception("load_listener_failed", model=model)

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

    async def generate(
        self, request: GenerationRequest, *, replayable: bool = False
    ) -> AsyncIterator[TextDelta | Completion]:
        """Text deltas as the backend produces them, then one Completion. Closing the iterator
        stops the generation upstream.

        `replayable`: the request id is the caller's own (not one made up for this call). A
        generation of such a request that completes is recorded; the same request id with the same
        request (replay.fingerprint) within the replay TTL is then answered with the recorded
        deltas and completion, without the backend and without counting a new generation. The
        same request id with another request (a fallback to another model) generates."""
        replay = self._replay
        if not replayable or replay is None or not replay.enabled or not request.request_id:
            async with contextlib.aclosing(self._generate(request)) as events:
                async for event in events:
                    yield event
            return
        key = fingerprint(request)
        recorded = replay.get(request.request_id, key)
        if recorded is not None:
            completion = recorded.completion
            metrics.REPLAYS.labels(completion.model, completion.backend).inc()
            log.info("generation_replayed", model=completion.model, request_id=request.request_id)
            for piece in recorded.pieces:
                yield TextDelta(piece)
            yield completion
            return
        pieces: list[str] | None = []
        chars = len(request.request_id)
        async with contextlib.aclosing(self._generate(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    if pieces is not None:
                        chars += len(event.text)
                        if replay.fits(chars):
                            pieces.append(event.text)
                        else:
                            pieces = None  # too large to keep: it will not be replayed
                else:
                    # Only a generation that ended normally gets here (a failed or cancelled one
                    # raises or is closed first); recorded before the caller sees its end.
                    if pieces is not None:
                        replay.put(request.request_id, key, tuple(pieces), event)
                yield event

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        started = time.perf_counter()
        backend, info = self._model(request.model)
        if not 1 <= request.max_tokens <= info.context_length:
            raise InvalidArgument(
                f"max_tokens must be in 1..{info.context_length} for {info.name} (got {request.max_tokens})",
                field="max_tokens",
            )
        labels = (info.name, backend.name)
        first_delta_at: float | None = None
        ttft_observed = False
        completed = False
        guard = RepeatedLineGuard(self._repeated_line_stop)
        deltas = 0
        try:
            async with contextlib.aclosing(backend.generate(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        deltas += 1
                        text = guard.feed(event.text)
                        if text:
                            if first_delta_at is None:
                                first_delta_at = time.perf_counter()
                            yield event if text is event.text else TextDelta(text)
                            if not ttft_observed:
                                # After the first delta went out: the metric is not on its path.
                                ttft_observed = True
                                metrics.TIME_TO_FIRST_TOKEN.labels(*labels).observe(first_delta_at - started)
                        if guard.stopped:
                            break
                    elif isinstance(event, BackendCompletion):
                        tail = guard.feed("") + guard.finish()
                        if tail:
                            yield TextDelta(tail)
                        completed = True
                        yield self._complete(event, labels, started, first_delta_at)
                        return
            if guard.stopped:
                # The model loops: its backend stream is closed (stopping it upstream); usage is
                # what the engine saw, as the backend never reported its own.
                log.info("repeated_line_stop", model=info.name, request_id=request.request_id, deltas=deltas)
                prompt_chars = sum(len(m.content) for m in request.messages)
                completed = True
                yield self._complete(
                    BackendCompletion(-(-prompt_chars // CHARS_PER_TOKEN), deltas, FinishReason.STOP),
                    labels,
                    started,
                    first_delta_at,
                )
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
        finally:
            if first_delta_at is not None and not ttft_observed:  # closed while its first delta was out
                metrics.TIME_TO_FIRST_TOKEN.labels(*labels).observe(first_delta_at - started)

    def _complete(
        self, event: BackendCompletion, labels: tuple[str, str], started: float, first_delta_at: float | None
    ) -> Completion:
        ended = time.perf_counter()
        first = first_delta_at if first_delta_at is not None else ended
        decode_s = ended - first
        tokens_per_second = None
        if event.completion_tokens > 1 and decode_s > 0:
            tokens_per_second = (event.completion_tokens - 1) / decode_s
            metrics.TOKENS_PER_SECOND.labels(*labels).observe(tokens_per_second)
        if first_delta_at is not None:
            self._windows[labels[0]].add(first - started, tokens_per_second)
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
