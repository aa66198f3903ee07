"""RouterService over gRPC: read the credentials and the deadline, validate, run the pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import aclosing

from llmesh.kit.auth import authorization_header
from llmesh.kit.errors import Unavailable
from llmesh.kit.logging import get_contextvars
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from llmesh.services.router.convert import command_from_proto, event_to_proto, interrupted_to_proto
from llmesh.services.router.core import GeneratePipeline
from llmesh.services.router.domain import StreamInterruptedError

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, pipeline: Callable[[], GeneratePipeline | None]):
        self._pipeline = pipeline

    async def Generate(self, request, context):
        started = time.perf_counter()
        pipeline = self._pipeline()
        if pipeline is None:
            raise Unavailable("the router is still starting")
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        principal = await pipeline.authenticate(authorization_header(context.invocation_metadata()), deadline=deadline)
        command = command_from_proto(request)
        request_id = get_contextvars().get("request_id", "")
        events = pipeline.run(principal, command, request_id=request_id, started=started, deadline=deadline)
        try:
            async with aclosing(events):
                async for event in events:
                    yield event_to_proto(event)
        except StreamInterruptedError as exc:
            raise Unavailable(exc.message, details=(interrupted_to_proto(exc),)) from None
