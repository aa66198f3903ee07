"""What bench/chaos.py, bench/soak.py and tests/chaos share: a private mesh started the way a user
starts it (`llmesh up --detach`, a private LLMESH_HOME, free ports), tenants made through the tenancy
service, a steady mixed load through the router's public gRPC API that records every answer, a TCP
fault proxy, and /proc samples of the mesh's processes. Nothing here imports a service's code."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
from google.rpc import status_pb2
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import retrying_unserved
from llmesh.kit.testing import free_port, unique
from llmesh.router.v1 import batch_pb2, batch_pb2_grpc, router_pb2, router_pb2_grpc
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

SERVICES = ("tenancy", "classifier", "cache", "inference", "router")
REPEATED_PROMPTS = [f"In one word, what colour is a {thing}?" for thing in ("lemon", "cherry", "leaf", "sky")]


def cli(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmesh.cli.main", *argv], env=env, capture_output=True, text=True, timeout=timeout
    )


@dataclasses.dataclass
class PrivateMesh:
    """One `llmesh up --detach` under `home`, every port free; `extra` environment for the launcher."""

    home: pathlib.Path
    extra: dict[str, str] = dataclasses.field(default_factory=dict)
    inference_port: int = 0
    tenants: dict[str, str] = dataclasses.field(default_factory=dict)  # API key -> tenant id (new_tenant)

    def __post_init__(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith("LLMESH_") and (k.endswith("_ADDR") or k in ("LLMESH_NATS_URL", "LLMESH_ADMIN_TOKEN")))
        }
        env.update({f"LLMESH_{name.upper()}_PORT": "0" for name in SERVICES})
        if self.inference_port:
            env["LLMESH_INFERENCE_PORT"] = str(self.inference_port)
        env.update(LLMESH_HOME=str(self.home), LLMESH_UP_BACKENDS="0", OMP_NUM_THREADS="1")
        env.update(self.extra)
        self.env = env

    def up(self) -> float:
        started = time.monotonic()
        result = cli(self.env, "up", "--detach", "--timeout", "300", timeout=360)
        if result.returncode != 0:
            raise RuntimeError(f"llmesh up failed:\n{result.stdout}\n{result.stderr}")
        return time.monotonic() - started

    def down(self) -> None:
        cli(self.env, "down", timeout=150)

    def state(self) -> dict:
        return json.loads((self.home / "mesh.json").read_text())

    def pid(self, name: str) -> int:
        return int(self.state()["processes"][name]["pid"])

    def restarts(self, name: str) -> int:
        return int(self.state()["processes"][name].get("restarts", 0))

    def admin(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.state()['admin_token']}")]

    async def new_tenant(self, label: str) -> tuple[str, str]:
        """(api_key, key_id) of a fresh tenant."""
        async with grpc.aio.insecure_channel(self.state()["endpoints"]["tenancy"]) as channel:
            stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
            tenant = (
                await stub.CreateTenant(
                    tenancy_pb2.CreateTenantRequest(
                        name=unique(label), business_unit="chaos", clearance=common_pb2.SENSITIVITY_CONFIDENTIAL
                    ),
                    metadata=self.admin(),
                    timeout=10,
                )
            ).tenant
            key = await stub.CreateApiKey(
                tenancy_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, label=label),
                metadata=self.admin(),
                timeout=10,
            )
        self.tenants[key.api_key] = tenant.tenant_id
        return key.api_key, key.key.key_id

    async def usage_requests(self, tenant_ids: list[str]) -> dict[str, int]:
        """Requests in the usage ledger, per tenant."""
        async with grpc.aio.insecure_channel(self.state()["endpoints"]["tenancy"]) as channel:
            stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
            counts = {}
            for tenant_id in tenant_ids:
                report = await stub.UsageReport(
                    tenancy_pb2.UsageReportRequest(tenant_id=tenant_id, group_by=["tenant"]),
                    metadata=self.admin(),
                    timeout=10,
                )
                counts[tenant_id] = report.totals.requests
        return counts

    async def revoke(self, key_id: str) -> None:
        async with grpc.aio.insecure_channel(self.state()["endpoints"]["tenancy"]) as channel:
            await tenancy_pb2_grpc.TenancyServiceStub(channel).RevokeApiKey(
                tenancy_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=self.admin(), timeout=10
            )

    async def audit(self, tenant_id: str) -> list[tenancy_pb2.AuditEntry]:
        """Every entry of the tenant's audit log, oldest first."""
        entries: list[tenancy_pb2.AuditEntry] = []
        async with grpc.aio.insecure_channel(self.state()["endpoints"]["tenancy"]) as channel:
            stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
            while True:
                page = await stub.ListAudit(
                    tenancy_pb2.ListAuditRequest(
                        tenant_id=tenant_id, after_seq=entries[-1].seq if entries else 0, limit=1000
                    ),
                    metadata=self.admin(),
                    timeout=10,
                )
                entries.extend(page.entries)
                if len(page.entries) < 1000:
                    return entries

    async def verify_audit(self) -> tenancy_pb2.VerifyAuditResponse:
        async with grpc.aio.insecure_channel(self.state()["endpoints"]["tenancy"]) as channel:
            return await tenancy_pb2_grpc.TenancyServiceStub(channel).VerifyAudit(
                tenancy_pb2.VerifyAuditRequest(), metadata=self.admin(), timeout=30
            )

    def invalidate(self, tenant_id: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """`llmesh cache invalidate --tenant-id …` as an operator runs it (all of the tenant's answers)."""
        try:
            return cli(self.env, "cache", "invalidate", "--tenant-id", tenant_id, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([], -1, "", f"no answer within {timeout:g} s (the CLI was stopped)")

    async def batch_call(self, api_key: str, method: str, request, timeout: float = 10):
        async with grpc.aio.insecure_channel(self.state()["endpoints"]["router"]) as channel:
            call = getattr(batch_pb2_grpc.BatchServiceStub(channel), method)
            return await call(request, metadata=[("authorization", f"Bearer {api_key}")], timeout=timeout)

    async def batch_results(self, api_key: str, job_id: str) -> list[dict]:
        async with grpc.aio.insecure_channel(self.state()["endpoints"]["router"]) as channel:
            call = batch_pb2_grpc.BatchServiceStub(channel).GetBatchResults(
                batch_pb2.GetBatchResultsRequest(job_id=job_id),
                metadata=[("authorization", f"Bearer {api_key}")],
                timeout=60,
            )
            return [json.loads(r.line) async for r in call]

    async def ledger(self, tenant_ids: list[str], database_url: str = "") -> list[tuple[str, str, str]]:
        """(request_id, tenant_id, cache_outcome) of each usage ledger entry of these tenants, read
        from tenancy's store (PostgreSQL at `database_url`, else its SQLite file under the home)."""
        query = "SELECT request_id, tenant_id, cache_outcome FROM usage_ledger WHERE tenant_id IN ({})"
        if database_url.startswith(("postgresql://", "postgres://")):
            import asyncpg  # tenancy's driver, in the workspace

            conn = await asyncpg.connect(database_url, timeout=10)
            try:
                marks = ", ".join(f"${i + 1}" for i in range(len(tenant_ids)))
                return [tuple(r) for r in await conn.fetch(query.format(marks), *tenant_ids)]
            finally:
                await conn.close()

        def read() -> list[tuple[str, str, str]]:
            import sqlite3

            with contextlib.closing(sqlite3.connect(f"file:{self.home / 'tenancy.db'}?mode=ro", uri=True)) as db:
                return db.execute(query.format(", ".join("?" for _ in tenant_ids)), tenant_ids).fetchall()

        return await asyncio.to_thread(read)


@dataclasses.dataclass
class Answer:
    start: float  # monotonic
    end: float
    code: str  # "OK" or the gRPC status name
    priority: str
    cache: str = ""
    detail: str = ""
    key: str = ""  # the API key it was sent with
    request_id: str = ""  # the one it was sent under (x-request-id), as the summary reports it
    interrupted: bool = False  # failed after tokens (router.v1.StreamInterrupted: billed for what streamed)
    retries: int = 0  # tries made again under the same request id after UNAVAILABLE before any message
    # failed after the router had sent messages (tokens): a StreamInterrupted, or a router that died
    # mid-answer (it could say nothing, and billed nothing)
    cut: bool = False
    # the router's attempts at inference ("model outcome reason", from the summary)
    attempts: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def latency_ms(self) -> float:
        return (self.end - self.start) * 1000


async def generate_once(
    stub, api_key: str, prompt: str, priority: int, timeout: float = 30, request_id: str = "", retry: bool = False
) -> Answer:
    """One Generate under the caller's request id (x-request-id; a fresh one when not given), the
    id the router bills it under, so every ledger entry can be traced to its request. `retry`: a
    try that failed UNAVAILABLE before any message is made again under the same id, as the CLI
    and the edge do (llmesh.kit.client.retrying_unserved, docs/adr/0034)."""
    start = time.monotonic()
    request_id = request_id or unique("load")
    request = router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt)], max_tokens=4, priority=priority
    )
    metadata = [("authorization", f"Bearer {api_key}"), ("x-request-id", request_id)]
    cache = ""
    retried: list[grpc.RpcError] = []

    def start_try(timeout_s: float | None):
        return stub.Generate(request, metadata=metadata, timeout=timeout_s)

    received = 0
    try:
        summary = None
        if retry:
            stream = retrying_unserved(start_try, timeout_s=timeout, on_retry=retried.append)
        else:
            stream = start_try(timeout)
        async for event in stream:
            received += 1
            if event.HasField("summary"):
                summary = event.summary
        if summary is None:
            return Answer(start, time.monotonic(), "NO_SUMMARY", router_pb2.Priority.Name(priority))
        cache = router_pb2.CacheOutcome.Name(summary.cache_outcome)
        return Answer(
            start,
            time.monotonic(),
            "OK",
            router_pb2.Priority.Name(priority),
            cache,
            key=api_key,
            request_id=summary.request_id or request_id,
            retries=len(retried),
            attempts=tuple(f"{a.model} {a.outcome} {a.reason}" for a in summary.attempts),
        )
    except grpc.aio.AioRpcError as exc:
        return Answer(
            start,
            time.monotonic(),
            exc.code().name,
            router_pb2.Priority.Name(priority),
            detail=exc.details() or "",
            key=api_key,
            request_id=interrupted_request_id(exc) or request_id,
            interrupted=bool(interrupted_request_id(exc)),
            retries=len(retried),
            cut=received > 0,
        )


