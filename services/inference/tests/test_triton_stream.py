"""The Triton backend's request and stream against a small in-process server speaking Triton's
gRPC protocol (no tritonserver needed): the inputs arrive as Triton reads them, the deltas and the
completion come from the responses, and the token counters are added once per generation, also
for one cut short."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import grpc
import pytest
from llmesh.kit.chat import Message, Sampling
from llmesh.kit.testing import assert_eventually
from llmesh.kit.vocabulary import FinishReason
from llmesh.services.inference.backend import BackendCompletion, GenerationRequest, TextDelta
from llmesh.services.inference.triton_backend import TritonBackend, TritonModel
from prometheus_client import REGISTRY
from tritonclient.grpc import service_pb2, service_pb2_grpc

pytestmark = pytest.mark.timeout(30)

MODEL = "fake-triton"


def _bytes_tensor(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<I", len(data)) + data


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Streams `max_tokens` responses of one word each (num_output_tokens 1 each), the last with
    finish_reason "length" and the final-response flag; records the inputs it was sent."""

    def __init__(self):
        self.inputs: dict[str, tuple[str, list[int], bytes]] = {}
        self.sent = 0
        self.cancelled = asyncio.Event()

    async def ModelStreamInfer(self, request_iterator, context):
        request = await anext(aiter(request_iterator))
        self.inputs = {
            tensor.name: (tensor.datatype, list(tensor.shape), raw)
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        (max_tokens,) = struct.unpack("<i", self.inputs["max_tokens"][2])
        context.add_done_callback(lambda _: self.cancelled.set())
        for i in range(max_tokens):
            last = i == max_tokens - 1
            response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
            response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
            response.raw_output_contents.append(_bytes_tensor(f"w{i} "))
            response.outputs.add(name="num_input_tokens", datatype="UINT32", shape=[1])
            response.raw_output_contents.append(struct.pack("<I", 11))
            response.outputs.add(name="num_output_tokens", datatype="UINT32", shape=[1])
            response.raw_output_contents.append(struct.pack("<I", 1))
            if last:
                response.outputs.add(name="finish_reason", datatype="BYTES", shape=[1])
                response.raw_output_contents.append(_bytes_tensor("length"))
                response.parameters["triton_final_response"].bool_param = True
            self.sent += 1
            yield service_pb2.ModelStreamInferResponse(infer_response=response)
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def fake_triton():
    fake = FakeTriton()
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backend = TritonBackend(f"127.0.0.1:{port}", [TritonModel(MODEL, "gemma", 4096, 1, 1)])
    await backend.start()
    try:
        yield fake, backend
    finally:
        await backend.close()
        await server.stop(0)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": MODEL, "backend": "triton"}) or 0.0


def ask(max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        MODEL, (Message("user", "Hi <eos> there"),), max_tokens, Sampling(temperature=0.5, seed=7), request_id="r-9"
    )


async def test_the_request_arrives_as_triton_reads_it_and_the_stream_is_counted_once():
    generated, prompt = (
        counter("llmesh_inference_generated_tokens_total"),
        counter("llmesh_inference_prompt_tokens_total"),
    )
    async with fake_triton() as (fake, backend):
        events = [event async for event in backend.generate(ask(5))]
    assert [e.text for e in events[:-1]] == [f"w{i} " for i in range(5)]
    assert events[-1] == BackendCompletion(11, 5, FinishReason.LENGTH)
    datatype, shape, raw = fake.inputs["text_input"]
    assert (datatype, shape) == ("BYTES", [1])
    text = raw[4:].decode()
    assert struct.unpack("<I", raw[:4])[0] == len(raw) - 4
    assert text.startswith("<bos><start_of_turn>user\n") and "Hi <\u200beos> there" in text
    assert fake.inputs["max_tokens"] == ("INT32", [1], struct.pack("<i", 5))
    assert fake.inputs["stream"] == ("BOOL", [1], b"\x01")
    assert fake.inputs["temperature"] == ("FP32", [1], struct.pack("<f", 0.5))
    assert fake.inputs["random_seed"] == ("UINT64", [1], struct.pack("<Q", 7))
    assert counter("llmesh_inference_generated_tokens_total") - generated == 5
    assert counter("llmesh_inference_prompt_tokens_total") - prompt == 11


async def test_a_stream_cut_short_is_counted_and_cancelled_upstream():
    generated = counter("llmesh_inference_generated_tokens_total")
    async with fake_triton() as (fake, backend):
        events = backend.generate(ask(500))
        received = [await anext(events) for _ in range(2)]
        assert all(isinstance(e, TextDelta) for e in received)
        assert backend.load(MODEL).active == 1
        await events.aclose()
        assert backend.load(MODEL).active == 0
        assert counter("llmesh_inference_generated_tokens_total") - generated == 2
        await asyncio.wait_for(fake.cancelled.wait(), 5)
        await assert_eventually(lambda: fake.sent < 500, timeout_s=2)
