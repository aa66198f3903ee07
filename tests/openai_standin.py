"""A small OpenAI-compatible HTTP server for the cross-service tests: it streams a fixed answer
(server-sent events) to every POST /chat/completions."""

from __future__ import annotations

import asyncio
import json


class OpenAIStandIn:
    """POST /chat/completions → a streamed answer of fixed words (server-sent events), one
    connection per request. `stop()` kills it (open connections included); `start()` again binds
    the same port. Clearing `gate` holds every answer before its first byte until it is set."""

    def __init__(self, words: list[str], port: int):
        self.words = words
        self.port = port
        self.requests = 0
        #: requests received and not yet answered (held while `gate` is clear)
        self.in_flight = 0
        #: answers go out while it is set (it is from the start); clear it to hold them
        self.gate = asyncio.Event()
        self.gate.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> OpenAIStandIn:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            body = json.loads(await reader.readexactly(length))
            self.requests += 1
            self.in_flight += 1
            try:
                await self.gate.wait()
            finally:
                self.in_flight -= 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            for word in self.words[: body.get("max_tokens") or len(self.words)]:
                chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": word}}]}
                writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
            done = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            writer.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
