"""The event-stream line splitter of the OpenAI-compatible backend gives the lines httpx's
aiter_lines gives, however the body is cut into network chunks."""

from __future__ import annotations

import random

import httpx
from llmesh.services.inference.openai_backend import sse_lines

PIECES = [b"a", b"b", b" ", b"\n", b"\r", b"\r\n", b"data: {}", "\u00e9".encode(), "\u20ac".encode()]


async def _chunks(chunks):
    for chunk in chunks:
        yield chunk


async def _httpx_lines(chunks) -> list[str]:
    response = httpx.Response(200, content=_chunks(chunks), headers={"content-type": "text/event-stream"})
    return [line async for line in response.aiter_lines()]


async def test_lines_match_httpx_for_any_cut_of_the_body():
    rng = random.Random(9)
    for _ in range(2000):
        body = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(body) + 1), min(len(body) + 1, rng.randint(0, 6))))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        got = [line async for line in sse_lines(_chunks(chunks))]
        assert got == await _httpx_lines(chunks), chunks


async def test_an_event_stream_reads_as_its_lines():
    body = [b'data: {"a": 1}\r\n\r', b"\ndata: [DO", b"NE]\n\n", b": ping"]
    assert [line async for line in sse_lines(_chunks(body))] == ['data: {"a": 1}', "", "data: [DONE]", "", ": ping"]
