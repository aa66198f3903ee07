"""Domain errors. Domain code raises these; the server interceptor maps them to gRPC status codes,
so domain modules never import grpc."""

from __future__ import annotations


class LlmeshError(Exception):
    """Base of every error a caller can be told about. The message is shown to the caller."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        retry_after_s: float | None = None,
        reason: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        # The request field at fault, reported as a google.rpc.BadRequest detail.
        self.field = field
        # Reported as a google.rpc.RetryInfo detail.
        self.retry_after_s = retry_after_s
        # Reported as the google.rpc.ErrorInfo reason (UPPER_SNAKE_CASE, stable: clients branch on
        # it); by default the error's kind, e.g. INVALID_ARGUMENT, RESOURCE_EXHAUSTED.
        self.reason = reason or _upper_snake(type(self).__name__)


def _upper_snake(name: str) -> str:
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()


class InvalidArgument(LlmeshError):
    """The caller's input is malformed or out of range."""


class NotFound(LlmeshError):
    pass


class AlreadyExists(LlmeshError):
    pass


class Unauthenticated(LlmeshError):
    pass


class PermissionDenied(LlmeshError):
    pass


class ResourceExhausted(LlmeshError):
    """A rate limit, budget, queue or concurrency limit is full."""


class FailedPrecondition(LlmeshError):
    pass


class Unavailable(LlmeshError):
    """A dependency or backend cannot serve now; safe to retry later."""


class DeadlineExceeded(LlmeshError):
    pass
