"""`llmesh up` with its model servers, checked as issue 9 says: Triton on CPU and the
OpenAI-compatible stand-in start next to the services, the catalog names them (tier-1/2 on Triton,
tier-3 on the external stand-in, the in-process llama.cpp engine as the fallback of last resort),
`llmesh models` prints them with live load, a chat of each reaches the backend its entry names (the
router's summary says which), ListModels answers through server reflection, load events appear on
NATS while a generation runs, and a Triton killed mid-stream gives the caller UNAVAILABLE and is
served again after the supervisor restarted it, without a restart of the inference service.

One mesh serves the module; the tests run in file order, the last (slow) one kills Triton."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import grpc
import nats
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit import identity
from llmesh.kit.testing import assert_eventually, unique
from llmesh.launcher.backends import triton_unavailable_reason
from llmesh.router.v1 import router_pb2, router_pb2_grpc

from tests.e2e.test_launcher import cli_env, llmesh, new_key, status_rows

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(bool(triton_unavailable_reason()), reason="no Triton environment (`make triton-env`)"),
]

TRITON_MODEL = "gemma-3-270m"
EXTERNAL_MODEL = "frontier"
FALLBACK_MODEL = "gemma-3-270m-local"
# Long enough to be killed mid-stream; no line repeats, so the repeated-line stop leaves it running.
LONG_PROMPT = "Count from 1 to 300 in words, separated by commas, on one line."


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    home = tmp_path_factory.mktemp("llmesh-home")
    env = cli_env(home)
    env.pop("LLMESH_UP_BACKENDS")
    env.pop("LLMESH_INFERENCE_CATALOG", None)
    try:
        up = llmesh(env, "up", "--detach", timeout=500)
        assert up.returncode == 0, up.stdout + up.stderr
        yield home, env
    finally:
        llmesh(env, "down", timeout=150)


def mesh_state(home) -> dict:
    return json.loads((home / "mesh.json").read_text())


def catalog(home) -> dict[str, dict]:
    return {m["name"]: m for m in json.loads((home / "catalog.json").read_text())["models"]}


def chat(env: dict[str, str], api_key: str, model: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "llmesh.cli.main", "chat", "--no-cache", "--max-tokens", "8", "--model", model, "hi"],
        env={**env, "LLMESH_API_KEY": api_key},
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def generate_request(model: str = "", prompt: str = "", max_tokens: int = 8) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt or f"Say hello ({unique('q')})")],
        max_tokens=max_tokens,
        model=model,
        cache_policy=router_pb2.CACHE_POLICY_BYPASS,
    )


async def answer(
    state: dict, api_key: str, request: router_pb2.GenerateRequest
) -> tuple[str, router_pb2.GenerateSummary]:
    async with grpc.aio.insecure_channel(state["endpoints"]["router"]) as channel:
        text, summary = "", None
        call = router_pb2_grpc.RouterServiceStub(channel).Generate(
            request, metadata=[("authorization", f"Bearer {api_key}")], timeout=120
        )
        async for event in call:
            if event.HasField("summary"):
                summary = event.summary
            else:
                text += event.delta
    assert summary is not None
    return text, summary


def generated_tokens(state: dict, model: str, backend: str) -> float:
    """llmesh_inference_generated_tokens_total of one model, from the inference service's metrics."""
    url = f"http://127.0.0.1:{state['metrics_ports']['inference']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    pattern = r"^llmesh_inference_generated_tokens_total\{[^}]*\} (\S+)$"
    total = 0.0
    for line in text.splitlines():
        if f'model="{model}"' in line and f'backend="{backend}"' in line and re.match(pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_backends_serve_and_llmesh_models_lists_the_catalog_with_live_load(mesh):
    home, env = mesh
    status = llmesh(env, "status")
    rows = status_rows(status.stdout)
    for name in ("triton", "openai"):
        assert rows[name]["state"] == "serving", status.stdout
        assert rows[name]["pid"] != "-", status.stdout
    entries = catalog(home)
    assert rows["triton"]["address"] == entries[TRITON_MODEL]["endpoint"], status.stdout

    # The default catalog: tier-1 and tier-2 on Triton, tier-3 on the external stand-in, the
    # in-process engine as the fallback of last resort.
    assert entries[TRITON_MODEL]["backend"] == "triton" and entries[TRITON_MODEL]["tiers"] == [1, 2]
    assert entries[TRITON_MODEL]["hosting"] == "self_hosted"
    assert entries[EXTERNAL_MODEL]["backend"] == "openai" and entries[EXTERNAL_MODEL]["tiers"] == [3]
    assert entries[EXTERNAL_MODEL]["hosting"] == "external"
    assert entries[FALLBACK_MODEL]["backend"] == "llama_cpp" and entries[FALLBACK_MODEL]["fallback"] is True

    models = llmesh(env, "models")
    assert models.returncode == 0, models.stdout + models.stderr
    listed = {line.split()[0]: line for line in models.stdout.splitlines()[1:] if line.strip()}
    assert set(listed) == set(entries), models.stdout
    assert f"triton {entries[TRITON_MODEL]['endpoint']}" in listed[TRITON_MODEL], models.stdout
    assert "openai" in listed[EXTERNAL_MODEL] and "external" in listed[EXTERNAL_MODEL], models.stdout
    assert "llama_cpp" in listed[FALLBACK_MODEL] and "self-hosted" in listed[FALLBACK_MODEL], models.stdout
    for name in entries:  # live load: active/capacity (utilization)
        assert re.search(r"\b0/2 \(0%\)", listed[name]), models.stdout

    api_key, _ = asyncio.run(new_key(mesh_state(home)))
    assert EXTERNAL_MODEL in chat(env, api_key, EXTERNAL_MODEL).splitlines()[-1]
    assert TRITON_MODEL in chat(env, api_key, TRITON_MODEL).splitlines()[-1]


async def test_each_model_streams_from_the_backend_its_catalog_entry_names(mesh):
    home, _ = mesh
    state, entries = mesh_state(home), catalog(home)
    api_key, _ = await new_key(state)
    for name, entry in entries.items():
        text, summary = await answer(state, api_key, generate_request(model=name))
        assert text, name
        assert (summary.model, summary.backend) == (name, entry["backend"]), summary
        assert summary.usage.completion_tokens > 0, summary

    # Unpinned: the tier the router chose is served by the (non-fallback) model the catalog names.
    by_tier = {t: n for n, e in entries.items() if not e.get("fallback") for t in e["tiers"]}
    _, summary = await answer(state, api_key, generate_request())
    assert summary.model == by_tier[summary.tier], summary
    assert summary.backend == entries[summary.model]["backend"], summary


def test_list_models_through_server_reflection(mesh):
    """As grpcurl would: the request and response types come from the service's reflection."""
    home, _ = mesh
    address = mesh_state(home)["endpoints"]["inference"]
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("llmesh.inference.v1.InferenceService")
        method = service.methods_by_name["ListModels"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        # The operator's credential, as the CLI sends it (docs/adr/0023).
        credential = identity.credential_file(mesh_state(home)["identity_dir"], identity.OPERATOR).read_text().strip()
        response = call(request_cls(), timeout=10, metadata=((identity.SERVICE_METADATA_KEY, credential),))
    listed = {m.name: m.backend for m in response.models}
    assert listed == {name: entry["backend"] for name, entry in catalog(home).items()}


async def test_load_events_appear_on_nats_while_a_generation_runs(mesh):
    home, _ = mesh
    state = mesh_state(home)
    api_key, _ = await new_key(state)
    received: list[events_pb2.ModelLoad] = []

    async def on_message(msg):
        received.append(events_pb2.ModelLoad.FromString(msg.data))

    nc = await nats.connect(state["nats_url"])
    try:
        await nc.subscribe("llmesh.inference.load.local.>", cb=on_message)
        await assert_eventually(
            lambda: {e.model for e in received} >= set(catalog(home)), timeout_s=10, message="periodic snapshots"
        )
        received.clear()
        await answer(state, api_key, generate_request(TRITON_MODEL, LONG_PROMPT, max_tokens=48))
        busy = [e for e in received if e.model == TRITON_MODEL and e.active >= 1]
        assert busy, [(e.model, e.active, e.crossed_percent) for e in received]
        assert any(e.crossed_percent == 50 for e in busy), "the 50 % crossing (capacity 2) is sent at once"
    finally:
        await nc.close()


@pytest.mark.slow
async def test_triton_killed_midstream_is_unavailable_and_served_again_after_its_restart(mesh):
    home, _ = mesh
    state = mesh_state(home)
    inference_before = state["processes"]["inference"]
    triton_pid = state["processes"]["triton"]["pid"]
    api_key, _ = await new_key(state)
    tokens_before = generated_tokens(state, TRITON_MODEL, "triton")

    deltas = 0
    async with grpc.aio.insecure_channel(state["endpoints"]["router"]) as channel:
        call = router_pb2_grpc.RouterServiceStub(channel).Generate(
            generate_request(TRITON_MODEL, LONG_PROMPT, max_tokens=400),
            metadata=[("authorization", f"Bearer {api_key}")],
            timeout=120,
        )
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for event in call:
                assert not event.HasField("summary"), "the stream ended normally: Triton was not killed in time"
                deltas += 1
                if deltas == 3:
                    os.kill(triton_pid, signal.SIGKILL)  # a crash, not a shutdown
    error = failure.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert "triton" in error.details().lower() and "unavailable" in error.details().lower(), error.details()
    # The tokens streamed before the crash are counted.
    assert generated_tokens(state, TRITON_MODEL, "triton") - tokens_before >= 3

    # The supervisor restarts Triton on its port; the inference service reconnects by itself.
    async def served_again():
        try:
            _, summary = await answer(state, api_key, generate_request(TRITON_MODEL))
        except grpc.aio.AioRpcError as exc:
            raise AssertionError(f"{exc.code().name}: {exc.details()}") from exc
        assert (summary.model, summary.backend) == (TRITON_MODEL, "triton")

    await assert_eventually(served_again, timeout_s=240, interval_s=2, message="Triton serving after its restart")
    after = mesh_state(home)["processes"]
    assert after["triton"]["restarts"] >= 1 and after["triton"]["pid"] != triton_pid
    assert after["inference"]["pid"] == inference_before["pid"]
    assert after["inference"]["restarts"] == inference_before["restarts"]
