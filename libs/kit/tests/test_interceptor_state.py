"""The server interceptor builds its wrapped handler and metric children once per method: every
call, failed or not, still runs through it and is counted under its own status code."""

from __future__ import annotations

import uuid

import grpc
import pytest
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.interceptors import _new_request_id
from llmesh.kit.server import ServiceApp
from llmesh.kit.testing import hosted, unique
from prometheus_client import REGISTRY


class _Servicer(classifier_pb2_grpc.ClassifierServiceServicer):
    async def Classify(self, request, context):
        if not request.messages:
            raise ValueError("a bug")  # INTERNAL
        return classifier_pb2.ClassifyResponse(model_name=request.tenant_id)


class _App(ServiceApp):
    def __init__(self, name: str):
        self.name = name

    def register(self, server):
        classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(_Servicer(), server)
        return ["llmesh.classifier.v1.ClassifierService"]


def _count(service: str, code: str) -> float:
    labels = {"service": service, "method": "Classify", "code": code}
    return REGISTRY.get_sample_value("llmesh_grpc_requests_total", labels) or 0.0


def _latency_count(service: str) -> float:
    labels = {"service": service, "method": "Classify"}
    return REGISTRY.get_sample_value("llmesh_grpc_request_duration_seconds_count", labels) or 0.0


async def test_every_call_is_handled_and_counted_by_its_code():
    service = unique("toy")
    settings = load_settings(ServerSettings, environ={}, port=0, metrics_port=0)
    async with hosted(_App(service), settings, serve_metrics=False) as host, open_channel(host.address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        message = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]
        for i in range(3):
            answer = await stub.Classify(classifier_pb2.ClassifyRequest(messages=message, tenant_id=f"t{i}"))
            assert answer.model_name == f"t{i}"
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Classify(classifier_pb2.ClassifyRequest())
            assert failed.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            raw = channel.unary_unary("/llmesh.classifier.v1.ClassifierService/Classify")
            await raw(b"\xff\xff not a message")  # undecodable: the interceptor's own check
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            await stub.Classify(classifier_pb2.ClassifyRequest(messages=message, tenant_id="t9"))
        ).model_name == "t9"
    assert _count(service, "OK") == 4
    assert _count(service, "INTERNAL") == 2
    assert _count(service, "INVALID_ARGUMENT") == 1
    assert _latency_count(service) == 7


def test_a_call_without_a_request_id_gets_a_fresh_one_in_uuid4_form():
    ids = {_new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for rid in ids:
        parsed = uuid.UUID(hex=rid)
        assert parsed.hex == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122
