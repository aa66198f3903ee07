"""The harness's own servers (bench/mesh_load.py) answer while the harness's event loop is blocked,
as the separate processes they stand for do: a private `llmesh up --detach` whose models are the
stand-in (as `bench/chaos.py --model standin` starts it) answers OpenAI's synchronous SDK, called
through the edge's `/v1/chat/completions` from the test's own loop, streamed and not; the fault
proxy passes a blocking request through. Served in the caller's loop (as they were), the stand-in
could not answer while such a call waited: the call timed out. About 30 s with the mesh's start."""

from __future__ import annotations

import json
import pathlib
import urllib.request

import openai
import pytest

from bench.mesh_load import FaultProxy, PrivateMesh, StandInModel

pytestmark = pytest.mark.timeout(240)

# Far below the SDK's default (600 s): a stand-in that cannot answer fails the test, not its timeout.
CALL_TIMEOUT_S = 30


async def test_the_edge_answers_a_synchronous_openai_client_on_the_standin_mesh(tmp_path: pathlib.Path):
    model = StandInModel(first_token_s=0.05, token_s=0.01)
    await model.start()
    mesh = PrivateMesh(
        tmp_path / "home",
        extra={
            "LLMESH_INFERENCE_CATALOG": str(model.catalog(tmp_path / "catalog.json")),
            "LLMESH_EDGE_PORT": "0",
            "LLMESH_EDGE_HTTP_PORT": "0",
        },
    )
    try:
        mesh.up()
        api_key, _ = await mesh.new_tenant("standin-edge")
        sdk = openai.OpenAI(
            base_url=mesh.state()["http_urls"]["edge"], api_key=api_key, max_retries=0, timeout=CALL_TIMEOUT_S
        )
        messages = [{"role": "user", "content": "Say three words."}]

        # Blocking calls, made in this test's event loop on purpose.
        reply = sdk.chat.completions.create(model="auto", messages=messages, max_tokens=3)
        assert reply.choices[0].message.content == "word0 word1 word2 "
        assert reply.model in ("standin-self", "standin-api") and reply.usage.completion_tokens == 3

        chunks = list(
            sdk.chat.completions.create(
                model="standin-api",
                messages=messages,
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"llmesh": {"cache": "bypass"}},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "word0 word1 word2 word3 "
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
        assert chunks[-2].model == "standin-api" and chunks[-2].choices[0].finish_reason == "length"
        assert model.requests >= 2
    finally:
        mesh.down()
        await model.stop()


async def test_the_fault_proxy_passes_a_blocking_request_to_the_standin():
    model = StandInModel(first_token_s=0.0, token_s=0.0)
    await model.start()
    proxy = FaultProxy(model.port)
    await proxy.start()
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{proxy.port}/v1/chat/completions",
            data=json.dumps({"model": "standin-self", "max_tokens": 2, "stream": True}).encode(),
            headers={"content-type": "application/json"},
        )
        # Blocking, in this test's event loop: the proxy and the stand-in answer from their thread.
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:
            body = response.read().decode()
        events = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:2]] == ["word0 ", "word1 "]
        assert model.requests == 1
    finally:
        await proxy.stop()
        await model.stop()
