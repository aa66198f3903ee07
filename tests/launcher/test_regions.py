"""`llmesh up --regions N`'s plan (ADR 0017): each region's environment, and its NATS joined to the
others as designed (real nats-servers started the way the supervisor starts them)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.streams import region_health_subject
from llmesh.launcher import regions
from llmesh.launcher.processes import NatsProcess
from llmesh.launcher.regions import region_envs

pytestmark = pytest.mark.timeout(60)


def test_each_region_gets_its_own_home_domain_and_the_others_addresses(tmp_path):
    envs = region_envs(3, tmp_path, {"LLMESH_NATS_URL": "nats://elsewhere:4222", "LLMESH_ROUTER_PORT": "0"})
    assert list(envs) == ["a", "b", "c"]
    assert envs["a"]["LLMESH_NATS_PEER_DOMAINS"] == "b,c"
    assert "LLMESH_NATS_URL" not in envs["b"]  # each region runs its own nats-server
    inference = {r: env["LLMESH_INFERENCE_PORT"] for r, env in envs.items()}
    assert len(set(inference.values())) == 3
    assert envs["b"]["LLMESH_ROUTER_REGION_INFERENCE"] == (f"a=127.0.0.1:{inference['a']},c=127.0.0.1:{inference['c']}")
    assert envs["b"]["LLMESH_CACHE_PORT"] == "0" and "LLMESH_CACHE_PORT" not in envs["a"]
    assert "domain: a" in (tmp_path / "regions" / "a" / "nats.conf").read_text()
    with pytest.raises(ValueError):
        region_envs(1, tmp_path, {})


async def test_the_regions_nats_servers_are_joined(tmp_path, monkeypatch):
    envs = region_envs(2, tmp_path, {})
    servers = {}
    buses = []
    try:
        for region, env in envs.items():
            monkeypatch.setenv("LLMESH_NATS_CONFIG", env["LLMESH_NATS_CONFIG"])
            servers[region] = NatsProcess(tmp_path / "regions" / region)
            servers[region].start()
        heard: list[bytes] = []

        async def on_health(data: bytes) -> None:
            heard.append(data)

        bus_a = await Bus.connect(servers["a"].url, "test-a")
        bus_b = await Bus.connect(servers["b"].url, "test-b")
        buses += [bus_a, bus_b]
        await bus_a.subscribe(region_health_subject("b"), on_health)
        info = await bus_b.js.account_info()
        assert info.domain == "b"
        for _ in range(100):  # the leaf link comes up within a few seconds
            await bus_b.publish_core(region_health_subject("b"), events_pb2.RegionHealth(region="b"))
            if heard:
                break
            await asyncio.sleep(0.1)
        assert heard, "region b's health never reached region a"
    finally:
        for bus in buses:
            await bus.close()
        for server in servers.values():
            server.terminate()
            server.wait(10)


def test_detached_regions_stop_every_supervisor_when_one_ends_before_serving(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    # A supervisor that exits at once, as one that cannot start its region would.
    monkeypatch.setattr(regions, "_supervisor_command", lambda timeout_s: [sys.executable, "-c", "raise SystemExit(3)"])
    said: list[str] = []
    assert regions.start_regions_detached(2, 30, said.append) == 1
    assert any("ended" in line and "stopping them" in line for line in said), said
    assert not (tmp_path / "regions.json").exists()
