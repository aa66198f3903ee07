"""The router's queue in front of a model sized over the inference replicas that serve it
(docs/adr/0037): two real inference processes (python -m llmesh.services.inference) behind one
multi-address target, each admitting max_concurrency generations of the model, each publishing its
own load snapshots on NATS. One router admits max_concurrency × 2 requests at once without
queueing any; its pool shrinks when one replica dies and grows back when it returns. The model is inference's
OpenAI-compatible backend against a stand-in server that holds every answer until released;
tenancy, classifier and cache are the router tests' in-process fakes over real gRPC."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from llmesh.kit.client import open_channel
from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.testing import assert_eventually, ensure_identity, free_port, hosted, identity_env, unique
from llmesh.router.v1 import router_pb2
from llmesh.services.router.app import RouterApp

from services.router.tests.conftest import RouterClient, router_settings
from services.router.tests.fakes import FakeUpstreams
from services.router.tests.test_replicas import Child
from tests.openai_standin import OpenAIStandIn

pytestmark = pytest.mark.timeout(120)

MODEL = "pooled"
MAX_CONCURRENCY = 2


def inference_process(tmp_path, name: str, nats_url: str, region: str, standin: OpenAIStandIn) -> Child:
    catalog = {
        "models": [
            {
                "name": MODEL,
                "backend": "openai",
                "endpoint": standin.base_url,
                "remote_model": MODEL,
                "tiers": [1, 2, 3],
                "hosting": "self_hosted",
                "max_sensitivity": "restricted",
                "max_concurrency": MAX_CONCURRENCY,
                "max_queue": 0,  # a third request at one replica would be refused, not queued there
                "fallback": True,
            }
        ]
    }
    child = Child(tmp_path, name, ["-m", "llmesh.services.inference"], {})
    child.env = {
        **os.environ,
        **identity_env(ensure_identity(), "inference"),
        "LLMESH_PORT": str(free_port()),  # the same port when restarted
        "LLMESH_METRICS_PORT": "0",
        "LLMESH_READY_FILE": str(child.ready),
        "LLMESH_NATS_URL": nats_url,
        "LLMESH_REGION": region,
        "LLMESH_INFERENCE_CATALOG": json.dumps(catalog),
        "LLMESH_INFERENCE_OPENAI_API_KEY": "stand-in-key",
        "LLMESH_INFERENCE_LOAD_INTERVAL_S": "0.5",
        "LLMESH_LOG_LEVEL": "warning",
        "LLMESH_GRACE_S": "1",
    }
    return child


async def test_one_router_admits_the_concurrency_of_both_inference_replicas_without_queueing(tmp_path, nats_url):
    region = unique("pool").replace("-", "_")
    standin = await OpenAIStandIn(["one ", "two"], free_port()).start()
    replicas = [inference_process(tmp_path, f"inference-{i}", nats_url, region, standin) for i in (1, 2)]
    fakes = FakeUpstreams()
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        async with hosted(fakes, load_settings(ServerSettings, environ={}, port=0, metrics_port=0)) as upstream:
            settings = router_settings(
                nats_url,
                upstream.address,
                inference_addr=f"ipv4:{replicas[0].address},{replicas[1].address}",
                tier_models="",
                default_model="",
                prices="",
                region=region,
                models_refresh_s=600.0,  # no ListModels between the Generates (round robin alternates them)
                upstream_timeout_s=5.0,
            )
            router = RouterApp(settings)
            async with hosted(router, settings) as host, open_channel(host.address) as channel:
                client = RouterClient(channel, fakes)
                api_key, _, _ = client.new_key()
                bypass = router_pb2.CACHE_POLICY_BYPASS
                await assert_eventually(
                    lambda: len(router.load.instances(MODEL, region)) == 2,
                    timeout_s=20,
                    message="both replicas' load snapshots heard",
                )
                for i in range(4):  # round robin has both replicas connected
                    _, summary = await client.generate(api_key, f"warm {i}", cache_policy=bypass)
                    assert summary.model == MODEL
                pool = router.queues.pool_of(MODEL)
                assert pool.model.max_concurrency == MAX_CONCURRENCY, "ListModels: one replica's figure"
                assert pool.capacity == 2 * MAX_CONCURRENCY

                standin.gate.clear()
                n = 2 * MAX_CONCURRENCY
                asks = [asyncio.create_task(client.generate(api_key, f"q{i}", cache_policy=bypass)) for i in range(n)]
                await assert_eventually(
                    lambda: standin.in_flight == n, timeout_s=20, message=f"{n} generations at once at the model"
                )
                assert (pool.running, pool.depth()) == (n, 0), "none waits in the router"
                standin.gate.set()
                summaries = [summary for _, summary in await asyncio.gather(*asks)]
                assert all(s.model == MODEL and s.queue_wait_ms < 50 for s in summaries), summaries

                # One replica dies: its snapshots go stale and the pool shrinks to the other's share.
                await replicas[1].stop()  # SIGKILL
                await assert_eventually(
                    lambda: pool.capacity == MAX_CONCURRENCY,
                    timeout_s=20,
                    message="the pool shrank to the live replica's concurrency",
                )
                standin.gate.clear()
                # batch class: its 60 s deadline lets the third wait for a slot whatever the
                # service times learned so far
                asks = [
                    asyncio.create_task(
                        client.generate(api_key, f"after {i}", cache_policy=bypass, priority=router_pb2.PRIORITY_BATCH)
                    )
                    for i in range(MAX_CONCURRENCY + 1)
                ]
                await assert_eventually(lambda: pool.running == MAX_CONCURRENCY and pool.depth() == 1, timeout_s=20)
                assert standin.in_flight <= MAX_CONCURRENCY, "the live replica gets no more than it admits"
                standin.gate.set()
                outcomes = await asyncio.gather(*asks, return_exceptions=True)
                failed = [o for o in outcomes if isinstance(o, BaseException)]
                assert not failed, failed

                # Back on its port: its snapshots are heard again and the pool grows back.
                replicas[1].ready.unlink()
                await replicas[1].start()
                await assert_eventually(
                    lambda: pool.capacity == 2 * MAX_CONCURRENCY, timeout_s=20, message="the pool grew back"
                )
    finally:
        standin.gate.set()
        await asyncio.gather(*(r.stop() for r in replicas))
        await standin.stop()
