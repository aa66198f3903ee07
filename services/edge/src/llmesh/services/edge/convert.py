"""OpenAI's chat-completions JSON ↔ the router's protos. Only the shape is checked here (types,
unsupported features); the values (message limits, max_tokens range, sampling ranges) are the
router's to validate, and its INVALID_ARGUMENT comes back as a 400 naming the same parameter."""

from __future__ import annotations

import json
import time
from typing import Any

from llmesh.common.v1 import common_pb2
from llmesh.router.v1 import router_pb2
from llmesh.services.edge.core import AUTO_MODEL, EdgeError, bad_request

ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    # OpenAI's newer name for system instructions.
    "developer": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}
PRIORITIES = {
    "interactive": router_pb2.PRIORITY_INTERACTIVE,
    "standard": router_pb2.PRIORITY_STANDARD,
    "batch": router_pb2.PRIORITY_BATCH,
}
CACHE_POLICIES = {"allow": router_pb2.CACHE_POLICY_ALLOW, "bypass": router_pb2.CACHE_POLICY_BYPASS}
CACHE_OUTCOMES = {
    router_pb2.CACHE_OUTCOME_UNSPECIFIED: "",
    router_pb2.CACHE_OUTCOME_MISS: "miss",
    router_pb2.CACHE_OUTCOME_EXACT_HIT: "exact_hit",
    router_pb2.CACHE_OUTCOME_SEMANTIC_HIT: "semantic_hit",
    router_pb2.CACHE_OUTCOME_BYPASSED: "bypassed",
}
FINISH_REASONS = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_CANCELLED: "stop",
}
# OpenAI features the mesh does not offer: asked for, they are a 400 rather than silently ignored.
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logprobs", "top_logprobs", "audio")
# The router's field names (google.rpc.BadRequest) as OpenAI parameters.
ROUTER_FIELDS = {"sampling.temperature": "temperature", "sampling.top_p": "top_p", "sampling.seed": "seed"}


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request("the request body must be a JSON object")
    return doc


