"""Wires the cache service: exact layer (LRU or Redis), semantic index, policy, invalidation
stream, background purges."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import time
import uuid
from collections.abc import Callable

import grpc
from llmesh.cache.v1 import cache_pb2_grpc
from llmesh.events.v1 import events_pb2
from llmesh.kit.auth import AdminGuard
from llmesh.kit.bus import Bus
from llmesh.kit.config import load_settings
from llmesh.kit.defaults import home
from llmesh.kit.errors import Unavailable
from llmesh.kit.forecast import LoadForecast, start_forecast
from llmesh.kit.identity import ADMIN_TOKEN_HOLDERS, OPERATOR, SERVICES
from llmesh.kit.logging import get_logger
from llmesh.kit.outbox import Outbox
from llmesh.kit.policy import PolicyStore
from llmesh.kit.server import ServiceApp
from llmesh.kit.streams import (
    CACHE_HITS_QUEUE,
    CACHE_HITS_SUBJECT,
    cache_applied_subject,
    cache_removed_subject,
    parse_domains,
)
from llmesh.services.cache import convert
from llmesh.services.cache.analytics import Analytics
from llmesh.services.cache.core import Cache
from llmesh.services.cache.exact import ExactStore
from llmesh.services.cache.invalidation import Invalidation, InvalidationChannel, durable_name, to_event
from llmesh.services.cache.lru import LruStore
from llmesh.services.cache.metrics import ENTRIES
from llmesh.services.cache.policy import parse_cache_policy
from llmesh.services.cache.redis_store import RedisStore
from llmesh.services.cache.semantic.api import SemanticIndex
from llmesh.services.cache.servicer import ADMIN_METHODS, SERVICE_NAME, CacheServicer
from llmesh.services.cache.settings import CacheSettings

log = get_logger("llmesh.cache")


def semantic_config(replica: str):
    """The semantic engine's settings. Its embedded store cannot be opened by two processes, so
    unless a path or a Qdrant server is configured each replica keeps its own, named after it
    (kept across restarts, like the replica's durable consumer)."""
    from llmesh.services.cache.semantic.config import SemanticConfig

    config = load_settings(SemanticConfig)
    if not config.store_path and not config.qdrant_url:
        config = dataclasses.replace(config, store_path=str(home() / "cache" / "semantic" / durable_name(replica)))
    return config


async def open_semantic_index(replica: str) -> SemanticIndex:
    """The semantic engine (it purges expired entries itself, every LLMESH_CACHE_SEMANTIC_PURGE_S)."""
    config = semantic_config(replica)
    engine = importlib.import_module("llmesh.services.cache.semantic")
    factory = getattr(engine, "open_semantic_index", None)
    if factory is None:
        raise Unavailable(
            "the semantic engine (llmesh.services.cache.semantic.open_semantic_index) is not installed; "
            "set LLMESH_CACHE_SEMANTIC=false to run the exact layer alone"
        )
    index = factory(config)
    if inspect.isawaitable(index):
        index = await index
    return index


# How long a stopping replica keeps publishing invalidations NATS has not confirmed yet.
OUTBOX_FLUSH_S = 5.0


class CacheApp(ServiceApp):
    name = "cache"
    # docs/adr/0023. Each call for a tenant also carries that tenant's token (servicer.py); Stats
    # shows a token's tenant its own rows and the operator all of them. Invalidate, PinEntry,
    # DeleteEntry and Warm are the operator's (the last three want the admin token as well), or
    # take an admin token from tenancy: a platform admin's, or a tenant admin's for its own tenant.
    callers = {
        f"{SERVICE_NAME}/Lookup": frozenset({"router"}),
        f"{SERVICE_NAME}/Store": frozenset({"router"}),
        f"{SERVICE_NAME}/Feedback": frozenset({"router"}),
        # The router's cache refresh planner, acting for the tenant that turned it on.
        f"{SERVICE_NAME}/ListHotEntries": frozenset({"router"}),
        f"{SERVICE_NAME}/Stats": frozenset(SERVICES),
    } | {f"{SERVICE_NAME}/{method}": frozenset({OPERATOR, ADMIN_TOKEN_HOLDERS}) for method in ADMIN_METHODS}

    def __init__(
        self,
        settings: CacheSettings,
        *,
        semantic_index: SemanticIndex | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """`semantic_index` replaces the configured engine (its owner closes it)."""
        self.settings = settings
        self.clock = clock
        self.cache: Cache | None = None
        self.bus: Bus | None = None
        self.channel: InvalidationChannel | None = None
        #: invalidations sent while NATS did not confirm them, published again until it does
        self.outbox: Outbox | None = None
        self._given_index = semantic_index
        self._opened_index: SemanticIndex | None = None
        self._policies: PolicyStore | None = None
        self._exact: ExactStore | None = None
        self.forecast: LoadForecast | None = None

    def register(self, server: grpc.aio.Server) -> list[str]:
        servicer = CacheServicer(lambda: self.cache, self._publish, AdminGuard(self.settings.admin_token), self.clock)
        cache_pb2_grpc.add_CacheServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    async def _publish(self, inv: Invalidation, budget_s: float | None = None) -> bool:
        if self.channel is None or self.outbox is None:
            raise Unavailable("the cache is starting", retry_after_s=1.0)
        return await self.channel.publish(inv, budget_s=budget_s, outbox=self.outbox)

    async def _open_exact(self) -> ExactStore:
        if not self.settings.redis_url:
            return LruStore(self.settings.max_entries)
        try:
            store = await RedisStore.connect(self.settings.redis_url, self.settings.redis_prefix)
        except Exception as exc:
            raise Unavailable(f"cannot reach Redis at {self.settings.redis_url}: {exc!r}") from exc
        log.info("exact_layer_redis", prefix=self.settings.redis_prefix)
        return store

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            # Whatever was opened is released here: a failed start leaves nothing running.
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        self.bus = await Bus.connect(s.nats_url, f"llmesh-cache-{s.replica}")
        self.channel = InvalidationChannel(self.bus, s.replica, peer_domains=parse_domains(s.peer_domains))
        await self.channel.ensure_stream()
        self.outbox = Outbox(self.bus, self.spawn, name="cache-invalidations")
        self.every(1.0, self.outbox.drain, name="invalidation-outbox-retry")
        self._policies = PolicyStore(self.bus)
        await self._policies.start()
        self.forecast = await start_forecast(self, s, self.bus)
        self._exact = await self._open_exact()
        semantic = self._given_index
        if semantic is None and s.semantic:
            self._opened_index = await open_semantic_index(s.replica)
            semantic = self._opened_index
        cache = Cache(
            self._exact,
            semantic,
            self._policies.parsed(parse_cache_policy),
            Analytics(),
            default_ttl_s=s.default_ttl_s,
            clock=self.clock,
            removed=self._entry_removed,
        )

        async def apply(inv: Invalidation) -> None:
            await cache.apply_invalidation(inv)
            self._invalidation_applied(inv)

        await self.channel.consume(apply)
        # Events published while this replica was down are applied before it serves a lookup.
        if not await self.channel.wait_caught_up(s.catch_up_timeout_s):
            log.warning("invalidations_still_pending", timeout_s=s.catch_up_timeout_s)
        self.cache = cache
        # Hits the routers answered from their copies of exact answers: one replica counts each report.
        await self.bus.subscribe(CACHE_HITS_SUBJECT, self._on_reported_hits, queue=CACHE_HITS_QUEUE)
        if s.purge_interval_s > 0:
            self.every(s.purge_interval_s, self._purge_exact, name="cache-purge-exact")
        log.info(
            "cache_ready",
            exact=self._exact.layer,
            semantic=semantic is not None,
            replica=s.replica,
            durable=self.channel.durable,
        )

    def _invalidation_applied(self, inv: Invalidation) -> None:
        """Announces an event of the region's stream (this region's or, copied in, another's) that
        this replica applied to the routers (their L1 of exact answers, docs/adr/0033): the copies
        of other regions' events reach no core subscriber here. Every replica announces it; a
        router drops its copies twice, which is harmless."""
        if self.bus is not None:
            self.spawn(self.bus.publish_core(cache_applied_subject(inv.tenant_id), to_event(inv), msg_id=inv.event_id))

    def _entry_removed(self, tenant_id: str, entry_id: str, reason: str) -> None:
        """Tells the routers (their L1 of exact answers, docs/adr/0033) that an entry is gone; core
        NATS: a router that misses it (disconnected) drops its whole L1 on reconnecting."""
        if self.bus is None:
            return
        event = events_pb2.CacheEntryRemoved(
            event_id=uuid.uuid4().hex, tenant_id=tenant_id, entry_id=entry_id, reason=reason
        )
        event.removed_at.FromNanoseconds(round(self.clock() * 1e9))
        self.spawn(self.bus.publish_core(cache_removed_subject(tenant_id), event, msg_id=event.event_id))

    async def _on_reported_hits(self, data: bytes) -> None:
        cache = self.cache
        if cache is None:
            return
        try:
            rows, problems = convert.reported_hits_rows(data)
        except Exception as exc:  # a bad message must not stop the subscription
            log.warning("reported_hits_unreadable", error=repr(exc))
            return
        if problems:
            log.warning("reported_hits_skipped", problems=problems[:10], skipped=len(problems))
        cache.record_reported_hits(rows)

    async def _purge_exact(self) -> None:
        assert self.cache is not None
        purged = await self.cache.purge_expired()
        ENTRIES.labels(self.cache.exact.layer).set(await self.cache.exact.count())
        if purged:
            log.info("expired_purged", layer=self.cache.exact.layer, entries=purged)

    async def stop(self) -> None:
        """Releases everything start() opened; safe to call again."""
        self.cache = None
        policies, self._policies = self._policies, None
        bus, self.bus = self.bus, None
        index, self._opened_index = self._opened_index, None
        exact, self._exact = self._exact, None
        forecast, self.forecast = self.forecast, None
        outbox, self.outbox = self.outbox, None
        if outbox is not None and len(outbox) and bus is not None and not bus.nc.is_closed:
            if not await outbox.flush(timeout_s=OUTBOX_FLUSH_S):
                log.error("invalidations_not_published", pending=len(outbox))
        if policies is not None:
            await policies.stop()
        if forecast is not None and bus is not None:
            await forecast.save()
        if bus is not None:
            await bus.close()
        if index is not None:
            await index.close()
        if exact is not None:
            await exact.close()
