"""The catalog through gRPC (ListModels with live load), load events on a real nats-server, and
the repeated-line stop with the real model."""

from __future__ import annotations

import nats
import pytest
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.kit.testing import assert_eventually

from services.inference.tests.conftest import MAX_CONCURRENCY, MODEL
from services.inference.tests.test_service import LOOPING_PROMPT, collect, request, split

pytestmark = pytest.mark.timeout(60)


async def model_info(stub) -> inference_pb2.ModelInfo:
    (info,) = (await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)).models
    return info


async def test_list_models_shows_the_catalog_and_live_load(inference):
    info = await model_info(inference.stub)
    assert info.name == MODEL and info.backend == "llama_cpp" and list(info.tiers) == [1, 2, 3]
    assert info.hosting == inference_pb2.HOSTING_SELF_HOSTED and info.fallback and info.region == "local"
    assert info.max_sensitivity == common_pb2.SENSITIVITY_RESTRICTED and info.endpoint == ""
    assert info.capacity == MAX_CONCURRENCY

    await collect(inference.stub, request(max_tokens=8))
    call = inference.stub.Generate(request(max_tokens=400), timeout=30)
    try:
        await call.read()  # the first delta: a slot is taken

        async def busy():
            info = await model_info(inference.stub)
            assert info.active_requests == 1 and info.utilization == pytest.approx(1 / MAX_CONCURRENCY)
            return info

        info = await assert_eventually(busy, timeout_s=5)
        assert info.latency.samples >= 1 and info.latency.window_s > 0
        assert 0 < info.latency.time_to_first_token_p50_ms <= info.latency.time_to_first_token_p95_ms
        assert info.latency.tokens_per_second_p50 > 0
    finally:
        call.cancel()


async def test_load_snapshots_every_second_and_at_once_on_a_crossing(inference, nats_url):
    nc = await nats.connect(nats_url)
    received: list[events_pb2.ModelLoad] = []

    async def on_message(msg):
        received.append(events_pb2.ModelLoad.FromString(msg.data))

    await nc.subscribe(f"llmesh.inference.load.local.{MODEL}", cb=on_message)
    try:

        def periodic():
            assert any(e.crossed_percent == 0 and e.model == MODEL and e.capacity == MAX_CONCURRENCY for e in received)

        await assert_eventually(periodic, timeout_s=5, message="a periodic snapshot")
        # A generation the caller leaves early: llama.cpp frees its slot only once the worker
        # thread is done, after the stream has ended. The crossing back down must still be seen
        # at once (it was missed until the next periodic snapshot, and the up crossing below with it).
        early = inference.stub.Generate(request(LOOPING_PROMPT, max_tokens=400), timeout=30)
        await early.read()
        early.cancel()
        await assert_eventually(lambda: inference.load().active == 0, timeout_s=10)
        received.clear()
        call = inference.stub.Generate(request(LOOPING_PROMPT, max_tokens=400), timeout=30)
        await call.read()

        # A crossing event carries the threshold it crossed (a periodic snapshot has 0); its load says
        # the direction. A down crossing of the previous generation may still arrive: it is skipped.
        def crossing():
            up = [i for i, e in enumerate(received) if e.crossed_percent == 50 and e.active == 1]
            assert up
            event = received[up[0]]
            assert event.utilization == pytest.approx(0.5)
            assert event.observed_at.seconds > 0 and event.region == "local"
            return up[0] + 1  # where to look for the way back down (never 0: a falsy result is retried)

        after_up = await assert_eventually(crossing, timeout_s=5, interval_s=0.01, message="the 50 % crossing")
        call.cancel()

        def back_down():
            assert any(e.crossed_percent == 50 and e.active == 0 for e in received[after_up:])

        await assert_eventually(back_down, timeout_s=5, message="the crossing back below 50 %")
    finally:
        await nc.close()


async def test_the_real_model_stops_on_a_repeated_line(inference):
    received, _ = await collect(inference.stub, request("What is the capital of France?", max_tokens=256))
    text, _, completion = split(received)
    assert completion.finish_reason == common_pb2.FINISH_REASON_STOP
    assert completion.usage.completion_tokens < 128
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines and max(lines.count(line) for line in lines) < 3
