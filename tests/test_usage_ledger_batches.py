"""The usage path end to end (docs/adr/0035): two routers on the session's nats-server, one
publishing its usage records in batches and one a message per request (as routers before batching
did, during a rolling upgrade), and the real tenancy service writing its ledger: every answered
request is in the ledger once, under its request id, hits and misses alike."""

from __future__ import annotations

import collections
import secrets

import pytest
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.testing import assert_eventually, hosted, unique
from llmesh.router.v1 import router_pb2
from llmesh.services.router.app import RouterApp
from llmesh.services.tenancy.app import TenancyApp
from llmesh.services.tenancy.repository import Repository

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import FakeUpstreams
from services.tenancy.tests.conftest import tenancy_settings

pytestmark = pytest.mark.timeout(90)


async def test_every_answered_request_is_in_the_ledger_once_from_batching_and_older_routers(nats_url, tmp_path):
    store = str(tmp_path / "tenancy.db")
    fakes = FakeUpstreams()
    async with hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as upstream:
        fakes.address = upstream.address
        tenancy = TenancyApp(tenancy_settings(store, nats_url, secrets.token_urlsafe(24)))
        batching = RouterApp(router_settings(nats_url, upstream.address, usage_batch_linger_s=0.05))
        single = RouterApp(router_settings(nats_url, upstream.address, usage_batch_linger_s=0))
        async with (
            hosted(tenancy, tenancy.settings),
            hosted(batching, batching.settings) as a,
            hosted(single, single.settings) as b,
            open_channel(a.address) as ca,
            open_channel(b.address) as cb,
        ):
            clients = [RouterClient(ca, fakes), RouterClient(cb, fakes)]
            keys = [clients[0].new_key() for _ in range(2)]
            answered: dict[str, str] = {}
            outcomes = collections.Counter()
            for i in range(40):
                api_key, tenant, _ = keys[i % 2]
                rid = unique("req")
                _, summary = await clients[(i // 2) % 2].generate(
                    api_key, f"question {i % 6}", max_tokens=8, request_id=rid
                )
                answered[rid] = tenant
                outcomes[router_pb2.CacheOutcome.Name(summary.cache_outcome)] += 1
            assert outcomes["CACHE_OUTCOME_EXACT_HIT"] > 0 and outcomes["CACHE_OUTCOME_MISS"] > 0, outcomes

            repository = Repository(store)
            await repository.open()
            try:

                async def ledger() -> dict[str, str]:
                    rows = await repository.db.fetch(
                        "SELECT request_id, tenant_id FROM usage_ledger WHERE tenant_id IN (?, ?)",
                        keys[0][1],
                        keys[1][1],
                    )
                    return dict(rows)

                async def all_there() -> bool:
                    return len(await ledger()) >= len(answered)

                await assert_eventually(all_there, timeout_s=30, message="every answered request in the ledger")
                assert await ledger() == answered, "each answered request once, under its id and tenant"
            finally:
                await repository.close()
        assert batching.outbox is not None and len(batching.outbox) == 0
