"""API keys, admin tokens and prompt text never reach a log line, on any service, whatever the
outcome: an answered request, a cache hit, a rejected key, a malformed request."""

from __future__ import annotations

import grpc
import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit.testing import unique
from llmesh.router.v1 import router_pb2

from tests.e2e.conftest import bearer

pytestmark = pytest.mark.timeout(120)


def _request(text: str, **fields) -> router_pb2.GenerateRequest:
    fields.setdefault("max_tokens", 8)
    return router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)],
        sampling=common_pb2.SamplingParams(temperature=0, seed=1),
        **fields,
    )


async def _drain(call) -> grpc.StatusCode:
    try:
        async for _ in call:
            pass
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def test_no_key_token_or_prompt_text_in_any_log(mesh, capfd):
    api_key, _, _ = await mesh.new_tenant()
    marker = unique("periwinkle")
    prompt = f"My card is 4111 1111 1111 1111 and the code word is {marker}. What is 2+2?"
    wrong_key = unique("lmk_wrong")

    assert await _drain(mesh.router.Generate(_request(prompt), metadata=bearer(api_key), timeout=60)) == (
        grpc.StatusCode.OK
    )
    assert await _drain(mesh.router.Generate(_request(prompt), metadata=bearer(api_key), timeout=60)) == (
        grpc.StatusCode.OK
    )
    assert await _drain(mesh.router.Generate(_request(prompt), metadata=bearer(wrong_key), timeout=10)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    bad = _request(prompt, max_tokens=100_000)
    assert await _drain(mesh.router.Generate(bad, metadata=bearer(api_key), timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    out, err = capfd.readouterr()
    logs = out + err
    assert "generated" in logs or "served_from_cache" in logs, "the services' logs were captured"
    admin_token = mesh.admin[0][1].removeprefix("Bearer ")
    for secret, what in (
        (api_key, "the API key"),
        (api_key[-12:], "part of the API key"),
        (wrong_key, "the rejected key"),
        (admin_token, "the admin token"),
        (marker, "prompt text"),
        ("4111 1111 1111 1111", "the card number in the prompt"),
    ):
        assert secret not in logs, f"{what} appears in a log line"
