"""A small NATS/JetStream helper: reconnecting connection, idempotent streams, publishes carrying
`Nats-Msg-Id` (so a retry after a reconnect is deduplicated), and durable consumers that ack only
after the handler succeeded."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

import nats
from google.protobuf.message import Message
from llmesh.kit import tls, tracing
from llmesh.kit.errors import AlreadyExists, Unavailable
from llmesh.kit.logging import get_logger
from llmesh.kit.streams import StreamSpec
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.errors import Error as JetStreamError

log = get_logger("llmesh.bus")


async def kv_keys(js, bucket: str) -> list[str]:
    """The keys of a KV bucket, from its stream's subjects in one request; a deleted key is listed
    too (its `get` raises KeyNotFoundError). Not nats.py's KeyValue.keys(): its watcher puts the end
    marker first when the server already sent every key and no key was read yet, and then reports
    none (seen on a busy machine). The server lists up to 100,000 subjects in one answer."""
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    return sorted(subject[len(prefix) :] for subject in info.state.subjects or {})


class NotConfirmed(Unavailable):
    """A publish whose event went out but whose stream ack never came (NATS frozen, slow or cut
    mid-call): the event may still be stored. Republishing it with the same Nats-Msg-Id is safe
    (the stream drops the repeat within its duplicate window)."""


Handler = Callable[[bytes], Awaitable[None]]
# A handler that also reads the message's headers (e.g. TYPE_HEADER).
HeadersHandler = Callable[[bytes, Mapping[str, str]], Awaitable[None]]

# Every stream publish names its protobuf message type here (e.g. llmesh.events.v1.UsageRecorded),
# so a subject may carry more than one type (docs/adr/0035); messages published before it have none.
TYPE_HEADER = "Llmesh-Type"


def nats_tls_context(servers: list[str]) -> ssl.SSLContext | None:
    """For `tls://` servers: a context trusting LLMESH_TLS_CA_FILE and presenting the process's
    certificate (docs/adr/0024); None for plaintext `nats://` (or when no CA is set: the system's)."""
    if not any(server.startswith("tls://") for server in servers):
        return None
    settings = tls.client_settings()
    return tls.ssl_context(settings) if settings is not None else None


class Bus:
    def __init__(self, nc: nats.NATS):
        self.nc = nc
        self.js = nc.jetstream()
        self._subscriptions: list = []

    @classmethod
    async def connect(cls, url: str, name: str, *, connect_timeout_s: float = 2.0) -> "Bus":
        async def on_error(exc: Exception) -> None:
            log.warning("nats_error", error=repr(exc))

        async def on_disconnected() -> None:
            log.warning("nats_disconnected")

        async def on_reconnected() -> None:
            log.info("nats_reconnected")

        servers = [u.strip() for u in url.split(",") if u.strip()]
        try:
            nc = await nats.connect(
                servers=servers,
                tls=nats_tls_context(servers),
                name=name,
                connect_timeout=connect_timeout_s,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
        except Exception as exc:
            raise Unavailable(f"cannot connect to NATS at {url}: {exc!r}") from exc
        return cls(nc)

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Runs `callback` after every reconnect (e.g. to drop caches that may have missed events)."""
        previous = self.nc._reconnected_cb

        async def chained() -> None:
            if previous is not None:
                await previous()
            await callback()

        self.nc._reconnected_cb = chained

    def on_disconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Runs `callback` whenever the connection is lost (events published meanwhile are missed)."""
        previous = self.nc._disconnected_cb

        async def chained() -> None:
            if previous is not None:
                await previous()
            await callback()

        self.nc._disconnected_cb = chained

    async def ensure_stream(self, spec: StreamSpec) -> None:
        config = js_api.StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            storage=js_api.StorageType.FILE,
            max_age=spec.max_age_s,
            duplicate_window=min(spec.duplicate_window_s, spec.max_age_s),
            retention=js_api.RetentionPolicy.WORK_QUEUE if spec.work_queue else js_api.RetentionPolicy.LIMITS,
            # Another region's stream of the same name, read through its domain's API prefix; the
            # server remembers how far it copied, so a region cut off catches up when it returns.
            sources=[
                js_api.StreamSource(name=spec.name, external=js_api.ExternalStream(api=f"$JS.{domain}.API", deliver=""))
                for domain in spec.source_domains
            ]
            or None,
        )
        try:
            await self.js.add_stream(config)
        except BadRequestError:
            # Exists with another config (an older release): bring it to this one.
            await self.js.update_stream(config)

    async def publish(
        self,
        subject: str,
        message: Message,
        *,
        msg_id: str | None = None,
        timeout_s: float = 2.0,
        attempts: int = 5,
        budget_s: float | None = None,
    ) -> js_api.PubAck:
        """Publishes to a stream and waits for its ack; retries with the same Nats-Msg-Id, so a
        repeat is dropped by the stream. While the connection is down nothing is handed to the
        client's reconnect buffer (it would be sent whenever NATS comes back, after the caller was
        told it failed): the call waits for the connection within `attempts` and `budget_s`
        (seconds for the whole call), then raises Unavailable saying whether the event was
        certainly not published, or sent but not confirmed (it may still be stored)."""
        headers = tracing.inject({"Nats-Msg-Id": msg_id or uuid.uuid4().hex, TYPE_HEADER: message.DESCRIPTOR.full_name})
        payload = message.SerializeToString()
        give_up = None if budget_s is None else time.monotonic() + budget_s
        sent = False
        last: Exception | None = None
        for attempt in range(attempts):
            left = None if give_up is None else give_up - time.monotonic()
            if left is not None and left <= 0:
                break
            if self.nc.is_connected:
                sent = True
                try:
                    wait = timeout_s if left is None else min(timeout_s, left)
                    return await self.js.publish(subject, payload, timeout=wait, headers=headers)
                except (
                    nats.errors.TimeoutError,
                    nats.errors.NoRespondersError,
                    nats.errors.ConnectionClosedError,
                    nats.errors.ConnectionReconnectingError,
                ) as exc:
                    last = exc
            else:
                last = ConnectionError("not connected to NATS")
            log.warning("publish_retry", subject=subject, attempt=attempt + 1, error=repr(last))
            pause = min(0.1 * 2**attempt, 1.0)
            if give_up is not None:
                pause = min(pause, max(0.0, give_up - time.monotonic()))
            await asyncio.sleep(pause)
        if not sent:
            raise Unavailable(f"NATS is unreachable: nothing was published to {subject}", retry_after_s=1.0)
        raise NotConfirmed(
            f"the event for {subject} was sent but NATS did not confirm it ({last!r}); it may still be "
            "applied, and repeating the call is safe",
            retry_after_s=1.0,
        )

    async def publish_core(self, subject: str, message: Message, *, msg_id: str | None = None) -> None:
        """Publishes on core NATS (no stream, no ack): for events only useful to subscribers
        listening now, such as load snapshots. Silently dropped while disconnected."""
        headers = tracing.inject({"Nats-Msg-Id": msg_id or uuid.uuid4().hex})
        try:
            await self.nc.publish(subject, message.SerializeToString(), headers=headers)
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, OSError) as exc:
            log.debug("publish_dropped", subject=subject, error=repr(exc))

    async def consume_durable(
        self,
        spec: StreamSpec,
        subject: str,
        durable: str,
        handler: Handler | HeadersHandler,
        *,
        shared: bool = False,
        with_headers: bool = False,
    ) -> None:
        """Delivers every message of `subject` to `handler` once per durable consumer, also those
        published while this process was down. A message whose handler raises is redelivered.
        shared: replicas of a service split the messages between them (a deliver group named like
        the consumer) instead of the second one being refused as already bound.
        with_headers: the handler takes (data, headers)."""

        async def on_message(msg) -> None:
            try:
                with tracing.consumer_span(msg.subject, msg.headers):
                    if with_headers:
                        await handler(msg.data, msg.headers or {})
                    else:
                        await handler(msg.data)
            except Exception:
                log.exception("event_handler_failed", subject=msg.subject)
                await msg.nak(delay=1.0)
                return
            await msg.ack()

        try:
            sub = await self.js.subscribe(
                subject,
                queue=durable if shared else None,
                durable=durable,
                stream=spec.name,
                cb=on_message,
                manual_ack=True,
                config=js_api.ConsumerConfig(
                    ack_policy=js_api.AckPolicy.EXPLICIT,
                    deliver_policy=js_api.DeliverPolicy.ALL,
                    ack_wait=30,
                ),
            )
        except JetStreamError as exc:
            if "already bound" in str(exc):
                raise AlreadyExists(f"the durable consumer {durable} of {spec.name} has a running subscriber") from exc
            raise
        self._subscriptions.append(sub)

    async def subscribe(self, subject: str, handler: Handler, *, queue: str = "") -> None:
        """A plain subscription for events only useful while this process runs. `queue`: the
        subscribers sharing the name split the messages (each message reaches one of them)."""

        async def on_message(msg) -> None:
            try:
                with tracing.consumer_span(msg.subject, msg.headers):
                    await handler(msg.data)
            except Exception:
                log.exception("event_handler_failed", subject=msg.subject)

        self._subscriptions.append(await self.nc.subscribe(subject, queue=queue, cb=on_message))

    async def delete_consumer(self, spec: StreamSpec, durable: str) -> None:
        try:
            await self.js.delete_consumer(spec.name, durable)
        except NotFoundError:
            pass

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception as exc:  # a drain on a broken connection must not block shutdown
            log.warning("nats_drain_failed", error=repr(exc))
            await self.nc.close()
