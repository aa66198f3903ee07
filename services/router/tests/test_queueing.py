"""The fair queues in front of a model, on a fake clock and a fake backend: the dispatch order of
the Virtual Token Counter, class weights, admission control, cancellation and counter correction."""

from __future__ import annotations

import asyncio

import pytest
from llmesh.kit.errors import ResourceExhausted
from llmesh.kit.testing import assert_eventually, recording_spans
from llmesh.kit.vocabulary import FinishReason
from llmesh.services.router.domain import Completion, Delta, ModelInfo, Priority, Usage
from llmesh.services.router.load import LoadBoard, LoadSnapshot
from llmesh.services.router.queueing import (
    DEFAULT_QUEUE_CLASSES,
    OUTPUT_TOKEN_WEIGHT,
    PROMPT_TOKEN_WEIGHT,
    ClassPolicy,
    FairQueues,
    QueuePolicy,
    parse_queue_classes,
    queue_policy_from_document,
)
from structlog.testing import capture_logs

I, S, B = Priority.INTERACTIVE, Priority.STANDARD, Priority.BATCH
MODEL = ModelInfo(name="pool-a", backend="fake", max_concurrency=1)
DEFAULTS = parse_queue_classes(DEFAULT_QUEUE_CLASSES)
# Weights only, no SLA: nothing is rejected, so the dispatch order is all there is to see.
WEIGHTS_ONLY = QueuePolicy({I: ClassPolicy(8.0, max_queue=10_000), S: ClassPolicy(4.0), B: ClassPolicy(1.0)})


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """Requests through FairQueues to a fake backend that takes `per_token_s` of fake time per
    generated token and records the order in which requests reach it."""

    def __init__(self, policy: QueuePolicy = WEIGHTS_ONLY, *, model: ModelInfo = MODEL, **options):
        self.clock = FakeClock()
        self.policies = {"": policy}
        self.queues = FairQueues(lambda tenant, _uc: self.policies.get(tenant, policy), clock=self.clock, **options)
        self.model = model
        self.order: list[tuple[str, Priority]] = []
        self.gate = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    @property
    def pool(self):
        return self.queues.pool(self.model)

    def backend(self, tenant: str, priority: Priority, tokens: int, gated: bool, probe=None):
        async def generate():
            self.order.append((tenant, priority))
            if probe is not None:
                probe()
            if gated:
                await self.gate.wait()
            for _ in range(tokens):
                self.clock.now += 0.01
                yield Delta("x")
            yield Completion(Usage(10, tokens), FinishReason.STOP, self.model.name, "fake")

        return generate

    async def request(
        self,
        tenant: str,
        priority: Priority,
        *,
        tokens: int = 10,
        max_tokens: int = 10,
        deadline: float | None = None,
        gated: bool = False,
        probe=None,
        spent_s: float = 0.0,
    ):
        ticket = self.queues.ticket(
            self.model,
            tenant=tenant,
            use_case="default",
            priority=priority,
            prompt_tokens=10,
            max_tokens=max_tokens,
            deadline=deadline,
            spent_s=spent_s,
        )
        async for _ in ticket.stream(self.backend(tenant, priority, tokens, gated, probe)):
            pass
        return ticket

    def submit(self, tenant: str, priority: Priority, **options) -> asyncio.Task:
        task = asyncio.create_task(self.request(tenant, priority, **options))
        self.tasks.append(task)
        return task

    async def block(self) -> asyncio.Task:
        """Occupies the pool's one slot until `gate` is set, so what follows queues up."""
        task = self.submit("blocker", S, gated=True)
        await assert_eventually(lambda: self.pool.running == 1)
        return task

    async def queued(self, n: int) -> None:
        await assert_eventually(lambda: self.pool.depth() == n, message=f"{n} waiting")

    async def drain(self) -> list[tuple[str, Priority]]:
        self.gate.set()
        await asyncio.gather(*self.tasks)
        return self.order[1:]  # without the blocker


async def test_a_heavy_tenant_does_not_starve_light_ones():
    h = Harness()
    await h.block()
    for tenant, count in (("heavy", 30), ("light-1", 3), ("light-2", 3)):
        for _ in range(count):
            h.submit(tenant, S)
        await h.queued(sum(1 for t in h.tasks) - 1)
    order = [tenant for tenant, _ in await h.drain()]
    # Round robin while all three are backlogged: the light tenants are done within the first nine.
    assert order[:9] == ["heavy", "light-1", "light-2"] * 3
    assert order[9:] == ["heavy"] * 27


