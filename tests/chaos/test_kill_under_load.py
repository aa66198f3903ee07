"""CI-sized chaos (issue 16): a private `llmesh up --detach`, a light mixed load through the router,
then the cache and the classifier each SIGKILLed once. The router keeps answering on its degraded
paths (no cache, the fallback tier): at most 1 % errors over the run, and within 5 s of the
supervisor's restart (the new process SERVING) answers succeed again and errors stop; every answered request is
in the usage ledger under its request id, none twice. About 40 s
with the mesh's start (42 s measured on the shared 2-core machine): under the 60 s the issue allows in
`make test`, so not `slow`; `make chaos` runs it too."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.kit.testing import assert_eventually

from bench.mesh_load import Load, PrivateMesh, error_rate, model_busy

pytestmark = pytest.mark.timeout(240)


def serving(address: str) -> None:
    try:
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
    except grpc.RpcError as exc:
        raise AssertionError(f"{address}: {exc.code().name}") from None
    assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    mesh = PrivateMesh(tmp_path_factory.mktemp("llmesh-chaos"))
    mesh.up()
    try:
        yield mesh
    finally:
        mesh.down()


async def test_the_router_answers_through_cache_and_classifier_kills(mesh):
    keys = [(await mesh.new_tenant(f"chaos{i}"))[0] for i in range(3)]
    load = Load(mesh.state()["endpoints"]["router"], keys, rate=2.0)
    load.start()
    try:
        await asyncio.sleep(5)
        backs = {}
        for name in ("cache", "classifier"):
            old_pid = mesh.pid(name)
            os.kill(old_pid, signal.SIGKILL)

            def restarted(name=name, old_pid=old_pid) -> None:
                assert mesh.pid(name) != old_pid
                serving(mesh.state()["endpoints"][name])

            await assert_eventually(restarted, timeout_s=90, interval_s=0.1, message=f"{name} restarted")
            backs[name] = time.monotonic()
            assert mesh.restarts(name) == 1
            await asyncio.sleep(8)
    finally:
        await load.stop()

    # Interactive requests the router sheds because the one local model is too slow for the TTFT SLO
    # (the shared machine's load) are not failures of the kills: counted apart.
    answers = [a for a in load.answers if not model_busy(a)]
    shed = len(load.answers) - len(answers)
    failures = [(a.code, a.detail) for a in answers if not a.ok]
    assert len(answers) >= 30, f"the load ran ({shed} shed as 'model busy')"
    assert error_rate(answers) <= 0.01, failures
    for name, back in backs.items():
        after = sorted((a for a in answers if a.start >= back), key=lambda a: a.end)
        first_ok = next(a.end for a in after if a.ok)
        assert first_ok - back <= 5, f"{name}: first success {first_ok - back:.1f} s after the restart"
        late_errors = [a for a in after if not a.ok and a.start - back > 5]
        assert not late_errors, f"{name}: errors more than 5 s after the restart: {late_errors}"
    # The repeated prompts were answered from the cache at some point: the load exercised it.
    assert any(a.cache == "CACHE_OUTCOME_EXACT_HIT" for a in answers)

    # Nothing billed lost or twice: each answered request is in tenancy's usage ledger under its id.
    answered = [a.request_id for a in load.answers if a.ok]
    assert all(answered) and len(set(answered)) == len(answered), "one request id per answer"
    tenants = sorted({mesh.tenants[key] for key in keys})

    async def billed_once() -> None:
        billed = collections.Counter(rid for rid, _, _ in await mesh.ledger(tenants))
        assert not [rid for rid, n in billed.items() if n > 1], "a request id billed twice"
        missing = set(answered) - set(billed)
        assert not missing, f"{len(missing)} of {len(answered)} answered requests not in the ledger"

    await assert_eventually(billed_once, timeout_s=60, interval_s=1, message="usage reached the ledger")
