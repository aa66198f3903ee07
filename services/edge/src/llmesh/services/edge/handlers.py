"""The HTTP routes (aiohttp): read the request, translate it (convert.py), call the router, write
OpenAI's response shape. Every failure is OpenAI's error shape with its HTTP status."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import aclosing

from aiohttp import web
from llmesh.kit.auth import bearer_token
from llmesh.kit.errors import Unauthenticated
from llmesh.kit.logging import bind_contextvars, clear_contextvars, get_logger
from llmesh.kit.vocabulary import MAX_REQUEST_ID_CHARS
from llmesh.services.edge import convert
from llmesh.services.edge.core import EdgeError, error_for_status
from llmesh.services.edge.metrics import HTTP_LATENCY, HTTP_REQUESTS
from llmesh.services.edge.upstreams import CatalogClient, RouterClient, events

log = get_logger("llmesh.edge")

REQUEST_ID_HEADER = "x-request-id"
#: the request's id, set by the middleware
REQUEST_ID = web.RequestKey("request_id", str)
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-Id when it is a usable one, else a fresh id."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if given and len(given) <= MAX_REQUEST_ID_CHARS and given.isascii() and given.isprintable() and " " not in given:
        return given
    return uuid.uuid4().hex


def error_response(error: EdgeError, request_id: str) -> web.Response:
    return web.json_response(
        error.body(), status=error.status, headers={REQUEST_ID_HEADER: request_id, **error.headers()}
    )


@web.middleware
async def openai_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Request id, logging context and metrics for every route; aiohttp's own errors (404, 405,
    413) and anything unexpected in OpenAI's error shape."""
    started = time.perf_counter()
    request_id = request[REQUEST_ID] = request_id_of(request)
    clear_contextvars()
    bind_contextvars(request_id=request_id)
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except EdgeError as exc:
        status = exc.status
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        status = exc.status
        kind = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
        message = f"{request.method} {request.path}: {exc.reason}"
        return error_response(EdgeError(exc.status, message, code=kind), request_id)
    except Exception as exc:
        log.exception("edge_error", error=repr(exc))
        return error_response(EdgeError(500, "internal error in the edge", type="server_error"), request_id)
    finally:
        HTTP_REQUESTS.labels(route, str(status)).inc()
        HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)


class Handlers:
    def __init__(
        self,
        router: Callable[[], RouterClient | None],
        catalog: Callable[[], CatalogClient | None],
        *,
        generate_timeout_s: float,
        models_ttl_s: float,
    ):
        self._router = router
        self._catalog = catalog
        self._timeout_s = generate_timeout_s
        self._models_ttl_s = models_ttl_s
        self._models: tuple[float, list] = (0.0, [])
        self._created = int(time.time())

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self.chat_completions), web.get("/v1/models", self.models)]

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        router = self._router()
        if router is None:
            raise EdgeError(503, "the edge is still starting", type="service_unavailable", retry_after_s=1.0)
        request_id = request[REQUEST_ID]
        body = await request.read()
        doc = convert.parse_json(body)
        proto, stream, model = convert.chat_request(doc)
        include_usage = convert.include_usage(doc)
        generated = router.generate(
            proto,
            authorization=request.headers.get("authorization", ""),
            request_id=request_id,
            timeout_s=self._timeout_s,
        )
        # A client that went away (the handler is cancelled) ends the router's stream too: closing
        # the stream cancels the call in flight.
        async with aclosing(events(generated)) as stream_events:
            if stream:
                return await self._stream(request, stream_events, request_id, model, include_usage)
            return await self._complete(stream_events, request_id, model)

    async def _complete(self, stream_events, request_id: str, model: str) -> web.Response:
        parts: list[str] = []
        summary = None
        async for event in stream_events:
            if event.HasField("summary"):
                summary = event.summary
            else:
                parts.append(event.delta)
        if summary is None:
            raise EdgeError(502, "the router ended the stream without a summary", type="server_error")
        return web.json_response(
            convert.completion(request_id, model, "".join(parts), summary),
            headers={REQUEST_ID_HEADER: request_id, **convert.extras_headers(summary)},
        )

    async def _stream(
        self, request: web.Request, stream_events, request_id: str, model: str, include_usage: bool
    ) -> web.StreamResponse:
        # The first event before the headers: an error before any token keeps its HTTP status.
        first = await anext(stream_events, None)
        response = web.StreamResponse(headers={**SSE_HEADERS, REQUEST_ID_HEADER: request_id})
        await response.prepare(request)
        writer = convert.ChunkWriter(request_id, model)
        event = first
        try:
            while event is not None:
                if event.HasField("summary"):
                    await response.write(writer.finish(event.summary, include_usage))
                    break
                await response.write(writer.delta(event.delta))
                event = await anext(stream_events, None)
        except EdgeError as exc:
            # The headers are out: the error is the stream's last event, as OpenAI sends it.
            log.info("stream_failed", status=exc.status, error=exc.message)
            await response.write(writer.error(exc))
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        catalog = self._catalog()
        if catalog is None:
            raise EdgeError(503, "the edge is still starting", type="service_unavailable", retry_after_s=1.0)
        try:
            api_key = bearer_token(request.headers.get("authorization"), missing="API key")
        except Unauthenticated as exc:
            raise error_for_status("UNAUTHENTICATED", exc.message.replace("metadata", "header")) from None
        await catalog.authenticate(api_key, request[REQUEST_ID])
        fetched_at, models = self._models
        if time.monotonic() - fetched_at > self._models_ttl_s:
            models = await catalog.models()
            self._models = (time.monotonic(), models)
        return web.json_response(
            convert.models_list(models, self._created), headers={REQUEST_ID_HEADER: request[REQUEST_ID]}
        )
