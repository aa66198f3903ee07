"""OpenTelemetry tracing for every service, through the kit: a SERVER span per RPC (the server
interceptor), W3C trace context in the metadata of every outgoing call (the client channel) and in
the headers of every NATS event (the bus), and `span`/`traced`/`annotate` for a service's steps.

Off by default: without OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) or OTEL_TRACES_EXPORTER,
no SDK is installed and the API's no-op tracer costs next to nothing (trace context is still
passed on, so a caller's trace continues through a service that does not export). With them,
spans go through a batch processor to the OTLP/gRPC exporter (or `console`), configured by the
standard OTEL_* variables (service name, resource attributes, sampler, headers; docs/adr/0020)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Iterator, Mapping

from llmesh.kit.logging import get_logger
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

TRACER = trace.get_tracer("llmesh")

log = get_logger("llmesh.tracing")
_provider = None


def enabled_by(environ: Mapping[str, str]) -> list[str]:
    """The exporters the OTEL_* variables ask for; empty: tracing stays off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        return [] if names == ["none"] else names
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def configure(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Installs the SDK with the exporters OTEL_* names, once per process; returns whether it
    did. A provider set before (a test's in-memory one) is left as it is."""
    global _provider
    exporters = enabled_by(environ)
    if not exporters or _provider is not None:
        return False
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the default name is the service's.
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"llmesh-{service}"}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing_on", exporters=exporters)
    return True


def flush(timeout_ms: int = 5000) -> None:
    """Sends the spans still buffered (on shutdown)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


# --- propagation ---------------------------------------------------------------------------


def inject(carrier: dict[str, str]) -> dict[str, str]:
    """Adds the current trace context (traceparent, tracestate) to `carrier` and returns it."""
    propagate.inject(carrier)
    return carrier


def extract(pairs) -> otel_context.Context:
    """The trace context carried by gRPC metadata pairs or NATS headers (binary values skipped)."""
    if pairs is None:
        carrier = {}
    elif isinstance(pairs, Mapping):
        carrier = {str(k).lower(): v for k, v in pairs.items() if isinstance(v, str)}
    else:
        carrier = {str(k).lower(): v for k, v in pairs if isinstance(v, str)}
    return propagate.extract(carrier)


# --- spans ---------------------------------------------------------------------------------


def start_server_span(service: str, method: str, metadata) -> tuple[trace.Span, object]:
    """The SERVER span of one RPC, child of the caller's context, made current; end it with
    `end_span`."""
    parent = extract(metadata)
    span = TRACER.start_span(
        f"{service}/{method}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.method": method, "llmesh.service": service},
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_span(span: trace.Span, token: object, code_name: str) -> None:
    span.set_attribute("rpc.grpc.status_code", code_name)
    if code_name not in ("OK", "CANCELLED"):
        span.set_status(Status(StatusCode.ERROR, code_name))
    span.end()
    with contextlib.suppress(Exception):
        otel_context.detach(token)


@contextlib.contextmanager
def consumer_span(subject: str, headers) -> Iterator[trace.Span]:
    """A CONSUMER span for one NATS event, child of its publisher's context."""
    with TRACER.start_as_current_span(
        f"receive {subject}",
        context=extract(headers),
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ) as span:
        yield span


def span(name: str, **attributes):
    """A child span of the current one for a step of the work (`with span("router.classify"):`)."""
    return TRACER.start_as_current_span(name, attributes=_clean(attributes))


def annotate(**attributes) -> None:
    """Sets attributes (None skipped) on the current span: tenant, tier, model, tokens..."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(_clean(attributes))


def _no_provider() -> bool:
    """No tracer provider is installed (tracing off): a span would be the API's no-op one, which
    carries the current span's context unchanged, so leaving it out changes nothing downstream."""
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def traced(name: str):
    """Decorates a coroutine function or an async generator function: each call runs in a span
    (none while tracing is off: the no-op span's context managers cost more than many a step)."""

    def decorate(func):
        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            async def generator(*args, **kwargs):
                # Closing this generator closes the wrapped one at once (its finally blocks run now).
                with span(name):
                    async with contextlib.aclosing(func(*args, **kwargs)) as inner:
                        async for item in inner:
                            yield item

            return generator

        @functools.wraps(func)
        async def coroutine(*args, **kwargs):
            if _no_provider():
                return await func(*args, **kwargs)
            with span(name):
                return await func(*args, **kwargs)

        return coroutine

    return decorate


def _clean(attributes: Mapping[str, object]) -> dict:
    return {
        f"llmesh.{k}" if "." not in k else k: (v if isinstance(v, (str, bool, int, float)) else str(v))
        for k, v in attributes.items()
        if v is not None
    }