def _number(doc: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        wanted = "an integer" if kind is int else "a number"
        raise bad_request(f"'{name}' must be {wanted} (got {json.dumps(value)})", param=name)
    return value


def _content(message: Any, i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Content parts: text only.
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(
                    f"messages[{i}].content[{j}]: only text parts are supported", param=f"messages[{i}].content"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content")


def chat_request(doc: dict[str, Any]) -> tuple[router_pb2.GenerateRequest, bool, str]:
    """(the router request, whether to stream, the model name asked for) of a chat-completions body."""
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(
            "'model' is required: a model of `GET /v1/models`, or 'auto' for the router's choice", "model"
        )
    for name in UNSUPPORTED:
        if doc.get(name) not in (None, False, [], {}):
            raise bad_request(f"'{name}' is not supported by llmesh", param=name)
    n = _number(doc, "n", int)
    if n not in (None, 1):
        raise bad_request("'n' must be 1: llmesh returns one choice", param="n")
    messages = doc.get("messages")
    if not isinstance(messages, list):
        raise bad_request("'messages' must be a list of {role, content} objects", param="messages")
    proto_messages = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad_request(
                f"messages[{i}].role must be one of {', '.join(ROLES)}",
                param=f"messages[{i}].role",
            )
        proto_messages.append(common_pb2.ChatMessage(role=ROLES[message["role"]], content=_content(message, i)))
    max_tokens = _number(doc, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _number(doc, "max_tokens", int)
    sampling = common_pb2.SamplingParams()
    for name in ("temperature", "top_p"):
        value = _number(doc, name, (int, float))
        if value is not None:
            setattr(sampling, name, float(value))
    seed = _number(doc, "seed", int)
    if seed is not None:
        if seed < 0:
            raise bad_request("'seed' must be >= 0", param="seed")
        sampling.seed = seed
    stop = doc.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad_request("'stop' must be a string or a list of strings", param="stop")
        sampling.stop.extend(stop)
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", param="stream")
    request = router_pb2.GenerateRequest(
        messages=proto_messages,
        max_tokens=max_tokens or 0,
        sampling=sampling,
        model="" if model == AUTO_MODEL else model,
    )
    _extension(doc.get("llmesh"), request)
    return request, stream, model


def include_usage(doc: dict[str, Any]) -> bool:
    """`stream_options.include_usage`: the usage in a last chunk of its own."""
    options = doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    return bool(options and options.get("include_usage") is True)


def _extension(ext: Any, request: router_pb2.GenerateRequest) -> None:
    """The request's `llmesh` object: use_case, priority, cache (README: the extension field)."""
    if ext is None:
        return
    if not isinstance(ext, dict):
        raise bad_request("'llmesh' must be an object of use_case, priority and cache", param="llmesh")
    unknown = set(ext) - {"use_case", "priority", "cache"}
    if unknown:
        raise bad_request(f"'llmesh' has unknown fields: {', '.join(sorted(unknown))}", param="llmesh")
    use_case = ext.get("use_case", "")
    if not isinstance(use_case, str):
        raise bad_request("'llmesh.use_case' must be a string", param="llmesh.use_case")
    request.use_case = use_case
    if "priority" in ext:
        if ext["priority"] not in PRIORITIES:
            raise bad_request(f"'llmesh.priority' must be one of {', '.join(PRIORITIES)}", param="llmesh.priority")
        request.priority = PRIORITIES[ext["priority"]]
    if "cache" in ext:
        if ext["cache"] not in CACHE_POLICIES:
            raise bad_request(f"'llmesh.cache' must be one of {', '.join(CACHE_POLICIES)}", param="llmesh.cache")
        request.cache_policy = CACHE_POLICIES[ext["cache"]]


def router_param(field: str) -> str:
    return ROUTER_FIELDS.get(field, field)


def usage(summary: router_pb2.GenerateSummary) -> dict[str, int]:
    prompt, completion = summary.usage.prompt_tokens, summary.usage.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def extras(summary: router_pb2.GenerateSummary) -> dict[str, Any]:
    """llmesh's extension field of a response: how the router answered."""
    return {
        "request_id": summary.request_id,
        "tier": int(summary.tier),
        "model": summary.model,
        "backend": summary.backend,
        "cache": CACHE_OUTCOMES.get(summary.cache_outcome, ""),
        "cost_usd": summary.cost_usd,
        "time_to_first_token_ms": round(summary.time_to_first_token_ms, 3),
        "total_time_ms": round(summary.total_time_ms, 3),
    }


def extras_headers(summary: router_pb2.GenerateSummary) -> dict[str, str]:
    return {
        "x-llmesh-tier": str(int(summary.tier)),
        "x-llmesh-model": summary.model,
        "x-llmesh-backend": summary.backend,
        "x-llmesh-cache": CACHE_OUTCOMES.get(summary.cache_outcome, ""),
        "x-llmesh-cost-usd": f"{summary.cost_usd:.8f}",
    }


def completion(request_id: str, model: str, text: str, summary: router_pb2.GenerateSummary) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": summary.model or model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": FINISH_REASONS.get(summary.finish_reason, "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage(summary),
        "llmesh": extras(summary),
    }


class ChunkWriter:
    """The SSE events of one streamed completion (`chat.completion.chunk` objects)."""

    def __init__(self, request_id: str, model: str):
        self._head = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": int(time.time())}
        self._model = model
        self._first = True

    def _event(self, body: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps({**self._head, **body}, separators=(",", ":")).encode() + b"\n\n"

    def delta(self, text: str) -> bytes:
        delta = {"role": "assistant", "content": text} if self._first else {"content": text}
        self._first = False
        return self._event(
            {"model": self._model, "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}]}
        )

    def finish(self, summary: router_pb2.GenerateSummary, include_usage: bool) -> bytes:
        model = summary.model or self._model
        delta = {"role": "assistant", "content": ""} if self._first else {}
        last = {
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "finish_reason": FINISH_REASONS.get(summary.finish_reason, "stop"),
                    "logprobs": None,
                }
            ],
            "llmesh": extras(summary),
        }
        if include_usage:
            # As OpenAI sends it with stream_options.include_usage: a last chunk without choices.
            events = self._event(last) + self._event({"model": model, "choices": [], "usage": usage(summary)})
        else:
            events = self._event({**last, "usage": usage(summary)})
        return events + b"data: [DONE]\n\n"

    @staticmethod
    def error(error: EdgeError) -> bytes:
        return b"data: " + json.dumps(error.body()).encode() + b"\n\n"


def models_list(models: list[Any], created: int) -> dict[str, Any]:
    """`GET /v1/models`: 'auto' (the router chooses) and every model of the catalog."""
    data = [{"id": AUTO_MODEL, "object": "model", "created": created, "owned_by": "llmesh"}]
    for m in models:
        data.append(
            {
                "id": m.name,
                "object": "model",
                "created": created,
                "owned_by": "llmesh",
                "llmesh": {
                    "backend": m.backend,
                    "tiers": list(m.tiers),
                    "region": m.region,
                    "context_length": m.context_length,
                },
            }
        )
    return {"object": "list", "data": data}
