"""The OpenAI-compatible backend's HTTP connection on the first-token path: generations in a row
reuse one kept-alive connection, and a kept-alive connection that the server closed as the next
request went out is replaced at once (no retry backoff before the first token). Against a small
HTTP/1.1 server that streams a fixed answer and keeps connections alive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from llmesh.kit.chat import Message, Sampling
from llmesh.kit.errors import Unavailable
from llmesh.services.inference.backend import BackendCompletion, GenerationRequest, TextDelta
from llmesh.services.inference.openai_backend import OpenAIBackend, OpenAIModel

pytestmark = pytest.mark.timeout(30)

MODEL = "kept-alive"
PIECES = ("Hello", ", ", "sea.")


def _event(payload) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class KeepAliveServer:
    """Answers every chat completion with PIECES as SSE, chunked, keeping the connection open;
    `drop` lists request numbers (from 1) whose connection is closed instead of answered."""

    def __init__(self, drop: tuple[int, ...] = ()):
        self.drop = set(drop)
        self.connections = 0
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/v1"

    async def __aenter__(self) -> KeepAliveServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                if self.requests in self.drop:
                    return  # closed without an answer, as a server ending an idle keep-alive
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                for piece in PIECES:
                    writer.write(_chunk(_event({"choices": [{"delta": {"content": piece}}]})))
                writer.write(_chunk(_event({"choices": [{"delta": {}, "finish_reason": "stop"}]})))
                writer.write(_chunk(_event("[DONE]")) + b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def backend_for(server: KeepAliveServer, **options):
    backend = OpenAIBackend(server.base_url, [OpenAIModel(MODEL, "remote", 4096, max_concurrency=1)], **options)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def generate(backend: OpenAIBackend) -> str:
    request = GenerationRequest(MODEL, (Message("user", "hi"),), 8, Sampling(temperature=0.0), request_id="r-1")
    text = []
    completion = None
    async for event in backend.generate(request):
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            completion = event
    assert isinstance(completion, BackendCompletion) and completion.completion_tokens == len(PIECES)
    return "".join(text)


async def test_generations_in_a_row_reuse_one_connection():
    async with KeepAliveServer() as server, backend_for(server) as backend:
        for _ in range(3):
            assert await generate(backend) == "".join(PIECES)
    assert (server.connections, server.requests) == (1, 3)


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced_at_once():
    # A backoff of 10 s: a retry that waited for it would take 5 s or more.
    async with KeepAliveServer(drop=(2,)) as server, backend_for(server, backoff_s=10.0, max_retries=0) as backend:
        assert await generate(backend) == "".join(PIECES)
        started = time.monotonic()
        assert await generate(backend) == "".join(PIECES)
        assert time.monotonic() - started < 2.0
    assert (server.connections, server.requests) == (2, 3)


async def test_a_server_that_keeps_closing_connections_is_unavailable_after_the_retries():
    async with KeepAliveServer(drop=(1, 2, 3, 4)) as server, backend_for(server, backoff_s=0.02, max_retries=1) as b:
        with pytest.raises(Unavailable, match="after 2 attempt"):
            await generate(b)
    # One at-once reconnection, then the first attempt and its one retry.
    assert server.requests == 3
