"""Every RPC of every service, called with generated requests (proto_strategies.py) and
metadata: no crash (INTERNAL, UNKNOWN), no UNIMPLEMENTED, no answer later than the deadline, the
service still SERVING every LLMESH_FUZZ_HEALTH_EVERY requests and afterwards, and no API key or
token in what the services log meanwhile.

`make test` runs 100 requests per RPC (CI 500: .ci/run); `make fuzz` runs LLMESH_FUZZ_EXAMPLES
(10,000) per RPC and writes its table to LLMESH_FUZZ_REPORT (bench/results/fuzz.md). One test per
RPC; LLMESH_FUZZ_RPCS (patterns such as `cache.*,router.Generate`) and LLMESH_FUZZ_SHARD (i/n)
pick the RPCs of a run (tests/fuzz/harness.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import time

import pytest
from llmesh.kit import identity

from tests.fuzz import harness

pytestmark = pytest.mark.timeout(3600)

METHODS = list(harness.all_methods())
SELECTED = harness.select(METHODS, os.environ.get("LLMESH_FUZZ_RPCS", "*"), os.environ.get("LLMESH_FUZZ_SHARD", "1/1"))
STATS: dict = {}


def _write_report(key: tuple[str, str], row: dict) -> None:
    """Merges the RPC's row into LLMESH_FUZZ_REPORT (a run of every RPC starts the table over with
    its first row; rows written meanwhile by other shards stay)."""
    path = os.environ.get("LLMESH_FUZZ_REPORT")
    if not path:
        return
    row["at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    row["load"] = os.getloadavg()[0]
    fresh = len(SELECTED) == len(METHODS) and not STATS
    STATS[key] = row
    harness.write_report(path, {key: row}, fresh=fresh, known={f"{s}.{m.name}" for s, m in METHODS})


@pytest.fixture(scope="module")
def workers():
    """LLMESH_FUZZ_JOBS processes that generate and send the requests (harness.JOBS)."""
    context = multiprocessing.get_context("spawn")  # not fork: this process runs gRPC's threads
    with concurrent.futures.ProcessPoolExecutor(harness.JOBS, mp_context=context) as pool:
        yield pool


@pytest.fixture(scope="module")
async def fuzz_target(mesh):
    """(credentials, hints) for the generated requests: a real tenant, its key, the admin token
    and the operator's service credential, so that half-valid requests get past the first checks."""
    api_key, tenant_id, key_id = await mesh.new_tenant()
    hints = {
        "tenant_id": [tenant_id],
        "key_id": [key_id],
        "api_key": [api_key],
        "use_case": ["default", "support-bot"],
        "content": ["How do I reset my password?", "Prove that the square root of 2 is irrational."],
        "model": ["gemma-3-270m"],
        "name": ["fuzz-tenant"],
        "business_unit": ["qa"],
        "entry_id": ["0" * 64],
        "document_id": ["handbook"],
    }
    credentials = {
        "key": api_key,
        "admin": mesh.admin[0][1].removeprefix("Bearer "),
        "service": identity.default().credential,
    }
    return credentials, hints


def test_the_selection_is_not_empty():
    assert SELECTED, f"LLMESH_FUZZ_RPCS/LLMESH_FUZZ_SHARD select none of {len(METHODS)} RPCs"


@pytest.mark.parametrize(("service", "method"), SELECTED, ids=[f"{s}.{m.name}" for s, m in SELECTED])
async def test_rpc_survives_generated_requests(mesh, fuzz_target, workers, service, method, capfd):
    credentials, hints = fuzz_target
    row = harness.new_row()
    address = mesh.hosts[service].address
    shares = [harness.EXAMPLES // harness.JOBS + (i < harness.EXAMPLES % harness.JOBS) for i in range(harness.JOBS)]
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    with harness.quiet_logs():
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(workers, harness.fuzz_part, address, method.full_name, credentials, hints, share)
                for share in shares
                if share
            )
        )
    row["seconds"] = time.monotonic() - started
    for part, failure in parts:
        harness.merge(row, part)
    _write_report((service, method.name), row)
    failures = [failure for _, failure in parts if failure]
    assert not failures, "\n".join(failures)
    await asyncio.to_thread(harness.check_health_of, address, service)
    assert row["calls"] >= harness.EXAMPLES
    logs = "".join(capfd.readouterr())
    for secret, what in (
        (credentials["key"], "the tenant's API key"),
        (credentials["admin"], "the admin token"),
        (credentials["service"], "the operator's service credential"),
    ):
        assert secret not in logs, f"{what} was logged while fuzzing {service}.{method.name}"
