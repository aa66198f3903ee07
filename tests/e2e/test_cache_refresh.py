"""Cache refresh as a built-in batch job (ADR 0026) on the in-process mesh: an answer hit often and
close to expiry is generated again in the off-peak window (new created_at, later expiry) through
the Generate pipeline; an answer hit once is not; a tenant whose budget is exhausted is not
refreshed and its job stops, saying why. The cache's clock, the router's for the hits it answers from
its copies, and the planner's are set by the test: the hits land in the hour before the answer expires, and the planner runs in the hour before."""

from __future__ import annotations

import time

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.testing import assert_eventually, unique
from llmesh.router.v1 import batch_pb2, batch_pb2_grpc, router_pb2
from llmesh.services.router.batch_refresh import RefreshPlanner

from tests.e2e.conftest import bearer

pytestmark = pytest.mark.timeout(300)


def question(text: str, use_case: str) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)],
        max_tokens=6,
        use_case=use_case,
        sampling=common_pb2.SamplingParams(temperature=0.0),
    )


async def ask(mesh, api_key: str, request: router_pb2.GenerateRequest) -> str:
    summary = None
    async for response in mesh.router.Generate(request, metadata=bearer(api_key), timeout=120):
        if response.HasField("summary"):
            summary = response.summary
    assert summary is not None
    return router_pb2.CacheOutcome.Name(summary.cache_outcome)


async def entries(mesh, tenant_id: str, use_case: str) -> dict[str, tuple[float, float]]:
    """entry id -> (created_at, expires_at) of the tenant's answers hit at least once."""
    cache = mesh.hosts["cache"].app.cache
    found = {}
    for row in cache.hits.often_hit(tenant_id, use_case, 1):
        entry = await cache.exact.get(tenant_id, row.entry_id, cache._clock())
        assert entry is not None
        found[row.entry_id] = (entry.created_at, entry.expires_at)
    return found


@pytest.fixture
async def batch(mesh):
    async with open_channel(mesh.hosts["router"].address) as channel:
        yield batch_pb2_grpc.BatchServiceStub(channel)


async def hot_tenant(mesh, batch, monkeypatch) -> tuple[str, str, str, float]:
    """A tenant with the refresh on, one answer asked four times (hit 3 times) and one asked twice
    (hit once), the hits in the hour the answers expire: (api_key, tenant_id, use_case, hit time)."""
    api_key, tenant_id, _ = await mesh.new_tenant()
    use_case = unique("faq").replace("_", "-")
    await batch.SetCacheRefresh(
        batch_pb2.SetCacheRefreshRequest(use_case=use_case, enabled=True, min_hits=3), metadata=bearer(api_key)
    )
    often, rarely = question("What is the capital of France?", use_case), question("Name a prime number.", use_case)
    assert await ask(mesh, api_key, often) == "CACHE_OUTCOME_MISS"
    assert await ask(mesh, api_key, rarely) == "CACHE_OUTCOME_MISS"
    cache = mesh.hosts["cache"].app.cache
    expiry = min(entry.expires_at for entry in cache.exact._entries.values() if entry.tenant_id == tenant_id)
    hit_at = expiry - 5  # 5 s before the answers expire
    monkeypatch.setattr(cache, "_clock", lambda: hit_at)
    # Repeats are answered from the router's copy (its L1, ADR 0033) and reported to the cache's
    # hit history in batches: at the test's time as well.
    hits = mesh.hosts["router"].app.l1_hits
    record = hits.record
    monkeypatch.setattr(
        hits, "record", lambda tenant, unit, case, answer, now: record(tenant, unit, case, answer, hit_at)
    )
    for request, times in ((often, 3), (rarely, 1)):
        for _ in range(times):
            assert await ask(mesh, api_key, request) == "CACHE_OUTCOME_EXACT_HIT"

    def counted():
        assert sorted(row.hits for row in cache.hits.often_hit(tenant_id, use_case, 1)) == [1, 3]

    await assert_eventually(counted, message="every hit in the cache's hit history")
    return api_key, tenant_id, use_case, hit_at


async def plan(mesh, tenant_id: str, now: float):
    # The router's own listing (its channel, service credential and tenant-token renewal), on a
    # clock of the test's.
    router = mesh.hosts["router"].app
    planner = RefreshPlanner(router.bus, router.batch, router.refresh._list_hot, clock=lambda: now)
    await planner.start()
    (policy,) = [p for p in await planner.policies() if p.principal.tenant_id == tenant_id]
    return await planner.plan_one(policy)


async def finished(batch, api_key: str, job_id: str) -> batch_pb2.BatchJob:
    async def ended():
        got = (await batch.GetBatch(batch_pb2.GetBatchRequest(job_id=job_id), metadata=bearer(api_key))).job
        assert got.state in (batch_pb2.BATCH_STATE_COMPLETED, batch_pb2.BATCH_STATE_CANCELLED), got
        return got

    return await assert_eventually(ended, timeout_s=180, interval_s=0.5, message="the refresh job ends")


async def test_an_answer_hit_often_and_about_to_expire_is_regenerated_in_the_quiet_hour(mesh, batch, monkeypatch):
    api_key, tenant_id, use_case, hit_at = await hot_tenant(mesh, batch, monkeypatch)
    before = await entries(mesh, tenant_id, use_case)
    assert len(before) == 2
    # Planned in the hour before the hits' hour: that hour is the quiet one, so it starts now.
    job = await plan(mesh, tenant_id, hit_at - 3600)
    assert job is not None and job.total == 1 and job.start_after <= time.time()
    assert await plan(mesh, tenant_id, hit_at - 3600) is None  # one job per window

    done = await finished(batch, api_key, job.job_id)
    assert (
        done.state == batch_pb2.BATCH_STATE_COMPLETED
        and done.completed == 1
        and done.display_name.startswith("cache refresh")
    )
    listed = (await batch.ListBatches(batch_pb2.ListBatchesRequest(), metadata=bearer(api_key))).jobs
    assert [j.display_name for j in listed] == [f"cache refresh {use_case}"]
    after = await entries(mesh, tenant_id, use_case)
    refreshed = [e for e in before if after[e] != before[e]]
    assert len(refreshed) == 1, (before, after)
    created, expires = after[refreshed[0]]
    assert created == hit_at > before[refreshed[0]][0] and expires > before[refreshed[0]][1]
    # The answer hit once is as it was.
    (kept,) = [e for e in before if e not in refreshed]
    assert after[kept] == before[kept]


async def test_a_tenant_over_its_budget_is_not_refreshed_and_its_job_says_why(mesh, batch, monkeypatch):
    api_key, tenant_id, use_case, hit_at = await hot_tenant(mesh, batch, monkeypatch)
    before = await entries(mesh, tenant_id, use_case)
    router = mesh.hosts["router"].app
    await router.policy.put(f"tenant.{tenant_id}", {"budgets": [{"name": "spent", "limit": 0}]})
    await assert_eventually(lambda: router.accounting.policy(tenant_id, use_case).budgets, message="budget applied")

    job = await plan(mesh, tenant_id, hit_at - 3600)
    assert job is not None
    done = await finished(batch, api_key, job.job_id)
    assert done.state == batch_pb2.BATCH_STATE_CANCELLED and done.stopped_reason == "budget_exhausted"
    assert done.completed == 0 and done.failed == done.total
    assert await entries(mesh, tenant_id, use_case) == before
