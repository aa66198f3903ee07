"""BatchService over gRPC: authenticate like Generate, validate, call the batch runner."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp
from llmesh.kit.auth import authorization_header
from llmesh.kit.errors import InvalidArgument, Unavailable
from llmesh.kit.logging import bind_contextvars
from llmesh.kit.vocabulary import use_case_from
from llmesh.router.v1 import batch_pb2, batch_pb2_grpc
from llmesh.services.router.batch import Job, Totals, parse_jsonl, window_from
from llmesh.services.router.batch_refresh import RefreshPlanner, min_hits_from
from llmesh.services.router.batch_runner import BatchRunner
from llmesh.services.router.core import GeneratePipeline

SERVICE_NAME = batch_pb2.DESCRIPTOR.services_by_name["BatchService"].full_name
MAX_NAME_CHARS = 256


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_to_proto(job: Job, totals: Totals, state: int) -> batch_pb2.BatchJob:
    message = batch_pb2.BatchJob(
        job_id=job.job_id,
        tenant_id=job.principal.tenant_id,
        use_case=job.use_case,
        state=state,
        total=job.total,
        completed=totals.completed,
        failed=totals.failed,
        cost_usd=totals.cost_usd,
        created_at=_timestamp(job.created_at),
        expires_at=_timestamp(job.expires_at),
        display_name=job.display_name,
        stopped_reason=job.stopped_reason,
    )
    message.usage.prompt_tokens = totals.prompt_tokens
    message.usage.completion_tokens = totals.completion_tokens
    if job.start_after > job.created_at:
        message.start_after.CopyFrom(_timestamp(job.start_after))
    return message


class BatchServicer(batch_pb2_grpc.BatchServiceServicer):
    def __init__(
        self,
        pipeline: Callable[[], GeneratePipeline | None],
        runner: Callable[[], BatchRunner | None],
        refresh: Callable[[], RefreshPlanner | None] = lambda: None,
    ):
        self._pipeline = pipeline
        self._runner = runner
        self._refresh = refresh

    async def _caller(self, context):
        pipeline, runner = self._pipeline(), self._runner()
        if pipeline is None or runner is None:
            raise Unavailable("the router is still starting", retry_after_s=1.0)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        principal = await pipeline.authenticate(authorization_header(context.invocation_metadata()), deadline=deadline)
        bind_contextvars(tenant=principal.tenant_id)
        return principal, runner

    async def _job_proto(self, runner: BatchRunner, job: Job) -> batch_pb2.BatchJob:
        totals = await runner.totals(job.job_id)
        return job_to_proto(job, totals, runner.state(job, totals))

    async def SubmitBatch(self, request, context):
        principal, runner = await self._caller(context)
        use_case = use_case_from(request.use_case)
        window_s = window_from(request.completion_window_s)
        if len(request.display_name) > MAX_NAME_CHARS or not request.display_name.isprintable():
            raise InvalidArgument(
                f"display_name must be at most {MAX_NAME_CHARS} printable characters", field="display_name"
            )
        start_after = 0.0
        if request.HasField("start_after"):
            try:
                start_after = request.start_after.ToNanoseconds() / 1e9
            except ValueError as exc:  # nanos outside [0, 1e9) or a time outside years 1-9999
                raise InvalidArgument(f"start_after is not a valid timestamp ({exc})", field="start_after") from None
            if start_after > time.time() + 30 * 24 * 3600:
                raise InvalidArgument("start_after must be within 30 days", field="start_after")
        items = parse_jsonl(request.jsonl, use_case)
        job = await runner.submit(
            principal,
            items,
            use_case=use_case,
            window_s=window_s,
            start_after=start_after,
            display_name=request.display_name,
        )
        return batch_pb2.SubmitBatchResponse(job=job_to_proto(job, Totals(), runner.state(job, Totals())))

    async def GetBatch(self, request, context):
        principal, runner = await self._caller(context)
        job = await runner.job(request.job_id, principal.tenant_id)
        return batch_pb2.GetBatchResponse(job=await self._job_proto(runner, job))

    async def ListBatches(self, request, context):
        principal, runner = await self._caller(context)
        jobs = await runner.jobs(principal.tenant_id)
        return batch_pb2.ListBatchesResponse(jobs=[await self._job_proto(runner, job) for job in jobs])

    async def CancelBatch(self, request, context):
        principal, runner = await self._caller(context)
        job = await runner.cancel(request.job_id, principal.tenant_id)
        return batch_pb2.CancelBatchResponse(job=await self._job_proto(runner, job))

    async def SetCacheRefresh(self, request, context):
        principal, _ = await self._caller(context)
        planner = self._refresh()
        if planner is None:
            raise Unavailable("the router is still starting", retry_after_s=1.0)
        use_case = use_case_from(request.use_case)
        await planner.set_policy(principal, use_case, enabled=request.enabled, min_hits=min_hits_from(request.min_hits))
        return batch_pb2.SetCacheRefreshResponse()

    async def GetBatchResults(self, request, context):
        principal, runner = await self._caller(context)
        job = await runner.job(request.job_id, principal.tenant_id)
        lines = [line async for line in runner.results(job.job_id)]
        lines.sort(key=lambda line: line["index"])
        for line in lines:
            yield batch_pb2.GetBatchResultsResponse(line=json.dumps(line, ensure_ascii=False))