def interrupted_request_id(exc: grpc.aio.AioRpcError) -> str:
    """The request id of a stream that failed after tokens (router.v1.StreamInterrupted in the
    status details: what was served is billed); "" for any other failure."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            with contextlib.suppress(Exception):
                for detail in status_pb2.Status.FromString(value).details:
                    interrupted = router_pb2.StreamInterrupted()
                    if detail.Unpack(interrupted):
                        return interrupted.request_id
    return ""


def batch_file(n: int, tag: str, max_tokens: int = 4) -> bytes:
    """An OpenAI batch input file of `n` chat requests with distinct prompts (item-0 …)."""
    lines = [
        {
            "custom_id": f"item-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "auto",
                "messages": [{"role": "user", "content": f"Say the number {i} ({tag})."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode()


class Load:
    """`rate` requests a second, open loop (a request starts on schedule whether or not the last one
    ended, up to `max_in_flight`), spread over the keys, half interactive and half batch, a third of
    the prompts repeated (cache hits), the rest unique. Every answer lands in `answers`."""

    def __init__(
        self, router_addr: str, keys: list[str], rate: float = 4.0, max_in_flight: int = 32, retry: bool = False
    ):
        """`router_addr` may name several router replicas (`ipv4:host:port,host:port`): the load
        round-robins over them. `retry`: see generate_once."""
        self.router_addr, self.keys, self.rate, self.max_in_flight = router_addr, keys, rate, max_in_flight
        self.retry = retry
        self.answers: list[Answer] = []
        self.skipped = 0
        self.cut_at_stop = 0  # requests still in flight when the load stopped (answers unknown)
        self.sent: dict[str, str] = {}  # request id -> API key, of every request sent
        self._task: asyncio.Task | None = None
        self._rng = random.Random(16)

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(
            self.router_addr, options=[("grpc.lb_policy_name", "round_robin")]
        ) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            in_flight: set[asyncio.Task] = set()
            period, next_at = 1.0 / self.rate, time.monotonic()
            try:
                while True:
                    next_at += period
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    if len(in_flight) >= self.max_in_flight:
                        self.skipped += 1
                        continue
                    key = self._rng.choice(self.keys)
                    if self._rng.random() < 0.34:
                        prompt = self._rng.choice(REPEATED_PROMPTS)
                    else:
                        prompt = f"Say one word about {unique('topic')}."
                    priority = (
                        router_pb2.PRIORITY_INTERACTIVE if self._rng.random() < 0.5 else router_pb2.PRIORITY_BATCH
                    )
                    request_id = unique("load")
                    self.sent[request_id] = key
                    task = asyncio.create_task(
                        generate_once(stub, key, prompt, priority, request_id=request_id, retry=self.retry)
                    )
                    task.add_done_callback(self._done(in_flight))
                    in_flight.add(task)
            finally:
                self.cut_at_stop = len(in_flight)
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)

    def _done(self, in_flight: set[asyncio.Task]):
        def done(task: asyncio.Task) -> None:
            in_flight.discard(task)
            if not task.cancelled():
                self.answers.append(task.result())

        return done

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def between(self, a: float, b: float) -> list[Answer]:
        """Answers to requests started in [a, b)."""
        return [x for x in self.answers if a <= x.start < b]


def model_busy(answer: Answer) -> bool:
    """An interactive request the router refused up front because the model's queue would miss the
    TTFT SLO: load shedding (on the shared machine, its load), not the outcome of a fault."""
    return answer.code == "RESOURCE_EXHAUSTED" and "is busy" in answer.detail


def error_rate(answers: list[Answer]) -> float:
    return sum(not a.ok for a in answers) / len(answers) if answers else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class ServerThread:
    """An event loop on a thread of its own for a server of the harness's (the stand-in model, the
    fault proxy), so that it answers as the separate process it stands for would: a synchronous
    call made in the harness's own loop (OpenAI's `OpenAI` client, urllib) blocks that loop, not
    the server the mesh is waiting on behind it. Served in the caller's loop, the stand-in could
    not answer the edge's request such a call was waiting for, and the call timed out."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def serve(self, handler) -> int:
        """A TCP server of `handler` on 127.0.0.1 (port 0) on the thread's loop; its port."""
        self._server = await self.run(asyncio.start_server(handler, "127.0.0.1", 0))
        return self._server.sockets[0].getsockname()[1]

    async def run(self, coro):
        """`coro` run on the thread's loop, awaited from the caller's."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def call_soon(self, callback, *args) -> None:
        """`callback(*args)` on the thread's loop (what touches its transports runs there)."""
        self.loop.call_soon_threadsafe(callback, *args)

    async def close(self) -> None:
        """Closes the server, cancels what still runs on the loop (open connections), then ends the
        loop and its thread."""

        async def cancel_the_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self.loop.is_closed():
            return
        if self._server is not None:
            self.call_soon(self._server.close)
        await self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
        self.loop.close()


