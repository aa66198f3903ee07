"""A small HTTP/1.1 proxy for tests, in front of a real server, that misbehaves on demand.

Each request the proxy receives takes the next fault from its script (`proxy.script(...)`); when
the script is empty it passes the request through untouched. One request per client connection
(the proxy answers `Connection: close`), so every request of a client is seen here.

    Fault.http(429, retry_after="1")       answer 429 with Retry-After, never reaching upstream
    Fault.http(503)                        answer 503
    Fault.http(400, body={...})            answer 400 with a JSON body
    Fault.drop_after(k)                      pass through, then cut the connection after k SSE events
    Fault.delay(s)                           wait s seconds, then pass through
    Fault.usage(prompt, completion)          pass through, with a usage chunk before [DONE] (the
                                             OpenAI API's answer to stream_options.include_usage)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from dataclasses import dataclass, field

from llmesh.kit.testing import free_port


@dataclass(frozen=True)
class Fault:
    kind: str  # "status", "drop", "delay"
    status: int = 0
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    events: int = 0
    delay_s: float = 0.0

    @classmethod
    def http(cls, status: int, *, retry_after: str | None = None, body: dict | None = None) -> Fault:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        payload = json.dumps(body or {"error": {"message": f"injected {status}", "type": "test"}}).encode()
        return cls("status", status=status, headers=headers, body=payload)

    @classmethod
    def drop_after(cls, events: int) -> Fault:
        return cls("drop", events=events)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", delay_s=seconds)

    @classmethod
    def usage(cls, prompt_tokens: int, completion_tokens: int) -> Fault:
        chunk = {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return cls("usage", body=f"data: {json.dumps(chunk)}\n\n".encode())


class FaultyProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._faults: collections.deque[Fault] = collections.deque()
        self.requests: list[float] = []  # loop time each request arrived
        self.faults_used: list[str] = []
        self._tasks: set[asyncio.Task] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *faults: Fault) -> None:
        """The faults of the next requests, in order (replacing what was left)."""
        self._faults = collections.deque(faults)
        self.requests.clear()
        self.faults_used.clear()

    async def start(self) -> FaultyProxy:
        self.port = free_port()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        kept = [lines[0]]
        for line in lines[1:]:
            if not line:
                continue
            name = line.split(":", 1)[0].strip().lower()
            if name == "content-length":
                length = int(line.split(":", 1)[1])
            if name in ("connection", "keep-alive"):
                continue
            kept.append(line)
        body = await reader.readexactly(length) if length else b""
        self.requests.append(asyncio.get_running_loop().time())
        fault = self._faults.popleft() if self._faults else None
        self.faults_used.append(fault.kind if fault else "pass")
        if fault is not None and fault.kind == "status":
            headers = {"Content-Type": "application/json", "Content-Length": str(len(fault.body)), **fault.headers}
            writer.write(
                f"HTTP/1.1 {fault.status} Injected\r\n".encode()
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
                + b"Connection: close\r\n\r\n"
                + fault.body
            )
            await writer.drain()
            return
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.delay_s)
        request = ("\r\n".join(kept) + "\r\nConnection: close\r\n\r\n").encode() + body
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            up_writer.write(request)
            await up_writer.drain()
            if fault is not None and fault.kind == "drop":
                await self._pipe_events(up_reader, writer, fault.events)
            elif fault is not None and fault.kind == "usage":
                writer.write(self._insert_before_done(await up_reader.read(-1), fault.body))
                await writer.drain()
            else:
                while chunk := await up_reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
        finally:
            up_writer.close()

    @staticmethod
    async def _pipe_events(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, events: int) -> None:
        """Forwards the response head and its first `events` SSE events, then stops (the caller
        closes the connection: the client sees a body cut short)."""
        writer.write(await up_reader.readuntil(b"\r\n\r\n"))
        buffer = b""
        sent = 0
        while sent < events:
            chunk = await up_reader.read(65536)
            if not chunk:
                break
            buffer += chunk
            # SSE events end with a blank line; inside the chunked framing that is "\n\n".
            while sent < events and (end := buffer.find(b"\n\n")) >= 0:
                writer.write(buffer[: end + 2])
                buffer = buffer[end + 2 :]
                sent += 1
        # Close the chunk the last event belonged to so the client parses it, then cut.
        writer.write(b"\r\n")
        await writer.drain()

    @staticmethod
    def _insert_before_done(response: bytes, event: bytes) -> bytes:
        """The chunked response with `event` as a chunk of its own before the [DONE] event's."""
        done = response.find(b"data: [DONE]")
        assert done > 0, "no [DONE] in the upstream response"
        size_line = response.rfind(b"\r\n", 0, done - 2) + 2
        return response[:size_line] + f"{len(event):x}\r\n".encode() + event + b"\r\n" + response[size_line:]
