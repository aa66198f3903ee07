"""Edge configuration (environment variables, validated at start-up)."""

from __future__ import annotations

import dataclasses

from llmesh.kit.config import ServerSettings, port_check, positive, setting
from llmesh.kit.defaults import DEFAULT_PORTS, EDGE_HTTP_PORT


def _loopback(service: str) -> str:
    return f"127.0.0.1:{DEFAULT_PORTS[service]}"


@dataclasses.dataclass(frozen=True)
class EdgeSettings(ServerSettings):
    port: int = setting(
        "LLMESH_PORT", DEFAULT_PORTS["edge"], "gRPC port: health and reflection only (0 picks a free one)", port_check
    )
    http_host: str = setting("LLMESH_EDGE_HTTP_HOST", "127.0.0.1", "address the OpenAI-compatible HTTP API binds")
    http_port: int = setting(
        "LLMESH_EDGE_HTTP_PORT",
        EDGE_HTTP_PORT,
        "port of the OpenAI-compatible HTTP API (0 picks a free one)",
        port_check,
    )
    router_addr: str = setting("LLMESH_ROUTER_ADDR", _loopback("router"), "router service host:port")
    tenancy_addr: str = setting(
        "LLMESH_TENANCY_ADDR", _loopback("tenancy"), "tenancy service host:port (authenticates `GET /v1/models`)"
    )
    inference_addr: str = setting(
        "LLMESH_INFERENCE_ADDR", _loopback("inference"), "inference service host:port (the catalog of `/v1/models`)"
    )
    router_channels: int = setting(
        "LLMESH_EDGE_ROUTER_CHANNELS",
        2,
        "gRPC channels (HTTP/2 connections) to the router, used in turn: the edge's one channel pool",
        positive,
    )
    generate_timeout_s: float = setting(
        "LLMESH_EDGE_GENERATE_TIMEOUT_S", 300.0, "deadline of one chat completion at the router", positive
    )
    upstream_timeout_s: float = setting(
        "LLMESH_EDGE_UPSTREAM_TIMEOUT_S", 2.0, "deadline of the calls behind `/v1/models`", positive
    )
    models_ttl_s: float = setting(
        "LLMESH_EDGE_MODELS_TTL_S", 10.0, "how long the model list of `/v1/models` is reused", positive
    )
    max_body_bytes: int = setting(
        "LLMESH_EDGE_MAX_BODY_BYTES", 1_048_576, "largest request body accepted (413 above)", positive
    )
