"""The embedded local model: a GGUF served in process by llama.cpp (llama-cpp-python) on CPU.

Each generation slot owns one llama.cpp context (the weights are memory-mapped once by the OS and
shared). A generation runs on a worker thread and hands its text to the event loop token by
token; the worker checks a stop flag after every token, so a caller that goes away frees its slot
within a token or two.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import random
import threading
from collections.abc import AsyncIterator, Callable

import llama_cpp
from llmesh.kit.errors import InvalidArgument, NotFound, Unavailable
from llmesh.kit.logging import get_logger
from llmesh.services.inference import metrics
from llmesh.services.inference.backend import (
    Backend,
    BackendCompletion,
    BackendEvent,
    BackendLoad,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    TextDelta,
)
from llmesh.services.inference.chat_prompt import Prompt, PromptFormat, prompt_format
from llmesh.services.inference.model_files import resolve_model_path
from llmesh.services.inference.slots import SlotPool
from llmesh.services.inference.text_stream import TextAssembler

log = get_logger("llmesh.inference.llama_cpp")

# llama.cpp's own sampling defaults, used where the caller leaves a parameter unset.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40
# llama.cpp seeds are 32-bit and 0xFFFFFFFF means "pick one at random": callers' 64-bit seeds are
# folded below it so every seed stays reproducible.
SEED_MODULUS = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class LlamaCppConfig:
    model_name: str
    model_path: str = ""  # empty: the bundled Gemma 3 270M
    context_length: int = 2048
    threads: int = 1
    max_concurrency: int = 2
    max_queue: int = 2
    retry_after_s: float = 1.0
    chat_format: str = "auto"
    # Penalty on recently sampled tokens (1.0: none): the small base model otherwise repeats itself.
    repeat_penalty: float = 1.0


def _free_sampler(context: llama_cpp.Llama) -> None:
    """Frees the sampler chain the generation just used, now rather than whenever Python's cyclic
    garbage collector gets to it.

    llama-cpp-python builds a new chain for every `generate` and keeps it on the Llama object
    (`_sampler`) until the next one replaces it; a replaced chain is freed only by the cyclic
    collector (the wrapper's ExitStack callback refers back to it), and each chain holds an
    n_vocab-sized candidate buffer: 3 MiB with Gemma 3's 262k vocabulary. Between two full
    collections, every generation left 3 MiB behind, and what the collector freed at once stayed
    in glibc's thread arenas: the service's RSS climbed by tens of MiB over a soak (docs/adr/0040).
    """
    sampler = getattr(context, "_sampler", None)
    if sampler is not None:
        context._sampler = None
        sampler.close()


class _Stopped(Exception):
    """The event loop is gone; the worker has nobody to talk to."""


class LlamaCppBackend(Backend):
    name = "llama_cpp"

    def __init__(self, config: LlamaCppConfig):
        self.config = config
        self._tokenizer: llama_cpp.Llama | None = None
        self._tokenizer_lock = threading.Lock()
        self._format: PromptFormat | None = None
        self._pool: SlotPool[llama_cpp.Llama] | None = None
        self._contexts: list[llama_cpp.Llama] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._stop_flags: set[threading.Event] = set()
        self._eog: Callable[[int], bool] = lambda token: False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # Assembling the bundled GGUF hashes ~250 MB and loading maps it: off the event loop.
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        config = self.config
        model_path = str(resolve_model_path(config.model_path))
        log.info("model_loading", model=config.model_name, path=model_path, slots=config.max_concurrency)
        # A vocabulary-only copy tokenizes prompts for validation without taking a generation slot.
        self._tokenizer = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
        self._contexts = [
            llama_cpp.Llama(
                model_path=model_path,
                n_ctx=config.context_length,
                n_threads=config.threads,
                n_threads_batch=config.threads,
                verbose=False,
            )
            for _ in range(config.max_concurrency)
        ]
        vocab = self._tokenizer._model.vocab
        self._eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        bos, eos = self._tokenizer.token_bos(), self._tokenizer.token_eos()
        self._format = prompt_format(
            config.chat_format,
            self._tokenizer.metadata.get("tokenizer.chat_template"),
            bos_text=self._tokenizer.detokenize([bos], special=True).decode() if bos >= 0 else "",
            eos_text=self._tokenizer.detokenize([eos], special=True).decode() if eos >= 0 else "",
        )
        self._pool = SlotPool(
            self._contexts,
            max_waiting=config.max_queue,
            retry_after_s=config.retry_after_s,
            label=f"model {config.model_name}",
            on_change=functools.partial(self._load_changed, config.model_name),
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.max_concurrency, thread_name_prefix="llama-generate"
        )
        log.info("model_loaded", model=config.model_name, prompt_format=self._format.name)

    async def close(self) -> None:
        for flag in list(self._stop_flags):
            flag.set()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None
        for context in self._contexts:
            context.close()
        self._contexts = []
        if self._tokenizer is not None:
            self._tokenizer.close()
            self._tokenizer = None

    # -- model info --------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=self.config.model_name,
                backend=self.name,
                context_length=self.config.context_length,
                max_concurrency=self.config.max_concurrency,
                max_queue=self.config.max_queue,
            )
        ]

    def load(self, model: str) -> BackendLoad:
        self._require(model)
        if self._pool is None:
            return BackendLoad(active=0, queued=0)
        return BackendLoad(active=self._pool.in_use, queued=self._pool.waiting)

    def _require(self, model: str) -> None:
        if model != self.config.model_name:
            raise NotFound(f"model {model!r} is not served by the llama_cpp backend")

    # -- generation --------------------------------------------------------------------------

    def _tokenize(self, prompt: Prompt) -> list[int]:
        assert self._tokenizer is not None, "start() first"
        tokens: list[int] = []
        with self._tokenizer_lock:
            for part in prompt:
                if part.text:
                    tokens += self._tokenizer.tokenize(part.text.encode(), add_bos=False, special=part.trusted)
        return tokens

    async def generate(self, request: GenerationRequest) -> AsyncIterator[BackendEvent]:
        self._require(request.model)
        if self._pool is None or self._executor is None or self._format is None:
            raise Unavailable(f"model {request.model} is not loaded")
        prompt_tokens = await asyncio.to_thread(self._tokenize, self._format.render(request.messages))
        limit = self.config.context_length
        if len(prompt_tokens) + request.max_tokens > limit:
            raise InvalidArgument(
                f"the prompt takes {len(prompt_tokens)} tokens and max_tokens is {request.max_tokens}: "
                f"together over the {limit}-token context of {request.model}; "
                f"shorten the messages or lower max_tokens to at most {max(limit - len(prompt_tokens), 0)}",
                field="max_tokens",
            )

        context = await self._pool.acquire()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[BackendEvent | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def emit(event: BackendEvent | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError as exc:  # loop closed
                raise _Stopped() from exc

        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._stop_flags.discard(stop)
                self._pool.release(context)

        self._stop_flags.add(stop)
        try:
            worker = loop.run_in_executor(self._executor, self._run, context, prompt_tokens, request, stop, emit)
        except BaseException:
            release()
            raise
        # A worker that ends early (cancelled, failed) frees its slot once its thread is done.
        worker.add_done_callback(lambda _: release())
        metrics.PROMPT_TOKENS.labels(request.model, self.name).inc(len(prompt_tokens))
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    # The cause is logged by the worker; callers get no internals.
                    raise Unavailable(
                        f"model {request.model} failed while generating (request_id={request.request_id})"
                    ) from event
                if isinstance(event, BackendCompletion):
                    # The worker's last act: the context is no longer touched. Freed before the
                    # caller hears of the end, so its next request finds the slot free.
                    release()
                    yield event
                    return
                yield event
        finally:
            stop.set()

    def _run(
        self,
        context: llama_cpp.Llama,
        prompt_tokens: list[int],
        request: GenerationRequest,
        stop: threading.Event,
        emit: Callable[[BackendEvent | BaseException], None],
    ) -> None:
        try:
            self._decode(context, prompt_tokens, request, stop, emit)
        except _Stopped:
            pass
        except Exception as exc:
            log.exception("generation_failed", model=request.model, request_id=request.request_id)
            try:
                emit(exc)
            except _Stopped:
                pass

    def _decode(self, context, prompt_tokens, request, stop, emit) -> None:
        sampling = request.sampling
        context.set_seed(sampling.seed % SEED_MODULUS if sampling.seed is not None else random.randrange(SEED_MODULUS))
        assembler = TextAssembler(sampling.stop)
        tokens_counter = metrics.GENERATED_TOKENS.labels(request.model, self.name)
        completion_tokens = 0
        finish = FinishReason.LENGTH
        tokens = context.generate(
            prompt_tokens,
            temp=sampling.temperature if sampling.temperature is not None else DEFAULT_TEMPERATURE,
            top_p=sampling.top_p if sampling.top_p is not None else DEFAULT_TOP_P,
            top_k=sampling.top_k if sampling.top_k is not None else DEFAULT_TOP_K,
            repeat_penalty=self.config.repeat_penalty,
        )
        try:
            # The next token is computed only when the loop asks for it, so checking the flag
            # here stops the work at once.
            for token in tokens:
                if stop.is_set():
                    finish = FinishReason.CANCELLED
                    break
                if self._eog(token):
                    finish = FinishReason.STOP
                    break
                completion_tokens += 1
                tokens_counter.inc()
                text = assembler.feed(context.detokenize([token]))
                if text:
                    emit(TextDelta(text))
                if assembler.stopped:
                    finish = FinishReason.STOP
                    break
                if completion_tokens >= request.max_tokens:
                    break
        finally:
            tokens.close()
            _free_sampler(context)
        if finish is FinishReason.CANCELLED:
            log.info(
                "generation_cancelled",
                model=request.model,
                request_id=request.request_id,
                completion_tokens=completion_tokens,
            )
            return
        tail = assembler.finish()
        if tail:
            emit(TextDelta(tail))
        # Last: the event loop hands this context to the next generation when it sees this.
        emit(BackendCompletion(len(prompt_tokens), completion_tokens, finish))
