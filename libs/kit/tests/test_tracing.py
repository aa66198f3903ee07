"""The kit's tracing: off unless OTEL_* asks for it, and W3C trace context across NATS events."""

from __future__ import annotations

import asyncio

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit import tracing
from llmesh.kit.bus import Bus
from llmesh.kit.testing import assert_eventually, recording_spans, unique

pytestmark = pytest.mark.timeout(30)


def test_tracing_is_off_unless_otel_variables_ask_for_it():
    assert tracing.enabled_by({}) == []
    assert tracing.enabled_by({"OTEL_SERVICE_NAME": "x"}) == []
    assert tracing.enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}) == ["otlp"]
    assert tracing.enabled_by({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}) == ["otlp"]
    assert tracing.enabled_by({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert tracing.enabled_by({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) == []
    assert tracing.enabled_by({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []


def test_configure_installs_nothing_by_default():
    assert tracing.configure("router", {}) is False


async def test_an_event_carries_its_publishers_trace_to_the_subscriber(nats_url):
    spans = recording_spans()
    bus = await Bus.connect(nats_url, unique("tracing"))
    received: list[bytes] = []
    subject = f"llmesh.test.{unique('trace')}"
    try:

        async def handler(data: bytes) -> None:
            tracing.annotate(handled=True)
            received.append(data)

        await bus.subscribe(subject, handler)
        await bus.nc.flush()
        with tracing.span("publisher.step") as parent:
            await bus.publish_core(subject, common_pb2.ChatMessage(content="hello"))
        await assert_eventually(lambda: received, timeout_s=5)

        def consumer():
            found = [s for s in spans.get_finished_spans() if s.name == f"receive {subject}"]
            assert found
            return found[0]

        span = await assert_eventually(consumer, timeout_s=5)
        assert span.context.trace_id == parent.get_span_context().trace_id
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes["llmesh.handled"] is True
    finally:
        spans.shutdown()
        await bus.close()
        await asyncio.sleep(0)