async def test_fifo_would_have_served_the_heavy_tenant_first():
    """The counter-example the test above rules out: arrival order is not what is served."""
    h = Harness()
    await h.block()
    for tenant in ["heavy"] * 5 + ["light"]:
        h.submit(tenant, S)
    await h.queued(6)
    order = [tenant for tenant, _ in await h.drain()]
    assert order.index("light") == 1


async def test_interactive_gets_its_weight_and_batch_still_progresses():
    h = Harness()
    await h.block()
    for _ in range(40):
        h.submit("t", I)
    for _ in range(10):
        h.submit("t", B)
    await h.queued(50)
    order = [p for _, p in await h.drain()]
    # Equal request sizes and weights 8:1: one batch request per eight interactive ones while
    # both are backlogged, never strict priority (batch is served before interactive runs dry).
    first_36 = order[:36]
    assert first_36.count(B) == 4 and first_36.count(I) == 32
    assert order.index(B) < 2
    assert order[-5:] == [B] * 5  # what is left of batch after interactive ran out


async def test_a_tenant_weight_from_the_policy_buys_a_larger_share():
    h = Harness()
    h.policies["gold"] = QueuePolicy(WEIGHTS_ONLY.classes, tenant_weight=3.0)
    await h.block()
    for _ in range(20):
        h.submit("gold", S)
        h.submit("plain", S)
    await h.queued(40)
    order = [tenant for tenant, _ in await h.drain()]
    assert 14 <= order[:20].count("gold") <= 16, order


async def test_idle_time_is_not_banked():
    h = Harness()
    await h.block()
    started = []

    def late_comes_back():
        started.append(1)
        if len(started) == 8:
            for _ in range(4):
                h.submit("late", S)

    for _ in range(20):
        h.submit("busy", S, probe=late_comes_back)
    h.submit("late", S, max_tokens=50, tokens=50)  # one long answer early, then idle
    await h.queued(21)
    h.gate.set()
    await assert_eventually(lambda: len(h.order) == 26 and all(t.done() for t in h.tasks))
    # "late" was idle while "busy" was served: it comes back at busy's counter, not at the lower
    # one it left with, so it shares the pool from then on instead of taking it over with the
    # credit of its idle time.
    order = [tenant for tenant, _ in h.order[1:]]
    assert order.count("late") == 5
    assert all(order[i : i + 2] != ["late", "late"] for i in range(len(order) - 1)), order


async def test_counters_are_charged_the_estimate_then_corrected_with_the_actual_usage():
    h = Harness(model=ModelInfo(name="pool-a", backend="fake", max_concurrency=1))
    during = []
    weight = WEIGHTS_ONLY.weight(S)
    await h.request("t", S, max_tokens=100, tokens=10, probe=lambda: during.append(h.pool.counter("t", S)))
    estimated = (PROMPT_TOKEN_WEIGHT * 10 + OUTPUT_TOKEN_WEIGHT * 100) / weight
    actual = (PROMPT_TOKEN_WEIGHT * 10 + OUTPUT_TOKEN_WEIGHT * 10) / weight
    assert during == [pytest.approx(estimated)]
    assert h.pool.counter("t", S) == pytest.approx(actual)
    # The pool learned that generations use a tenth of max_tokens: the next estimate is lower.
    assert h.pool.stats.expected_output(100) < 100


async def test_a_request_that_would_miss_its_sla_is_rejected_at_once_with_a_retry_delay():
    h = Harness(DEFAULTS, initial_service_s=1.0)
    await h.block()
    # One generation of about 1 s is running on the only slot: an interactive request would wait
    # about 1 s for it, more than its 300 ms TTFT SLO.
    with pytest.raises(ResourceExhausted) as rejected:
        await h.request("t", I)
    assert "TTFT SLO 300 ms" in rejected.value.message
    assert rejected.value.retry_after_s == pytest.approx(0.7)
    assert h.pool.depth() == 0
    # Batch (60 s) and standard (2 s) can afford the wait.
    h.submit("t", B)
    h.submit("t", S)
    await h.queued(2)
    # A caller deadline the wait cannot meet is refused too.
    with pytest.raises(ResourceExhausted) as late:
        await h.request("t", B, deadline=h.clock.now + 1.5)
    assert "the request's deadline" in late.value.message
    await h.drain()


