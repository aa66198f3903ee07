"""CacheService over gRPC: validate and convert (convert.py), call the domain, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.kit.auth import AdminGuard
from llmesh.kit.errors import InvalidArgument, PermissionDenied, Unavailable
from llmesh.kit.identity import admin_token_claims, require_admin, require_tenant, tenant_scope
from llmesh.kit.logging import bind_contextvars
from llmesh.kit.vocabulary import tenant_id_from, use_case_from
from llmesh.services.cache import convert
from llmesh.services.cache.core import Cache, StoreCommand
from llmesh.services.cache.invalidation import Invalidation

SERVICE_NAME = cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name
# The operator's RPCs that also take an admin token (docs/adr/0023): its role decides, per tenant.
ADMIN_METHODS = ("Invalidate", "PinEntry", "DeleteEntry", "Warm")

# Kept free of the caller's deadline so an Invalidate that cannot publish still answers in time.
PUBLISH_MARGIN_S = 0.2
# Pairs a Warm call stores (and embeds) at once before it reports progress.
WARM_BATCH = 32


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(
        self,
        cache: Callable[[], Cache | None],
        publish: Callable[[Invalidation, float | None], Awaitable[bool]],
        guard: AdminGuard,
        clock: Callable[[], float],
    ):
        """`cache` and `publish` are looked up per call: they exist once the app has started."""
        self._cache = cache
        self._publish = publish
        self._guard = guard
        self._clock = clock

    def _ready(self) -> Cache:
        cache = self._cache()
        if cache is None:
            raise Unavailable("the cache is starting", retry_after_s=1.0)
        return cache

    async def Lookup(self, request, context):
        query = convert.lookup_from(request)
        bind_contextvars(tenant=query.key.tenant_id)
        require_tenant(query.key.tenant_id, what="the key")
        return convert.lookup_to_proto(await self._ready().lookup(query))

    async def Store(self, request, context):
        command = convert.store_from(request)
        bind_contextvars(tenant=command.key.tenant_id)
        require_tenant(command.key.tenant_id, what="the key")
        return convert.store_to_proto(await self._ready().store(command))

    async def Invalidate(self, request, context):
        inv = convert.invalidation_from(request, self._clock())
        bind_contextvars(tenant=inv.tenant_id)
        require_admin(inv.tenant_id, what="the invalidation")
        self._ready()
        # Answered within the caller's deadline, never DEADLINE_EXCEEDED: UNAVAILABLE when NATS
        # certainly did not get the event (and then nothing is applied later behind the caller's
        # back); an event sent but not confirmed is accepted as pending and published again by
        # this replica until the stream confirms it (docs/adr/0032).
        remaining = context.time_remaining()
        budget_s = None if remaining is None else max(0.05, remaining - PUBLISH_MARGIN_S)
        confirmed = await self._publish(inv, budget_s)
        return cache_pb2.InvalidateResponse(event_id=inv.event_id, pending=not confirmed)

    async def Feedback(self, request, context):
        tenant_id = tenant_id_from(request.tenant_id)
        entry_id = convert.entry_id_from(request.entry_id)
        thumbs_up = convert.rating_from(request.rating)
        served_as = convert.served_as_from(request.served_as)
        use_case, business_unit = convert.feedback_scope_from(request)
        bind_contextvars(tenant=tenant_id)
        require_tenant(tenant_id, what="the entry")
        result = await self._ready().feedback(
            tenant_id,
            entry_id,
            thumbs_up=thumbs_up,
            served_as=served_as,
            use_case=use_case,
            business_unit=business_unit,
        )
        return cache_pb2.FeedbackResponse(evicted=result.evicted, tightened=result.tightened)

    async def PinEntry(self, request, context):
        tenant_id = tenant_id_from(request.tenant_id)
        self._admin(context, tenant_id)
        entry_id = convert.entry_id_from(request.entry_id)
        bind_contextvars(tenant=tenant_id)
        entry = await self._ready().set_pinned(tenant_id, entry_id, request.pinned)
        return cache_pb2.PinEntryResponse(answer=convert.answer_to_proto(entry))

    async def DeleteEntry(self, request, context):
        tenant_id = tenant_id_from(request.tenant_id)
        self._admin(context, tenant_id)
        entry_id = convert.entry_id_from(request.entry_id)
        bind_contextvars(tenant=tenant_id)
        return cache_pb2.DeleteEntryResponse(deleted=await self._ready().delete_entry(tenant_id, entry_id))

    async def Warm(self, request_iterator, context) -> AsyncIterator[cache_pb2.WarmResponse]:
        # An admin token's holder: each pair's tenant is checked below; the admin token otherwise.
        by_role = admin_token_claims() is not None
        if not by_role:
            self._guard.check(context.invocation_metadata())
        cache = self._ready()
        progress = cache_pb2.WarmResponse()
        batch: list[StoreCommand] = []

        async def flush() -> None:
            results = await cache.store_many(batch)
            progress.stored += sum(1 for r in results if r.entry is not None)
            progress.skipped += sum(1 for r in results if r.entry is None)
            batch.clear()

        async for item in request_iterator:
            progress.received += 1
            try:
                if not item.HasField("entry"):
                    raise InvalidArgument("entry is missing", field="entry")
                command = convert.store_from(item.entry)
                if by_role:
                    # A pair of another tenant ends the call: a tenant admin warms its own only.
                    require_admin(command.key.tenant_id, what=f"pair {progress.received}")
                batch.append(command)
            except InvalidArgument as exc:
                # One bad pair in a bulk load is reported, not fatal to the others.
                progress.failed += 1
                progress.last_error = f"pair {progress.received}: {exc.message}"
            if len(batch) >= WARM_BATCH:
                await flush()
                snapshot = cache_pb2.WarmResponse()
                snapshot.CopyFrom(progress)
                yield snapshot
        if batch:
            await flush()
        progress.done = True
        yield progress

    def _admin(self, context, tenant_id: str) -> None:
        """An admin token's role for `tenant_id`, or else the admin token (and the operator's
        credential, which the gate checked)."""
        if not require_admin(tenant_id, what="the entry"):
            self._guard.check(context.invocation_metadata())

    async def ListHotEntries(self, request, context):
        tenant_id, use_case, min_hits, within_s, limit = convert.hot_entries_from(request)
        bind_contextvars(tenant=tenant_id)
        require_tenant(tenant_id, what="the listed entries")
        cache = self._ready()
        found = await cache.hot_entries(tenant_id, use_case, min_hits=min_hits, expiring_within_s=within_s, limit=limit)
        return convert.hot_entries_to_proto(found, cache.hits.hits_by_hour(tenant_id, use_case))

    async def Stats(self, request, context):
        tenant_id = tenant_id_from(request.tenant_id) if request.tenant_id else ""
        # A tenant's token sees that tenant's rows only; the operator sees them all.
        scope = tenant_scope()
        if scope is not None:
            if tenant_id and tenant_id != scope:
                raise PermissionDenied("the tenant token is for another tenant than the statistics asked for")
            tenant_id = scope
        use_case = use_case_from(request.use_case) if request.use_case else ""
        rows, total = self._ready().analytics.report(
            tenant_id=tenant_id, business_unit=request.business_unit, use_case=use_case
        )
        return convert.stats_response_to_proto(rows, total)
