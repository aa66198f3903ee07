"""Replicas and the retries that are safe with them (docs/adr/0034): inference as two processes
behind one multi-address target, one SIGKILLed under load, the router trying a request that got no
token once more on the same model (round robin: the other replica); no such retry after a token
or without replicas; and a client trying a Generate again, under the same request id, after the
router replica it was on was SIGKILLed before it sent anything. Every process here is real; the
upstream services are the router tests' fakes (fakes.py) over real gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sys

import grpc
import pytest
from llmesh.cache.v1 import cache_pb2
from llmesh.classifier.v1 import classifier_pb2
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit import identity
from llmesh.kit.bus import Bus
from llmesh.kit.client import open_channel, retrying_unserved
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.streams import usage_subject
from llmesh.kit.testing import assert_eventually, ensure_identity, hosted, identity_env, unique
from llmesh.kit.usage import usage_records as read_usage
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from llmesh.services.router.app import RouterApp
from llmesh.tenancy.v1 import tenancy_pb2

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import FakeUpstreams

pytestmark = pytest.mark.timeout(120)

ROOT = pathlib.Path(__file__).resolve().parents[3]
BYPASS = router_pb2.CACHE_POLICY_BYPASS


class Child:
    """A service process of this test on a free port; `kill()` is SIGKILL."""

    def __init__(self, tmp: pathlib.Path, name: str, argv: list[str], env: dict[str, str]):
        self.tmp, self.name, self.argv, self.env = tmp, name, argv, env
        self.ready = tmp / f"{name}.ready.json"
        self.calls = tmp / f"{name}.calls"
        self.process: asyncio.subprocess.Process | None = None
        self.address = ""

    async def start(self) -> Child:
        with open(self.tmp / f"{self.name}.log", "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, *self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=log
            )

        def ready() -> bool:
            if self.process.returncode is not None:  # not an AssertionError: no point waiting on
                log = (self.tmp / f"{self.name}.log").read_text()[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{log}")
            return self.ready.exists() and bool(self.ready.read_text())

        await assert_eventually(ready, timeout_s=60, message=f"{self.name} serving")
        self.address = f"127.0.0.1:{json.loads(self.ready.read_text())['port']}"
        return self

    def started_requests(self) -> list[str]:
        return self.calls.read_text().split() if self.calls.exists() else []

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        self.kill()
        if self.process is not None:
            await self.process.wait()


def fake_inference(tmp: pathlib.Path, name: str) -> Child:
    child = Child(tmp, name, [], {})
    child.argv = ["-m", "services.router.tests.upstream_process", str(child.ready), str(child.calls)]
    child.env = {**os.environ, **identity_env(ensure_identity(), "inference"), "LLMESH_LOG_LEVEL": "warning"}
    return child


@pytest.fixture
async def two_inference_replicas(tmp_path):
    replicas = [fake_inference(tmp_path, "inference-a"), fake_inference(tmp_path, "inference-b")]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        yield replicas
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))


async def usage_records(nats_url: str, tenant_id: str) -> tuple[Bus, list[str]]:
    """The request id of every usage record published for the tenant, as they arrive (alone or in
    a batch, docs/adr/0035)."""
    bus = await Bus.connect(nats_url, unique("usage-watch"))
    seen: list[str] = []

    async def on_usage(msg) -> None:
        seen.extend(record.request_id for record in read_usage(msg.data, msg.headers))

    await bus.nc.subscribe(usage_subject(tenant_id), cb=on_usage)
    await bus.nc.flush()
    return bus, seen


async def outcome(client: RouterClient, api_key: str, text: str, request_id: str):
    """The request's summary, or the error it ended with."""
    try:
        return (await client.generate(api_key, text, request_id=request_id, cache_policy=BYPASS))[1]
    except grpc.aio.AioRpcError as exc:
        return exc


def attempts(summary) -> list[tuple[str, str, str]]:
    return [(a.model, a.outcome, a.reason) for a in summary.attempts]


