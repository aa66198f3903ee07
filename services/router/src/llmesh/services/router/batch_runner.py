"""Batch jobs on JetStream: the job records and results in a KV bucket, the items in a work-queue
stream, and the workers of this router replica that run them through the Generate pipeline at the
batch priority class.

Exactly one result per item, whatever is killed when:
- an item is acknowledged only after its result is stored, so an item whose worker died is
  delivered again (after `ack_wait`) to a worker of any replica;
- a result is written with KV `create`, which fails when the key exists: the first result stands,
  and a redelivered item whose result exists is acknowledged without running;
- an attempt first claims its item: a KV key `claim.<job>.<index>` created (or taken over once its
  lease ran out) with a lease of twice `ack_wait` that the heartbeat renews; a delivery that finds a
  live claim of another attempt is put back until the lease ends, so an item redelivered while
  its first attempt still runs (a stalled heartbeat on a loaded machine, another replica) is not
  generated a second time;
- every attempt of an item carries the same request id, and a completed answer is stored in the
  cache before the pipeline ends, so an item that was answered but not yet recorded when its
  worker died is served from the cache on its next attempt, not generated again. Only a kill
  between the backend's last token and the cache store (one hop) can cost a second generation.
The workers take items in a window that grows from `window_min_s` while items keep coming to
`window_max_s` when idle (fewer, larger fetches under load; at most one wait of the window at rest).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

import nats.errors
from llmesh.kit.bus import Bus, kv_keys
from llmesh.kit.errors import LlmeshError, NotFound, Unavailable
from llmesh.kit.interceptors import status_code_for
from llmesh.kit.logging import bind_contextvars, clear_contextvars, get_logger
from llmesh.kit.streams import StreamSpec
from llmesh.kit.vocabulary import Principal
from llmesh.router.v1 import batch_pb2, router_pb2
from llmesh.services.router import metrics
from llmesh.services.router.batch import (
    BatchItem,
    Job,
    Totals,
    answer_line,
    error_line,
    item_request_id,
    new_job_id,
)
from llmesh.services.router.convert import command_from_proto
from llmesh.services.router.domain import Delta, Summary
from nats.js import api as js_api
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

log = get_logger("llmesh.router.batch")

# A work queue: an item leaves the stream once acknowledged.
ITEMS = StreamSpec("LLMESH_BATCH_ITEMS", ("llmesh.batch.item.>",), max_age_s=8 * 24 * 3600, work_queue=True)
# Job records, and results (write-once keys result.<job>.<index>): two buckets, so listing the
# jobs never walks the results.
JOBS_BUCKET = "llmesh-batch-jobs"
RESULTS_BUCKET = "llmesh-batch-results"
DURABLE = "batch-workers"
# The custom ids of a job, kept in chunks (a KV value stays far below NATS's 1 MB payload) so that
# a cancellation can name every item it ends.
IDS_PER_CHUNK = 1000
KIND_CACHE_REFRESH = "cache_refresh"
BUDGET_EXHAUSTED = "budget_exhausted"
# Errors an item ends with (others are retried: the backend may come back).
FINAL = {"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION", "UNAUTHENTICATED"}


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    concurrency: int = 2
    ack_wait_s: float = 120.0
    window_min_s: float = 0.05
    window_max_s: float = 0.5
    retry_delay_s: float = 2.0


@dataclasses.dataclass
class Claim:
    """An attempt's hold on an item: the KV key and the revision it last wrote (None: not held)."""

    key: str
    revision: int | None = None


