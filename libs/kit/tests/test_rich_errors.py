"""Domain errors as google.rpc error details, written and read with grpcio-status."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmesh.kit import errors
from llmesh.kit.client import retry_after_s, rich_status
from llmesh.kit.interceptors import rich_status as status_of


def _failed_call(exc: errors.LlmeshError, *, details: str | None = None) -> grpc.aio.AioRpcError:
    sent = rpc_status.to_status(status_of(exc))
    return grpc.aio.AioRpcError(
        sent.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*sent.trailing_metadata),
        details=sent.details if details is None else details,
    )


def test_a_busy_error_carries_its_retry_delay_to_the_caller():
    call = _failed_call(errors.ResourceExhausted("full", retry_after_s=1.5))
    assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_after_s(call) == 1.5


def test_a_bad_field_is_a_bad_request_detail_and_no_retry_delay():
    call = _failed_call(errors.InvalidArgument("max_tokens is too large", field="max_tokens"))
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT and retry_after_s(call) is None
    violation = error_details_pb2.BadRequest()
    assert rich_status(call).details[0].Unpack(violation)
    assert violation.field_violations[0].field == "max_tokens"


def test_details_that_disagree_with_the_call_or_are_missing_are_ignored():
    assert rich_status(_failed_call(errors.Unavailable("down", retry_after_s=2), details="other")) is None
    bare = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")
    assert rich_status(bare) is None and retry_after_s(bare) is None


def test_every_error_names_its_reason():
    from llmesh.kit.client import error_reason

    assert error_reason(_failed_call(errors.InvalidArgument("bad", field="x"))) == "INVALID_ARGUMENT"
    assert error_reason(_failed_call(errors.ResourceExhausted("full", retry_after_s=1))) == "RESOURCE_EXHAUSTED"
    assert error_reason(_failed_call(errors.ResourceExhausted("over", reason="BUDGET_EXHAUSTED"))) == "BUDGET_EXHAUSTED"
    info = error_details_pb2.ErrorInfo()
    status = status_of(errors.NotFound("no such tenant"), "tenancy")
    assert status.details[-1].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("NOT_FOUND", "llmesh", {"service": "tenancy"})