async def test_a_request_on_a_killed_inference_replica_is_tried_on_the_other(
    nats_url, upstreams, two_inference_replicas
):
    first, second = two_inference_replicas
    target = f"ipv4:{first.address},{second.address}"
    app = RouterApp(router_settings(nats_url, upstreams.address, inference_addr=target))
    async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
        client = RouterClient(channel, upstreams)
        api_key, tenant_id, _ = client.new_key()
        bus, billed = await usage_records(nats_url, tenant_id)
        try:
            ids = [unique("rid") for _ in range(8)]
            # Each waits 2 s for its first token: in flight on both replicas when one is killed.
            asks = [asyncio.create_task(outcome(client, api_key, f"q{i} [ttft:2000]", r)) for i, r in enumerate(ids)]

            def all_started() -> bool:
                on_first, on_second = first.started_requests(), second.started_requests()
                return bool(on_first) and bool(on_second) and len(on_first) + len(on_second) == len(ids)

            await assert_eventually(all_started, timeout_s=20, message="every request reached a replica")
            killed = set(first.started_requests())
            first.kill()
            results = dict(zip(ids, await asyncio.gather(*asks), strict=True))
            failed = {r: e.details() for r, e in results.items() if isinstance(e, grpc.aio.AioRpcError)}
            assert not failed, f"every request is answered: {failed}"
            for request_id, summary in results.items():
                assert summary.request_id == request_id
                if request_id in killed:
                    assert attempts(summary) == [("tiny-1", "UNAVAILABLE", "tier"), ("tiny-1", "ok", "retry")]
                else:
                    assert attempts(summary) == [("tiny-1", "ok", "tier")]
            assert set(second.started_requests()) == set(ids), "the retries went to the live replica"
            # Billed once each: one usage record per request id.
            await assert_eventually(lambda: sorted(billed) == sorted(ids), timeout_s=10, message="one record each")
            # The model's breaker did not open over one replica's death.
            _, again = await client.generate(api_key, "after", cache_policy=BYPASS)
            assert again.model == "tiny-1" and attempts(again) == [("tiny-1", "ok", "tier")]
        finally:
            await bus.close()


@pytest.mark.parametrize("mode", ["always", "never"])
async def test_no_retry_after_a_token_and_none_unless_there_are_replicas(nats_url, upstreams, mode):
    """One inference in-process, its failures staged: "always" retries a failure before the first
    token once (then falls back), never one after it; "never" (one address, as by default) goes
    straight to the next candidate."""
    app = RouterApp(router_settings(nats_url, upstreams.address, inference_replica_retry=mode))
    async with hosted(app, app.settings) as host, open_channel(host.address) as channel:
        client = RouterClient(channel, upstreams)
        api_key, _, _ = client.new_key()
        fake = upstreams.inference
        fake.down.add("big-3")
        try:
            _, summary = await client.generate(api_key, "[tier:3] big-3 is down", cache_policy=BYPASS)
        finally:
            fake.down.discard("big-3")
        tried = [("big-3", "UNAVAILABLE", "tier")] + ([("big-3", "UNAVAILABLE", "retry")] if mode == "always" else [])
        assert attempts(summary)[: len(tried)] == tried
        assert attempts(summary)[len(tried)][2] != "retry", "then the next candidate"
        fake.cut_after["tiny-1"] = 2
        calls = len(fake.calls)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await client.generate(api_key, "cut after two tokens", cache_policy=BYPASS)
        finally:
            del fake.cut_after["tiny-1"]
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE and "after 10 characters" in cut.value.details()
        assert fake.calls[calls:] == ["tiny-1"], "tried once: tokens had reached the client"


