"""The Triton embedder against a gRPC server speaking Triton's inference protocol (the modules
shipped in tritonclient). No Triton server runs here: this one answers ModelInfer with the
word-hash embedder's vectors, so the client's request, decoding and error paths run for real."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from llmesh.kit import errors
from llmesh.services.cache.semantic.embedder import TritonEmbedder
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor

from .fakes import HashEmbedder

pytestmark = pytest.mark.timeout(30)


class EmbeddingModel(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dim: int):
        self.hash = HashEmbedder(dim)
        self.dim = dim
        self.wrong_shape = False

    async def ModelInfer(self, request, context):
        if request.model_name != "minilm":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.model_name}'")
        (tensor,) = request.inputs
        assert tensor.name == "TEXT" and tensor.datatype == "BYTES" and list(tensor.shape)[1] == 1
        texts = [t.decode() for t in deserialize_bytes_tensor(request.raw_input_contents[0])]
        vectors = (await self.hash.embed(texts)) * 3.0  # unnormalised, as many models return
        dim = self.dim - 1 if self.wrong_shape else self.dim
        out = service_pb2.ModelInferResponse.InferOutputTensor(
            name="EMBEDDING", datatype="FP32", shape=[len(texts), dim]
        )
        return service_pb2.ModelInferResponse(
            model_name=request.model_name,
            outputs=[out],
            raw_output_contents=[vectors[:, :dim].astype(np.float32).tobytes()],
        )


@pytest.fixture
async def triton():
    server = grpc.aio.server()
    model = EmbeddingModel(dim=16)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(model, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield model, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_embeds_through_triton_and_normalises(triton):
    model, url = triton
    embedder = TritonEmbedder(url, "minilm", dim=16)
    try:
        vectors = await embedder.embed(["how do I reset my password", "héllo wörld"])
        assert vectors.shape == (2, 16) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        expected = await model.hash.embed(["how do I reset my password"])
        assert np.allclose(vectors[0], expected[0], atol=1e-5)
        assert embedder.model_id == "triton-minilm"
    finally:
        await embedder.close()


async def test_triton_failures_are_unavailable_with_the_reason(triton):
    model, url = triton
    unknown = TritonEmbedder(url, "nope", dim=16)
    try:
        with pytest.raises(errors.Unavailable, match="unknown model"):
            await unknown.embed(["x"])
    finally:
        await unknown.close()
    model.wrong_shape = True
    embedder = TritonEmbedder(url, "minilm", dim=16)
    try:
        with pytest.raises(errors.Unavailable, match="shape"):
            await embedder.embed(["x"])
    finally:
        await embedder.close()
