"""OpenAI's JSON ↔ the router's protos, and the error shape: pure functions, no server."""

from __future__ import annotations

import json

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.router.v1 import router_pb2
from llmesh.services.edge import convert
from llmesh.services.edge.core import EdgeError, error_for_status


def body(**fields):
    fields.setdefault("model", "auto")
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return fields


def test_a_chat_request_becomes_the_routers_request():
    request, stream, model = convert.chat_request(
        body(
            model="gemma-3-270m",
            messages=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            max_completion_tokens=12,
            temperature=0,
            top_p=0.5,
            seed=7,
            stop="\n",
            stream=True,
            llmesh={"use_case": "support", "priority": "batch", "cache": "bypass"},
        )
    )
    assert stream and model == "gemma-3-270m" and request.model == "gemma-3-270m"
    assert [(m.role, m.content) for m in request.messages] == [
        (common_pb2.ROLE_SYSTEM, "be brief"),
        (common_pb2.ROLE_USER, "ab"),
    ]
    assert request.max_tokens == 12 and request.sampling.temperature == 0 and request.sampling.HasField("temperature")
    assert request.sampling.seed == 7 and list(request.sampling.stop) == ["\n"]
    assert (request.use_case, request.priority, request.cache_policy) == (
        "support",
        router_pb2.PRIORITY_BATCH,
        router_pb2.CACHE_POLICY_BYPASS,
    )


def test_auto_lets_the_router_choose_and_unset_sampling_stays_unset():
    request, stream, _ = convert.chat_request(body())
    assert request.model == "" and not stream and request.max_tokens == 0
    assert not request.sampling.HasField("temperature") and not request.sampling.HasField("seed")


@pytest.mark.parametrize(
    ("doc", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (body(messages="hi"), "messages"),
        (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
        (body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages[0].content"),
        (body(max_tokens="12"), "max_tokens"),
        (body(max_tokens=True), "max_tokens"),
        (body(temperature="hot"), "temperature"),
        (body(seed=-1), "seed"),
        (body(stop=[1]), "stop"),
        (body(stream="yes"), "stream"),
        (body(n=3), "n"),
        (body(tools=[{}]), "tools"),
        (body(llmesh={"cache": "never"}), "llmesh.cache"),
        (body(llmesh={"tier": 1}), "llmesh"),
    ],
)
def test_bad_shapes_are_400_naming_the_parameter(doc, param):
    with pytest.raises(EdgeError) as caught:
        convert.chat_request(doc)
    assert caught.value.status == 400 and caught.value.param == param


def test_bodies_that_are_not_a_json_object_are_400():
    for raw in (b"{", b"[1]", b"\xff"):
        with pytest.raises(EdgeError) as caught:
            convert.parse_json(raw)
        assert caught.value.status == 400


def summary(**fields) -> router_pb2.GenerateSummary:
    fields.setdefault("request_id", "r1")
    fields.setdefault("model", "m")
    fields.setdefault("tier", common_pb2.TIER_2)
    fields.setdefault("cache_outcome", router_pb2.CACHE_OUTCOME_EXACT_HIT)
    fields.setdefault("usage", common_pb2.Usage(prompt_tokens=3, completion_tokens=4))
    fields.setdefault("finish_reason", common_pb2.FINISH_REASON_LENGTH)
    return router_pb2.GenerateSummary(**fields)


def test_a_completion_carries_usage_and_the_extension_field():
    doc = convert.completion("r1", "auto", "hello", summary(cost_usd=0.5, backend="llama_cpp"))
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert doc["llmesh"]["cache"] == "exact_hit" and doc["llmesh"]["tier"] == 2 and doc["model"] == "m"
    headers = convert.extras_headers(summary(cost_usd=0.5, backend="llama_cpp"))
    assert headers["x-llmesh-cache"] == "exact_hit" and float(headers["x-llmesh-cost-usd"]) == 0.5


def events(raw: bytes) -> list:
    lines = [line for line in raw.decode().split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def test_chunks_start_with_the_role_and_end_with_usage_then_done():
    writer = convert.ChunkWriter("r1", "auto")
    first, second = events(writer.delta("a")), events(writer.delta("b"))
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert second[0]["choices"][0]["delta"] == {"content": "b"}
    last, done = events(writer.finish(summary(), include_usage=False))
    assert done == "[DONE]" and last["usage"]["total_tokens"] == 7 and last["llmesh"]["request_id"] == "r1"
    finish, usage_only, done = events(convert.ChunkWriter("r1", "auto").finish(summary(), include_usage=True))
    assert finish["choices"][0]["delta"] == {"role": "assistant", "content": ""} and "usage" not in finish
    assert usage_only["choices"] == [] and usage_only["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("status", "http", "code"),
    [
        ("INVALID_ARGUMENT", 400, None),
        ("UNAUTHENTICATED", 401, "invalid_api_key"),
        ("PERMISSION_DENIED", 403, "permission_denied"),
        ("NOT_FOUND", 404, "not_found"),
        ("RESOURCE_EXHAUSTED", 429, "rate_limit_exceeded"),
        ("UNAVAILABLE", 503, "unavailable"),
        ("DEADLINE_EXCEEDED", 504, "deadline_exceeded"),
        ("INTERNAL", 500, None),
    ],
)
def test_router_statuses_map_to_http(status, http, code):
    error = error_for_status(status, "why")
    assert (error.status, error.code) == (http, code)
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_retry_after_is_whole_seconds_rounded_up():
    assert error_for_status("RESOURCE_EXHAUSTED", "slow down", retry_after_s=1.2).headers() == {"retry-after": "2"}
    assert error_for_status("RESOURCE_EXHAUSTED", "now", retry_after_s=0.0).headers() == {"retry-after": "1"}
    assert error_for_status("UNAVAILABLE", "down").headers() == {}