def router_process(tmp: pathlib.Path, name: str, nats_url: str, upstream: str, bucket: str) -> Child:
    child = Child(tmp, name, ["-m", "llmesh.services.router"], {})
    child.env = {
        **os.environ,
        **identity_env(ensure_identity(), "router"),
        "LLMESH_PORT": "0",
        "LLMESH_METRICS_PORT": "0",
        "LLMESH_READY_FILE": str(child.ready),
        "LLMESH_NATS_URL": nats_url,
        "LLMESH_TENANCY_ADDR": upstream,
        "LLMESH_CLASSIFIER_ADDR": upstream,
        "LLMESH_CACHE_ADDR": upstream,
        "LLMESH_INFERENCE_ADDR": upstream,
        "LLMESH_ROUTER_POLICY_BUCKET": bucket,
        "LLMESH_ROUTER_TIER_MODELS": "1=tiny-1,3=big-3",
        "LLMESH_ROUTER_REPLICAS": "2",
        "LLMESH_LOG_LEVEL": "warning",
        "LLMESH_GRACE_S": "1",
    }
    return child


@pytest.fixture
async def upstreams_for_router_processes(nats_url):
    """The fakes, open to callers with the router's own credential (router processes)."""
    fakes = FakeUpstreams()
    fakes.callers = {
        f"{service.full_name}/{method.name}": frozenset({"router", identity.OPERATOR})
        for module in (tenancy_pb2, classifier_pb2, cache_pb2, inference_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    async with hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as host:
        fakes.address = host.address
        yield fakes


async def test_a_client_tries_again_under_the_same_request_id_when_its_router_replica_dies(
    tmp_path, nats_url, upstreams_for_router_processes
):
    upstreams = upstreams_for_router_processes
    bucket = unique("policy")
    routers = [router_process(tmp_path, f"router-{i}", nats_url, upstreams.address, bucket) for i in (1, 2)]
    try:
        await asyncio.gather(*(r.start() for r in routers))
        api_key, tenant_id = unique("sk"), unique("tenant")
        upstreams.tenancy.add_key(api_key, tenant_id, unique("key"), common_pb2.SENSITIVITY_INTERNAL)
        bus, billed = await usage_records(nats_url, tenant_id)
        target = f"ipv4:{routers[0].address},{routers[1].address}"
        async with open_channel(target) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            ids = [unique("rid") for _ in range(6)]
            retried: dict[str, int] = dict.fromkeys(ids, 0)

            async def ask(i: int, request_id: str):
                metadata = (("authorization", f"Bearer {api_key}"), ("x-request-id", request_id))
                slow = "" if request_id.startswith("warm") else " [ttft:2000]"
                request = RouterClient.request(f"c{i}{slow}", cache_policy=BYPASS)

                def count(_exc) -> None:
                    retried[request_id] = retried.get(request_id, 0) + 1

                messages = [
                    m
                    async for m in retrying_unserved(
                        lambda timeout: stub.Generate(request, metadata=metadata, timeout=timeout),
                        timeout_s=30,
                        on_retry=count,
                    )
                ]
                return messages[-1].summary

            # A few quick ones first, so that round robin has both replicas connected.
            for i in range(4):
                await ask(i, unique("warm"))
            asks = [asyncio.create_task(ask(i, r)) for i, r in enumerate(ids)]
            fake = upstreams.inference
            await assert_eventually(
                lambda: all(r in fake.started for r in ids), timeout_s=20, message="every request at inference"
            )
            routers[0].kill()
            summaries = await asyncio.gather(*asks)
        assert [s.request_id for s in summaries] == ids, "answered under the id it was sent with"
        assert all(s.model == "tiny-1" for s in summaries)
        again = {r for r, n in retried.items() if n}
        assert again, "the requests on the killed replica were tried again"
        assert all(n == 1 for r, n in retried.items() if r in again)
        assert again <= upstreams.inference.cancelled, "their first try had ended at inference with the replica"
        # The killed replica never settled them; the other one did, once each.
        await assert_eventually(lambda: set(ids) <= set(billed), timeout_s=10, message="a usage record each")
        assert all(billed.count(r) == 1 for r in ids), "billed once each"
        await bus.close()
    finally:
        await asyncio.gather(*(r.stop() for r in routers))
