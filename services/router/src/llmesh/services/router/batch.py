"""Batch jobs, the domain part: the OpenAI batch input file → validated requests, a job's record,
and each item's result line. Knows nothing of NATS or gRPC (batch_runner.py stores and runs them)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from typing import Any

from llmesh.common.v1 import common_pb2
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.vocabulary import Principal, Sensitivity
from llmesh.router.v1 import router_pb2
from llmesh.services.router.convert import command_from_proto
from llmesh.services.router.domain import Summary

MAX_LINES = 50_000
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_CUSTOM_ID_CHARS = 64
DEFAULT_WINDOW_S = 24 * 3600
MIN_WINDOW_S, MAX_WINDOW_S = 60, 7 * 24 * 3600
CHAT_URL = "/v1/chat/completions"
ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}
# Body fields read; any other is refused, so a typo (max_token) cannot pass silently.
BODY_FIELDS = {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "model", "n"}


@dataclasses.dataclass(frozen=True, slots=True)
class BatchItem:
    index: int
    custom_id: str
    request: router_pb2.GenerateRequest


def new_job_id() -> str:
    return "batch_" + uuid.uuid4().hex[:24]


def item_request_id(job_id: str, index: int) -> str:
    """The request id every attempt of one item carries: usage events and logs of retries match."""
    return f"{job_id}-{index}"


def _bad(line_no: int, message: str) -> InvalidArgument:
    return InvalidArgument(f"line {line_no}: {message}", field="jsonl")


def _request_from_body(body: dict[str, Any], line_no: int, use_case: str) -> router_pb2.GenerateRequest:
    unknown = sorted(set(body) - BODY_FIELDS)
    if unknown:
        raise _bad(line_no, f"body has fields llmesh does not read: {', '.join(unknown)}")
    if body.get("n", 1) != 1:
        raise _bad(line_no, "body.n must be 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad(line_no, "body.messages must be a non-empty list")
    request = router_pb2.GenerateRequest(
        use_case=use_case, priority=router_pb2.PRIORITY_BATCH, cache_policy=router_pb2.CACHE_POLICY_ALLOW
    )
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise _bad(line_no, f"body.messages[{i}] must be {{role: system|user|assistant, content: text}}")
        request.messages.add(role=ROLES[message["role"]], content=message["content"])
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 0))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _bad(line_no, "body.max_tokens must be an integer")
    if not 0 <= max_tokens < 2**31:
        raise _bad(line_no, f"body.max_tokens must be >= 0 (got {max_tokens})")
    request.max_tokens = max_tokens
    for name in ("temperature", "top_p"):
        if name in body:
            value = body[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise _bad(line_no, f"body.{name} must be a number")
            setattr(request.sampling, name, float(value))
    if "seed" in body:
        if not isinstance(body["seed"], int) or isinstance(body["seed"], bool) or not 0 <= body["seed"] < 2**64:
            raise _bad(line_no, "body.seed must be an integer >= 0")
        request.sampling.seed = body["seed"]
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad(line_no, "body.stop must be a string or a list of strings")
        request.sampling.stop.extend(stops)
    model = body.get("model", "")
    if not isinstance(model, str):
        raise _bad(line_no, "body.model must be a string")
    # "auto" (or no model) lets the router choose by tier, as Generate does without a model.
    request.model = "" if model in ("", "auto") else model
    return request


def parse_jsonl(data: bytes, use_case: str) -> list[BatchItem]:
    """Every line checked as Generate would check it; the first bad line names itself."""
    if len(data) > MAX_FILE_BYTES:
        raise InvalidArgument(f"the file is {len(data)} bytes; the limit is {MAX_FILE_BYTES}", field="jsonl")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"the file is not UTF-8 ({exc.reason} at byte {exc.start})", field="jsonl") from None
    items: list[BatchItem] = []
    seen: set[str] = set()
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(items) >= MAX_LINES:
            raise InvalidArgument(f"the file has more than {MAX_LINES} requests", field="jsonl")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(line_no, f"not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise _bad(line_no, "not a JSON object")
        custom_id = record.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
            raise _bad(line_no, f"custom_id must be 1-{MAX_CUSTOM_ID_CHARS} characters")
        if custom_id in seen:
            raise _bad(line_no, f"custom_id {custom_id!r} is used twice")
        seen.add(custom_id)
        if record.get("method", "POST") != "POST" or record.get("url", CHAT_URL) != CHAT_URL:
            raise _bad(line_no, f"only POST {CHAT_URL} requests are supported")
        body = record.get("body")
        if not isinstance(body, dict):
            raise _bad(line_no, "body must be a JSON object")
        request = _request_from_body(body, line_no, use_case)
        try:
            command_from_proto(request)  # the same checks as a Generate call
        except InvalidArgument as exc:
            raise _bad(line_no, exc.message) from None
        items.append(BatchItem(len(items), custom_id, request))
    if not items:
        raise InvalidArgument("the file holds no requests", field="jsonl")
    return items


def window_from(seconds: int) -> int:
    if seconds == 0:
        return DEFAULT_WINDOW_S
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise InvalidArgument(
            f"completion_window_s must be in {MIN_WINDOW_S}..{MAX_WINDOW_S}, or 0 for 24 h (got {seconds})",
            field="completion_window_s",
        )
    return seconds


@dataclasses.dataclass
class Job:
    job_id: str
    principal: Principal
    use_case: str
    total: int
    created_at: float
    start_after: float
    expires_at: float
    display_name: str = ""
    cancelled: bool = False
    # "" for a submitted file; "cache_refresh" for a job the cache refresh planned.
    kind: str = ""
    # Why the job stopped before its items ran (e.g. "budget_exhausted"); "" otherwise.
    stopped_reason: str = ""

    def to_json(self) -> bytes:
        return stored_json(self)

    @classmethod
    def from_json(cls, data: bytes) -> "Job":
        return from_stored_json(cls, data)


def stored_json(record_of) -> bytes:
    """A dataclass holding a `principal`, as JSON for KV. Tenant tokens are not stored: whoever
    runs for that principal later (batch items, the cache refresh) renews one for its key."""
    record = dataclasses.asdict(record_of)
    record["principal"]["clearance"] = record_of.principal.clearance.name
    record["principal"].pop("tenant_token", None)
    record["principal"].pop("tenant_token_expires_at", None)
    return json.dumps(record).encode()


def from_stored_json(cls, data: bytes):
    """The dataclass `cls` back from stored_json's bytes."""
    record = json.loads(data)
    p = record.pop("principal")
    p["clearance"] = Sensitivity[p["clearance"]]
    return cls(principal=Principal(**p), **record)


