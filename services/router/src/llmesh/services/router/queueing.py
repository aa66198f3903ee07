"""Priority classes, weighted fair queueing and admission control in front of each backend pool.

A pool is one model of inference's catalog; its capacity is the model's concurrency summed over
the inference replicas that serve it now (their fresh load snapshots; one replica's max
concurrency from ListModels while none is fresh), split between the router replicas running now
(docs/adr/0037). Requests beyond it wait in per-(tenant, class)
queues ("flows") and are dispatched by the Virtual Token Counter of Sheng et al., "Fairness in
Serving Large Language Models" (OSDI'24):

- each flow has a counter of the weighted tokens it was served, divided by its weight
  (class weight × tenant weight, from the policy's `queues` section);
- a free slot goes to the backlogged flow with the smallest counter (weights, not strict
  priority: batch keeps its share under any interactive load, and interactive gets `weight` times
  batch's share);
- a flow that becomes backlogged is lifted to the smallest counter of the backlogged flows (or
  to the last served one when none is), so idle time is not banked as credit;
- the counter is charged with the estimated tokens at dispatch and corrected with the actual
  usage when the generation ends.

Admission control: before a request joins a queue its wait is estimated from the work that the
scheduler would dispatch ahead of it and the pool's recent service times; a request that would
miss its class's SLA (interactive/standard `ttft_slo_ms`, batch `deadline_s`) or the caller's
deadline, or whose class queue is full, is rejected at once with RESOURCE_EXHAUSTED and a RetryInfo.
Domain code: no gRPC here (ADR 0013 explains the design)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import Any

from llmesh.kit.errors import ResourceExhausted
from llmesh.kit.logging import get_logger
from llmesh.kit.tracing import span
from llmesh.services.router import metrics
from llmesh.services.router.domain import Completion, Delta, GenerateCommand, ModelInfo, Priority, Usage

log = get_logger("llmesh.router.queueing")

# VTC's token weights: a generated token costs the backend about twice a prompt token.
PROMPT_TOKEN_WEIGHT = 1.0
OUTPUT_TOKEN_WEIGHT = 2.0
# Smoothing of the pools' service-time estimates (exponentially weighted moving averages).
EWMA_ALPHA = 0.2
MAX_WEIGHT = 1000.0


@dataclasses.dataclass(frozen=True, slots=True)
class ClassPolicy:
    """One priority class: its share of a pool and its SLA."""

    weight: float
    # The longest a request may wait for its first token (queue wait + the backend's TTFT).
    ttft_slo_ms: float | None = None
    # The longest a request may take to complete (queue wait + generation).
    deadline_s: float | None = None
    # Requests of the class that may wait per pool (all tenants together).
    max_queue: int = 256


@dataclasses.dataclass(frozen=True, slots=True)
class QueuePolicy:
    classes: Mapping[Priority, ClassPolicy]
    # This tenant's weight against the others (1: all tenants equal).
    tenant_weight: float = 1.0

    def weight(self, priority: Priority) -> float:
        return self.classes[priority].weight * self.tenant_weight


DEFAULT_QUEUE_CLASSES = (
    '{"interactive": {"weight": 8, "ttft_slo_ms": 300, "max_queue": 256}, '
    '"standard": {"weight": 4, "ttft_slo_ms": 2000, "max_queue": 512}, '
    '"batch": {"weight": 1, "deadline_s": 60, "max_queue": 2048}}'
)

_CLASS_FIELDS = {"weight", "ttft_slo_ms", "deadline_s", "max_queue"}


def _number(value: Any, *, integer: bool = False) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if integer and not isinstance(value, int):
        return None
    return value


def _class_from(entry: Any, base: ClassPolicy, name: str, warn: Callable[[str], None]) -> ClassPolicy:
    if not isinstance(entry, dict):
        warn(name)
        return base
    values = dataclasses.asdict(base)
    for field, value in entry.items():
        where = f"{name}.{field}"
        if field not in _CLASS_FIELDS:
            warn(where)
            continue
        number = _number(value, integer=field == "max_queue")
        if field == "weight" and number is not None and 0 < number <= MAX_WEIGHT:
            values[field] = float(number)
        elif field in ("ttft_slo_ms", "deadline_s") and value is None:
            values[field] = None
        elif field in ("ttft_slo_ms", "deadline_s") and number is not None and number > 0:
            values[field] = float(number)
        elif field == "max_queue" and number is not None and number >= 0:
            values[field] = int(number)
        else:
            warn(where)
    return ClassPolicy(**values)


def queue_policy_from_document(doc: Mapping[str, Any], defaults: QueuePolicy) -> QueuePolicy:
    """The policy's `queues` section over the defaults; a malformed value is logged and skipped
    (a bad edit never takes the router down)."""
    section = doc.get("queues")
    if not isinstance(section, dict):
        return defaults

    def warn(field: str) -> None:
        log.warning("policy_value_ignored", section="queues", field=field)

    classes = dict(defaults.classes)
    tenant_weight = defaults.tenant_weight
    for key, value in section.items():
        if key == "tenant_weight":
            number = _number(value)
            if number is not None and 0 < number <= MAX_WEIGHT:
                tenant_weight = float(number)
            else:
                warn(key)
            continue
        try:
            priority = Priority(key)
        except ValueError:
            warn(key)
            continue
        classes[priority] = _class_from(value, classes[priority], key, warn)
    return QueuePolicy(classes, tenant_weight)


def parse_queue_classes(value: str) -> QueuePolicy:
    """The setting LLMESH_ROUTER_QUEUE_CLASSES: the `queues` section's format, every class given;
    raises ValueError on anything the policy parser would skip."""
    import json

    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"must be a JSON object: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {p.value for p in Priority}:
        raise ValueError("must be a JSON object with exactly the classes interactive, standard and batch")
    problems: list[str] = []
    base = ClassPolicy(weight=1.0)
    classes = {}
    for name, entry in doc.items():
        classes[Priority(name)] = _class_from(entry, base, name, problems.append)
    if problems:
        raise ValueError(f"bad or unknown values: {', '.join(problems)}")
    return QueuePolicy(classes)


def estimate_prompt_tokens(texts: Iterable[str]) -> int:
    """About four characters a token, the usual rule of thumb for English text with BPE tokenizers."""
    return sum(len(text) for text in texts) // 4 + 1


@dataclasses.dataclass
class _ServiceStats:
    """A pool's recent service: time to first token, decode seconds per token, and what share of
    max_tokens a generation really uses."""

    initial_service_s: float
    ttft_s: float | None = None
    seconds_per_token: float | None = None
    fill: float = 1.0

    def expected_output(self, max_tokens: int) -> int:
        return max(1, math.ceil(max_tokens * self.fill))

    def expected_ttft(self) -> float:
        return self.ttft_s if self.ttft_s is not None else 0.0

    def expected_service(self, output_tokens: int) -> float:
        if self.ttft_s is None or self.seconds_per_token is None:
            return self.initial_service_s
        return self.ttft_s + self.seconds_per_token * output_tokens

    def record(self, ttft_s: float, service_s: float, completion_tokens: int, max_tokens: int) -> None:
        per_token = max(0.0, service_s - ttft_s) / max(1, completion_tokens)
        self.ttft_s = _ewma(self.ttft_s, ttft_s)
        self.seconds_per_token = _ewma(self.seconds_per_token, per_token)
        self.fill = _ewma(self.fill, min(1.0, completion_tokens / max(1, max_tokens))) or 1.0


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old + EWMA_ALPHA * (new - old)


@dataclasses.dataclass(eq=False)
class _Waiter:
    flow: _Flow
    charge: float  # estimated weighted tokens / the flow's weight
    service_s: float  # estimated service time
    future: asyncio.Future
    seq: int = 0  # arrival order in the pool (ties between equal counters)


@dataclasses.dataclass(eq=False)
class _Flow:
    tenant: str
    priority: Priority
    weight: float
    counter: float = 0.0
    queue: collections.deque[_Waiter] = dataclasses.field(default_factory=collections.deque)
    running: int = 0
    # How much longer than estimated this flow's requests recently waited (EWMA, seconds). The
    # estimate cannot foresee later arrivals that outrank a waiting request (interactive work,
    # tenants below their share) nor a busy event loop; this learns what it misses.
    wait_error: float | None = None


class Pool:
    """The queues in front of one model."""

    def __init__(self, name: str, capacity: int, initial_service_s: float, clock: Callable[[], float]):
        self.name = name
        self._capacity = capacity
        metrics.QUEUE_CAPACITY.labels(name).set(capacity)
        #: the model as last seen (FairQueues.refresh sizes the pool again from it)
        self.model: ModelInfo | None = None
        self.running = 0
        self.stats = _ServiceStats(initial_service_s)
        self._clock = clock
        self._flows: dict[tuple[str, Priority], _Flow] = {}
        self._backlogged: set[_Flow] = set()
        self._depth: collections.Counter[Priority] = collections.Counter()
        # Estimated end of each running generation (for the wait estimate).
        self._running_until: dict[int, float] = {}
        # The counter of the flow served last: where a flow that becomes backlogged while no
        # other is waiting starts.
        self._last_served = 0.0
        self._arrivals = itertools.count()

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        """A new size (inference or router replicas came or went). Grown: waiting requests take
        the new slots at once. Shrunk: running generations go on; nobody is dispatched until
        fewer than `value` run."""
        if value == self._capacity:
            return
        log.info("queue_capacity_changed", model=self.name, capacity=value, was=self._capacity)
        self._capacity = value
        metrics.QUEUE_CAPACITY.labels(self.name).set(value)
        self.dispatch()

    def depth(self, priority: Priority | None = None) -> int:
        return sum(self._depth.values()) if priority is None else self._depth[priority]

    def counter(self, tenant: str, priority: Priority) -> float | None:
        flow = self._flows.get((tenant, priority))
        return None if flow is None else flow.counter

    def flow(self, tenant: str, priority: Priority, weight: float) -> _Flow:
        key = (tenant, priority)
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = _Flow(tenant, priority, weight, counter=self._floor())
        flow.weight = weight
        return flow

    def _floor(self) -> float:
        if self._backlogged:
            return min(f.counter for f in self._backlogged)
        return self._last_served

    def estimate_wait(self, flow: _Flow) -> float:
        """Seconds until a request joining `flow` now would be dispatched: the requests the VTC
        scheduler serves before it, list-scheduled onto the slots as the running ones end (each
        by its estimated service time; one that overran its estimate ends any moment)."""
        now = self._clock()
        own_counter = flow.counter if flow in self._backlogged else max(flow.counter, self._floor())
        ahead = list(flow.queue)
        finish = own_counter + sum(w.charge for w in ahead)
        for other in self._backlogged:
            if other is flow:
                continue
            counter = other.counter
            for waiter in other.queue:
                # As in dispatch: ties go to the heavier flow, then to the earlier arrival (theirs).
                if (counter, -other.weight) > (finish, -flow.weight):
                    break
                ahead.append(waiter)
                counter += waiter.charge
        if self.running + len(ahead) < self.capacity:
            return 0.0
        free_at = sorted(max(0.0, until - now) for until in self._running_until.values())
        # More running than slots (the pool shrank): a slot frees only once the excess ended,
        # so the slots free as the last `capacity` of them end.
        free_at = free_at[max(0, len(free_at) - self.capacity) :]
        free_at += [0.0] * max(0, self.capacity - len(free_at))
        heapq.heapify(free_at)
        for waiter in ahead:
            heapq.heappush(free_at, heapq.heappop(free_at) + waiter.service_s)
        return free_at[0]

    @staticmethod
    def calibrated(flow: _Flow, estimate: float) -> float:
        return estimate + max(0.0, flow.wait_error or 0.0)

    def calibrated_wait(self, flow: _Flow) -> float:
        return self.calibrated(flow, self.estimate_wait(flow))

    @staticmethod
    def learn_wait(flow: _Flow, estimated: float, actual: float) -> None:
        # Up fast, down slowly: tracks a high quantile of the overrun (about the 80th percentile)
        # rather than its mean, since an SLO is about the slow requests.
        error = actual - estimated
        if flow.wait_error is None:
            flow.wait_error = error
        else:
            alpha = EWMA_ALPHA if error > flow.wait_error else EWMA_ALPHA / 4
            flow.wait_error += alpha * (error - flow.wait_error)

    @staticmethod
    def refused(flow: _Flow) -> None:
        """A refusal teaches nothing about waits: the learned error fades, so a flow refused on
        a stale error is let in again and measured."""
        if flow.wait_error is not None:
            flow.wait_error *= 1.0 - EWMA_ALPHA / 10

    def enqueue(self, waiter: _Waiter) -> None:
        flow = waiter.flow
        if flow not in self._backlogged:
            flow.counter = max(flow.counter, self._floor())
            self._backlogged.add(flow)
        waiter.seq = next(self._arrivals)
        flow.queue.append(waiter)
        self._depth[flow.priority] += 1
        self._publish_depth(flow.priority)
        self.dispatch()

    def dispatch(self) -> None:
        """Fills free slots from the backlogged flow with the smallest counter; on a tie the flow
        of the higher weight (a flow that just became backlogged is lifted to the smallest counter,
        so an interactive request arriving takes the next slot), then the earlier arrival."""
        while self.running < self.capacity and self._backlogged:
            flow = min(self._backlogged, key=lambda f: (f.counter, -f.weight, f.queue[0].seq))
            waiter = flow.queue.popleft()
            self._dequeued(flow)
            if waiter.future.done():  # its caller left; withdraw() will find it gone
                continue
            self._last_served = flow.counter
            flow.counter += waiter.charge
            self._start(waiter)
            waiter.future.set_result(None)

    def _start(self, waiter: _Waiter) -> None:
        self.running += 1
        waiter.flow.running += 1
        self._running_until[id(waiter)] = self._clock() + waiter.service_s

    def start_now(self, waiter: _Waiter) -> None:
        """A free slot and nobody waiting: the request runs at once (still charged)."""
        self._last_served = waiter.flow.counter = max(waiter.flow.counter, self._floor())
        waiter.flow.counter += waiter.charge
        self._start(waiter)

    def _dequeued(self, flow: _Flow) -> None:
        self._depth[flow.priority] -= 1
        self._publish_depth(flow.priority)
        if not flow.queue:
            self._backlogged.discard(flow)

    def withdraw(self, waiter: _Waiter) -> None:
        """A waiting request left (cancelled): its place is freed, its flow not charged."""
        try:
            waiter.flow.queue.remove(waiter)
        except ValueError:
            return
        self._dequeued(waiter.flow)
        self.forget_if_idle(waiter.flow)

    def release(self, waiter: _Waiter, charge: float) -> None:
        """A generation ended: its slot is free; the flow's counter is corrected from the
        estimated charge to the actual one."""
        self.running -= 1
        waiter.flow.running -= 1
        self._running_until.pop(id(waiter), None)
        waiter.flow.counter += charge - waiter.charge
        self.forget_if_idle(waiter.flow)
        self.dispatch()

    def forget_if_idle(self, flow: _Flow) -> None:
        # An idle flow at or below the floor would be lifted to the floor anyway: dropping it
        # keeps the table to the flows that are active or ahead of the others.
        if not flow.queue and not flow.running and flow.counter <= self._floor() and not flow.wait_error:
            self._flows.pop((flow.tenant, flow.priority), None)

    def _publish_depth(self, priority: Priority) -> None:
        metrics.QUEUE_DEPTH.labels(self.name, priority.value).set(self._depth[priority])


class Ticket:
    """One request's place in a pool: `stream` waits for a slot (or rejects at once), runs the
    generation, and charges the tokens it used."""

    def __init__(
        self,
        queues: FairQueues,
        model: ModelInfo,
        *,
        tenant: str,
        use_case: str,
        priority: Priority,
        prompt_tokens: int,
        max_tokens: int,
        deadline: float | None,
        spent_s: float = 0.0,
    ):
        self._queues = queues
        self._model = model
        self.tenant = tenant
        self.use_case = use_case
        self.priority = priority
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.deadline = deadline
        # Time the request already spent before the queue (authentication, classification).
        self.spent_s = spent_s
        #: seconds spent waiting for a slot
        self.wait_s = 0.0

    @property
    def wait_ms(self) -> float:
        return self.wait_s * 1000.0

    async def stream(
        self, open_stream: Callable[[], AsyncIterator[Delta | Completion]]
    ) -> AsyncIterator[Delta | Completion]:
        """Opens the generation once a slot is granted and passes its events through."""
        async with self._queues.slot(self) as settle:
            stream = open_stream()
            async with aclosing(stream):
                async for event in stream:
                    if isinstance(event, Completion):
                        settle(event.usage)
                    else:
                        settle(None)
                    yield event


class FairQueues:
    """Every pool of this router replica.

    `replicas`: the router replicas sharing the models (a number, or a function giving the
    number running now). `instance_capacities`: the concurrency of each inference instance that
    serves a model now, from their fresh load snapshots (empty: unknown)."""

    def __init__(
        self,
        policies: Callable[[str, str], QueuePolicy],
        *,
        replicas: int | Callable[[], int] = 1,
        instance_capacities: Callable[[ModelInfo], Iterable[int]] | None = None,
        initial_service_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._policies = policies
        self._replicas = replicas if callable(replicas) else (lambda n=replicas: n)
        self._instance_capacities = instance_capacities
        self._initial_service_s = initial_service_s
        self._clock = clock
        self._pools: dict[str, Pool] = {}

    def model_capacity(self, model: ModelInfo) -> int:
        """The model's concurrency over every inference instance serving it now: each instance's
        published capacity, at most the max concurrency one inference process admits; one
        process's max concurrency while no instance is known (0: not limited)."""
        if model.max_concurrency <= 0:
            return 0
        known = self._instance_capacities(model) if self._instance_capacities is not None else ()
        total = sum(min(max(0, c), model.max_concurrency) for c in known)
        return total if total > 0 else model.max_concurrency

    def capacity(self, model: ModelInfo) -> int:
        """This replica's share of the model's concurrency, rounded up; 0: not limited (no queue)."""
        total = self.model_capacity(model)
        if total == 0:
            return 0
        return max(1, math.ceil(total / max(1, self._replicas())))

    def pool(self, model: ModelInfo) -> Pool | None:
        capacity = self.capacity(model)
        pool = self._pools.get(model.name)
        if capacity == 0:
            return None
        if pool is None:
            pool = self._pools[model.name] = Pool(model.name, capacity, self._initial_service_s, self._clock)
        else:
            pool.capacity = capacity  # a change dispatches waiters into new slots
        pool.model = model
        return pool

    def pool_of(self, name: str) -> Pool | None:
        """The pool of a model that requests used (None: none yet, or not queued)."""
        return self._pools.get(name)

    def refresh(self) -> None:
        """Sizes every pool again (the router calls it every second): capacity follows inference
        and router replicas that come and go also while no request arrives, and requests
        waiting in a pool that grew are dispatched at once. A model that became unlimited keeps
        its pool at the last size until its waiters are gone (they are dispatched as slots free)."""
        for pool in list(self._pools.values()):
            if pool.model is None:
                continue
            capacity = self.capacity(pool.model)
            if capacity > 0:
                pool.capacity = capacity

    def ticket(
        self,
        model: ModelInfo,
        *,
        tenant: str,
        use_case: str,
        priority: Priority,
        prompt_tokens: int,
        max_tokens: int,
        deadline: float | None,
        spent_s: float = 0.0,
    ) -> Ticket:
        return Ticket(
            self,
            model,
            tenant=tenant,
            use_case=use_case,
            priority=priority,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            deadline=deadline,
            spent_s=spent_s,
        )

    def ticket_for(
        self, model: ModelInfo, tenant: str, command: GenerateCommand, deadline: float | None, spent_s: float = 0.0
    ) -> Ticket:
        """The ticket of a request to `model` (the pipeline's one call); `spent_s`: the time since
        the request arrived, which counts against its TTFT SLO."""
        return self.ticket(
            model,
            tenant=tenant,
            use_case=command.use_case,
            priority=command.priority,
            prompt_tokens=estimate_prompt_tokens(m.content for m in command.messages),
            max_tokens=command.max_tokens,
            deadline=deadline,
            spent_s=spent_s,
        )

    def slot(self, ticket: Ticket) -> _Slot:
        return _Slot(self, ticket)


