"""A request whose bytes do not parse as the method's message (invalid UTF-8 in a string field,
a truncated field) is the caller's mistake: INVALID_ARGUMENT with a message, on every kind of
method, and the server goes on answering."""

from __future__ import annotations

import grpc
import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit.interceptors import ServerInterceptor

SERVICE = "llmesh.test.v1.EchoService"
# ChatMessage.content (field 2, a string) holding bytes that are not UTF-8.
INVALID_UTF8 = bytes([0x12, 0x02, 0xFF, 0xFE])
# Field 2 announces 10 bytes and carries 1.
TRUNCATED = bytes([0x12, 0x0A, 0x41])
GOOD = common_pb2.ChatMessage(content="hello").SerializeToString()


async def _unary(request, context):
    return common_pb2.ChatMessage(content=request.content.upper())


async def _server_stream(request, context):
    for char in request.content:
        yield common_pb2.ChatMessage(content=char)


async def _client_stream(requests, context):
    return common_pb2.ChatMessage(content="".join([m.content async for m in requests]))


@pytest.fixture
async def channel():
    server = grpc.aio.server(interceptors=[ServerInterceptor("test")])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            _unary, common_pb2.ChatMessage.FromString, common_pb2.ChatMessage.SerializeToString
        ),
        "ServerStream": grpc.unary_stream_rpc_method_handler(
            _server_stream, common_pb2.ChatMessage.FromString, common_pb2.ChatMessage.SerializeToString
        ),
        "ClientStream": grpc.stream_unary_rpc_method_handler(
            _client_stream, common_pb2.ChatMessage.FromString, common_pb2.ChatMessage.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


def _raw(channel, kind: str, method: str):
    return getattr(channel, kind)(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize("payload", [INVALID_UTF8, TRUNCATED], ids=["invalid-utf8", "truncated"])
async def test_every_kind_of_method_answers_invalid_argument_for_bytes_that_do_not_parse(channel, payload):
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await _raw(channel, "unary_unary", "Unary")(payload, timeout=5)
    assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not parse" in unary.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as server_stream:
        async for _ in _raw(channel, "unary_stream", "ServerStream")(payload, timeout=5):
            pass
    assert server_stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.aio.AioRpcError) as client_stream:
        await _raw(channel, "stream_unary", "ClientStream")(iter([GOOD, payload, GOOD]), timeout=5)
    assert client_stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # The server is unharmed: a well-formed call right after succeeds.
    answer = await _raw(channel, "unary_unary", "Unary")(GOOD, timeout=5)
    assert common_pb2.ChatMessage.FromString(answer).content == "HELLO"