def answer_line(job_id: str, index: int, custom_id: str, text: str, summary: Summary) -> dict:
    """The OpenAI batch output shape, with llmesh's summary under "llmesh"."""
    usage = {
        "prompt_tokens": summary.usage.prompt_tokens,
        "completion_tokens": summary.usage.completion_tokens,
        "total_tokens": summary.usage.prompt_tokens + summary.usage.completion_tokens,
    }
    return {
        "id": item_request_id(job_id, index),
        "index": index,
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": summary.request_id,
            "body": {
                "object": "chat.completion",
                "created": int(time.time()),
                "model": summary.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        # A cached answer does not record why it stopped: it was complete.
                        "finish_reason": "length" if summary.finish_reason.value == "length" else "stop",
                    }
                ],
                "usage": usage,
            },
        },
        "error": None,
        "llmesh": {
            "tier": summary.tier,
            "backend": summary.backend,
            "cache_outcome": summary.cache_outcome.value,
            "cost_usd": summary.cost_usd,
        },
    }


def error_line(job_id: str, index: int, custom_id: str, code: str, message: str) -> dict:
    return {
        "id": item_request_id(job_id, index),
        "index": index,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


@dataclasses.dataclass
class Totals:
    completed: int = 0
    failed: int = 0
    expired: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, line: dict) -> None:
        if line.get("error"):
            self.failed += 1
            self.expired += line["error"]["code"] == "expired"
            return
        self.completed += 1
        usage = line["response"]["body"]["usage"]
        self.prompt_tokens += usage["prompt_tokens"]
        self.completion_tokens += usage["completion_tokens"]
        self.cost_usd += line["llmesh"]["cost_usd"]