class _Slot:
    """`async with queues.slot(ticket) as settle:` holds one of the pool's slots; call
    settle(usage) with the generation's usage (settle(None) on each delta marks the first token)."""

    def __init__(self, queues: FairQueues, ticket: Ticket):
        self._queues = queues
        self._ticket = ticket
        self._pool: Pool | None = None
        self._waiter: _Waiter | None = None
        self._started = 0.0
        self._first_token: float | None = None
        self._usage: Usage | None = None

    async def __aenter__(self) -> Callable[[Usage | None], None]:
        t = self._ticket
        pool = self._queues.pool(t._model)
        if pool is None:
            return self._settle
        policy = self._queues._policies(t.tenant, t.use_case)
        cls = policy.classes[t.priority]
        weight = policy.weight(t.priority)
        output = pool.stats.expected_output(t.max_tokens)
        flow = pool.flow(t.tenant, t.priority, weight)
        waiter = _Waiter(
            flow,
            charge=(PROMPT_TOKEN_WEIGHT * t.prompt_tokens + OUTPUT_TOKEN_WEIGHT * output) / weight,
            service_s=pool.stats.expected_service(output),
            future=asyncio.get_running_loop().create_future(),
        )
        # The wait for a slot (0 ms when one is free) is its own step of the request's trace.
        with span("router.queue_wait", tenant=t.tenant, priority=t.priority.value, model=pool.name) as current:
            arrived = self._queues._clock()
            if pool.running < pool.capacity and pool.depth() == 0:
                pool.start_now(waiter)
                estimated = 0.0
            else:
                try:
                    estimated = self._admit(pool, flow, cls, waiter, arrived)
                except ResourceExhausted:
                    pool.forget_if_idle(flow)
                    current.set_attribute("llmesh.queue_outcome", "rejected")
                    raise
                pool.enqueue(waiter)
                try:
                    await waiter.future
                except asyncio.CancelledError:
                    if waiter.future.done() and not waiter.future.cancelled():
                        pool.release(waiter, 0.0)  # dispatched as the caller left: give the slot back
                    else:
                        pool.withdraw(waiter)
                    metrics.QUEUE_ADMISSIONS.labels(t.priority.value, "cancelled").inc()
                    current.set_attribute("llmesh.queue_outcome", "cancelled")
                    raise
            self._pool, self._waiter = pool, waiter
            self._started = self._queues._clock()
            t.wait_s = self._started - arrived
            current.set_attributes({"llmesh.queue_outcome": "admitted", "llmesh.waited_ms": round(t.wait_ms, 3)})
        pool.learn_wait(flow, estimated, t.wait_s)
        metrics.QUEUE_WAIT.labels(t.priority.value).observe(t.wait_s)
        metrics.QUEUE_ADMISSIONS.labels(t.priority.value, "admitted").inc()
        return self._settle

    def _admit(self, pool: Pool, flow: _Flow, cls: ClassPolicy, waiter: _Waiter, now: float) -> float:
        """The raw estimated wait (what calibration learns from) of a request allowed to queue;
        raises for one refused."""
        t = self._ticket
        if pool.depth(t.priority) >= cls.max_queue:
            metrics.QUEUE_ADMISSIONS.labels(t.priority.value, "rejected_full").inc()
            raise ResourceExhausted(
                f"the {t.priority.value} queue of {pool.name} is full ({cls.max_queue} waiting); retry later",
                retry_after_s=round(max(0.1, waiter.service_s / pool.capacity * cls.max_queue / 10), 3),
            )
        estimate = pool.estimate_wait(flow)
        wait = pool.calibrated(flow, estimate)
        bounds: list[tuple[float, str]] = []
        if cls.ttft_slo_ms is not None:
            slo_s = cls.ttft_slo_ms / 1000.0 - t.spent_s - pool.stats.expected_ttft()
            bounds.append((slo_s, f"TTFT SLO {cls.ttft_slo_ms:g} ms"))
        if cls.deadline_s is not None:
            bounds.append((cls.deadline_s - t.spent_s - waiter.service_s, f"deadline {cls.deadline_s:g} s"))
        if t.deadline is not None:
            bounds.append((t.deadline - now - waiter.service_s, "the request's deadline"))
        for bound, what in bounds:
            if wait > bound:
                pool.refused(flow)
                metrics.QUEUE_ADMISSIONS.labels(t.priority.value, "rejected_deadline").inc()
                raise ResourceExhausted(
                    f"{pool.name} is busy: the {t.priority.value} queue wait of about {wait:.2f} s would miss "
                    f"{what}; retry later or with a lower priority class",
                    retry_after_s=round(max(0.1, wait - max(bound, 0.0)), 3),
                )
        return estimate

    def _settle(self, usage: Usage | None) -> None:
        if usage is not None:
            self._usage = usage
        elif self._first_token is None:
            self._first_token = self._queues._clock()

    async def __aexit__(self, *exc_info: object) -> None:
        pool, waiter = self._pool, self._waiter
        if pool is None or waiter is None:
            return
        t = self._ticket
        ended = self._queues._clock()
        if self._usage is not None:
            usage = self._usage
            first = self._first_token if self._first_token is not None else ended
            pool.stats.record(first - self._started, ended - self._started, usage.completion_tokens, t.max_tokens)
        else:
            # No usage (the generation failed): only the prompt is charged.
            usage = Usage(t.prompt_tokens, 0)
        charge = (PROMPT_TOKEN_WEIGHT * usage.prompt_tokens + OUTPUT_TOKEN_WEIGHT * usage.completion_tokens) / (
            waiter.flow.weight
        )
        pool.release(waiter, charge)