class FaultProxy:
    """A TCP proxy of the harness's own between the router and a service: `delay_s` added to every
    chunk each way; `severed` closes every open connection and refuses new ones (accepted, then
    closed at once) until cleared. It serves on a thread of its own (ServerThread); `port` is the
    one it got (port 0) once started."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.delay_s = 0.0
        self.severed = False
        self._conns: set[asyncio.StreamWriter] = set()
        self._thread: ServerThread | None = None

    async def start(self) -> None:
        self._thread = ServerThread("fault-proxy")
        self.port = await self._thread.serve(self._handle)

    async def stop(self) -> None:
        if self._thread is None:
            return
        self.sever()
        self.severed = False
        await self._thread.close()
        self._thread = None

    def sever(self) -> None:
        self.severed = True
        if self._thread is not None:
            self._thread.call_soon(self._abort_all)

    def _abort_all(self) -> None:
        for writer in list(self._conns):
            writer.transport.abort()
        self._conns.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.severed:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._conns.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._conns.discard(writer)
        self._conns.discard(up_writer)


class StandInModel:
    """An OpenAI-compatible chat completions server of the harness's own (POST /v1/chat/completions,
    streamed): a fixed answer of `max_tokens` words, the first after `first_token_s`, then one per
    `token_s`, with a usage chunk. It stands in for the model when the local one cannot run, so that
    a run measures the mesh's own faults (the decode times are a small model's on a CPU). It serves
    on a thread of its own (ServerThread), as a model server is a process of its own: a script
    that calls the mesh synchronously from its event loop still gets its answers. `port` is the
    one it got (port 0) once started."""

    def __init__(self, first_token_s: float = 0.15, token_s: float = 0.03):
        self.first_token_s, self.token_s = first_token_s, token_s
        self.port = 0
        self.requests = 0
        self._thread: ServerThread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        self._thread = ServerThread("standin-model")
        self.port = await self._thread.serve(self._serve)

    async def stop(self) -> None:
        if self._thread is None:
            return
        await self._thread.close()
        self._thread = None

    def catalog(self, path: pathlib.Path) -> pathlib.Path:
        """An inference catalog whose self-hosted tiers 1-2 and external tier 3 are this server."""

        def entry(name: str, tiers: list[int], hosting: str, sensitivity: str) -> dict:
            return {
                "name": name,
                "backend": "openai",
                "endpoint": self.base_url,
                "remote_model": name,
                "tiers": tiers,
                "region": "local",
                "hosting": hosting,
                "max_sensitivity": sensitivity,
                "context_length": 2048,
                "max_concurrency": 2,
                "max_queue": 4,
            }

        models = [
            entry("standin-self", [1, 2], "self_hosted", "restricted"),
            entry("standin-api", [3], "external", "internal"),
        ]
        path.write_text(json.dumps({"models": models}, indent=1))
        return path

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after the other on a connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")),
                    0,
                )
                body = json.loads(await reader.readexactly(length)) if length else {}
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )

                def send(doc: dict | str) -> None:
                    data = f"data: {doc if isinstance(doc, str) else json.dumps(doc)}\n\n".encode()
                    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

                words = max(1, int(body.get("max_tokens") or 16))
                await asyncio.sleep(self.first_token_s)
                for i in range(words):
                    if i:
                        await asyncio.sleep(self.token_s)
                    send(
                        {
                            "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {"content": f"word{i} "}}],
                        }
                    )
                    await writer.drain()
                send(
                    {
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                    }
                )
                send(
                    {
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "usage": {"prompt_tokens": 12, "completion_tokens": words},
                    }
                )
                send("[DONE]")
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def proc_sample(pid: int) -> dict[str, float]:
    """RSS (MiB) and open file descriptors of a process, from /proc."""
    rss_kib = 0
    with contextlib.suppress(OSError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return {"rss_mib": rss_kib / 1024, "fds": fds}


def asyncio_tasks(metrics_port: int | None, service: str, timeout_s: float = 2.0) -> int:
    """The service's `llmesh_asyncio_tasks` gauge from its /metrics; -1 when it cannot be read."""
    if not metrics_port:
        return -1
    prefix = f'llmesh_asyncio_tasks{{service="{service}"}} '
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=timeout_s) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(prefix):
                    return int(float(line[len(prefix) :]))
    except (OSError, ValueError):
        pass
    return -1


REPORT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "reports" / "reliability.md"


def write_report_section(name: str, text: str, report: pathlib.Path = REPORT) -> None:
    """Puts `text` between `<!-- name:begin -->` and `<!-- name:end -->` in the reliability report
    (appended when the markers are missing); the rest of the page is left as it is."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    page = report.read_text() if report.exists() else "# Reliability (issue 16)\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        page = head + block + rest.split(end, 1)[1]
    else:
        page = page.rstrip() + "\n\n" + block + "\n"
    report.write_text(page)


class RedisProcess:
    """A private redis-server that can be stopped and started again on the same port and folder,
    with an append-only file (a production Redis keeps its data across a restart)."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ask(self, *words: str) -> bytes:
        command = "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
            conn.sendall(f"*{len(words)}\r\n{command}".encode())
            return conn.recv(256)

    def keys(self) -> list[str]:
        import redis  # a dependency of the workspace (the cache's exact layer, the router's quotas)

        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as client:
            return [k.decode() for k in client.keys("*")]

    def existing(self, keys: list[str]) -> int:
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as client:
            return sum(client.exists(k) for k in keys)

    def start(self, timeout_s: float = 10) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
            + ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self._ask("PING").startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
