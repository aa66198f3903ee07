"""Models behind an OpenAI-compatible HTTP API (the frontier tier, and the overflow for the
self-hosted tiers): `POST {base_url}/chat/completions` streamed as server-sent events.

Conventions, shared with the other backends (backend.py):

- Per-model concurrency: a SlotPool of `max_concurrency` slots and `max_queue` waiting places;
  beyond that ResourceExhausted, before any network call. load() reports the pool.
- Retries: 429, 5xx, a refused or reset connection, a timeout, or a stream that ends before it
  produced any text are retried with exponential backoff (full jitter) until `max_retries` is
  spent. A `Retry-After` header (seconds or an HTTP date) replaces the backoff of that attempt.
  Retries happen only BEFORE the first text delta was handed to the caller: after it a failure
  raises Unavailable from the iterator, after the deltas already yielded (repeating the request
  would repeat text the caller already has). A connection that ends before any response (a
  kept-alive connection the server closed while idle, as the request went out) is tried again
  at once on a new connection, once per generation, without spending a retry or a backoff.
- Errors: 429 with no retries left (or a Retry-After beyond `max_retry_after_s` or the deadline)
  is ResourceExhausted with retry_after_s; 5xx, connection failures and broken streams are
  Unavailable; 400/404/413/422 are InvalidArgument with the provider's message; 401/403 mean the
  provider refused OUR key, which is not the caller's fault and which the caller cannot fix:
  Unavailable (so that a router falls back to another backend), logged as an error to page an
  operator.
- Deadlines: `connect_timeout_s` to open a connection, `read_timeout_s` for the response headers
  and for the silence between two chunks, and `timeout_s` for the whole generation (retries and
  waits included): DeadlineExceeded.
- Usage: from the provider's usage chunk (`stream_options.include_usage`) when it sends one.
  Otherwise it is counted here (`usage_source` in the log line `openai_generation_done` and the
  metric `llmesh_inference_usage_source_total` say which): completion tokens are the number of
  streamed content chunks (OpenAI and llama.cpp stream one token per chunk), prompt tokens a local
  estimate (`estimate_prompt_tokens`: UTF-8 bytes / 4, plus 4 per message for the turn markers).
  A provider's /tokenize endpoint is llama.cpp-specific and a tokenizer download would tie the
  service to one provider, so neither is used.
- Context check: a prompt whose estimate (discounted by a quarter, as the estimate may run high)
  plus max_tokens exceeds the model's context is rejected with InvalidArgument before the call;
  the provider's own 400 catches the rest.
- Cancellation: closing the iterator closes the HTTP response and its connection; the provider
  sees the disconnect and stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import importlib.util
import json
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx
from llmesh.kit.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
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
    estimate_prompt_tokens,
)
from llmesh.services.inference.slots import SlotPool

log = get_logger("llmesh.inference.openai")


# httpcore asks `import sniffio` several times per request (connection-pool locks, cancellation
# shields) and falls back to asyncio when it is missing, as it is here: each failed import
# searched sys.path again, ~0.6 ms a time, 2-4 ms a request. A missing module is remembered as
# missing (sys.modules[name] = None makes its import fail at once); an installed one is left alone.
def remember_missing_sniffio() -> None:
    if importlib.util.find_spec("sniffio") is None:
        sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


remember_missing_sniffio()

# After [DONE], the rest of the HTTP body (the chunked encoding's end) is read for up to this long,
# so that the connection goes back to the pool instead of being closed (no new TCP connection,
# and no server accept, before the next request's first token).
DRAIN_S = 0.5

# The context check trusts only three quarters of the estimate: a prompt is refused here only
# when it is clearly too long; the provider judges the close cases.
ESTIMATE_TRUST = 0.75

FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
# Provider answers that are the caller's request at fault.
CALLER_ERRORS = {400, 404, 413, 422}


@dataclass(frozen=True)
class OpenAIModel:
    name: str  # the catalog name callers use
    remote_model: str  # the provider's model id
    context_length: int
    max_concurrency: int = 4
    max_queue: int = 4


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class _Retryable(Exception):
    """A failure before the first delta that another attempt may not meet."""

    def __init__(
        self, message: str, *, rate_limited: bool = False, retry_after_s: float | None = None, at_once: bool = False
    ):
        super().__init__(message)
        self.message = message
        self.rate_limited = rate_limited
        self.retry_after_s = retry_after_s
        # The connection ended before any answer, as a kept-alive connection that the server
        # closed while idle does: tried again at once, on a new connection (see _attempts).
        self.at_once = at_once


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        models: Sequence[OpenAIModel],
        *,
        api_key: str = "",
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_retry_after_s: float = 30.0,
        retry_after_s: float = 1.0,
        name: str = "openai",
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        """`base_url` is the API root with its version, e.g. https://api.openai.com/v1.
        `retry_after_s` is what callers turned away by a full slot pool are told to wait."""
        if not models:
            raise ValueError("an OpenAI backend needs at least one model")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names repeat: {names}")
        self.name = name
        self.base_url = base_url.rstrip("/")
        # Absolute: httpx merges a relative URL with base_url on every request.
        self._completions_url = httpx.URL(f"{self.base_url}/chat/completions")
        self._models = {m.name: m for m in models}
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self._transport = transport
        self._pools = {
            m.name: SlotPool(
                list(range(m.max_concurrency)),
                max_waiting=m.max_queue,
                retry_after_s=retry_after_s,
                label=f"model {m.name}",
                on_change=functools.partial(self._load_changed, m.name),
            )
            for m in models
        }
        self._client: httpx.AsyncClient | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # No call to the provider here: a provider that is down must not keep the service (and
        # its local models) from SERVING; each generation reports its own failure.
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(
                connect=self.connect_timeout_s,
                read=self.read_timeout_s,
                write=self.read_timeout_s,
                pool=self.connect_timeout_s,
            ),
            limits=httpx.Limits(max_connections=sum(m.max_concurrency for m in self._models.values())),
            transport=self._transport,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- model info --------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=m.name,
                backend=self.name,
                context_length=m.context_length,
                max_concurrency=m.max_concurrency,
                max_queue=m.max_queue,
            )
            for m in self._models.values()
        ]

    def load(self, model: str) -> BackendLoad:
        pool = self._pools.get(model)
        if pool is None:
            raise NotFound(f"model {model!r} is not served by the {self.name} backend")
        return BackendLoad(active=pool.in_use, queued=pool.waiting)

    # -- generation --------------------------------------------------------------------------

    def _body(self, model: OpenAIModel, request: GenerationRequest) -> dict:
        body: dict = {
            "model": model.remote_model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        sampling = request.sampling
        if sampling.temperature is not None:
            body["temperature"] = sampling.temperature
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        # top_k is not part of the OpenAI API (some providers refuse unknown fields): not sent.
        return body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[BackendEvent]:
        model = self._models.get(request.model)
        if model is None:
            raise NotFound(f"model {request.model!r} is not served by the {self.name} backend")
        if self._client is None:
            raise Unavailable(f"model {request.model} is not ready (backend not started)")
        estimate = estimate_prompt_tokens(request)
        if math.floor(estimate * ESTIMATE_TRUST) + request.max_tokens > model.context_length:
            room = max(model.context_length - math.floor(estimate * ESTIMATE_TRUST), 0)
            raise InvalidArgument(
                f"the prompt takes about {estimate} tokens and max_tokens is {request.max_tokens}: "
                f"together over the {model.context_length}-token context of {request.model}; "
                f"shorten the messages or lower max_tokens to at most {room}",
                field="max_tokens",
            )
        deadline = time.monotonic() + self.timeout_s
        pool = self._pools[model.name]
        try:
            async with asyncio.timeout(self.timeout_s):
                slot = await pool.acquire()
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {request.model} had no free slot within {self.timeout_s:g}s", retry_after_s=1.0
            ) from None
        try:
            async with contextlib.aclosing(self._attempts(model, request, estimate, deadline)) as events:
                async for event in events:
                    yield event
        finally:
            pool.release(slot)

    async def _attempts(
        self, model: OpenAIModel, request: GenerationRequest, estimate: int, deadline: float
    ) -> AsyncIterator[BackendEvent]:
        body = self._body(model, request)
        attempt = 0
        reconnected = False
        while True:
            state = _StreamState()
            try:
                async for event in self._stream(model, request, body, estimate, state, deadline):
                    yield event
                return
            except _Retryable as failure:
                # Only reached before the first delta (_stream raises Unavailable after it).
                if failure.at_once and not reconnected:
                    # A pooled connection the server had closed (its keep-alive ended as the
                    # request went out): not the provider failing, so no attempt spent and no
                    # backoff before this request's first token; once per generation.
                    reconnected = True
                    log.info("openai_connection_closed", model=request.model, request_id=request.request_id)
                    continue
                wait = self._backoff(attempt)
                if failure.retry_after_s is not None:
                    wait = failure.retry_after_s
                remaining = deadline - time.monotonic()
                give_up = (
                    attempt >= self.max_retries
                    or wait > remaining
                    or (failure.retry_after_s is not None and failure.retry_after_s > self.max_retry_after_s)
                )
                log.info(
                    "openai_attempt_failed",
                    model=request.model,
                    request_id=request.request_id,
                    attempt=attempt + 1,
                    error=failure.message,
                    retry_in_s=None if give_up else round(wait, 3),
                )
                if give_up:
                    detail = f"{failure.message} after {attempt + 1} attempt(s) (request_id={request.request_id})"
                    if failure.rate_limited:
                        raise ResourceExhausted(
                            f"the provider of {request.model} is rate limiting: {detail}",
                            retry_after_s=failure.retry_after_s if failure.retry_after_s is not None else wait,
                        ) from None
                    raise Unavailable(f"the provider of {request.model} failed: {detail}") from None
                attempt += 1
                await asyncio.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        # Full jitter (half of it fixed, so a retry never comes at once).
        ceiling = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _stream(
        self,
        model: OpenAIModel,
        request: GenerationRequest,
        body: dict,
        estimate: int,
        state: _StreamState,
        deadline: float,
    ) -> AsyncIterator[BackendEvent]:
        assert self._client is not None
        # OpenAI's header for a caller's own request id (X-Request-Id is the provider's; some
        # servers refuse one that is not a UUID).
        headers = {"X-Client-Request-Id": request.request_id} if request.request_id else {}
        # No asyncio.timeout around a generator that yields (it would cancel whatever the caller
        # does between two events): every network wait is bounded by the time left instead.
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._deadline_exceeded(request)
        timeout = httpx.Timeout(
            connect=min(self.connect_timeout_s, remaining),
            read=min(self.read_timeout_s, remaining),
            write=min(self.read_timeout_s, remaining),
            pool=min(self.connect_timeout_s, remaining),
        )
        try:
            async with self._client.stream(
                "POST", self._completions_url, json=body, headers=headers, timeout=timeout
            ) as response:
                state.answered = True
                if response.status_code != 200:
                    await self._refuse(response, request)
                async for event in self._events(response, model, request, estimate, state, deadline):
                    yield event
        except httpx.TransportError as exc:  # connect, read, write, protocol, timeouts
            if time.monotonic() >= deadline:
                raise self._deadline_exceeded(request) from None
            kind = type(exc).__name__
            message = f"{kind} talking to {self.base_url}: {exc}" if str(exc) else f"{kind} talking to {self.base_url}"
            if state.deltas:
                raise Unavailable(
                    f"the provider of {request.model} broke off the answer after {state.deltas} chunk(s): "
                    f"{message} (request_id={request.request_id})"
                ) from None
            closed = not state.answered and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError))
            raise _Retryable(message, at_once=closed) from None

    def _deadline_exceeded(self, request: GenerationRequest) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"model {request.model} did not answer within {self.timeout_s:g}s (request_id={request.request_id})"
        )

    async def _refuse(self, response: httpx.Response, request: GenerationRequest) -> None:
        """Raises the error an unsuccessful HTTP answer stands for."""
        status = response.status_code
        try:
            raw = (await response.aread())[:4096]
        except httpx.TransportError:
            raw = b""
        message = _provider_message(raw) or response.reason_phrase or "no detail"
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            raise _Retryable(f"HTTP 429 ({message})", rate_limited=True, retry_after_s=retry_after)
        if status >= 500 or status == 408:
            raise _Retryable(f"HTTP {status} ({message})", retry_after_s=retry_after)
        if status in (401, 403):
            log.error("openai_key_refused", model=request.model, status=status, provider_message=message)
            raise Unavailable(
                f"the provider of {request.model} refused llmesh's API key (HTTP {status}: {message}); "
                "an operator must fix the key, the request was fine"
            )
        if status in CALLER_ERRORS:
            raise InvalidArgument(f"the provider of {request.model} refused the request: {message}")
        raise Unavailable(f"the provider of {request.model} answered HTTP {status}: {message}")

    async def _events(
        self,
        response: httpx.Response,
        model: OpenAIModel,
        request: GenerationRequest,
        estimate: int,
        state: _StreamState,
        deadline: float,
    ) -> AsyncIterator[BackendEvent]:
        finish: FinishReason | None = None
        usage: dict | None = None
        done = False
        lines = sse_lines(response.aiter_bytes())
        async for line in lines:
            if time.monotonic() >= deadline:
                raise self._deadline_exceeded(request)
            if not line.startswith("data:"):
                continue  # comments (": ping"), event names, ids and blank separators
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                with contextlib.suppress(TimeoutError, httpx.TransportError):
                    async with asyncio.timeout(DRAIN_S):  # no yield inside
                        async for _ in lines:
                            pass
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                log.warning("openai_bad_chunk", model=request.model, chunk=data[:200])
                continue
            if isinstance(chunk, dict) and "error" in chunk:
                error = _provider_message(data.encode()) or "error event"
                if state.deltas:
                    raise Unavailable(
                        f"the provider of {request.model} failed mid-answer: {error} (request_id={request.request_id})"
                    )
                raise _Retryable(f"error event: {error}")
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    state.deltas += 1
                    yield TextDelta(text)
                reason = choice.get("finish_reason")
                if reason:
                    finish = FINISH_REASONS.get(reason, FinishReason.UNSPECIFIED)
        if not done and finish is None:
            # The connection ended cleanly but the answer did not: a broken stream.
            if state.deltas:
                raise Unavailable(
                    f"the provider of {request.model} ended the stream after {state.deltas} chunk(s) "
                    f"without finishing (request_id={request.request_id})"
                )
            raise _Retryable("the stream ended before any answer")
        if usage and usage.get("completion_tokens") is not None:
            source = "provider"
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage["completion_tokens"])
        else:
            source = "estimated"
            prompt_tokens, completion_tokens = estimate, state.deltas
        labels = (request.model, self.name)
        metrics.USAGE_SOURCE.labels(*labels, source).inc()
        metrics.PROMPT_TOKENS.labels(*labels).inc(prompt_tokens)
        metrics.GENERATED_TOKENS.labels(*labels).inc(completion_tokens)
        log.info(
            "openai_generation_done",
            model=request.model,
            remote_model=model.remote_model,
            request_id=request.request_id,
            usage_source=source,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        yield BackendCompletion(prompt_tokens, completion_tokens, finish or FinishReason.UNSPECIFIED)


async def sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of an event stream's body (UTF-8; a line ends with CR, LF or CRLF), as httpx's
    aiter_lines gives them, split from the bytes in one step instead of two generators (text, then
    lines) per network chunk."""
    pending = b""
    after_cr = False  # the previous chunk ended with CR: an LF opening this one ends no new line
    async for chunk in chunks:
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        if pending:
            chunk = pending + chunk
        lines = chunk.splitlines()
        pending = b"" if chunk.endswith((b"\n", b"\r")) or not lines else lines.pop()
        for line in lines:
            yield line.decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


@dataclass
class _StreamState:
    deltas: int = 0  # text chunks handed to the caller in this attempt
    answered: bool = False  # the response's status line and headers arrived


def _provider_message(raw: bytes) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), FastAPI's
    {"detail": ...}, or the text itself; shortened."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
        if "detail" in parsed:
            return json.dumps(parsed["detail"])[:300] if not isinstance(parsed["detail"], str) else parsed["detail"]
    return text[:300]
