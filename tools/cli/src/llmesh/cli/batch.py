"""`llmesh batch submit|status|results|cancel|list|refresh`: batch jobs through the router's BatchService,
with the caller's API key (LLMESH_API_KEY)."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import sys
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from llmesh.kit import tls
from llmesh.launcher.state import endpoint
from llmesh.router.v1 import batch_pb2, batch_pb2_grpc
from tqdm import tqdm

STATES = {
    value.number: value.name.removeprefix("BATCH_STATE_").lower() for value in batch_pb2.BatchState.DESCRIPTOR.values
}
FINAL = {batch_pb2.BATCH_STATE_COMPLETED, batch_pb2.BATCH_STATE_CANCELLED, batch_pb2.BATCH_STATE_EXPIRED}


def register(subparsers) -> None:
    batch = subparsers.add_parser("batch", help="batch jobs: submit a JSONL file, follow it, fetch its results")
    commands = batch.add_subparsers(dest="batch_command", required=True)

    submit = commands.add_parser("submit", help="submit an OpenAI batch JSONL file (prints the job id)")
    submit.add_argument("file", help="one request a line: {custom_id, method, url, body: {messages, max_tokens, ...}}")
    submit.add_argument("--use-case", default="")
    submit.add_argument("--window", default="24h", help="completion window: e.g. 30m, 6h, 24h, 7d (default 24h)")
    submit.add_argument("--start-after", default="", help="not before this time (ISO 8601, e.g. 2026-12-06T02:00Z)")
    submit.add_argument("--name", default="", help="a display name")
    submit.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    submit.set_defaults(func=lambda args: _run(_submit, args))

    status = commands.add_parser("status", help="a job's state and counts")
    status.add_argument("job_id")
    status.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    status.set_defaults(func=lambda args: _run(_status, args))

    results = commands.add_parser("results", help="a job's results as JSONL (OpenAI batch output shape)")
    results.add_argument("job_id")
    results.add_argument("-o", "--output", default="", help="write to this file instead of standard output")
    results.set_defaults(func=lambda args: _run(_results, args))

    cancel = commands.add_parser("cancel", help="end a job's items that have no result yet")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=lambda args: _run(_cancel, args))

    listing = commands.add_parser("list", help="this tenant's jobs (cache refresh jobs included)")
    listing.set_defaults(func=lambda args: _run(_list, args))

    refresh = commands.add_parser(
        "refresh",
        help="turn the cache refresh of a use case on or off: answers hit often that expire before the next "
        "peak are generated again in the quiet hours before it, as batch jobs within the tenant's budget",
    )
    refresh.add_argument("--use-case", default="")
    refresh.add_argument("--off", action="store_true", help="turn it off")
    refresh.add_argument("--min-hits", type=int, default=0, help="refresh answers served at least this often (3)")
    refresh.set_defaults(func=lambda args: _run(_refresh, args))


class UsageError(Exception):
    pass


def window_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except (ValueError, KeyError):
        raise UsageError(f"--window: expected e.g. 30m, 6h, 24h or 7d (got {text!r})") from None


def _run(command, args) -> int:
    api_key = os.environ.get("LLMESH_API_KEY", "")
    if not api_key:
        print("llmesh batch: set LLMESH_API_KEY to an API key", file=sys.stderr)
        return 2
    target = endpoint("router")
    try:
        with tls.blocking_channel(target) as channel:
            stub = batch_pb2_grpc.BatchServiceStub(channel)
            return command(stub, [("authorization", f"Bearer {api_key}")], args) or 0
    except UsageError as exc:
        print(f"llmesh batch: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"llmesh batch: {exc.code().name}: {exc.details()} (router at {target})", file=sys.stderr)
        return 1


def _line(job: batch_pb2.BatchJob) -> str:
    state = STATES.get(job.state, job.state)
    if job.stopped_reason:
        state = f"{state} ({job.stopped_reason})"
    line = (
        f"{job.job_id}  {state}  {job.completed + job.failed}/{job.total} done "
        f"({job.failed} failed)  tokens {job.usage.prompt_tokens}+{job.usage.completion_tokens}  "
        f"${job.cost_usd:.6f}"
    )
    return f"{line}  {job.display_name}" if job.display_name else line


def _follow(stub, metadata, job: batch_pb2.BatchJob) -> batch_pb2.BatchJob:
    with tqdm(total=job.total, unit="item", file=sys.stderr) as bar:
        while True:
            job = stub.GetBatch(batch_pb2.GetBatchRequest(job_id=job.job_id), metadata=metadata, timeout=10).job
            bar.update(job.completed + job.failed - bar.n)
            bar.set_postfix(state=STATES.get(job.state), failed=job.failed)
            if job.state in FINAL:
                return job
            time.sleep(1.0)


def _submit(stub, metadata, args) -> int:
    path = pathlib.Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    request = batch_pb2.SubmitBatchRequest(
        jsonl=path.read_bytes(),
        use_case=args.use_case,
        completion_window_s=window_seconds(args.window),
        display_name=args.name,
    )
    if args.start_after:
        try:
            when = dt.datetime.fromisoformat(args.start_after.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"--start-after: not an ISO 8601 time: {args.start_after!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        stamp = Timestamp()
        stamp.FromDatetime(when.astimezone(dt.timezone.utc))
        request.start_after.CopyFrom(stamp)
    job = stub.SubmitBatch(request, metadata=metadata, timeout=60).job
    print(job.job_id)
    if args.wait:
        print(_line(_follow(stub, metadata, job)))
    return 0


def _status(stub, metadata, args) -> int:
    job = stub.GetBatch(batch_pb2.GetBatchRequest(job_id=args.job_id), metadata=metadata, timeout=10).job
    if args.wait and job.state not in FINAL:
        job = _follow(stub, metadata, job)
    print(_line(job))
    return 0


def _results(stub, metadata, args) -> int:
    call = stub.GetBatchResults(batch_pb2.GetBatchResultsRequest(job_id=args.job_id), metadata=metadata, timeout=300)
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        for response in call:
            out.write(response.line + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def _cancel(stub, metadata, args) -> int:
    print(_line(stub.CancelBatch(batch_pb2.CancelBatchRequest(job_id=args.job_id), metadata=metadata, timeout=30).job))
    return 0


def _list(stub, metadata, args) -> int:
    for job in stub.ListBatches(batch_pb2.ListBatchesRequest(), metadata=metadata, timeout=30).jobs:
        print(_line(job))
    return 0


def _refresh(stub, metadata, args) -> int:
    request = batch_pb2.SetCacheRefreshRequest(use_case=args.use_case, enabled=not args.off, min_hits=args.min_hits)
    stub.SetCacheRefresh(request, metadata=metadata, timeout=10)
    print(f"cache refresh {'off' if args.off else 'on'} for use case {args.use_case or 'default'}")
    return 0
