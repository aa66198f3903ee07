"""`llmesh up --regions 2` as a user runs it (ADR 0017): two whole meshes on one machine, one
nats-server each joined by a leaf node link; `llmesh status` shows both regions; an invalidation
issued in region b removes region a's answer. About 25 s here (services only, no model servers)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.kit import identity
from llmesh.kit.client import open_channel
from llmesh.kit.testing import assert_eventually, unique
from llmesh.launcher.processes import pid_alive
from llmesh.router.v1 import router_pb2, router_pb2_grpc

from tests.e2e.test_launcher import cli_env, llmesh, new_key

pytestmark = pytest.mark.timeout(600)


def _key(tenant: str) -> cache_pb2.CacheKey:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="What is our refund window?")
    return cache_pb2.CacheKey(tenant_id=tenant, use_case="support", messages=[message])


async def test_two_regions_an_invalidation_in_b_reaches_a(tmp_path):
    env = cli_env(tmp_path)
    up = subprocess.Popen(
        [sys.executable, "-m", "llmesh.cli.main", "up", "--regions", "2", "--timeout", "400"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 450
        while True:
            status = llmesh(env, "status")
            if status.returncode == 0:
                break
            assert up.poll() is None, f"llmesh up ended: {up.stdout.read() if up.stdout else ''}"
            assert time.monotonic() < deadline, status.stdout
            time.sleep(3)
        assert "== region a" in status.stdout and "== region b" in status.stdout

        caches = {}
        for region in ("a", "b"):
            state = json.loads((tmp_path / "regions" / region / "mesh.json").read_text())
            # One set of keys for both regions (docs/adr/0023); the test calls as the operator.
            assert state["identity_dir"] == str(tmp_path / "identity")
            operator = identity.load_provisioned(state["identity_dir"], identity.OPERATOR)
            caches[region] = open_channel(state["endpoints"]["cache"], identity=operator)
        a = cache_pb2_grpc.CacheServiceStub(caches["a"])
        b = cache_pb2_grpc.CacheServiceStub(caches["b"])
        tenant = unique("acme")
        handbook_v1 = common_pb2.ContentVersion(document_id="refunds", version=1)
        await a.Store(
            cache_pb2.StoreRequest(
                key=_key(tenant),
                content="30 days",
                model="m",
                backend="local",
                tier=common_pb2.TIER_1,
                usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=2),
                content_versions=[handbook_v1],
            )
        )
        assert (await a.Lookup(cache_pb2.LookupRequest(key=_key(tenant)))).outcome != cache_pb2.LOOKUP_OUTCOME_MISS
        await b.Invalidate(
            cache_pb2.InvalidateRequest(
                tenant_id=tenant, content_version=common_pb2.ContentVersion(document_id="refunds", version=2)
            )
        )

        async def gone_in_a():
            reply = await a.Lookup(cache_pb2.LookupRequest(key=_key(tenant)))
            assert reply.outcome == cache_pb2.LOOKUP_OUTCOME_MISS

        await assert_eventually(gone_in_a, timeout_s=30, message="region b's invalidation reached region a")
        for channel in caches.values():
            await channel.close()

        # Region a's model goes away (its inference is killed; the supervisor starts it again):
        # region a's router sends the tier to region b's inference, then comes back.
        state_a = json.loads((tmp_path / "regions" / "a" / "mesh.json").read_text())
        api_key, _ = await new_key(state_a)
        metadata = [("authorization", f"Bearer {api_key}")]
        async with grpc.aio.insecure_channel(state_a["endpoints"]["router"]) as channel:
            router = router_pb2_grpc.RouterServiceStub(channel)

            async def region_of_answer() -> str | None:
                # One prompt, so one tier throughout; past the cache, so each one is generated.
                request = router_pb2.GenerateRequest(
                    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Say hi")],
                    max_tokens=4,
                    cache_policy=router_pb2.CACHE_POLICY_BYPASS,
                )
                try:
                    async for response in router.Generate(request, metadata=metadata, timeout=60):
                        if response.HasField("summary"):
                            return response.summary.region
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                return None

            assert await region_of_answer() == "a"
            os.kill(state_a["processes"]["inference"]["pid"], signal.SIGKILL)
            killed = time.monotonic()
            regions = []
            while "b" not in regions:
                assert time.monotonic() - killed < 5, f"no failover within 5 s: {regions}"
                regions.append(await region_of_answer())
                await asyncio.sleep(0.1)
            failed_over = time.monotonic()
            back = []
            while back[-1:] != ["a"]:
                assert time.monotonic() - killed < 120, f"never came back to region a: {back}"
                await asyncio.sleep(1)
                back.append(await region_of_answer())
            assert None not in back, f"a request failed after the failover: {back}"
            # Back only after region a (its inference restarted at once) was healthy for 10 s.
            assert time.monotonic() - failed_over >= 10, back

    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(180)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def test_two_regions_detached_then_status_shows_both_and_down_stops_both(tmp_path):
    env = cli_env(tmp_path)
    up = llmesh(env, "up", "--regions", "2", "--detach", "--timeout", "400", timeout=500)
    regions_file = tmp_path / "regions.json"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "every region serves" in up.stderr
        supervisors = {
            region: json.loads((tmp_path / "regions" / region / "mesh.json").read_text())["supervisor_pid"]
            for region in ("a", "b")
        }
        status = llmesh(env, "status", "--timeout", "5")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "== region a" in status.stdout and "== region b" in status.stdout
        again = llmesh(env, "up", "--regions", "2", "--detach")
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = llmesh(env, "down", timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("mesh stopped") == 2, down.stdout
    assert not regions_file.exists()
    assert not any(pid_alive(pid) for pid in supervisors.values())
