"""Batch jobs through the router's BatchService on the in-process mesh: results in input order in
the OpenAI batch output shape, bad files refused with the line at fault, jobs private to their
tenant, cancellation and start windows. (tests/e2e/test_batch_kill.py kills the workers.)"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from asyncio.subprocess import PIPE

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from llmesh.kit.client import open_channel
from llmesh.kit.testing import assert_eventually, unique
from llmesh.router.v1 import batch_pb2, batch_pb2_grpc

from bench.mesh_load import batch_file
from tests.e2e.conftest import bearer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def batch(mesh):
    async with open_channel(mesh.hosts["router"].address) as channel:
        yield batch_pb2_grpc.BatchServiceStub(channel)


async def results(stub, api_key: str, job_id: str) -> list[dict]:
    call = stub.GetBatchResults(batch_pb2.GetBatchResultsRequest(job_id=job_id), metadata=bearer(api_key), timeout=10)
    return [json.loads(r.line) async for r in call]


async def test_a_job_runs_every_item_once_and_returns_results_in_input_order(mesh, batch):
    api_key, tenant_id, _ = await mesh.new_tenant()
    submitted = await batch.SubmitBatch(
        batch_pb2.SubmitBatchRequest(jsonl=batch_file(5, tag=unique("t")), use_case="nightly", display_name="five"),
        metadata=bearer(api_key),
        timeout=10,
    )
    job = submitted.job
    assert job.total == 5 and job.tenant_id == tenant_id and job.use_case == "nightly"

    async def done():
        got = (await batch.GetBatch(batch_pb2.GetBatchRequest(job_id=job.job_id), metadata=bearer(api_key))).job
        assert got.state == batch_pb2.BATCH_STATE_COMPLETED, got
        return got

    finished = await assert_eventually(done, timeout_s=120, interval_s=0.5, message="the job completes")
    lines = await results(batch, api_key, job.job_id)
    assert [line["custom_id"] for line in lines] == [f"item-{i}" for i in range(5)]
    assert all(line["error"] is None and line["response"]["status_code"] == 200 for line in lines)
    assert sum(line["response"]["body"]["usage"]["completion_tokens"] for line in lines) == (
        finished.usage.completion_tokens
    )
    assert finished.completed == 5 and finished.failed == 0

    listed = (await batch.ListBatches(batch_pb2.ListBatchesRequest(), metadata=bearer(api_key))).jobs
    assert [j.job_id for j in listed] == [job.job_id]

    # Private to its tenant: another tenant sees no such job.
    other_key, _, _ = await mesh.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await batch.GetBatch(batch_pb2.GetBatchRequest(job_id=job.job_id), metadata=bearer(other_key))
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await batch.ListBatches(batch_pb2.ListBatchesRequest(), metadata=bearer(other_key))).jobs == []


@pytest.mark.parametrize(
    ("jsonl", "message"),
    [
        (b"", "holds no requests"),
        (b"{not json}", "line 1: not JSON"),
        (batch_file(1, tag="a") + b'\n{"custom_id": "item-0", "body": {"messages": []}}', "line 2:"),
        (b'{"custom_id": "x", "url": "/v1/embeddings", "body": {}}', "only POST /v1/chat/completions"),
        (b'{"custom_id": "x", "body": {"messages": [{"role": "user", "content": "hi"}], "max_token": 3}}', "max_token"),
        (
            b'{"custom_id": "x", "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999}}',
            "max_tokens",
        ),
        (b'{"custom_id": "x", "body": {"messages": [{"role": "wizard", "content": "hi"}]}}', "messages[0]"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
async def test_a_bad_file_is_refused_with_the_line_at_fault_and_nothing_is_queued(mesh, batch, jsonl, message):
    api_key, _, _ = await mesh.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await batch.SubmitBatch(batch_pb2.SubmitBatchRequest(jsonl=jsonl), metadata=bearer(api_key), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()
    assert (await batch.ListBatches(batch_pb2.ListBatchesRequest(), metadata=bearer(api_key))).jobs == []


async def test_bad_calls_get_clear_statuses(mesh, batch):
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await batch.ListBatches(batch_pb2.ListBatchesRequest(), timeout=5)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    api_key, _, _ = await mesh.new_tenant()
    for job_id in ("", "batch_nope", "../../etc", "x" * 500):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await batch.GetBatch(batch_pb2.GetBatchRequest(job_id=job_id), metadata=bearer(api_key), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as window:
        await batch.SubmitBatch(
            batch_pb2.SubmitBatchRequest(jsonl=batch_file(1, tag="w"), completion_window_s=5),
            metadata=bearer(api_key),
        )
    assert window.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "completion_window_s" in window.value.details()
    # found by the fuzzer: a Timestamp whose nanos are out of range crashed SubmitBatch (INTERNAL)
    for stamp in (Timestamp(seconds=1, nanos=-1), Timestamp(seconds=1, nanos=10**9), Timestamp(seconds=-(10**12))):
        with pytest.raises(grpc.aio.AioRpcError) as start:
            await batch.SubmitBatch(
                batch_pb2.SubmitBatchRequest(jsonl=batch_file(1, tag="s"), start_after=stamp),
                metadata=bearer(api_key),
                timeout=10,
            )
        assert start.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "start_after" in start.value.details()
    # found by the fuzzer: a use case with an empty dot-separated part is no NATS key (INTERNAL before)
    for use_case, enabled in (("0..0", False), (".a", True), ("a.", True)):
        with pytest.raises(grpc.aio.AioRpcError) as refresh:
            await batch.SetCacheRefresh(
                batch_pb2.SetCacheRefreshRequest(use_case=use_case, enabled=enabled, min_hits=3),
                metadata=bearer(api_key),
                timeout=10,
            )
        assert refresh.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "use_case" in refresh.value.details()
    await batch.SetCacheRefresh(
        batch_pb2.SetCacheRefreshRequest(use_case="support.bot", enabled=False), metadata=bearer(api_key), timeout=10
    )


async def test_a_job_in_its_start_window_waits_and_a_cancelled_job_ends_its_items(mesh, batch):
    api_key, _, _ = await mesh.new_tenant()
    later = Timestamp()
    later.FromSeconds(int(time.time()) + 3600)
    job = (
        await batch.SubmitBatch(
            batch_pb2.SubmitBatchRequest(jsonl=batch_file(3, tag=unique("c")), start_after=later),
            metadata=bearer(api_key),
        )
    ).job
    assert job.state == batch_pb2.BATCH_STATE_SCHEDULED and job.start_after.seconds == later.seconds
    cancelled = (await batch.CancelBatch(batch_pb2.CancelBatchRequest(job_id=job.job_id), metadata=bearer(api_key))).job
    assert cancelled.state == batch_pb2.BATCH_STATE_CANCELLED
    # Every item not answered yet ends at once; nothing was generated for them.
    lines = await results(batch, api_key, job.job_id)
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert [line["custom_id"] for line in lines] == ["item-0", "item-1", "item-2"]
    assert all(line["error"]["code"] == "cancelled" and line["response"] is None for line in lines)
    assert cancelled.failed == 3 and cancelled.completed == 0


async def test_the_cli_submits_follows_and_fetches_a_job(mesh, tmp_path):
    api_key, _, _ = await mesh.new_tenant()
    source = tmp_path / "requests.jsonl"
    source.write_bytes(batch_file(3, tag=unique("cli")))
    env = {**os.environ, "LLMESH_API_KEY": api_key, "LLMESH_ROUTER_ADDR": mesh.hosts["router"].address}

    async def llmesh(*argv: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmesh.cli.main", "batch", *argv, env=env, stdout=PIPE, stderr=PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=150)
        return process.returncode, out.decode(), err.decode()

    code, out, err = await llmesh("submit", str(source), "--use-case", "cli", "--wait")
    assert code == 0, err
    job_id = out.splitlines()[0]
    assert job_id.startswith("batch_") and "completed  3/3 done (0 failed)" in out
    code, out, err = await llmesh("results", job_id, "-o", str(tmp_path / "out.jsonl"))
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["item-0", "item-1", "item-2"]
    code, out, err = await llmesh("status", "batch_missing")
    assert code == 1 and "NOT_FOUND" in err
    code, out, err = await llmesh("submit", str(tmp_path / "absent.jsonl"))
    assert code == 2 and "no such file" in err
