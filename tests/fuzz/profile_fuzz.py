"""Where a fuzzed request's time goes, for the RPCs in LLMESH_FUZZ_RPCS (default cache.Store and
router.Generate), LLMESH_FUZZ_EXAMPLES (100) requests each. Not part of `make test`; run it by path:

    LLMESH_FUZZ_EXAMPLES=100 .venv/bin/python -m pytest -q -s tests/fuzz/profile_fuzz.py

Parts, in µs per request: hypothesis drawing one request per example (as the harness did) and
BATCH per example; the calls one at a time with the services logging at info, then at warning;
the calls BATCH at a time at warning; a health check; and the deadlines waited out. "cpu" is the
process's CPU time (client, services and gRPC's threads: they share this process) per request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import statistics
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz import harness
from tests.fuzz.proto_strategies import request_bytes
from tests.fuzz.test_fuzz import fuzz_target  # noqa: F401  (the tenant and credentials)

pytestmark = pytest.mark.timeout(3600)

PROFILED = harness.select(
    list(harness.all_methods()), os.environ.get("LLMESH_FUZZ_RPCS", "cache.Store,router.Generate")
)


def _draw(method, credentials, hints, examples: int, batch: int):
    payload = request_bytes(method.input_type, hints)
    payloads = st.lists(payload, min_size=0, max_size=3) if method.client_streaming else payload.map(lambda p: [p])
    one = st.tuples(payloads, harness.metadata_strategy(credentials))
    drawn = []

    @settings(
        max_examples=examples // batch,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(calls=st.lists(one, min_size=batch, max_size=batch))
    def collect(calls):
        drawn.extend(calls)

    started = time.perf_counter()
    collect()
    return drawn, (time.perf_counter() - started) / max(1, len(drawn))


def _send(address, method, drawn, concurrency: int):
    with (
        grpc.insecure_channel(address) as channel,
        concurrent.futures.ThreadPoolExecutor(concurrency) as pool,
    ):

        def one(item):
            requests, metadata = item
            return harness.call(channel, method, [p for _, p in requests] or [b""], metadata)

        harness.call(channel, method, [b""], ())  # the channel connected
        wall, cpu = time.perf_counter(), time.process_time()
        results = list(pool.map(one, drawn))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        checks = []
        for _ in range(20):
            started = time.perf_counter()
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            checks.append(time.perf_counter() - started)
    waited = [s for code, s in results if code == grpc.StatusCode.DEADLINE_EXCEEDED]
    return {
        "wall_us": wall / len(drawn) * 1e6,
        "cpu_us": cpu / len(drawn) * 1e6,
        "health_us": statistics.median(checks) * 1e6,
        "deadline_us": sum(waited) / len(drawn) * 1e6,
        "deadlines": len(waited),
    }


@pytest.mark.parametrize(("service", "method"), PROFILED, ids=[f"{s}.{m.name}" for s, m in PROFILED])
async def test_profile(mesh, fuzz_target, service, method):  # noqa: F811
    credentials, hints = fuzz_target
    address = mesh.hosts[service].address
    examples = harness.EXAMPLES
    drawn1, gen1 = await asyncio.to_thread(_draw, method, credentials, hints, examples, 1)
    drawnb, genb = await asyncio.to_thread(_draw, method, credentials, hints, examples, harness.BATCH)
    rows = []
    # interleaved: info, warning, warning concurrent, twice
    for _ in range(2):
        rows.append(("1 at a time, logs at info", await asyncio.to_thread(_send, address, method, drawn1, 1)))
        with harness.quiet_logs():
            rows.append(("1 at a time, logs at warning", await asyncio.to_thread(_send, address, method, drawn1, 1)))
            rows.append(
                (
                    f"{harness.BATCH} at a time, logs at warning",
                    await asyncio.to_thread(_send, address, method, drawnb, harness.BATCH),
                )
            )
    load = os.getloadavg()
    print(f"\n== {service}.{method.name}: {examples} requests, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"generation, 1 request per example: {gen1 * 1e6:.0f} µs/request ({len(drawn1)} drawn)")
    print(f"generation, {harness.BATCH} requests per example: {genb * 1e6:.0f} µs/request ({len(drawnb)} drawn)")
    for label, r in rows:
        print(
            f"{label}: wall {r['wall_us']:.0f} µs/request, process cpu {r['cpu_us']:.0f} µs/request, "
            f"deadlines waited out {r['deadlines']} ({r['deadline_us']:.0f} µs/request), health check {r['health_us']:.0f} µs"
        )
