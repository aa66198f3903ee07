"""Bounded concurrency with a small wait queue."""

from __future__ import annotations

import asyncio

import pytest
from llmesh.kit.errors import ResourceExhausted
from llmesh.kit.testing import assert_eventually
from llmesh.services.inference.slots import SlotPool


def pool(slots=("a", "b"), max_waiting=1) -> SlotPool[str]:
    return SlotPool(list(slots), max_waiting=max_waiting, retry_after_s=0.5, label="model m")


async def test_full_pool_queues_then_rejects_with_retry_hint():
    p = pool()
    first, second = await p.acquire(), await p.acquire()
    assert {first, second} == {"a", "b"} and p.in_use == 2
    waiting = asyncio.create_task(p.acquire())
    await assert_eventually(lambda: p.waiting == 1)
    with pytest.raises(ResourceExhausted, match="at capacity") as full:
        await p.acquire()
    assert full.value.retry_after_s == 0.5
    p.release(first)
    assert await waiting == first
    assert p.in_use == 2 and p.waiting == 0


async def test_waiters_are_served_in_arrival_order():
    p = pool(slots=("a",), max_waiting=3)
    held = await p.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        slot = await p.acquire()
        order.append(i)
        p.release(slot)

    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(take(i)))
        await assert_eventually(lambda: p.waiting == i + 1)
    p.release(held)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert p.in_use == 0


async def test_a_cancelled_waiter_leaves_the_line_and_loses_no_slot():
    p = pool(slots=("a",), max_waiting=1)
    held = await p.acquire()
    waiting = asyncio.create_task(p.acquire())
    await assert_eventually(lambda: p.waiting == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert p.waiting == 0
    p.release(held)
    assert p.in_use == 0
    assert await p.acquire() == "a"


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on():
    p = pool(slots=("a",), max_waiting=2)
    held = await p.acquire()
    doomed = asyncio.create_task(p.acquire())
    await assert_eventually(lambda: p.waiting == 1)
    p.release(held)  # resolves doomed's future ...
    doomed.cancel()  # ... and it is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert p.in_use == 0
    assert await p.acquire() == "a"


async def test_no_queue_rejects_at_once():
    p = pool(slots=("a",), max_waiting=0)
    await p.acquire()
    with pytest.raises(ResourceExhausted):
        await p.acquire()


async def test_every_change_of_the_counts_is_reported_with_the_counts_already_changed():
    seen: list[tuple[int, int]] = []
    p = SlotPool(
        ["a"], max_waiting=1, retry_after_s=0.5, label="model m", on_change=lambda: seen.append((p.in_use, p.waiting))
    )
    held = await p.acquire()
    assert seen == [(1, 0)]
    waiting = asyncio.create_task(p.acquire())
    await assert_eventually(lambda: seen[-1] == (1, 1))
    p.release(held)  # handed to the waiter: still one in use, nobody waiting
    assert seen[-1] == (1, 0)
    p.release(await waiting)
    assert seen[-1] == (0, 0)
