"""The batch runner on a real nats-server with a stand-in pipeline: an item redelivered while its
first attempt still runs is not generated again (the claim), a dead worker's claim is taken over
once its lease ends, and a cancelled job's result lines carry their custom ids."""

from __future__ import annotations

import asyncio
import json

import pytest
from llmesh.kit.bus import Bus
from llmesh.kit.testing import assert_eventually
from llmesh.kit.vocabulary import FinishReason, Principal, Sensitivity
from llmesh.services.router.batch import parse_jsonl
from llmesh.services.router.batch_runner import BatchRunner, Claim, RunnerConfig
from llmesh.services.router.domain import CacheOutcome, Delta, Summary, Usage
from nats.js.errors import KeyDeletedError, KeyNotFoundError

pytestmark = pytest.mark.timeout(60)

PRINCIPAL = Principal("t-batch", "Batch Co", "ops", Sensitivity.INTERNAL, "k1")


def jsonl(n: int) -> bytes:
    lines = [
        {"custom_id": f"row-{i}", "body": {"messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 4}}
        for i in range(n)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode()


class Pipeline:
    """Counts the generations it starts; each waits for `release` (a slow first token)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, principal, command, request_id):
        self.started.append(request_id)
        await self.release.wait()
        yield Delta("answer")
        yield Summary(
            request_id=request_id,
            tier=1,
            model="m",
            backend="local",
            cache_outcome=CacheOutcome.MISS,
            usage=Usage(3, 1),
            cost_usd=0.0,
            time_to_first_token_ms=1.0,
            total_time_ms=1.0,
            finish_reason=FinishReason.STOP,
        )


@pytest.fixture
async def buses(nats_url):
    opened = [await Bus.connect(nats_url, f"batch-test-{i}") for i in range(2)]
    yield opened
    for bus in opened:
        await bus.close()


async def test_an_item_redelivered_while_its_first_attempt_runs_is_not_generated_again(buses, monkeypatch):
    config = RunnerConfig(concurrency=1, ack_wait_s=1.0, window_max_s=0.1, retry_delay_s=0.2)
    pipeline = Pipeline()
    first, second = BatchRunner(buses[0], pipeline, config), BatchRunner(buses[1], pipeline, config)
    for runner in (first, second):
        await runner.start()

    async def renew_only(msg, claim):
        # The first worker's heartbeat never reaches the work queue (a stalled loop, a reconnect):
        # its item is delivered again while it runs; only its claim is kept.
        while True:
            await asyncio.sleep(config.ack_wait_s / 3)
            if claim.revision is not None:
                await first._renew(claim)

    monkeypatch.setattr(first, "_keep", renew_only)
    job = await first.submit(
        PRINCIPAL, parse_jsonl(jsonl(1), "default"), use_case="default", window_s=3600, start_after=0, display_name=""
    )
    first_task = asyncio.create_task(first.run())

    async def taken():
        assert pipeline.started == [f"{job.job_id}-0"]

    await assert_eventually(taken, timeout_s=20)
    second_task = asyncio.create_task(second.run())
    try:
        # Three ack waits: the item came back to the second worker (and to the first, which runs it).
        await asyncio.sleep(3 * config.ack_wait_s + 0.5)
        assert pipeline.started == [f"{job.job_id}-0"], "generated again while the first attempt ran"
        pipeline.release.set()

        async def done():
            lines = [line async for line in first.results(job.job_id)]
            assert [line["custom_id"] for line in lines] == ["row-0"]

        await assert_eventually(done, timeout_s=20)
        # The claim is released with the result.
        await assert_eventually(lambda: _claim_gone(first, job.job_id), timeout_s=5)
        assert pipeline.started == [f"{job.job_id}-0"]
    finally:
        for runner, task in ((first, first_task), (second, second_task)):
            await runner.close(task)


async def _claim_gone(runner: BatchRunner, job_id: str) -> None:
    with pytest.raises((KeyNotFoundError, KeyDeletedError)):
        await runner._kv.get(f"claim.{job_id}.0")


async def test_a_dead_workers_claim_is_taken_over_once_its_lease_ends(buses):
    now = [1000.0]
    config = RunnerConfig(ack_wait_s=5.0)
    dead = BatchRunner(buses[0], Pipeline(), config, clock=lambda: now[0])
    alive = BatchRunner(buses[1], Pipeline(), config, clock=lambda: now[0])
    for runner in (dead, alive):
        await runner.start()
    key = "claim.batch_claimtest.0"
    await alive._kv.delete(key)
    held = Claim(key)
    assert await dead._take(held) == 0.0
    mine = Claim(key)
    # The lease is twice the ack wait: a late heartbeat does not hand the item over.
    assert await alive._take(mine) == pytest.approx(2 * config.ack_wait_s)
    now[0] += 2 * config.ack_wait_s + 0.1  # the dead worker renewed nothing
    assert await alive._take(mine) == 0.0 and mine.revision is not None
    # The dead worker's renewal would now fail: the claim is the other's.
    with pytest.raises(Exception):
        await dead._renew(held)
    await alive._release(mine)


async def test_a_cancelled_jobs_result_lines_carry_their_custom_ids(buses):
    runner = BatchRunner(buses[0], Pipeline(), RunnerConfig())
    await runner.start()
    job = await runner.submit(
        PRINCIPAL,
        parse_jsonl(jsonl(3), "default"),
        use_case="default",
        window_s=3600,
        start_after=10**10,  # not started: every item ends cancelled
        display_name="",
    )
    await runner.cancel(job.job_id, PRINCIPAL.tenant_id)
    lines = sorted([line async for line in runner.results(job.job_id)], key=lambda line: line["index"])
    assert [line["custom_id"] for line in lines] == ["row-0", "row-1", "row-2"]
    assert all(line["error"]["code"] == "cancelled" for line in lines)
