"""`llmesh up --replicas` (LLMESH_UP_REPLICAS, docs/adr/0034): the setting's validation, the
names and targets of a service's processes, each replica supervised on its own, and what
`llmesh status` and the endpoint table show of them."""

from __future__ import annotations

import argparse
import asyncio
import os

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from llmesh.cli.mesh import status_command, up_command
from llmesh.cli.observe import file_sd, metrics_endpoints
from llmesh.launcher import state as mesh_state
from llmesh.launcher.processes import ServiceProcess, process_start_ticks
from llmesh.launcher.supervisor import (
    LaunchError,
    Supervised,
    endpoints_table,
    replica_counts,
    router_replicas_setting,
)

from tests.launcher.test_supervision import StandIn

pytestmark = pytest.mark.timeout(60)


def test_one_process_of_each_service_unless_told_otherwise():
    assert replica_counts("") == dict.fromkeys(mesh_state.SERVICES, 1)
    counts = replica_counts(" router=2, inference=3 ,classifier=1")
    assert (counts["router"], counts["inference"], counts["classifier"], counts["cache"]) == (2, 3, 1, 1)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("routr=2", "unknown service 'routr'"),
        ("router=two", "router='two' is not a whole number"),
        ("router=0", "router=0 is out of range (1 to 8)"),
        ("inference=9", "out of range"),
        ("router", "'router' is not SERVICE=COUNT"),
        ("=2", "is not SERVICE=COUNT"),
        ("router=2,router=3", "router is named twice"),
        ("tenancy=2", "tenancy runs as one process"),
        ("cache=2", "cache runs as one process"),
        ("edge=2", "edge runs as one process"),
        ("classifier=2", "classifier runs as one process"),
    ],
)
def test_a_bad_setting_is_refused_with_what_is_wrong(raw, says):
    with pytest.raises(LaunchError, match="LLMESH_UP_REPLICAS") as caught:
        replica_counts(raw)
    assert says in str(caught.value)


def test_up_refuses_a_bad_setting_before_starting_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    # set (and so restored after the test): up_command writes the option into the environment for
    # the detached supervisor, which must not leak into later tests' meshes
    monkeypatch.setenv("LLMESH_UP_REPLICAS", "")
    args = argparse.Namespace(replicas="tenancy=2", regions=1, detach=True, timeout=10.0, no_backends=True)
    assert up_command(args) == 2
    assert "tenancy runs as one process" in capsys.readouterr().err
    assert not (tmp_path / "mesh.json").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(("routers", "inference"), [(1, 1), (2, 1), (2, 2), (3, 2), (1, 3)])
def test_routers_are_told_the_router_count_whatever_the_inference_count(routers, inference):
    """Inference replicas count through their load snapshots (docs/adr/0037), not this setting."""
    counts = replica_counts(f"router={routers},inference={inference}")
    assert router_replicas_setting(counts) == str(routers)


def test_replica_names_and_the_target_of_every_replica():
    assert [mesh_state.replica_name("router", i) for i in (1, 2, 3)] == ["router", "router-2", "router-3"]
    assert [mesh_state.service_of(n) for n in ("router", "router-2", "inference-3", "nats", "triton")] == [
        "router",
        "router",
        "inference",
        "nats",
        "triton",
    ]
    assert mesh_state.multi_address_target(["127.0.0.1:5"]) == "127.0.0.1:5"
    assert mesh_state.multi_address_target(["127.0.0.1:5", "127.0.0.1:6"]) == "ipv4:127.0.0.1:5,127.0.0.1:6"
    state = mesh_state.MeshState(
        endpoints={},
        processes={n: mesh_state.ProcessRecord() for n in ("router-10", "cache", "router", "router-2", "nats")},
    )
    assert mesh_state.replicas_of(state, "router") == ["router", "router-2", "router-10"]
    assert mesh_state.replicas_of(state, "edge") == ["edge"]


def test_a_replica_runs_its_service_under_a_name_of_its_own(tmp_path):
    process = ServiceProcess("router-2", port=0, home=tmp_path, env={}, service="router")
    assert process.service == "router" and process.log_path.name == "router-2.log"
    assert process.ready_file.name == "router-2.ready.json"


@pytest.fixture
def two_routers(supervisor, tmp_path):
    """A supervisor holding two router replicas (stand-ins) and one cache, as start() leaves them."""
    sup = supervisor
    sup.replicas["router"] = 2
    for name, port in (("router", 40000), ("router-2", 40010), ("cache", 40020)):
        process = StandIn(name, tmp_path / f"{name}.log")
        process.port, process.metrics_port = port, port + 1
        process.start()
        process.serving = True
        sup.units[name] = Supervised(process, state=mesh_state.RUNNING)
        sup.units[name].mark_started()
    return sup


def test_each_replica_is_restarted_on_its_own_and_clients_get_every_address(two_routers):
    sup = two_routers
    assert sup._target("router") == "ipv4:127.0.0.1:40000,127.0.0.1:40010"
    second = sup.units["router-2"]
    second.process.code = -9
    assert sup.supervise(second) and second.state == mesh_state.BACKOFF
    assert not sup.supervise(sup.units["router"]), "the other replica is left alone"
    second.retry_at_mono = 0.0
    assert sup.supervise(second) and second.state == mesh_state.STARTING and second.restarts == 1
    assert "restarting router-2 on port 40010" in sup.lines[-1]
    assert sup.units["router"].restarts == 0
    sup._save()
    saved = mesh_state.load_state()
    assert saved.endpoints["router"] == "ipv4:127.0.0.1:40000,127.0.0.1:40010"
    assert saved.endpoints["cache"] == "127.0.0.1:40020"
    assert saved.processes["router-2"].address == "127.0.0.1:40010" and saved.processes["router-2"].restarts == 1
    assert saved.metrics_ports == {"router": 40001, "router-2": 40011, "cache": 40021}
    table = endpoints_table(saved)
    assert "router-2" in table and "127.0.0.1:40010" in table
    assert "router: 2 replicas; its clients call ipv4:127.0.0.1:40000,127.0.0.1:40010" in table
    assert metrics_endpoints()["router-2"] == "127.0.0.1:40011"
    groups = file_sd(metrics_endpoints())
    assert {g["labels"]["service"] for g in groups} == {"router", "cache"} and len(groups) == 3


async def _health_server() -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_status_checks_every_replica_on_its_own_address(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path))
    for name in mesh_state.SERVICES:
        monkeypatch.delenv(f"LLMESH_{name.upper()}_ADDR", raising=False)
    first, first_address = await _health_server()
    second, second_address = await _health_server()
    me = dict(pid=os.getpid(), start_ticks=process_start_ticks(os.getpid()), state=mesh_state.RUNNING)
    try:
        mesh_state.save_state(
            mesh_state.MeshState(
                endpoints={"router": mesh_state.multi_address_target([first_address, second_address])},
                supervisor_pid=os.getpid(),
                supervisor_start_ticks=process_start_ticks(os.getpid()),
                processes={
                    "router": mesh_state.ProcessRecord(address=first_address, **me),
                    "router-2": mesh_state.ProcessRecord(address=second_address, **me),
                },
            )
        )
        await second.stop(None)
        await asyncio.to_thread(status_command, argparse.Namespace(timeout=1.0))
        rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
        assert rows["router"].split()[1] == "serving" and first_address in rows["router"]
        assert "not serving" in rows["router-2"] and second_address in rows["router-2"]
    finally:
        await first.stop(None)
