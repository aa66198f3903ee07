"""End to end through the router: real tenancy, classifier, cache and inference (the local
Gemma model), real NATS."""

from __future__ import annotations

import time

import grpc
import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit.metrics import RPC_REQUESTS
from llmesh.kit.testing import assert_eventually
from llmesh.router.v1 import router_pb2
from llmesh.tenancy.v1 import tenancy_pb2

from tests.e2e.conftest import bearer

pytestmark = pytest.mark.timeout(90)

QUESTION = "Count from one to twenty in words."


def request(text: str = QUESTION, **fields) -> router_pb2.GenerateRequest:
    fields.setdefault("max_tokens", 24)
    fields.setdefault("sampling", common_pb2.SamplingParams(temperature=0, seed=1))
    return router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)], **fields
    )


async def generate(mesh, api_key: str, req: router_pb2.GenerateRequest):
    """(deltas with their arrival times, summary, summary arrival time), times in seconds from the call."""
    deltas: list[tuple[float, str]] = []
    summary = None
    started = time.monotonic()
    async for response in mesh.router.Generate(req, metadata=bearer(api_key), timeout=60):
        if response.HasField("summary"):
            summary = response.summary
            summary_at = time.monotonic() - started
        else:
            deltas.append((time.monotonic() - started, response.delta))
    assert summary is not None
    return deltas, summary, summary_at


def inference_generations() -> float:
    return RPC_REQUESTS.labels("inference", "Generate", "OK")._value.get()


async def test_the_answer_streams_then_repeats_from_the_cache_for_its_tenant_only(mesh):
    api_key, tenant_id, _ = await mesh.new_tenant()
    before = inference_generations()
    deltas, summary, summary_at = await generate(mesh, api_key, request())

    assert len(deltas) > 1, "the answer arrives in several chunks"
    # Streamed, not buffered: the first chunk comes well before the end of the generation.
    assert deltas[0][0] < 0.8 * summary_at, (deltas[0][0], summary_at)
    assert summary.cache_outcome == router_pb2.CACHE_OUTCOME_MISS
    assert summary.model == "gemma-3-270m" and summary.backend == "llama_cpp"
    assert summary.tier in (common_pb2.TIER_1, common_pb2.TIER_2, common_pb2.TIER_3)
    assert summary.usage.prompt_tokens > 0 and 0 < summary.usage.completion_tokens <= 24
    assert summary.cost_usd > 0
    assert 0 < summary.time_to_first_token_ms < summary.total_time_ms
    assert inference_generations() == before + 1
    answer = "".join(text for _, text in deltas)
    assert answer.strip()

    again, hit, _ = await generate(mesh, api_key, request())
    assert hit.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT
    assert "".join(text for _, text in again) == answer
    assert hit.cost_usd == 0 and hit.usage == summary.usage
    assert inference_generations() == before + 1, "the hit never reached inference"

    other_key, _, _ = await mesh.new_tenant()
    _, other, _ = await generate(mesh, other_key, request())
    assert other.cache_outcome == router_pb2.CACHE_OUTCOME_MISS, "tenants never share cached answers"
    assert inference_generations() == before + 2


async def test_a_wrong_key_is_rejected_and_a_revoked_key_stops_working(mesh):
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await generate(mesh, "sk-not-a-key", request())
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED

    api_key, _, key_id = await mesh.new_tenant()
    _, summary, _ = await generate(mesh, api_key, request("Say hello.", max_tokens=4))
    assert summary.model
    await mesh.tenancy.RevokeApiKey(tenancy_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=mesh.admin)

    async def rejected():
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await generate(mesh, api_key, request("Say hello.", max_tokens=4))
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Well inside the principal cache's 30 s TTL: the revocation event dropped the entry.
    await assert_eventually(rejected, timeout_s=5)