async def test_time_spent_before_the_queue_counts_against_the_ttft_slo():
    h = Harness(DEFAULTS, initial_service_s=0.2)
    await h.block()
    # About 0.2 s to wait: after 150 ms of authentication and classification that misses 300 ms...
    with pytest.raises(ResourceExhausted, match="TTFT SLO 300 ms"):
        await h.request("u", I, spent_s=0.15)
    # ...while a request that got here at once makes it.
    h.submit("t", I)
    await h.queued(1)
    await h.drain()


async def test_the_wait_estimate_counts_only_the_work_served_first():
    h = Harness(DEFAULTS, initial_service_s=1.0)
    await h.block()
    for _ in range(20):
        h.submit("heavy", B)
    await h.queued(20)
    # Twenty batch requests of about 1 s each are waiting, yet another tenant's batch request is
    # served after one of them (equal counters: the earlier arrival first), not after all twenty.
    assert h.pool.estimate_wait(h.pool.flow("light", B, DEFAULTS.weight(B))) == pytest.approx(2.0)
    # A standard request outweighs batch on a tie: only the running generation is ahead of it.
    assert h.pool.estimate_wait(h.pool.flow("light", S, DEFAULTS.weight(S))) == pytest.approx(1.0)
    assert h.pool.estimate_wait(h.pool.flow("heavy", B, DEFAULTS.weight(B))) == pytest.approx(21.0)
    await h.drain()


async def test_waits_longer_than_estimated_raise_later_estimates_until_refusals_fade_them():
    h = Harness(DEFAULTS, initial_service_s=0.1)
    await h.block()
    flow = h.pool.flow("t", S, DEFAULTS.weight(S))
    assert h.pool.calibrated_wait(flow) == pytest.approx(0.1)
    other = h.pool.flow("u", S, DEFAULTS.weight(S))
    for _ in range(40):  # standard requests waited 3 s where 0.1 s was expected
        h.pool.learn_wait(flow, 0.1, 3.1)
    assert h.pool.calibrated_wait(flow) == pytest.approx(3.1, rel=0.01)
    assert h.pool.calibrated_wait(other) == pytest.approx(0.1)  # learned per tenant and class
    with pytest.raises(ResourceExhausted, match="TTFT SLO 2000 ms"):
        await h.request("t", S)
    # Refused requests are not measured: the learned error fades, and the class is let in again.
    for _ in range(300):
        h.pool.refused(flow)
    assert h.pool.calibrated_wait(flow) < 0.11
    h.submit("t", S)
    await h.queued(1)
    await h.drain()


async def test_a_full_class_queue_rejects_new_requests():
    capped = QueuePolicy({**WEIGHTS_ONLY.classes, B: ClassPolicy(1.0, max_queue=2)})
    h = Harness(capped)
    await h.block()
    h.submit("t", B)
    h.submit("u", B)
    await h.queued(2)
    with pytest.raises(ResourceExhausted) as full:
        await h.request("v", B)
    assert "queue of pool-a is full (2 waiting)" in full.value.message and full.value.retry_after_s > 0
    h.submit("v", S)  # another class has its own cap
    await h.queued(3)
    await h.drain()


async def test_each_wait_for_a_slot_is_a_span_with_its_class_tenant_and_wait():
    spans = recording_spans()
    try:
        capped = QueuePolicy({**WEIGHTS_ONLY.classes, B: ClassPolicy(1.0, max_queue=1)})
        h = Harness(capped)
        blocker = await h.block()
        waiting = h.submit("acme", B, tokens=5)
        await h.queued(1)
        with pytest.raises(ResourceExhausted):
            await h.request("other", B)
        h.gate.set()
        await blocker
        ticket = await waiting
    finally:
        spans.shutdown()
    by_tenant = {s.attributes["llmesh.tenant"]: s for s in spans.get_finished_spans() if s.name == "router.queue_wait"}
    assert set(by_tenant) == {"blocker", "acme", "other"}, by_tenant
    # The blocker found a free slot; acme waited while the blocker generated 10 tokens of fake time.
    assert by_tenant["blocker"].attributes["llmesh.waited_ms"] == 0
    waited = by_tenant["acme"].attributes
    assert waited["llmesh.priority"] == "batch" and waited["llmesh.model"] == "pool-a"
    assert waited["llmesh.queue_outcome"] == "admitted"
    assert waited["llmesh.waited_ms"] == pytest.approx(ticket.wait_ms) == pytest.approx(100.0)
    refused = by_tenant["other"]
    assert refused.attributes["llmesh.queue_outcome"] == "rejected" and refused.status.status_code.name == "ERROR"
    assert "llmesh.waited_ms" not in refused.attributes


