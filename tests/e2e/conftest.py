"""The whole mesh in this process: the five real services on port 0, the real local model, the
session's nats-server."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets

import pytest
from llmesh.common.v1 import common_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.config import load_settings
from llmesh.kit.server import ServiceHost
from llmesh.kit.testing import hosted, identity_settings, unique
from llmesh.router.v1 import router_pb2_grpc
from llmesh.services.cache.app import CacheApp
from llmesh.services.cache.settings import CacheSettings
from llmesh.services.classifier.app import ClassifierApp
from llmesh.services.classifier.settings import ClassifierSettings
from llmesh.services.edge.app import EdgeApp
from llmesh.services.edge.settings import EdgeSettings
from llmesh.services.inference.app import InferenceApp
from llmesh.services.inference.settings import InferenceSettings
from llmesh.services.router.app import RouterApp
from llmesh.services.router.settings import RouterSettings
from llmesh.services.tenancy.app import TenancyApp
from llmesh.services.tenancy.settings import TenancySettings
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc


@dataclasses.dataclass
class Mesh:
    hosts: dict[str, ServiceHost]
    router: router_pb2_grpc.RouterServiceStub
    tenancy: tenancy_pb2_grpc.TenancyServiceStub
    admin: list[tuple[str, str]]

    async def new_tenant(self) -> tuple[str, str, str]:
        """(api_key, tenant_id, key_id) of a fresh tenant."""
        tenant = (
            await self.tenancy.CreateTenant(
                tenancy_pb2.CreateTenantRequest(
                    name=unique("e2e"), business_unit="qa", clearance=common_pb2.SENSITIVITY_CONFIDENTIAL
                ),
                metadata=self.admin,
            )
        ).tenant
        key = await self.tenancy.CreateApiKey(
            tenancy_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, label="e2e"), metadata=self.admin
        )
        return key.api_key, tenant.tenant_id, key.key.key_id


@pytest.fixture(scope="module")
async def mesh(nats_url, tmp_path_factory, mesh_identity_dir):
    home = tmp_path_factory.mktemp("llmesh-home")
    admin_token = secrets.token_urlsafe(24)
    common = dict(port=0, metrics_port=0, nats_url=nats_url)

    def own(service: str) -> dict[str, str]:
        # Each service is itself, as under `llmesh up` (docs/adr/0023); the tests call as the operator.
        return identity_settings(mesh_identity_dir, service)

    with pytest.MonkeyPatch.context() as env:
        # Services that keep files resolve them under LLMESH_HOME when they start.
        env.setenv("LLMESH_HOME", str(home))
        async with contextlib.AsyncExitStack() as stack:
            hosts: dict[str, ServiceHost] = {}

            async def start(name: str, app_cls, settings) -> None:
                hosts[name] = await stack.enter_async_context(hosted(app_cls(settings), settings))

            await start(
                "tenancy",
                TenancyApp,
                load_settings(
                    TenancySettings,
                    environ={},
                    **common,
                    **own("tenancy"),
                    db_path=str(home / "tenancy.db"),
                    admin_token=admin_token,
                    outbox_retry_s=0.2,
                ),
            )
            await start(
                "classifier",
                ClassifierApp,
                load_settings(ClassifierSettings, environ={}, **common, **own("classifier")),
            )
            # The admin token too, as `llmesh up` gives it: warming is an admin RPC.
            await start(
                "cache",
                CacheApp,
                load_settings(CacheSettings, environ={}, **common, **own("cache"), admin_token=admin_token),
            )
            await start(
                "inference",
                InferenceApp,
                load_settings(
                    InferenceSettings,
                    environ={},
                    **common,
                    **own("inference"),
                    context_length=1024,
                    max_concurrency=2,
                ),
            )
            await start(
                "router",
                RouterApp,
                load_settings(
                    RouterSettings,
                    environ={},
                    **common,
                    **own("router"),
                    tenancy_addr=hosts["tenancy"].address,
                    classifier_addr=hosts["classifier"].address,
                    cache_addr=hosts["cache"].address,
                    inference_addr=hosts["inference"].address,
                    # a log line per request, so the log tests see what a request logs
                    request_log_level="info",
                ),
            )
            router_channel = await stack.enter_async_context(open_channel(hosts["router"].address))
            tenancy_channel = await stack.enter_async_context(open_channel(hosts["tenancy"].address))
            yield Mesh(
                hosts=hosts,
                router=router_pb2_grpc.RouterServiceStub(router_channel),
                tenancy=tenancy_pb2_grpc.TenancyServiceStub(tenancy_channel),
                admin=[("authorization", f"Bearer {admin_token}")],
            )


@pytest.fixture(scope="module")
async def edge(mesh, mesh_identity_dir):
    """The edge in front of `mesh`: the base URL of its OpenAI-compatible API (…/v1)."""
    settings = load_settings(
        EdgeSettings,
        environ={},
        **identity_settings(mesh_identity_dir, "edge"),
        port=0,
        metrics_port=0,
        http_port=0,
        router_addr=mesh.hosts["router"].address,
        tenancy_addr=mesh.hosts["tenancy"].address,
        inference_addr=mesh.hosts["inference"].address,
    )
    app = EdgeApp(settings)
    async with hosted(app, settings, serve_metrics=False):
        yield f"http://{app.http_address}/v1"


def bearer(api_key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {api_key}")]
