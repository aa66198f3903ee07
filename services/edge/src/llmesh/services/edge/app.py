"""Edge wiring: the OpenAI-compatible HTTP server (aiohttp, in the service's event loop) beside the
gRPC server of every service (health, reflection), one channel pool to the router, and the
channels behind `/v1/models`."""

from __future__ import annotations

from typing import Any

import grpc
from aiohttp import web
from llmesh.kit.client import open_channel
from llmesh.kit.logging import get_logger
from llmesh.kit.server import ServiceApp
from llmesh.services.edge.handlers import Handlers, openai_errors
from llmesh.services.edge.settings import EdgeSettings
from llmesh.services.edge.upstreams import CatalogClient, ChannelPool, RouterClient

log = get_logger("llmesh.edge")


class EdgeApp(ServiceApp):
    name = "edge"

    def __init__(self, settings: EdgeSettings):
        self.settings = settings
        self.router: RouterClient | None = None
        self.catalog: CatalogClient | None = None
        self.http_port = 0
        self._pool: ChannelPool | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._runner: web.AppRunner | None = None

    def register(self, server: grpc.aio.Server) -> list[str]:
        # No gRPC API of its own: the host adds health and reflection.
        return []

    async def start(self) -> None:
        s = self.settings
        self._pool = ChannelPool(
            s.router_addr, s.router_channels, default_timeout_s=s.generate_timeout_s, identity=self.identity
        )
        self.router = RouterClient(self._pool)
        self._channels = [
            open_channel(s.tenancy_addr, default_timeout_s=s.upstream_timeout_s, identity=self.identity),
            open_channel(s.inference_addr, default_timeout_s=s.upstream_timeout_s, identity=self.identity),
        ]
        self.catalog = CatalogClient(*self._channels, timeout_s=s.upstream_timeout_s)
        handlers = Handlers(
            lambda: self.router,
            lambda: self.catalog,
            generate_timeout_s=s.generate_timeout_s,
            models_ttl_s=s.models_ttl_s,
        )
        http = web.Application(middlewares=[openai_errors], client_max_size=s.max_body_bytes)
        http.add_routes(handlers.routes())
        # No access log: one structured line per request would cost more than the edge itself.
        self._runner = web.AppRunner(http, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.http_host, s.http_port, reuse_address=True)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("http_serving", address=f"{s.http_host}:{self.http_port}", router=s.router_addr)

    def ready_info(self) -> dict[str, Any]:
        return {"http_port": self.http_port}

    @property
    def http_address(self) -> str:
        return f"{self.settings.http_host}:{self.http_port}"

    async def stop(self) -> None:
        if self._runner is not None:
            # In-flight requests get the service's grace period.
            await self._runner.shutdown()
            await self._runner.cleanup()
        if self._pool is not None:
            await self._pool.close()
        for channel in self._channels:
            await channel.close()
