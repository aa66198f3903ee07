"""The shared kit on real parts: a grpc.aio server, a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import nats.js.errors
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit import errors
from llmesh.kit.bus import Bus, kv_keys
from llmesh.kit.chat import messages_from_proto, sampling_from_proto
from llmesh.kit.client import error_reason, open_channel
from llmesh.kit.config import ConfigError, ServerSettings, load_settings, parses, positive, setting, settings_table
from llmesh.kit.policy import PolicyStore
from llmesh.kit.server import ServiceApp
from llmesh.kit.streams import StreamSpec
from llmesh.kit.testing import assert_eventually, health_status, starting, unique


class _Servicer(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(self):
        self.slow_calls_started = 0

    async def Classify(self, request, context):
        if request.tenant_id == "boom":
            raise RuntimeError("a bug")
        if request.tenant_id == "slow":
            self.slow_calls_started += 1
            await asyncio.sleep(1.0)
        messages_from_proto(request.messages)
        return classifier_pb2.ClassifyResponse(model_name="toy")


class _App(ServiceApp):
    name = "toy"

    def __init__(self):
        self.release = asyncio.Event()
        self.servicer = _Servicer()

    def register(self, server):
        classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(self.servicer, server)
        return ["llmesh.classifier.v1.ClassifierService"]

    async def start(self):
        await self.release.wait()


def _settings(**kw) -> ServerSettings:
    return load_settings(ServerSettings, environ={}, port=0, metrics_port=0, **kw)


async def test_health_follows_lifecycle_and_errors_map_to_status_codes():
    app = _App()
    async with starting(app, _settings(), serve_metrics=True) as (host, start), open_channel(host.address) as channel:
        assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        app.release.set()
        await start
        assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING

        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Classify(classifier_pb2.ClassifyRequest())
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "messages is empty" in bad.value.details()
        status = rpc_status.from_call(bad.value)
        detail = error_details_pb2.BadRequest()
        status.details[0].Unpack(detail)
        assert detail.field_violations[0].field == "messages"
        assert error_reason(bad.value) == "INVALID_ARGUMENT"

        with pytest.raises(grpc.aio.AioRpcError) as crash:
            await stub.Classify(classifier_pb2.ClassifyRequest(tenant_id="boom"))
        assert crash.value.code() == grpc.StatusCode.INTERNAL
        assert "request_id=" in crash.value.details() and "a bug" not in crash.value.details()
        assert error_reason(crash.value) == "INTERNAL"

        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.Classify(classifier_pb2.ClassifyRequest(tenant_id="slow"), timeout=0.1)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        ok = await stub.Classify(
            classifier_pb2.ClassifyRequest(messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")])
        )
        assert ok.model_name == "toy"

        # Draining: in-flight calls finish, health says NOT_SERVING.
        async def slow_call():
            return await stub.Classify(
                classifier_pb2.ClassifyRequest(
                    tenant_id="slow", messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]
                )
            )

        started_before = app.servicer.slow_calls_started
        in_flight = asyncio.create_task(slow_call())
        await assert_eventually(lambda: app.servicer.slow_calls_started > started_before)
        await host.stop(grace_s=5)
        assert (await in_flight).model_name == "toy"


def test_config_reports_every_bad_variable():
    @dataclasses.dataclass(frozen=True)
    class Settings(ServerSettings):
        ratio: float = setting("LLMESH_TEST_RATIO", 1.0, "a ratio", positive)

    with pytest.raises(ConfigError) as exc:
        load_settings(Settings, environ={"LLMESH_PORT": "99999", "LLMESH_TEST_RATIO": "-1", "LLMESH_GRACE_S": "x"})
    text = str(exc.value)
    assert "LLMESH_PORT" in text and "LLMESH_TEST_RATIO" in text and "LLMESH_GRACE_S" in text
    assert load_settings(Settings, environ={"LLMESH_TEST_RATIO": "2.5"}).ratio == 2.5
    assert "`LLMESH_TEST_RATIO`" in settings_table(Settings)


def test_chat_validation():
    user = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hello")
    assert messages_from_proto([user])[0].role == "user"
    for bad, needle in [
        ([], "empty"),
        ([common_pb2.ChatMessage(role=99, content="x")], "role"),
        ([common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="  ")], "content is empty"),
        ([common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content="be nice")], "no user message"),
        ([common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="x" * 70_000)], "limit"),
    ]:
        with pytest.raises(errors.InvalidArgument, match=needle):
            messages_from_proto(bad)
    with pytest.raises(errors.InvalidArgument, match="temperature"):
        sampling_from_proto(common_pb2.SamplingParams(temperature=-1))
    with pytest.raises(errors.InvalidArgument, match="top_p"):
        sampling_from_proto(common_pb2.SamplingParams(top_p=0))


async def test_durable_consumer_gets_events_published_while_it_was_down(nats_url):
    spec = StreamSpec(unique("TEST").replace("-", "_"), (f"{unique('t')}.>",), max_age_s=60)
    subject = spec.subjects[0].replace(">", "x")
    bus = await Bus.connect(nats_url, "test")
    try:
        await bus.ensure_stream(spec)
        await bus.ensure_stream(spec)  # idempotent
        seen: list[str] = []

        async def handler(data: bytes) -> None:
            seen.append(events_pb2.ApiKeyRevoked.FromString(data).key_id)

        await bus.consume_durable(spec, subject, "replica-a", handler)
        await bus.publish(subject, events_pb2.ApiKeyRevoked(key_id="k1"), msg_id="m1")
        await bus.publish(subject, events_pb2.ApiKeyRevoked(key_id="k1"), msg_id="m1")  # a retry: deduplicated
        await assert_eventually(lambda: seen == ["k1"])
        await bus.close()

        bus = await Bus.connect(nats_url, "test")
        await bus.publish(subject, events_pb2.ApiKeyRevoked(key_id="k2"), msg_id="m2")
        seen.clear()
        await bus.consume_durable(spec, subject, "replica-a", handler)
        await assert_eventually(lambda: seen == ["k2"], message="only the event missed while down")
    finally:
        await bus.close()


async def test_kv_keys_lists_every_key_of_a_bucket_in_one_request(nats_url):
    bus = await Bus.connect(nats_url, "test")
    try:
        name = unique("kv").replace("-", "_")
        kv = await bus.js.create_key_value(bucket=name, history=1)
        assert await kv_keys(bus.js, name) == []
        for key in ("job.b", "job.a", "other.c"):
            await kv.put(key, b"{}")
        await kv.put("job.a", b"{ }")  # updated: still one key
        await kv.delete("other.c")
        # a deleted key is listed; reading it says so
        assert await kv_keys(bus.js, name) == ["job.a", "job.b", "other.c"]
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get("other.c")
    finally:
        await bus.close()


async def test_policy_store_follows_changes(nats_url):
    bus = await Bus.connect(nats_url, "test")
    store = PolicyStore(bus, bucket=unique("policy"))
    try:
        await store.start()
        await store.put("global", {"tiers": {"low": 0.3, "high": 0.7}})
        await store.put("tenant.t1", {"tiers": {"low": 0.2}})
        await assert_eventually(lambda: store.resolve("t1")["tiers"] == {"low": 0.2, "high": 0.7})
        assert store.resolve("t2")["tiers"] == {"low": 0.3, "high": 0.7}
        await store.delete("tenant.t1")
        await assert_eventually(lambda: store.resolve("t1")["tiers"]["low"] == 0.3)
    finally:
        await store.stop()
        await bus.close()


def test_parses_turns_a_parser_into_a_settings_check():
    def parse_pair(value: str) -> tuple[str, str]:
        left, sep, right = value.partition("=")
        if not sep:
            raise ValueError("expected KEY=VALUE")
        return left, right

    check = parses(parse_pair)
    assert check("a=b") is None and check("ab") == "expected KEY=VALUE"