class BatchRunner:
    def __init__(self, bus: Bus, generate: Callable, config: RunnerConfig, *, clock=time.time):
        """`generate(principal, command, request_id)` is the pipeline: an async iterator of deltas
        and one Summary."""
        self._bus = bus
        self._generate = generate
        self._config = config
        self._clock = clock
        self._kv = None
        self._jobs_kv = None
        self._jobs: dict[str, Job] = {}
        self._stopping = asyncio.Event()
        # Items this replica runs now: a redelivery of one of them (its ack_wait ran out) is left alone.
        self._running: set[str] = set()
        self._subscription = None
        self.window_s = config.window_max_s
        # Names this runner's claims (a restarted process is another owner).
        self._owner = uuid.uuid4().hex[:12]

    async def start(self) -> None:
        await self._bus.ensure_stream(ITEMS)
        self._jobs_kv = await self._bucket(JOBS_BUCKET)
        self._kv = await self._bucket(RESULTS_BUCKET)

    async def _bucket(self, name: str):
        try:
            return await self._bus.js.key_value(name)
        except Exception:
            return await self._bus.js.create_key_value(bucket=name, history=1)

    # -- jobs ---------------------------------------------------------------------------------

    async def submit(
        self,
        principal: Principal,
        items: list[BatchItem],
        *,
        use_case: str,
        window_s: int,
        start_after: float,
        display_name: str,
        kind: str = "",
    ) -> Job:
        now = self._clock()
        begin = max(now, start_after)
        job = Job(
            job_id=new_job_id(),
            principal=principal,
            use_case=use_case,
            total=len(items),
            created_at=now,
            start_after=start_after,
            expires_at=begin + window_s,
            display_name=display_name,
            kind=kind,
        )
        await self._jobs_kv.create(f"job.{job.job_id}", job.to_json())
        for start in range(0, len(items), IDS_PER_CHUNK):
            ids = [item.custom_id for item in items[start : start + IDS_PER_CHUNK]]
            await self._kv.put(f"ids.{job.job_id}.{start // IDS_PER_CHUNK}", json.dumps(ids).encode())
        for item in items:
            headers = {"llmesh-custom-id": item.custom_id}
            await self._bus.js.publish(
                f"llmesh.batch.item.{job.job_id}.{item.index}",
                item.request.SerializeToString(),
                headers={**headers, "Nats-Msg-Id": item_request_id(job.job_id, item.index)},
                timeout=5,
            )
        log.info("batch_submitted", job_id=job.job_id, items=job.total, tenant=principal.tenant_id)
        return job

    async def job(self, job_id: str, tenant_id: str) -> Job:
        """The tenant's job; another tenant's job is NOT_FOUND, like a missing one."""
        if not job_id.startswith("batch_") or not job_id.replace("_", "").isalnum() or len(job_id) > 64:
            raise NotFound(f"no batch job {job_id[:80]!r}")
        try:
            entry = await self._jobs_kv.get(f"job.{job_id}")
        except KeyNotFoundError:
            raise NotFound(f"no batch job {job_id!r}") from None
        job = Job.from_json(entry.value)
        if job.principal.tenant_id != tenant_id:
            raise NotFound(f"no batch job {job_id!r}")
        self._jobs[job_id] = job
        return job

    async def jobs(self, tenant_id: str) -> list[Job]:
        found = []
        for key in await kv_keys(self._bus.js, JOBS_BUCKET):
            try:
                job = Job.from_json((await self._jobs_kv.get(key)).value)
            except nats.js.errors.KeyNotFoundError:
                continue
            if job.principal.tenant_id == tenant_id:
                found.append(job)
        return sorted(found, key=lambda j: j.created_at)

    async def cancel(self, job_id: str, tenant_id: str) -> Job:
        job = await self.job(job_id, tenant_id)
        await self._end(job, "cancelled", "the batch job was cancelled")
        return job

    async def _end(self, job: Job, code: str, message: str, *, stopped_reason: str = "") -> None:
        """Cancels the job: items not answered yet end now with `code` (an item running now keeps
        the result it writes first)."""
        await self._mark_cancelled(job, stopped_reason)
        await self._end_items(job, code, message)

    async def _mark_cancelled(self, job: Job, stopped_reason: str = "") -> None:
        job.cancelled = True
        job.stopped_reason = stopped_reason
        self._jobs[job.job_id] = job
        await self._jobs_kv.put(f"job.{job.job_id}", job.to_json())

    async def _end_items(self, job: Job, code: str, message: str) -> None:
        job_id = job.job_id
        ended = 0
        ids: list[str] = []
        for index in range(job.total):
            if index % IDS_PER_CHUNK == 0:
                ids = await self._custom_ids(job_id, index // IDS_PER_CHUNK)
            custom_id = ids[index % IDS_PER_CHUNK] if index % IDS_PER_CHUNK < len(ids) else ""
            line = error_line(job_id, index, custom_id, code, message)
            try:
                await self._kv.create(f"result.{job_id}.{index}", json.dumps(line).encode())
                ended += 1
            except KeyWrongLastSequenceError:
                pass
        log.info("batch_cancelled", job_id=job_id, items_ended=ended, code=code)

    async def _custom_ids(self, job_id: str, chunk: int) -> list[str]:
        try:
            return json.loads((await self._kv.get(f"ids.{job_id}.{chunk}")).value)
        except KeyNotFoundError:  # a job submitted before the ids were kept
            return []

    async def results(self, job_id: str) -> AsyncIterator[dict]:
        """The job's result lines, in any order (the caller sorts)."""
        watcher = await self._kv.watch(f"result.{job_id}.*", include_history=False)
        try:
            async for entry in watcher:
                if entry is None:  # all current values delivered
                    return
                if entry.value:
                    yield json.loads(entry.value)
        finally:
            await watcher.stop()

    async def totals(self, job_id: str) -> Totals:
        totals = Totals()
        async for line in self.results(job_id):
            totals.add(line)
        return totals

    def state(self, job: Job, totals: Totals) -> int:
        now = self._clock()
        if job.cancelled:
            return batch_pb2.BATCH_STATE_CANCELLED
        if totals.completed + totals.failed >= job.total:
            return batch_pb2.BATCH_STATE_EXPIRED if totals.expired else batch_pb2.BATCH_STATE_COMPLETED
        if now > job.expires_at:
            return batch_pb2.BATCH_STATE_EXPIRED
        if now < job.start_after:
            return batch_pb2.BATCH_STATE_SCHEDULED
        return batch_pb2.BATCH_STATE_IN_PROGRESS

    # -- workers ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Takes items until stopped; survives NATS outages (fetch errors are retried)."""
        config = js_api.ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self._config.ack_wait_s,
            max_ack_pending=max(64, self._config.concurrency * 4),
        )
        self._subscription = subscription = None
        running: set[asyncio.Task] = set()
        slots = asyncio.Semaphore(self._config.concurrency)
        try:
            while not self._stopping.is_set():
                try:
                    if subscription is None:
                        subscription = await self._bus.js.pull_subscribe(
                            "llmesh.batch.item.>", durable=DURABLE, stream=ITEMS.name, config=config
                        )
                        self._subscription = subscription
                    want = max(1, self._config.concurrency - len(running))
                    messages = await subscription.fetch(want, timeout=self.window_s)
                except nats.errors.TimeoutError:
                    messages = []
                except Exception as exc:
                    log.warning("batch_fetch_failed", error=repr(exc))
                    subscription = None
                    await asyncio.sleep(1.0)
                    continue
                if not messages:
                    # Idle: wait longer for the next items (at most window_max_s).
                    self.window_s = min(self._config.window_max_s, self.window_s * 2)
                    metrics.BATCH_WINDOW.set(self.window_s)
                    continue
                # Items keep coming: take them sooner.
                self.window_s = max(self._config.window_min_s, self.window_s / 2)
                metrics.BATCH_WINDOW.set(self.window_s)
                for msg in messages:
                    await slots.acquire()
                    task = asyncio.create_task(self._run_item(msg))
                    running.add(task)

                    def finished(done: asyncio.Task) -> None:
                        running.discard(done)
                        slots.release()

                    task.add_done_callback(finished)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def close(self, task: asyncio.Task | None) -> None:
        """Stops the workers (`task` runs `run()`); items they held come back to other workers."""
        self._stopping.set()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._subscription is not None:
            # An undrained pull subscription would hold the connection's drain on close forever.
            try:
                await self._subscription.unsubscribe()
            except Exception as exc:
                log.debug("batch_unsubscribe_failed", error=repr(exc))
            self._subscription = None

    def stop(self) -> None:
        self._stopping.set()

    async def _run_item(self, msg) -> None:
        _, _, _, job_id, index_text = msg.subject.split(".", 4)
        index = int(index_text)
        key = f"result.{job_id}.{index}"
        if key in self._running:
            return
        self._running.add(key)
        claim = Claim(f"claim.{job_id}.{index}")
        # The item stays this worker's while it runs, however long the first token takes.
        heartbeat = asyncio.create_task(self._keep(msg, claim))
        try:
            await self._run_item_once(msg, job_id, index, key, claim)
        finally:
            heartbeat.cancel()
            self._running.discard(key)

    async def _keep(self, msg, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self._config.ack_wait_s / 3)
            try:
                await msg.in_progress()
            except Exception as exc:
                log.debug("batch_heartbeat_failed", error=repr(exc))
            if claim.revision is not None:
                try:
                    await self._renew(claim)
                except Exception as exc:
                    log.debug("batch_claim_renew_failed", error=repr(exc))

    def _lease(self) -> bytes:
        # Twice the ack wait: a redelivery after a missed heartbeat (a stalled loop, a heartbeat
        # lost in a reconnect) still finds the running attempt's claim.
        until = self._clock() + 2 * self._config.ack_wait_s
        return json.dumps({"owner": self._owner, "until": until}).encode()

    async def _take(self, claim: Claim) -> float:
        """Claims the item: 0.0 when this attempt holds it now, else the seconds until the live
        claim of another attempt runs out."""
        try:
            claim.revision = await self._kv.create(claim.key, self._lease())
            return 0.0
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._kv.get(claim.key)
        except (KeyNotFoundError, KeyDeletedError):  # released meanwhile: tried again on the next delivery
            return 0.1
        held = json.loads(entry.value)
        left = held["until"] - self._clock()
        if held["owner"] != self._owner and left > 0:
            return left
        # Its lease ran out (its worker died) or this runner held it: taken over, if no one else was quicker.
        try:
            claim.revision = await self._kv.update(claim.key, self._lease(), last=entry.revision)
            return 0.0
        except KeyWrongLastSequenceError:
            return 0.1

    async def _renew(self, claim: Claim) -> None:
        claim.revision = await self._kv.update(claim.key, self._lease(), last=claim.revision)

    async def _release(self, claim: Claim) -> None:
        if claim.revision is None:
            return
        try:
            await self._kv.delete(claim.key, last=claim.revision)
        except Exception as exc:  # taken over meanwhile: the other attempt releases it
            log.debug("batch_claim_release_failed", error=repr(exc))
        claim.revision = None

    async def _run_item_once(self, msg, job_id: str, index: int, key: str, claim: Claim) -> None:
        custom_id = (msg.headers or {}).get("llmesh-custom-id", "")
        clear_contextvars()
        bind_contextvars(service="router", request_id=item_request_id(job_id, index), batch=job_id)
        try:
            try:
                await self._kv.get(key)
                await msg.ack()  # a result exists: an earlier attempt finished it
                return
            except KeyNotFoundError:
                pass
            job = self._jobs.get(job_id)
            if job is None or not job.cancelled:
                job = Job.from_json((await self._jobs_kv.get(f"job.{job_id}")).value)
                self._jobs[job_id] = job
            now = self._clock()
            if job.cancelled:
                code = job.stopped_reason or "cancelled"
                why = f"the batch job stopped ({code})" if job.stopped_reason else "the batch job was cancelled"
                line = error_line(job_id, index, custom_id, code, why)
            elif now > job.expires_at:
                line = error_line(job_id, index, custom_id, "expired", "the job's completion window passed")
            elif now < job.start_after:
                await msg.nak(delay=min(job.start_after - now, 3600.0))
                return
            else:
                wait = await self._take(claim)
                if wait > 0:  # another attempt runs it now; back when its lease would end
                    metrics.BATCH_ITEMS.labels("claimed_elsewhere").inc()
                    await msg.nak(delay=min(wait + 0.1, self._config.ack_wait_s))
                    return
                line = await self._answer(job, index, custom_id, msg.data)
                if line is None:  # retry later
                    await self._release(claim)
                    await msg.nak(delay=self._config.retry_delay_s)
                    return
            stop = (line.get("error") or {}).get("code") == BUDGET_EXHAUSTED and not job.cancelled
            if stop:
                # A cache refresh stays within the tenant's budget: the first refusal stops it. The
                # job is marked first, so that it never reads as completed on the way.
                log.info("batch_stopped", job_id=job_id, reason=BUDGET_EXHAUSTED)
                await self._mark_cancelled(job, BUDGET_EXHAUSTED)
            try:
                await self._kv.create(key, json.dumps(line).encode())
                metrics.BATCH_ITEMS.labels("error" if line.get("error") else "ok").inc()
            except KeyWrongLastSequenceError:
                metrics.BATCH_ITEMS.labels("duplicate_dropped").inc()
            await msg.ack()
            await self._release(claim)
            if stop:
                await self._end_items(job, BUDGET_EXHAUSTED, "the batch job stopped: the tenant's budget is exhausted")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("batch_item_failed", job_id=job_id, index=index, error=repr(exc))
            await self._release(claim)
            try:
                await msg.nak(delay=self._config.retry_delay_s)
            except Exception:
                pass  # not acknowledged: it comes back after ack_wait

    async def _answer(self, job: Job, index: int, custom_id: str, data: bytes) -> dict | None:
        request = router_pb2.GenerateRequest.FromString(data)
        command = command_from_proto(request)
        parts: list[str] = []
        summary: Summary | None = None
        try:
            async for event in self._generate(job.principal, command, item_request_id(job.job_id, index)):
                if isinstance(event, Delta):
                    parts.append(event.text)
                else:
                    summary = event
        except LlmeshError as exc:
            code = status_code_for(exc).name
            if job.kind == KIND_CACHE_REFRESH and exc.reason == "BUDGET_EXHAUSTED":
                return error_line(job.job_id, index, custom_id, BUDGET_EXHAUSTED, exc.message)
            if code in FINAL:
                return error_line(job.job_id, index, custom_id, code.lower(), exc.message)
            log.info("batch_item_retry", code=code, message=exc.message)
            return None
        if summary is None:
            raise Unavailable("the pipeline ended without a summary")
        return answer_line(job.job_id, index, custom_id, "".join(parts), summary)
