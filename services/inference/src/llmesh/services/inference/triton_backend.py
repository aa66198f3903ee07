"""Models served by a Triton Inference Server (self-hosted tiers): decoupled streaming over
Triton's KServe v2 gRPC protocol with tritonclient's asyncio client. The same tensor names reach
TensorRT-LLM and vLLM models on GPU and the llama.cpp model of deploy/triton/cpu on CPU:
text_input, max_tokens, stream, temperature, top_p, top_k, random_seed, stop_words in;
text_output, num_input_tokens, num_output_tokens, finish_reason out (deploy/triton/README.md).
Usage comes from the count outputs when the model sends them (the CPU model; vLLM's backend when
asked); TensorRT-LLM's ensemble sends none: then one completion token per streamed response and a
prompt estimate (`llmesh_inference_usage_source_total` says which).

Load is what this backend has in flight: at most `max_concurrency` streams per model, at most
`max_queue` callers waiting for one, RESOURCE_EXHAUSTED beyond (slots.py). The gRPC client is
created lazily and dropped after a connection failure, so a restarted Triton is used again
without restarting the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import tritonclient.grpc.aio as triton_grpc
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
    estimate_prompt_tokens,
)
from llmesh.services.inference.chat_prompt import GemmaTurns, Prompt, PromptFormat
from llmesh.services.inference.slots import SlotPool
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import InferenceServerException

log = get_logger("llmesh.inference.triton")

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "cancelled": FinishReason.CANCELLED}

# Special-token markup in callers' text (Gemma's <start_of_turn>, <eos>, <unused0>; ChatML's
# <|im_start|>; </s>). Triton's text_input is one string whose markup the model parses, so a
# zero-width space is put after the "<" to keep a caller from forging turns.
_MARKUP = re.compile(r"<(/?(?:\|[^<>|\s]{1,40}\||[a-z0-9]+_[a-z0-9_]+|bos|eos|pad|unk|mask|s))>")


# tritonclient's own message limits, plus a subchannel of the channel's own: gRPC shares
# subchannels between channels to one address, so a new channel would otherwise inherit the dead
# server's reconnect back-off. Short back-off: a restarted Triton is found within a second or two.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def neutralize_markup(text: str) -> str:
    return _MARKUP.sub(lambda m: f"<\u200b{m.group(1)}>", text)


def prompt_text(prompt: Prompt) -> str:
    """The prompt as one string: template text as is, message content with markup neutralized."""
    return "".join(part.text if part.trusted else neutralize_markup(part.text) for part in prompt)


@dataclass(frozen=True)
class TritonModel:
    name: str  # the catalog name callers use
    triton_model: str  # the model in Triton's repository (interactive requests)
    context_length: int
    max_concurrency: int
    max_queue: int
    batch_triton_model: str = ""  # GenerationRequest.batch goes here when set (dynamic batching)


class _Model:
    def __init__(self, spec: TritonModel, backend: str, retry_after_s: float, on_change: Callable[[], None]):
        self.spec = spec
        self.pool: SlotPool[int] = SlotPool(
            range(spec.max_concurrency),
            max_waiting=spec.max_queue,
            retry_after_s=retry_after_s,
            label=f"model {spec.name}",
            on_change=on_change,
        )
        # The token counters of this model, looked up once (labels() takes a lock and a dict
        # lookup; the generated tokens are counted on every streamed response).
        self.labels = (spec.name, backend)
        self.prompt_tokens = metrics.PROMPT_TOKENS.labels(*self.labels)
        self.generated_tokens = metrics.GENERATED_TOKENS.labels(*self.labels)


def _tensor(name: str, datatype: str, values: Sequence[Any], batched: bool) -> triton_grpc.InferInput:
    """One input tensor of `values` (a batch of one when `batched`), with its contents in Triton's
    raw layout as tritonclient's set_data_from_numpy writes them (little-endian elements; a BYTES
    element as its 4-byte length, then the bytes), built without numpy arrays: a request's four to
    eight inputs took ~200 µs through numpy, before the call to Triton."""
    if datatype == "BYTES":
        raw = b"".join(_LENGTH.pack(len(v)) + v for v in values)
    else:
        form = _RAW_FORMATS[datatype]
        raw = b"".join(form.pack(v) for v in values)
    tensor = triton_grpc.InferInput(name, [1, len(values)] if batched else [len(values)], datatype)
    tensor._raw_content = raw  # what set_data_from_numpy sets (read by _get_content)
    return tensor


def _scalar(result, name: str):
    array = result.as_numpy(name)
    if array is None or array.size == 0:
        return None
    value = array.reshape(-1)[0]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value.item()


# Little-endian element formats of Triton's raw output contents.
_RAW_FORMATS = {
    "BOOL": struct.Struct("<?"),
    "INT8": struct.Struct("<b"),
    "UINT8": struct.Struct("<B"),
    "INT16": struct.Struct("<h"),
    "UINT16": struct.Struct("<H"),
    "INT32": struct.Struct("<i"),
    "UINT32": struct.Struct("<I"),
    "INT64": struct.Struct("<q"),
    "UINT64": struct.Struct("<Q"),
    "FP32": struct.Struct("<f"),
    "FP64": struct.Struct("<d"),
}
_LENGTH = struct.Struct("<I")


def _scalars(result) -> dict[str, Any]:
    """The first element of every output of a streamed response, read once from the response's
    raw contents (what `_scalar` gives for each name, without an array and a scan of the outputs
    per name); an output that is empty is left out. Triton sends raw contents; an output without
    them (or of a type not listed) is read the general way."""
    response = result.get_response()
    raw = response.raw_output_contents
    values: dict[str, Any] = {}
    for index, output in enumerate(response.outputs):
        name = output.name
        if index >= len(raw):
            value = _scalar(result, name)
        else:
            data = raw[index]
            if not data:
                continue
            if output.datatype == "BYTES":
                (length,) = _LENGTH.unpack_from(data)
                value = data[4 : 4 + length].decode("utf-8", errors="replace")
            elif (form := _RAW_FORMATS.get(output.datatype)) is not None:
                (value,) = form.unpack_from(data)
            else:
                value = _scalar(result, name)
        if value is not None:
            values.setdefault(name, value)
    return values


class TritonBackend(Backend):
    name = "triton"

    def __init__(
        self,
        url: str,
        models: list[TritonModel],
        *,
        rpc_timeout_s: float = 5.0,
        first_token_timeout_s: float = 60.0,
        token_timeout_s: float = 30.0,
        retry_after_s: float = 1.0,
        batched_models: frozenset[str] | None = None,
        prompt_format: PromptFormat | None = None,
    ):
        """`url` is Triton's gRPC host:port. Timeouts: each metadata/statistics call; the first
        response of a stream (Triton's queue included); each later response. `batched_models`:
        Triton models with max_batch_size > 0 (a leading batch dimension); by default the batch
        models. `prompt_format`: Gemma turns unless given (the models keep their GGUF in Triton)."""
        if len({m.name for m in models}) != len(models):
            raise ValueError("model names must be unique")
        self.url = url
        self._models = {
            m.name: _Model(m, self.name, retry_after_s, functools.partial(self._load_changed, m.name)) for m in models
        }
        self._rpc_timeout_s = rpc_timeout_s
        self._first_token_timeout_s = first_token_timeout_s
        self._token_timeout_s = token_timeout_s
        self._batched = (
            batched_models if batched_models is not None else frozenset(m.batch_triton_model for m in models) - {""}
        )
        self._format = prompt_format or GemmaTurns("<bos>")
        self._client: triton_grpc.InferenceServerClient | None = None

    # -- connection ---------------------------------------------------------------------------

    def _connection(self) -> triton_grpc.InferenceServerClient:
        if self._client is None:
            self._client = triton_grpc.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
        return self._client

    async def _reset(self, client: triton_grpc.InferenceServerClient) -> None:
        """Drops a client whose connection failed: the next call dials afresh (a new channel has
        no reconnect back-off left over from the failure)."""
        if self._client is client:
            self._client = None
            with contextlib.suppress(Exception):
                await client.close()

    async def start(self) -> None:
        try:
            live = await self._connection().is_server_live(client_timeout=self._rpc_timeout_s)
        except InferenceServerException as exc:
            live = False
            log.warning("triton_unreachable", url=self.url, error=str(exc))
        log.info("triton_backend_started", url=self.url, live=live, models=sorted(self._models))

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # -- model info ---------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=m.spec.name,
                backend=self.name,
                context_length=m.spec.context_length,
                max_concurrency=m.spec.max_concurrency,
                max_queue=m.spec.max_queue,
            )
            for m in self._models.values()
        ]

    def _model(self, name: str) -> _Model:
        try:
            return self._models[name]
        except KeyError:
            raise NotFound(f"model {name!r} is not served by the triton backend") from None

    def load(self, model: str) -> BackendLoad:
        pool = self._model(model).pool
        return BackendLoad(active=pool.in_use, queued=pool.waiting)

    async def _call(self, method: str, *args, **kwargs):
        client = self._connection()
        try:
            return await getattr(client, method)(*args, client_timeout=self._rpc_timeout_s, **kwargs)
        except InferenceServerException as exc:
            await self._reset(client)
            raise Unavailable(f"Triton at {self.url} is unavailable: {exc.message()}", retry_after_s=1.0) from exc

    async def model_ready(self, model: str, *, batch: bool = False) -> bool:
        """Triton's readiness of the model behind catalog name `model` (False when unreachable)."""
        spec = self._model(model).spec
        try:
            return bool(await self._call("is_model_ready", spec.batch_triton_model if batch else spec.triton_model))
        except Unavailable:
            return False

    async def statistics(self, model: str, *, batch: bool = False) -> dict:
        """Triton's inference statistics of the model (counts, queue and compute times, batch
        sizes executed) as its JSON mapping."""
        spec = self._model(model).spec
        name = spec.batch_triton_model if batch else spec.triton_model
        return await self._call("get_inference_statistics", name, as_json=True)

    # -- generation ---------------------------------------------------------------------------

    def _inputs(self, request: GenerationRequest, batched: bool) -> list[triton_grpc.InferInput]:
        sampling = request.sampling
        prompt = prompt_text(self._format.render(request.messages))
        inputs = [
            _tensor("text_input", "BYTES", [prompt.encode()], batched),
            _tensor("max_tokens", "INT32", [request.max_tokens], batched),
            _tensor("stream", "BOOL", [True], batched),
        ]
        if sampling.temperature is not None:
            inputs.append(_tensor("temperature", "FP32", [sampling.temperature], batched))
        if sampling.top_p is not None:
            inputs.append(_tensor("top_p", "FP32", [sampling.top_p], batched))
        if sampling.top_k is not None:
            inputs.append(_tensor("top_k", "INT32", [sampling.top_k], batched))
        if sampling.seed is not None:
            inputs.append(_tensor("random_seed", "UINT64", [sampling.seed % 2**64], batched))
        if sampling.stop:
            inputs.append(_tensor("stop_words", "BYTES", [s.encode() for s in sampling.stop], batched))
        return inputs

    async def generate(self, request: GenerationRequest) -> AsyncIterator[BackendEvent]:
        model = self._model(request.model)
        spec = model.spec
        triton_model = spec.batch_triton_model if request.batch and spec.batch_triton_model else spec.triton_model
        batched = triton_model in self._batched
        inputs = self._inputs(request, batched)
        finished = asyncio.Event()
        slot = await model.pool.acquire()
        client = self._connection()

        async def requests():
            yield {"model_name": triton_model, "inputs": inputs, "request_id": request.request_id}
            await finished.wait()  # the stream stays open until the final response

        stream = None
        # Usage: the model's count outputs (num_input_tokens/num_output_tokens: the CPU model,
        # vLLM's backend when asked) where it sends them; otherwise counted here: one completion
        # token per response carrying text_output (TensorRT-LLM's and vLLM's streaming send one
        # per decoding step) and the prompt estimated from the messages.
        responses = steps = 0
        model_prompt: int | None = None
        model_completion: int | None = None
        # The token counters are added to once per generation, when it ends however it ends (a
        # stream cut short included): nothing per response, and nothing before the first one.
        try:
            stream = client.stream_infer(requests())
            while True:
                timeout = self._token_timeout_s if responses else self._first_token_timeout_s
                try:
                    # A timeout scope, not wait_for: no task per response (nothing yields inside).
                    async with asyncio.timeout(timeout):
                        result, error = await anext(stream)
                except StopAsyncIteration:
                    raise Unavailable(f"Triton ended the stream of {triton_model} before its final response") from None
                except TimeoutError:
                    raise Unavailable(f"Triton sent nothing for {timeout:.0f}s on {triton_model}") from None
                except (grpc.aio.AioRpcError, InferenceServerException) as exc:
                    await self._reset(client)
                    detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc.message()
                    raise Unavailable(
                        f"Triton at {self.url} is unavailable ({triton_model}): {detail}", retry_after_s=1.0
                    ) from exc
                if error is not None:
                    message = error.message()
                    if "INVALID_ARGUMENT" in message and not steps:
                        raise InvalidArgument(message.split("INVALID_ARGUMENT:", 1)[-1].strip(), field="max_tokens")
                    raise Unavailable(f"model {triton_model} failed in Triton: {message}")
                responses += 1
                outputs = _scalars(result)
                text = outputs.get("text_output")
                parameters = result.get_response().parameters
                final = "triton_final_response" in parameters and parameters["triton_final_response"].bool_param
                reason = outputs.get("finish_reason")
                last = final or reason is not None
                if text is not None and (text or not last):  # an empty last response ends, it decoded nothing
                    steps += 1
                prompt_tokens = outputs.get("num_input_tokens")
                completion_tokens = outputs.get("num_output_tokens")
                if prompt_tokens is not None:
                    model_prompt = int(prompt_tokens)
                if completion_tokens is not None:  # the tokens of this response (vLLM's meaning)
                    model_completion = (model_completion or 0) + int(completion_tokens)
                if text:
                    yield TextDelta(text)
                if last:
                    finished.set()
                    from_model = model_completion is not None
                    metrics.USAGE_SOURCE.labels(*model.labels, "provider" if from_model else "estimated").inc()
                    yield BackendCompletion(
                        model_prompt if model_prompt is not None else estimate_prompt_tokens(request),
                        model_completion if from_model else steps,
                        _FINISH.get(reason or "", FinishReason.STOP),
                    )
                    return
        finally:
            finished.set()
            if stream is not None:
                # Cancels the gRPC stream: Triton marks the request cancelled and the model stops
                # between tokens (a no-op after the final response).
                stream.cancel()
            model.pool.release(slot)
            if responses:
                model.prompt_tokens.inc(model_prompt if model_prompt is not None else estimate_prompt_tokens(request))
                model.generated_tokens.inc(model_completion if model_completion is not None else steps)
