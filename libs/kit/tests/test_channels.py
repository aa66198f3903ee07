"""The kit's client channels: round robin over every address, idempotent RPCs retried on
UNAVAILABLE (others never), and calls that keep succeeding when one of two replicas dies."""

from __future__ import annotations

import collections
import contextlib

import grpc
import pytest
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.kit import errors
from llmesh.kit.client import IDEMPOTENT_METHODS, open_channel, service_config
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.server import ServiceApp
from llmesh.kit.testing import hosted

pytestmark = pytest.mark.timeout(60)

MESSAGES = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]


class _Servicer(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(self, name: str, calls: collections.Counter):
        self.name = name
        self.calls = calls

    async def Classify(self, request, context):
        self.calls[(self.name, "Classify", request.tenant_id)] += 1
        if request.tenant_id == "flaky" and self.calls[(self.name, "Classify", "flaky")] == 1:
            raise errors.Unavailable("warming up")
        return classifier_pb2.ClassifyResponse(model_name=self.name)

    async def Feedback(self, request, context):
        self.calls[(self.name, "Feedback", "")] += 1
        raise errors.Unavailable("not now")


class _App(ServiceApp):
    name = "toy"

    def __init__(self, name: str, calls: collections.Counter):
        self.servicer = _Servicer(name, calls)

    def register(self, server):
        classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(self.servicer, server)
        return ["llmesh.classifier.v1.ClassifierService"]


def _settings() -> ServerSettings:
    return load_settings(ServerSettings, environ={}, port=0, metrics_port=0)


def test_generate_is_never_retried():
    names = {(n["service"], n["method"]) for c in service_config()["methodConfig"] for n in c["name"]}
    assert not any(method == "Generate" for _, method in names)
    assert ("llmesh.cache.v1.CacheService", "Lookup") in names
    assert IDEMPOTENT_METHODS["llmesh.classifier.v1.ClassifierService"] == ("Classify",)


async def test_idempotent_calls_are_retried_on_unavailable_and_others_are_not():
    calls: collections.Counter = collections.Counter()
    async with hosted(_App("a", calls), _settings(), serve_metrics=False) as host:
        async with open_channel(host.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            answer = await stub.Classify(classifier_pb2.ClassifyRequest(tenant_id="flaky", messages=MESSAGES))
            assert answer.model_name == "a"
            assert calls[("a", "Classify", "flaky")] == 2
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Feedback(classifier_pb2.FeedbackRequest())
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert calls[("a", "Feedback", "")] == 1


async def test_calls_spread_over_replicas_and_survive_one_dying():
    calls: collections.Counter = collections.Counter()
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(hosted(_App("a", calls), _settings(), serve_metrics=False))
        b = await stack.enter_async_context(hosted(_App("b", calls), _settings(), serve_metrics=False))
        target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        channel = await stack.enter_async_context(open_channel(target))
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)

        served = collections.Counter()
        for _ in range(20):
            served[(await stub.Classify(classifier_pb2.ClassifyRequest(messages=MESSAGES))).model_name] += 1
        assert served["a"] >= 5 and served["b"] >= 5, served  # round robin, not pick-first

        await b.stop(0)
        served.clear()
        for _ in range(30):
            served[(await stub.Classify(classifier_pb2.ClassifyRequest(messages=MESSAGES))).model_name] += 1
        assert served == {"a": 30}