async def test_cancelling_a_waiting_request_frees_its_place_and_charges_nothing():
    capped = QueuePolicy({**WEIGHTS_ONLY.classes, B: ClassPolicy(1.0, max_queue=1)})
    h = Harness(capped)
    await h.block()
    leaving = h.submit("t", B)
    await h.queued(1)
    before = h.pool.counter("t", B)
    leaving.cancel()
    await assert_eventually(lambda: h.pool.depth() == 0)
    h.tasks.remove(leaving)
    h.submit("u", B)  # the place is free again
    await h.queued(1)
    order = await h.drain()
    assert order == [("u", B)]
    assert h.pool.counter("t", B) in (None, before)
    assert h.pool.running == 0


async def test_a_model_without_a_stated_concurrency_is_not_queued():
    h = Harness(model=ModelInfo(name="unlimited", backend="fake"))
    results = await asyncio.gather(*(h.request("t", I) for _ in range(5)))
    assert h.queues.pool(h.model) is None and all(t.wait_s == 0 for t in results)


def test_capacity_is_split_between_router_replicas():
    queues = FairQueues(lambda *_: DEFAULTS, replicas=3)
    assert queues.capacity(ModelInfo(name="m", backend="x", max_concurrency=8)) == 3
    assert queues.capacity(ModelInfo(name="m", backend="x", max_concurrency=2)) == 1
    assert queues.capacity(ModelInfo(name="m", backend="x")) == 0


def snapshot(instance: str, capacity: int, model: str = "m") -> LoadSnapshot:
    return LoadSnapshot(model, "r1", "fake", 0.0, 0, 0, capacity, 0, 0.0, 0.0, 0.0, 0.0, instance=instance)


class Replicas:
    """The load board of inference's snapshots and the router count, as the router app wires
    them into FairQueues (docs/adr/0037), on a fake clock."""

    def __init__(self, clock: FakeClock, routers: int = 1):
        self.board = LoadBoard(3.0, clock=clock)
        self.routers = routers

    def options(self) -> dict:
        return dict(
            replicas=lambda: self.routers,
            instance_capacities=lambda model: [s.capacity for s in self.board.instances(model.name, "r1")],
        )


def test_capacity_is_the_concurrency_summed_over_the_fresh_inference_instances_split_between_routers():
    clock = FakeClock()
    replicas = Replicas(clock)
    queues = FairQueues(lambda *_: DEFAULTS, clock=clock, **replicas.options())
    model = ModelInfo(name="m", backend="x", max_concurrency=2)
    assert queues.capacity(model) == 2, "no snapshot yet: one replica's max_concurrency"
    replicas.board.record(snapshot("inference-a", 2))
    replicas.board.record(snapshot("inference-b", 2))
    assert queues.capacity(model) == 4
    replicas.routers = 2
    assert queues.capacity(model) == 2
    replicas.routers = 3
    assert queues.capacity(model) == 2, "rounded up"
    # A shared deployment's capacity (say a Triton's 8) counts at most what one process admits.
    replicas.board.record(snapshot("inference-b", 8))
    replicas.routers = 1
    assert queues.capacity(model) == 4
    replicas.board.record(snapshot("inference-c", 1))
    assert queues.capacity(model) == 5, "an instance that publishes less counts what it publishes"
    assert queues.capacity(ModelInfo(name="m", backend="x")) == 0, "a model without a stated concurrency is not queued"
    clock.now += 3.5  # every snapshot stale (inference down, or NATS): back to ListModels' figure
    assert queues.capacity(model) == 2
    replicas.routers = 2
    assert queues.capacity(model) == 1


