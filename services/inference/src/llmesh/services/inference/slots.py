"""Bounded concurrency: a fixed set of generation slots (e.g. model contexts) handed out one per
running generation, a small wait queue in front of them, and RESOURCE_EXHAUSTED beyond that.
The pool says when its counts change (`on_change`): the one place that knows when a slot is
really taken or freed (a llama.cpp worker frees its slot only once its thread is done, after the
caller's stream has ended)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from llmesh.kit.errors import ResourceExhausted

T = TypeVar("T")


class SlotPool(Generic[T]):
    def __init__(
        self,
        slots: Sequence[T],
        *,
        max_waiting: int,
        retry_after_s: float,
        label: str,
        on_change: Callable[[], None] | None = None,
    ):
        if not slots:
            raise ValueError("a slot pool needs at least one slot")
        self._free: list[T] = list(slots)
        self._capacity = len(slots)
        self._waiters: collections.deque[asyncio.Future[T]] = collections.deque()
        self._max_waiting = max_waiting
        self._retry_after_s = retry_after_s
        self._label = label
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        return self._capacity - len(self._free)

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> T:
        """A free slot, after waiting in line if every slot is busy; ResourceExhausted when the
        line is full too."""
        if self._free and not self.waiting:
            slot = self._free.pop()
            self._changed()
            return slot
        if self.waiting >= self._max_waiting:
            raise ResourceExhausted(
                f"{self._label} is at capacity ({self._capacity} running, {self.waiting} waiting); retry later",
                retry_after_s=self._retry_after_s,
            )
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._changed()
        try:
            return await waiter
        except asyncio.CancelledError:
            # Handed a slot in the instant the caller gave up: pass it on.
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            raise
        finally:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
            self._changed()

    def release(self, slot: T) -> None:
        """Returns a slot; the longest-waiting caller gets it first. Call on the event loop."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                self._changed()
                return
        self._free.append(slot)
        self._changed()
