"""Router wiring: NATS (key revocations, routing policy), channels to the four upstream services,
and the Generate pipeline."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing

import grpc
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import Bus
from llmesh.kit.client import open_channel
from llmesh.kit.errors import Unavailable
from llmesh.kit.experiments import VariantPolicies
from llmesh.kit.forecast import LoadForecast, start_forecast
from llmesh.kit.identity import PUBLIC, act_for
from llmesh.kit.logging import get_logger
from llmesh.kit.outbox import Batching, Outbox
from llmesh.kit.policy import PolicyStore
from llmesh.kit.quota import QuotaStore, RedisQuotaStore, open_store
from llmesh.kit.server import ServiceApp
from llmesh.kit.streams import (
    BREAKER_SUBJECT_PREFIX,
    CACHE_APPLIED_SUBJECT_PREFIX,
    CACHE_HITS_SUBJECT,
    CACHE_INVALIDATE,
    CACHE_REMOVED_SUBJECT_PREFIX,
    CLASSIFIER_MODEL_SUBJECT,
    CLASSIFIER_OUTCOME,
    CLASSIFIER_ROLLOUT_SUBJECT,
    KEY_REVOKED_SUBJECT,
    MODEL_LOAD_SUBJECT_PREFIX,
    TENANCY,
    USAGE,
    breaker_subject,
)
from llmesh.kit.usage import pack_usage
from llmesh.router.v1 import batch_pb2, batch_pb2_grpc, router_pb2_grpc
from llmesh.services.router import convert, metrics
from llmesh.services.router.accounting import Accounting, quota_policy_from_document
from llmesh.services.router.batch_refresh import RefreshPlanner
from llmesh.services.router.batch_runner import BatchRunner, RunnerConfig
from llmesh.services.router.batch_servicer import SERVICE_NAME as BATCH_SERVICE_NAME
from llmesh.services.router.batch_servicer import BatchServicer
from llmesh.services.router.breakers import BreakerChange, BreakerConfig, Breakers
from llmesh.services.router.core import GeneratePipeline, PipelineConfig
from llmesh.services.router.exact_l1 import ExactL1, HitReports, Removal
from llmesh.services.router.load import LoadBoard
from llmesh.services.router.memo import ClassificationMemo, LookupOutcomes, classifier_rollout_running
from llmesh.services.router.outcomes import OutcomeReporter
from llmesh.services.router.overflow import OverflowGate, OverflowPolicy
from llmesh.services.router.ports import Cache
from llmesh.services.router.principals import PrincipalCache, TokenRenewer
from llmesh.services.router.quality import EscalationPolicy, StreamMode
from llmesh.services.router.queueing import FairQueues, parse_queue_classes, queue_policy_from_document
from llmesh.services.router.region_health import (
    RegionHealthLink,
    RegionRouting,
    load_utilization,
    parse_region_addrs,
)
from llmesh.services.router.regions import Failover, HealthRules, OutcomeWindow, RegionBoard, RouterCensus
from llmesh.services.router.routing import ModelCatalog, Price, Router, RoutingPolicy, policy_from_document
from llmesh.services.router.servicer import SERVICE_NAME, RouterServicer
from llmesh.services.router.settings import RouterSettings, parse_prices, parse_tier_models
from llmesh.services.router.speculation import SpeculationPolicy
from llmesh.services.router.upstreams import (
    CacheClient,
    ClassifierClient,
    InferenceClient,
    L1Cache,
    MemoClassifier,
    OutcomeReportingCache,
    TenancyClient,
    lists_several_addresses,
)

log = get_logger("llmesh.router")


def replica_retry(settings: RouterSettings, target: str) -> bool:
    """Whether a Generate that failed before its first token at the inference behind `target` is
    tried once more on the same model (LLMESH_ROUTER_INFERENCE_REPLICA_RETRY, docs/adr/0034)."""
    mode = settings.inference_replica_retry
    return mode == "always" or (mode == "auto" and lists_several_addresses(target))


class RouterApp(ServiceApp):
    name = "router"
    # The front door: callers present an API key (tenants), checked by the pipeline itself.
    callers = {f"{SERVICE_NAME}/Generate": PUBLIC} | {
        f"{BATCH_SERVICE_NAME}/{m}": PUBLIC
        for m in batch_pb2.DESCRIPTOR.services_by_name["BatchService"].methods_by_name
    }

    def __init__(self, settings: RouterSettings):
        self.settings = settings
        self.principals = PrincipalCache(
            settings.principal_ttl_s, settings.principal_cache_size, stale_s=settings.principal_stale_s
        )
        #: classifications reused for exact hits (docs/adr/0028)
        self.memo = ClassificationMemo(
            max_entries=settings.classification_memo_size, ttl_s=settings.classification_memo_ttl_s
        )
        #: exact cache answers kept to answer repeated requests without the cache hop (docs/adr/0033)
        self.exact_l1 = ExactL1(max_entries=settings.exact_l1_size, ttl_s=settings.exact_l1_ttl_s)
        #: the L1's hits not yet reported to the cache's analytics
        self.l1_hits = HitReports()
        self._l1_report: asyncio.Task | None = None
        # Cache stores still running at shutdown get this long to finish.
        self.task_grace_s = settings.upstream_timeout_s + 1.0
        self.pipeline: GeneratePipeline | None = None
        self.batch: BatchRunner | None = None
        self.refresh: RefreshPlanner | None = None
        self._batch_task = None
        self.bus: Bus | None = None
        self.forecast: LoadForecast | None = None
        self.policy: PolicyStore | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._tenancy: TenancyClient | None = None
        self.tokens: TokenRenewer | None = None
        self.quota_store: QuotaStore | None = None
        self.accounting: Accounting | None = None
        self.outbox: Outbox | None = None
        #: routing outcomes for the classifier (ADR 0027), apart from usage so they never crowd it out
        self.outcome_outbox: Outbox | None = None
        #: latest load snapshot per model (for overflow decisions; shown in metrics)
        self.load = LoadBoard(settings.load_max_age_s)
        self.replica = f"router-{uuid.uuid4().hex[:8]}"
        #: circuit breakers per model endpoint (this replica's view), changes published on NATS
        self.breakers = Breakers(
            BreakerConfig(
                consecutive_failures=settings.breaker_consecutive_failures,
                error_rate=settings.breaker_error_rate,
                min_requests=settings.breaker_min_requests,
                window_s=settings.breaker_window_s,
                base_ejection_s=settings.breaker_base_ejection_s,
                max_ejection_s=settings.breaker_max_ejection_s,
                max_ejection_percent=settings.breaker_max_ejection_percent,
                hint_probe_share=settings.breaker_hint_probe_share,
                hint_successes=settings.breaker_hint_successes,
                hint_max_age_s=settings.breaker_hint_max_age_s,
            ),
            on_change=self._on_breaker_change,
            replica=self.replica,
        )
        self.regions: RegionRouting | None = None
        #: the router replicas of this region, heard in their health reports (docs/adr/0037)
        self.routers: RouterCensus | None = None
        self.queues: FairQueues | None = None

    def register(self, server: grpc.aio.Server) -> list[str]:
        router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(lambda: self.pipeline), server)
        batch_pb2_grpc.add_BatchServiceServicer_to_server(
            BatchServicer(lambda: self.pipeline, lambda: self.batch, lambda: self.refresh), server
        )
        return [SERVICE_NAME, BATCH_SERVICE_NAME]

    async def start(self) -> None:
        s = self.settings
        self.bus = await Bus.connect(s.nats_url, "llmesh-router")
        await self.bus.subscribe(KEY_REVOKED_SUBJECT, self._on_key_revoked)
        await self.bus.subscribe(CLASSIFIER_MODEL_SUBJECT, self._on_classifier_model)
        await self.bus.subscribe(CLASSIFIER_ROLLOUT_SUBJECT, self._on_classifier_model)
        self.bus.on_reconnect(self._on_nats_reconnect)
        self.bus.on_disconnect(self._on_nats_disconnect)
        if self.exact_l1.enabled:
            # The cache's invalidations (live, from the stream's subject; and as the cache replicas
            # applied them, which includes other regions') and single-entry removals.
            invalidated = self._l1_drops(convert.l1_removal_from_invalidation, "cache_invalidation")
            await self.bus.subscribe(CACHE_INVALIDATE.subjects[0], invalidated)
            await self.bus.subscribe(f"{CACHE_APPLIED_SUBJECT_PREFIX}.>", invalidated)
            removed = self._l1_drops(convert.l1_removal_from_entry_removed, "cache_entry_removed")
            await self.bus.subscribe(f"{CACHE_REMOVED_SUBJECT_PREFIX}.>", removed)
            self.every(s.exact_l1_report_s, self._report_l1_hits, name="exact-l1-hits")
        await self.bus.subscribe(f"{MODEL_LOAD_SUBJECT_PREFIX}.>", self._on_model_load)
        # Peers' breaker changes: their ejections are hints here (docs/adr/0030).
        await self.bus.subscribe(f"{BREAKER_SUBJECT_PREFIX}.>", self._on_peer_breaker)
        self.policy = PolicyStore(self.bus, bucket=s.policy_bucket)
        await self.policy.start()
        self.forecast = await start_forecast(self, s, self.bus)
        self.accounting = accounting = await self._start_accounting()
        outcomes = await self._start_outcomes()

        def channel(target: str) -> grpc.aio.Channel:
            opened = open_channel(target, default_timeout_s=s.upstream_timeout_s, identity=self.identity)
            self._channels.append(opened)
            return opened

        inference = InferenceClient(channel(s.inference_addr), replicated=replica_retry(s, s.inference_addr))
        self.regions = await self._start_regions(inference, channel)
        catalog = ModelCatalog(lambda: inference.list_models(timeout_s=s.upstream_timeout_s), s.models_refresh_s)
        await self._wait_for_models(catalog)
        self.regions.know(catalog.models)  # reported before any request reaches them

        defaults = RoutingPolicy(
            tier_models=parse_tier_models(s.tier_models),
            prices={m: Price(*p) for m, p in parse_prices(s.prices).items()},
            overflow=OverflowPolicy(threshold=s.overflow_threshold, resume_below=s.overflow_resume_below),
            escalation=EscalationPolicy(
                threshold=s.escalation_threshold,
                stream_mode=StreamMode(s.escalation_stream_mode),
                hold_tokens=s.escalation_hold_tokens,
            ),
            speculation=SpeculationPolicy(
                enabled=s.speculation_enabled,
                external=s.speculation_external,
                hold_ms=s.speculation_hold_ms,
                early=s.speculation_early,
            ),
        )
        queue_defaults = parse_queue_classes(s.queue_classes)
        # A pool's size: the model's concurrency over the live inference replicas, split between
        # the live router replicas (docs/adr/0037); checked every second.
        census = self.routers
        assert census is not None
        self.queues = FairQueues(
            self.policy.parsed(lambda doc: queue_policy_from_document(doc, queue_defaults)),
            replicas=census.count,
            instance_capacities=lambda model: [
                snapshot.capacity for snapshot in self.load.instances(model.name, model.region or s.region)
            ],
            initial_service_s=s.queue_initial_service_s,
        )
        self.every(1.0, self.queues.refresh, name="queue-capacity")
        cache = CacheClient(channel(s.cache_addr))
        policies = self.policy.parsed(lambda doc: VariantPolicies(doc, lambda d: policy_from_document(d, defaults)))
        classifier, pipeline_cache = self._with_memo(
            ClassifierClient(channel(s.classifier_addr)), self._with_l1(cache), policies
        )
        self.pipeline = GeneratePipeline(
            tenancy=self._tenancy_client(channel),
            classifier=classifier,
            cache=pipeline_cache,
            inference=inference,
            principals=self.principals,
            catalog=catalog,
            router=Router(
                defaults,
                default_model=s.default_model,
                default_price=Price(s.default_prompt_price_per_1k, s.default_completion_price_per_1k),
                home_region=s.region,
                demoted=lambda model: self.breakers.demoted(model.region, model.name),
            ),
            policies=policies,
            config=PipelineConfig(
                upstream_timeout_s=s.upstream_timeout_s,
                generate_timeout_s=s.generate_timeout_s,
                fallback_tier=s.fallback_tier,
                request_log_level=s.request_log_level,
                hit_chunk_chars=s.hit_chunk_chars,
            ),
            spawn=self.spawn,
            breakers=self.breakers,
            overflow=OverflowGate(self.load),
            queues=self.queues,
            accounting=accounting,
            regions=self.regions,
            outcomes=outcomes,
        )
        await self._start_batch(cache)

    def _with_l1(self, cache: CacheClient) -> Cache:
        """The cache behind the L1 of exact answers (docs/adr/0033) unless it is off."""
        if not self.exact_l1.enabled:
            return cache
        store = self.policy
        assert store is not None
        return L1Cache(
            cache, self.exact_l1, self.l1_hits, policy_revision=lambda: store.revision, report_due=self._l1_report_due
        )

    def _l1_report_due(self) -> None:
        if self._l1_report is None or self._l1_report.done():
            self._l1_report = self.spawn(self._report_l1_hits(), name="exact-l1-hits-now")

    async def _report_l1_hits(self) -> None:
        """Hits answered from the L1, to the cache's analytics (one replica of its queue group
        counts them). Core NATS: a report published while NATS is down is lost (analytics only)."""
        rows = self.l1_hits.take()
        dropped, self.l1_hits.dropped = self.l1_hits.dropped, 0
        if dropped:
            metrics.EXACT_L1_REPORTS.labels("dropped").inc(dropped)
        if not rows or self.bus is None:
            return
        await self.bus.publish_core(CACHE_HITS_SUBJECT, convert.hits_report_to_proto(rows, replica=self.replica))
        metrics.EXACT_L1_REPORTS.labels("sent").inc(sum(row.hits for row in rows))

    def _l1_drops(self, read: Callable[[bytes], Removal], event: str) -> Callable[[bytes], Awaitable[None]]:
        """The handler of one kind of the cache's events: the copies it names leave the L1."""

        async def on_event(data: bytes) -> None:
            try:
                removal = read(data)
            except Exception as exc:  # unreadable: drop every copy rather than risk serving a removed one
                log.warning(f"{event}_unreadable", error=repr(exc))
                self.exact_l1.clear()
                return
            self.exact_l1.remove(removal)

        return on_event

    def _with_memo(self, classifier: ClassifierClient, cache: Cache, policies) -> tuple:
        """The classifier and cache as the pipeline sees them: behind the memo of classifications
        (docs/adr/0028) unless it is off."""
        if not self.memo.enabled:
            return classifier, cache
        store = self.policy
        assert store is not None

        def allowed(tenant_id: str, use_case: str) -> bool:
            # A rollout or a policy experiment picks per request id: the same content may be
            # classified otherwise for the next request.
            return not (
                classifier_rollout_running(store.get("global")) or policies.get(tenant_id, use_case).experiments
            )

        outcomes = LookupOutcomes()
        memoised = MemoClassifier(
            classifier, self.memo, outcomes, policy_revision=lambda: store.revision, allowed=allowed
        )
        return memoised, OutcomeReportingCache(cache, outcomes)

    async def _on_classifier_model(self, data: bytes) -> None:
        # A model loaded (or rewritten in place) or a rollout decision: no memoised classification holds.
        self.memo.clear()
        log.info("classification_memo_flushed", reason="classifier_model", event_bytes=len(data))

    async def _start_regions(self, inference: InferenceClient, channel) -> RegionRouting:
        """health reports every second, every region's view, failover."""
        s = self.settings
        window = OutcomeWindow()
        board = RegionBoard(s.region_health_max_age_s)
        remote = parse_region_addrs(s.region_inference)
        model_regions: dict[str, str] = {}  # the catalog's region of each model (inference labels its loads so)
        failover = Failover(
            s.region,
            list(remote),
            board,
            lambda tier: [m for m in window.report(s.region, "", utilization=utilization).models if m.tier == tier],
            rules=HealthRules(ttft_sla_ms=s.ttft_sla_ms),
            failback_after_s=s.failback_after_s,
        )
        utilization = load_utilization(self.load.current, s.region, model_regions)
        assert self.bus is not None
        me = f"{socket.gethostname()}-{os.getpid()}"
        self.routers = RouterCensus(me, s.region_health_max_age_s, fallback=s.replicas)
        link = RegionHealthLink(self.bus, s.region, me, window, board, failover, utilization, self.routers)
        await link.start()
        self.every(1.0, link.tick, name="region_health")
        return RegionRouting(
            inference,
            {r: InferenceClient(channel(addr), replicated=replica_retry(s, addr)) for r, addr in remote.items()},
            window,
            failover,
            model_regions,
        )

    async def _start_outcomes(self) -> OutcomeReporter:
        """the classifier's label stream and its own outbox (ADR 0027)."""
        s = self.settings
        assert self.bus is not None
        await self.bus.ensure_stream(CLASSIFIER_OUTCOME)
        self.outcome_outbox = Outbox(self.bus, self.spawn, name="router-outcomes", max_events=s.outcome_outbox_size)
        self.every(1.0, self.outcome_outbox.drain, name="outcome-outbox-retry")
        return OutcomeReporter(self.outcome_outbox, region=s.region, pass_sample=s.outcome_pass_sample)

    async def _start_accounting(self) -> Accounting:
        """the quota store (Redis or in-process), the usage stream and the event outbox."""
        s = self.settings
        assert self.bus is not None and self.policy is not None
        await self.bus.ensure_stream(USAGE)
        await self.bus.ensure_stream(TENANCY)  # budget alerts: llmesh.tenancy.budget.<tenant>
        # Usage records leave in batches per tenant (ADR 0035); budget alerts one by one.
        self.outbox = Outbox(
            self.bus,
            self.spawn,
            name="router",
            max_events=s.usage_outbox_size,
            batching=Batching(pack_usage, max_records=s.usage_batch_records, linger_s=s.usage_batch_linger_s),
        )
        # What a drain could not publish (NATS down) is retried every second.
        self.every(1.0, self.outbox.drain, name="outbox-retry")
        if s.reservation_ttl_s <= s.generate_timeout_s:
            log.warning(
                "reservation_ttl_below_generate_timeout",
                note="a long generation's budget hold may expire before it settles",
                reservation_ttl_s=s.reservation_ttl_s,
                generate_timeout_s=s.generate_timeout_s,
            )
        self.quota_store = open_store(s.quota_redis_url, timeout_s=s.quota_timeout_s)
        if not isinstance(self.quota_store, RedisQuotaStore):
            log.info("quota_store_in_process", note="budgets and rate limits count this replica only")
        else:
            try:
                await self.quota_store.ping()
            except Exception as exc:
                # Not fatal: budgets and rate limits follow their store-down policy until it is back.
                log.warning("quota_store_unreachable", error=str(exc))
        return Accounting(
            self.quota_store,
            self.policy.parsed(quota_policy_from_document),
            self.outbox,
            self.spawn,
            reservation_ttl_s=s.reservation_ttl_s,
            budgets_fail_open=s.budgets_fail_open,
        )

    def _tenancy_client(self, channel) -> TenancyClient:
        self._tenancy = TenancyClient(channel(self.settings.tenancy_addr))
        return self._tenancy

    async def _start_batch(self, cache: CacheClient) -> None:
        s = self.settings
        pipeline = self.pipeline
        assert pipeline is not None and self.bus is not None

        tenancy = self._tenancy
        assert tenancy is not None
        tokens = self.tokens = TokenRenewer(lambda key_id: tenancy.renew(key_id, timeout_s=s.upstream_timeout_s))

        async def generate(principal, command, request_id: str):
            # The job's principal was authenticated when it was submitted: its items carry a
            # tenant token renewed for its key (a revoked key fails them).
            if self.identity is not None:
                principal = await tokens.fresh(principal)
            async with aclosing(
                pipeline.run(
                    principal,
                    command,
                    request_id=request_id,
                    started=time.perf_counter(),
                    deadline=time.monotonic() + s.generate_timeout_s,
                )
            ) as events:
                async for event in events:
                    yield event

        runner = BatchRunner(
            self.bus,
            generate,
            RunnerConfig(
                concurrency=s.batch_workers,
                ack_wait_s=s.batch_ack_wait_s,
                window_min_s=s.batch_window_min_s,
                window_max_s=s.batch_window_max_s,
            ),
        )
        await runner.start()
        self.batch = runner
        if s.batch_workers:
            self._batch_task = self.spawn(runner.run(), name="batch-workers")

        async def list_hot(principal, use_case: str, min_hits: int, within_s: float, limit: int):
            # Like a batch item, the planner acts for the tenant that turned the refresh on: the
            # cache checks the tenant token against the tenant whose entries it lists.
            if self.identity is not None:
                principal = await tokens.fresh(principal)
                act_for(principal.tenant_token)
            return await cache.hot_entries(
                principal.tenant_id, use_case, min_hits, within_s, limit, timeout_s=s.upstream_timeout_s
            )

        self.refresh = RefreshPlanner(self.bus, runner, list_hot)
        await self.refresh.start()
        if s.cache_refresh_interval_s > 0:
            self.every(s.cache_refresh_interval_s, self.refresh.plan, name="cache-refresh")

    async def _wait_for_models(self, catalog: ModelCatalog) -> None:
        """Inference may still be loading its model: retry until it lists one, or give up."""
        deadline = time.monotonic() + self.settings.start_timeout_s
        delay = 0.2
        while True:
            try:
                await catalog.refresh()
                if catalog.models:
                    log.info("models_listed", models=[m.name for m in catalog.models])
                    return
                problem = "inference lists no models"
            except Unavailable as exc:
                problem = exc.message
            except Exception as exc:
                problem = repr(exc)
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"inference at {self.settings.inference_addr} not ready: {problem}")
            log.info("waiting_for_inference", problem=problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _on_key_revoked(self, data: bytes) -> None:
        event = events_pb2.ApiKeyRevoked.FromString(data)
        dropped = self.principals.revoke(event.key_id, event.tenant_id)
        if self.tokens is not None:
            self.tokens.revoke(event.key_id)
        log.info("api_key_revoked", key_id=event.key_id, tenant=event.tenant_id, dropped=dropped)

    async def _on_model_load(self, data: bytes) -> None:
        self.load.record(convert.load_snapshot_from_proto(events_pb2.ModelLoad.FromString(data)))

    def _on_breaker_change(self, change: BreakerChange) -> None:
        if self.bus is None:
            return
        event = convert.breaker_event_to_proto(change, replica=self.replica)
        self.spawn(self.bus.publish_core(breaker_subject(change.region, change.model), event, msg_id=event.event_id))

    async def _on_peer_breaker(self, data: bytes) -> None:
        try:
            event = events_pb2.BreakerStateChanged.FromString(data)
        except Exception as exc:  # a bad message from the bus must not stop the subscription
            log.warning("breaker_event_unreadable", error=repr(exc))
            return
        if event.router_replica == self.replica or not event.model:
            return
        observed = event.observed_at.ToNanoseconds() / 1e9
        if event.state == events_pb2.BreakerStateChanged.STATE_OPEN and event.HasField("ejected_until"):
            self.breakers.peer_ejected(
                event.region,
                event.model,
                replica=event.router_replica,
                # both times on the peer's clock: the duration holds whatever the skew
                ejected_for_s=event.ejected_until.ToNanoseconds() / 1e9 - observed,
                observed_at_wall=observed,
                reason=event.reason,
            )
        elif event.state == events_pb2.BreakerStateChanged.STATE_CLOSED:
            self.breakers.peer_recovered(
                event.region, event.model, replica=event.router_replica, observed_at_wall=observed
            )

    async def _on_nats_reconnect(self) -> None:
        # Revocations published while disconnected were missed: trust no cached principal.
        self.principals.clear()
        self.principals.stale_allowed = True
        self.memo.clear()  # and model-loaded events
        self.exact_l1.resume()  # and the cache's invalidations
        log.info("principal_cache_flushed", reason="nats_reconnect")

    async def _on_nats_disconnect(self) -> None:
        # Revocations cannot be heard: no principal past its TTL is served (fresh ones still are).
        self.principals.stale_allowed = False
        # The cache's invalidations cannot be heard: no copy of its answers is served meanwhile.
        self.exact_l1.suspend()

    async def stop(self) -> None:
        if self.batch is not None:
            await self.batch.close(self._batch_task)
        if self.outbox is not None and self.bus is not None and not self.bus.nc.is_closed:
            await self.outbox.flush(timeout_s=2.0)  # usage records still queued
        if self.outcome_outbox is not None and self.bus is not None and not self.bus.nc.is_closed:
            await self.outcome_outbox.flush(timeout_s=1.0)
        if self.bus is not None and not self.bus.nc.is_closed:
            await self._report_l1_hits()
        if self.quota_store is not None:
            await self.quota_store.close()
        for opened in self._channels:
            await opened.close()
        self._channels.clear()
        if self.policy is not None:
            await self.policy.stop()
        if self.forecast is not None:
            await self.forecast.save()
        if self.bus is not None:
            await self.bus.close()
