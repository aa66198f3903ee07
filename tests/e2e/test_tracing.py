"""One Generate call gives one trace across the services: the router's server span (continuing
the client's W3C trace context), its steps (auth, classify, cache lookup, queue wait, attempt,
store) with tenant, tier, model, cache outcome and tokens, and the server spans of tenancy,
classifier, cache and inference as its descendants."""

from __future__ import annotations

import pytest
from llmesh.kit.testing import assert_eventually, recording_spans

from tests.e2e.conftest import bearer
from tests.e2e.test_mesh import request

pytestmark = pytest.mark.timeout(90)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def spans():
    exporter = recording_spans()
    yield exporter
    exporter.shutdown()


async def test_one_generate_is_one_trace_across_the_services(mesh, spans):
    api_key, tenant_id, _ = await mesh.new_tenant()
    metadata = [*bearer(api_key), ("traceparent", TRACEPARENT)]
    async for response in mesh.router.Generate(request("Name two rivers."), metadata=metadata, timeout=60):
        if response.HasField("summary"):
            summary = response.summary

    def trace():
        found = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID]
        names = {s.name for s in found}
        assert {"router/Generate", "router.store", "cache/Store"} <= names, names
        return found

    found = await assert_eventually(trace, timeout_s=10)
    by_name = {s.name: s for s in found}
    services = {s.attributes.get("llmesh.service") for s in found if s.kind.name == "SERVER"}
    assert services == {"router", "tenancy", "classifier", "cache", "inference"}, services

    root = by_name["router/Generate"]
    assert format(root.parent.span_id, "016x") == TRACEPARENT.split("-")[2], "continues the caller's span"
    assert root.attributes["llmesh.tenant"] == tenant_id
    assert root.attributes["llmesh.tier"] == summary.tier
    assert root.attributes["llmesh.model"] == summary.model
    assert root.attributes["llmesh.cache_outcome"] == "miss"
    assert root.attributes["llmesh.completion_tokens"] == summary.usage.completion_tokens > 0

    steps = {
        "router.auth",
        "router.classify",
        "router.cache_lookup",
        "router.queue_wait",
        "router.attempt",
        "router.store",
    }
    assert steps <= set(by_name), set(by_name)
    ids = {s.context.span_id: s for s in found}

    def ancestors(span):
        while span.parent is not None and span.parent.span_id in ids:
            span = ids[span.parent.span_id]
            yield span.name

    # Each service's server span hangs under the router step that called it.
    assert "router.auth" in ancestors(by_name["tenancy/Authenticate"])
    assert "router.classify" in ancestors(by_name["classifier/Classify"])
    assert "router.cache_lookup" in ancestors(by_name["cache/Lookup"])
    assert "router.attempt" in ancestors(by_name["inference/Generate"])
    assert "router.store" in ancestors(by_name["cache/Store"])
    assert by_name["router.attempt"].attributes["llmesh.model"] == summary.model
    # The wait for a slot in the model's fair queue, before the attempt reaches inference.
    queued = by_name["router.queue_wait"]
    assert queued.attributes["llmesh.tenant"] == tenant_id
    assert queued.attributes["llmesh.priority"] == "standard"
    assert queued.attributes["llmesh.model"] == summary.model
    assert queued.attributes["llmesh.queue_outcome"] == "admitted"
    assert queued.attributes["llmesh.waited_ms"] >= 0
    assert "router/Generate" in ancestors(queued)
    assert queued.end_time <= by_name["inference/Generate"].start_time
