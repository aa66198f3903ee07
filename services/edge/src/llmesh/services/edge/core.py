"""The edge's vocabulary: OpenAI's error shape and the HTTP status of each kind of failure.
The edge adds no policy: every decision (authentication, limits, routing) is the router's, and a
router error is shown to the caller as OpenAI's SDKs expect it."""

from __future__ import annotations

import dataclasses
from typing import Any

#: the model name that lets the router choose by tier (listed first by `GET /v1/models`)
AUTO_MODEL = "auto"


@dataclasses.dataclass
class EdgeError(Exception):
    """An OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}` with its HTTP status."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    #: seconds, sent as Retry-After (429, 503)
    retry_after_s: float | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        # Whole seconds, rounded up: what HTTP allows; never 0 for a real wait.
        return {"retry-after": str(max(1, int(-(-self.retry_after_s // 1))))}


def bad_request(message: str, param: str | None = None) -> EdgeError:
    return EdgeError(400, message, param=param)


# Status names of the router's gRPC errors → (HTTP status, OpenAI error type, code).
BY_STATUS: dict[str, tuple[int, str, str | None]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error", None),
    "FAILED_PRECONDITION": (400, "invalid_request_error", None),
    "OUT_OF_RANGE": (400, "invalid_request_error", None),
    "UNAUTHENTICATED": (401, "invalid_request_error", "invalid_api_key"),
    "PERMISSION_DENIED": (403, "permission_error", "permission_denied"),
    "NOT_FOUND": (404, "invalid_request_error", "not_found"),
    "ALREADY_EXISTS": (409, "invalid_request_error", None),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error", "rate_limit_exceeded"),
    "CANCELLED": (499, "invalid_request_error", "cancelled"),
    "UNAVAILABLE": (503, "service_unavailable", "unavailable"),
    "DEADLINE_EXCEEDED": (504, "timeout", "deadline_exceeded"),
}


def error_for_status(
    status_name: str, message: str, *, param: str | None = None, retry_after_s: float | None = None
) -> EdgeError:
    """The OpenAI-shaped error for a failed call's gRPC status (by name); unknown → 500."""
    http, kind, code = BY_STATUS.get(status_name, (500, "server_error", None))
    return EdgeError(http, message, type=kind, code=code, param=param, retry_after_s=retry_after_s)
