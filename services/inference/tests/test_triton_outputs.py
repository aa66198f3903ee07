"""Reading a Triton stream response's outputs: the one-pass reader gives what tritonclient's
as_numpy gives, for each datatype the models send."""

from __future__ import annotations

import numpy as np
import pytest
from llmesh.services.inference.triton_backend import _scalar, _scalars, _tensor
from tritonclient.grpc import InferInput, InferResult, service_pb2
from tritonclient.utils import serialize_byte_tensor


def _response(outputs) -> InferResult:
    response = service_pb2.ModelInferResponse(model_name="m")
    for name, datatype, array in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        data = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        response.raw_output_contents.append(data)
    return InferResult(response)


OUTPUTS = [
    ("text_output", "BYTES", np.array([["caf\u00e9 \u2014 ok".encode()]], dtype=np.object_)),
    ("num_input_tokens", "UINT32", np.array([[17]], dtype=np.uint32)),
    ("num_output_tokens", "UINT32", np.array([[1]], dtype=np.uint32)),
    ("finish_reason", "BYTES", np.array([b"length"], dtype=np.object_)),
    ("flag", "BOOL", np.array([True])),
    ("seed", "UINT64", np.array([2**63 + 5], dtype=np.uint64)),
    ("temperature", "FP32", np.array([0.25], dtype=np.float32)),
    ("offset", "INT64", np.array([-3, 4], dtype=np.int64)),
    ("half", "FP16", np.array([1.5], dtype=np.float16)),
]


def test_every_output_reads_as_tritonclient_reads_it():
    result = _response(OUTPUTS)
    values = _scalars(result)
    assert values == {name: _scalar(result, name) for name, _, _ in OUTPUTS}
    assert values["text_output"] == "caf\u00e9 \u2014 ok"
    assert values["num_input_tokens"] == 17 and type(values["num_input_tokens"]) is int
    assert values["finish_reason"] == "length"
    assert values["temperature"] == pytest.approx(0.25)


def test_an_empty_output_is_absent_and_invalid_utf8_is_replaced():
    result = _response(
        [
            ("text_output", "BYTES", np.array([b"\xff\xfeab"], dtype=np.object_)),
            ("num_output_tokens", "UINT32", np.zeros(0, dtype=np.uint32)),
        ]
    )
    values = _scalars(result)
    assert values == {"text_output": "\ufffd\ufffdab"}
    assert _scalar(result, "num_output_tokens") is None


@pytest.mark.parametrize(
    ("datatype", "values", "dtype"),
    [
        ("BYTES", ["<bos>caf\u00e9 \u2014 ok".encode(), b""], np.object_),
        ("INT32", [32], np.int32),
        ("BOOL", [True], np.bool_),
        ("FP32", [0.7], np.float32),
        ("UINT64", [2**64 - 1], np.uint64),
    ],
)
@pytest.mark.parametrize("batched", [False, True])
def test_inputs_are_built_as_tritonclient_builds_them(datatype, values, dtype, batched):
    expected = InferInput("x", [1, len(values)] if batched else [len(values)], datatype)
    expected.set_data_from_numpy(np.array(values, dtype=dtype).reshape((1, -1) if batched else (-1,)))
    built = _tensor("x", datatype, values, batched)
    assert built._get_tensor() == expected._get_tensor()
    assert built._get_content() == expected._get_content()