async def test_a_pool_grows_when_an_inference_replica_comes_and_its_waiters_start_at_once():
    h = Harness()
    replicas = Replicas(h.clock)
    h.queues = FairQueues(lambda *_: WEIGHTS_ONLY, clock=h.clock, **replicas.options())
    replicas.board.record(snapshot("inference-a", 1, model=MODEL.name))
    await h.block()
    for _ in range(3):
        h.submit("t", S)
    await h.queued(3)
    replicas.board.record(snapshot("inference-b", 1, model=MODEL.name))
    replicas.board.record(snapshot("inference-c", 1, model=MODEL.name))
    h.queues.refresh()  # what the router does every second: no request has to arrive or end
    assert (h.pool.capacity, h.pool.running, h.pool.depth()) == (3, 3, 1)
    # The two new slots serve the three waiters, one after the other, while the blocker still
    # holds the old one.
    await assert_eventually(lambda: h.order[1:] == [("t", S)] * 3, message="every waiter served")
    assert h.pool.running == 1 and h.pool.depth() == 0
    await h.drain()
    assert h.pool.running == 0


async def test_a_pool_shrinks_when_an_inference_replica_goes_and_refills_only_below_the_new_size():
    clock = FakeClock()
    replicas = Replicas(clock)
    queues = FairQueues(lambda *_: WEIGHTS_ONLY, clock=clock, initial_service_s=10.0, **replicas.options())
    replicas.board.record(snapshot("inference-a", 1, model=MODEL.name))
    replicas.board.record(snapshot("inference-b", 1, model=MODEL.name))
    gates = {name: asyncio.Event() for name in ("a", "b", "c")}
    started: list[str] = []

    async def request(name: str) -> None:
        async def generate():
            started.append(name)
            await gates[name].wait()
            yield Completion(Usage(10, 1), FinishReason.STOP, MODEL.name, "fake")

        ticket = queues.ticket(
            MODEL, tenant="t", use_case="", priority=S, prompt_tokens=10, max_tokens=10, deadline=None
        )
        async for _ in ticket.stream(generate):
            pass

    a = asyncio.create_task(request("a"))
    clock.now += 0.5
    b = asyncio.create_task(request("b"))
    await assert_eventually(lambda: started == ["a", "b"])
    pool = queues.pool(MODEL)
    assert pool.capacity == 2
    c = asyncio.create_task(request("c"))
    await assert_eventually(lambda: pool.depth() == 1)
    clock.now += 1.0
    replicas.board.record(snapshot("inference-a", 1, model=MODEL.name))  # b's replica went quiet
    clock.now += 2.5
    queues.refresh()
    assert (pool.capacity, pool.running) == (1, 2), "the running generations go on"
    # Two running on one slot: it frees when the later of them ends (b, in 6.5 s by the 10 s
    # estimate), not the earlier; c waits for it, and a request arriving now for the slot after c.
    assert pool.estimate_wait(pool.flow("other", S, WEIGHTS_ONLY.weight(S))) == pytest.approx(6.5 + 10.0)
    gates["a"].set()
    await a
    assert pool.running == 1 and pool.depth() == 1 and started == ["a", "b"], "one runs on the one slot"
    gates["b"].set()
    await b
    await assert_eventually(lambda: started == ["a", "b", "c"])
    gates["c"].set()
    await c
    assert pool.running == 0


def test_the_policy_section_overrides_the_defaults_and_bad_values_are_skipped():
    policy = queue_policy_from_document(
        {"queues": {"batch": {"weight": 2, "deadline_s": 120}, "tenant_weight": 2}}, DEFAULTS
    )
    assert policy.classes[B] == ClassPolicy(2.0, deadline_s=120.0, max_queue=2048)
    assert policy.classes[I] == DEFAULTS.classes[I] and policy.weight(B) == 4.0
    with capture_logs() as logs:
        bad = queue_policy_from_document(
            {"queues": {"urgent": {}, "interactive": {"weight": -1, "ttft_slo_ms": 100}, "tenant_weight": "x"}},
            DEFAULTS,
        )
    assert bad.classes[I] == ClassPolicy(8.0, ttft_slo_ms=100.0, max_queue=256) and bad.tenant_weight == 1.0
    assert sorted(e["field"] for e in logs) == ["interactive.weight", "tenant_weight", "urgent"]


def test_the_setting_must_name_every_class_with_valid_values():
    with pytest.raises(ValueError, match="exactly the classes"):
        parse_queue_classes('{"interactive": {"weight": 1}}')
    with pytest.raises(ValueError, match="batch.weight"):
        parse_queue_classes('{"interactive": {}, "standard": {}, "batch": {"weight": 0}}')
