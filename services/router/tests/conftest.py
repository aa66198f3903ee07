"""A router hosted in-process against fake upstream services and a real nats-server."""

from __future__ import annotations

import grpc
import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.server import ServiceHost
from llmesh.kit.testing import free_port, hosted, unique
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from llmesh.services.router.app import RouterApp
from llmesh.services.router.settings import RouterSettings

from services.router.tests.fakes import FakeUpstreams


def dead_address() -> str:
    """A loopback address nothing listens on."""
    return f"127.0.0.1:{free_port()}"


def router_settings(nats_url: str, upstream: str, **overrides) -> RouterSettings:
    values = dict(
        port=0,
        metrics_port=0,
        nats_url=nats_url,
        tenancy_addr=upstream,
        classifier_addr=upstream,
        cache_addr=upstream,
        inference_addr=upstream,
        policy_bucket=unique("policy"),
        upstream_timeout_s=1.0,
        tier_models="1=tiny-1,3=big-3",
        default_model="tiny-1",
        prices='{"tiny-1": {"prompt_per_1k": 1.0, "completion_per_1k": 2.0}}',
        default_prompt_price_per_1k=10.0,
        default_completion_price_per_1k=20.0,
        hit_chunk_chars=5,
        start_timeout_s=10.0,
    )
    values.update(overrides)
    return load_settings(RouterSettings, environ={}, **values)


@pytest.fixture(scope="module")
async def upstreams(nats_url):
    fakes = FakeUpstreams()
    async with hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as host:
        fakes.address = host.address
        yield fakes


@pytest.fixture(scope="module")
async def router_host(nats_url, upstreams) -> ServiceHost:
    app = RouterApp(router_settings(nats_url, upstreams.address))
    async with hosted(app, app.settings) as host:
        yield host


class RouterClient:
    def __init__(self, channel: grpc.aio.Channel, upstreams: FakeUpstreams):
        self.stub = router_pb2_grpc.RouterServiceStub(channel)
        self.upstreams = upstreams

    def new_key(self, clearance: int = common_pb2.SENSITIVITY_INTERNAL) -> tuple[str, str, str]:
        """Registers a fresh tenant and key with the fake tenancy: (api_key, tenant_id, key_id)."""
        api_key, tenant_id, key_id = unique("sk"), unique("tenant"), unique("key")
        self.upstreams.tenancy.add_key(api_key, tenant_id, key_id, clearance)
        return api_key, tenant_id, key_id

    @staticmethod
    def request(text: str, **fields) -> router_pb2.GenerateRequest:
        messages = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)]
        return router_pb2.GenerateRequest(messages=messages, **fields)

    @staticmethod
    def metadata(api_key: str | None, request_id: str | None = None) -> list[tuple[str, str]]:
        md = []
        if api_key is not None:
            md.append(("authorization", f"Bearer {api_key}"))
        if request_id:
            md.append(("x-request-id", request_id))
        return md

    def call(
        self,
        api_key: str | None,
        request: router_pb2.GenerateRequest,
        *,
        request_id: str | None = None,
        timeout: float = 10.0,
        metadata: list | None = None,
    ):
        md = metadata if metadata is not None else self.metadata(api_key, request_id)
        return self.stub.Generate(request, metadata=md, timeout=timeout)

    async def generate(
        self, api_key: str | None, text: str, *, request_id: str | None = None, **fields
    ) -> tuple[list[str], router_pb2.GenerateSummary]:
        deltas, summary = [], None
        async for response in self.call(api_key, self.request(text, **fields), request_id=request_id):
            if response.HasField("summary"):
                assert summary is None, "one summary only"
                summary = response.summary
            else:
                assert summary is None, "no delta after the summary"
                deltas.append(response.delta)
        assert summary is not None, "the stream ends with a summary"
        return deltas, summary


@pytest.fixture
async def client(router_host, upstreams):
    async with open_channel(router_host.address) as channel:
        yield RouterClient(channel, upstreams)
