"""The OpenAI-compatible edge in front of the real mesh (tests/e2e/conftest.py: `mesh`, `edge`), spoken to with
OpenAI's own Python SDK and with raw HTTP for what the SDK hides (headers, error bodies)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import openai
import pytest

pytestmark = pytest.mark.timeout(120)

QUESTION = "Name three primary colors."


def client(base_url: str, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)


def chat(**fields):
    fields.setdefault("model", "auto")
    fields.setdefault("messages", [{"role": "user", "content": QUESTION}])
    fields.setdefault("max_tokens", 16)
    fields.setdefault("temperature", 0)
    fields.setdefault("seed", 1)
    if "llmesh" in fields:  # the extension object, as the SDK sends it
        fields["extra_body"] = {"llmesh": fields.pop("llmesh")}
    return fields


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP POST (in a thread: the mesh runs in this event loop)."""
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_streamed_then_an_exact_hit_on_the_repeat_with_the_extension_field(mesh, edge):
    api_key, _, _ = await mesh.new_tenant()
    sdk = client(edge, api_key)
    chunks = [c async for c in await sdk.chat.completions.create(**chat(stream=True))]
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1, "the answer arrives in several chunks"
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert last.usage.prompt_tokens > 0 and 0 < last.usage.completion_tokens <= 16
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    extras = last.model_extra["llmesh"]
    assert extras["cache"] == "miss" and extras["tier"] in (1, 2, 3) and extras["cost_usd"] > 0
    assert extras["model"] == last.model == "gemma-3-270m" and extras["backend"] == "llama_cpp"
    assert last.id == f"chatcmpl-{extras['request_id']}"

    raw = await sdk.chat.completions.with_raw_response.create(**chat())
    again = raw.parse()
    assert again.choices[0].message.content == "".join(deltas)
    assert again.choices[0].message.role == "assistant"
    assert again.model_extra["llmesh"]["cache"] == "exact_hit"
    assert again.usage.completion_tokens == last.usage.completion_tokens
    assert raw.headers["x-llmesh-cache"] == "exact_hit"
    assert raw.headers["x-llmesh-model"] == "gemma-3-270m"
    assert raw.headers["x-llmesh-tier"] == str(extras["tier"])
    assert float(raw.headers["x-llmesh-cost-usd"]) == 0
    assert raw.headers["x-request-id"] == again.model_extra["llmesh"]["request_id"]


async def test_usage_in_a_chunk_of_its_own_and_the_callers_request_id(mesh, edge):
    api_key, _, _ = await mesh.new_tenant()
    sdk = client(edge, api_key)
    raw = await sdk.chat.completions.with_raw_response.create(
        **chat(stream=True, stream_options={"include_usage": True}, llmesh={"cache": "bypass"}),
        extra_headers={"x-request-id": "edge-test-42"},
    )
    assert raw.headers["x-request-id"] == "edge-test-42"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = [c async for c in raw.parse()]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].model_extra["llmesh"]["cache"] == "bypassed"
    assert chunks[-2].model_extra["llmesh"]["request_id"] == "edge-test-42"


async def test_a_wrong_key_is_a_401_in_openais_error_shape(edge):
    sdk = client(edge, "llm_not-a-real-key")
    with pytest.raises(openai.AuthenticationError) as caught:
        await sdk.chat.completions.create(**chat())
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key" and caught.value.type == "invalid_request_error"
    assert caught.value.message
    with pytest.raises(openai.AuthenticationError):
        await sdk.chat.completions.create(**chat(stream=True))
    with pytest.raises(openai.AuthenticationError):
        await sdk.models.list()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(messages=[]), "messages"),
        (chat(max_tokens=100_000), "max_tokens"),
        (chat(temperature=-1), "temperature"),
        (chat(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
        (chat(n=2), "n"),
        (chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
        (chat(llmesh={"priority": "urgent"}), "llmesh.priority"),
    ],
)
async def test_bad_requests_are_400_naming_the_parameter(mesh, edge, body, param):
    api_key, _, _ = await mesh.new_tenant()
    with pytest.raises(openai.BadRequestError) as caught:
        await client(edge, api_key).chat.completions.create(**body)
    assert caught.value.status_code == 400 and caught.value.param == param, caught.value.body


async def test_raw_http_errors_keep_the_shape_and_a_request_id(mesh, edge):
    api_key, _, _ = await mesh.new_tenant()
    auth = {"authorization": f"Bearer {api_key}"}
    status, headers, body = await asyncio.to_thread(post, f"{edge}/chat/completions", b"{not json", auth)
    assert status == 400 and headers["x-request-id"]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and "JSON" in error["message"]

    status, _, body = await asyncio.to_thread(post, f"{edge}/completions", b"{}", auth)
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"

    status, _, body = await asyncio.to_thread(post, f"{edge}/chat/completions", json.dumps(chat()).encode(), {})
    assert status == 401 and "authorization" in json.loads(body)["error"]["message"]


async def test_models_lists_auto_and_the_catalog(mesh, edge):
    api_key, _, _ = await mesh.new_tenant()
    models = [m.id async for m in client(edge, api_key).models.list()]
    assert models[0] == "auto" and "gemma-3-270m" in models
    reply = await client(edge, api_key).chat.completions.create(**chat(model="gemma-3-270m", max_tokens=4))
    assert reply.model == "gemma-3-270m"
