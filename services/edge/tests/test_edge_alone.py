"""The edge's HTTP server alone, with nothing behind it: a real aiohttp server and real gRPC
channels to a port where nothing listens. What needs the mesh is in tests/e2e/test_edge.py."""

from __future__ import annotations

import aiohttp
import pytest
from llmesh.kit.config import load_settings
from llmesh.kit.testing import free_port, hosted
from llmesh.services.edge.app import EdgeApp
from llmesh.services.edge.settings import EdgeSettings

pytestmark = pytest.mark.timeout(60)

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
async def edge_url():
    nowhere = f"127.0.0.1:{free_port()}"
    settings = load_settings(
        EdgeSettings,
        environ={},
        port=0,
        http_port=0,
        router_addr=nowhere,
        tenancy_addr=nowhere,
        inference_addr=nowhere,
        generate_timeout_s=5.0,
        upstream_timeout_s=1.0,
        max_body_bytes=4096,
    )
    app = EdgeApp(settings)
    async with hosted(app, settings, serve_metrics=False):
        assert app.ready_info() == {"http_port": app.http_port} and app.http_port
        yield f"http://{app.http_address}/v1"


async def post(url: str, **kwargs) -> tuple[int, dict, dict]:  # headers by lower-case name
    async with aiohttp.ClientSession() as session, session.post(url, **kwargs) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, await response.json()


async def test_a_router_that_does_not_answer_is_a_503_in_openais_shape(edge_url):
    status, headers, body = await post(
        f"{edge_url}/chat/completions", json=BODY, headers={"authorization": "Bearer k", "x-request-id": "abc-1"}
    )
    assert status == 503 and body["error"]["code"] == "unavailable" and body["error"]["message"]
    assert headers["x-request-id"] == "abc-1"
    status, _, body = await post(f"{edge_url}/chat/completions", json={**BODY, "stream": True})
    assert status == 503, "an error before the first event keeps its status when streamed"


async def test_a_request_id_that_is_not_usable_is_replaced(edge_url):
    _, headers, _ = await post(f"{edge_url}/chat/completions", json=BODY, headers={"x-request-id": "x" * 500})
    assert len(headers["x-request-id"]) == 32


async def test_models_without_a_key_is_401_before_any_call(edge_url):
    async with aiohttp.ClientSession() as session, session.get(f"{edge_url}/models") as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_http_errors_of_the_server_itself_keep_the_shape(edge_url):
    status, _, body = await post(f"{edge_url}/chat/completions", data=b"x" * 10_000)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    async with aiohttp.ClientSession() as session, session.get(f"{edge_url}/chat/completions") as response:
        assert response.status == 405 and (await response.json())["error"]["code"] == "method_not_allowed"
