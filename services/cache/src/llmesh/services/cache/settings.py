"""Cache service configuration from the environment."""

from __future__ import annotations

import dataclasses
import socket

from llmesh.kit.auth import admin_token_setting
from llmesh.kit.config import non_negative, parses, port_check, positive, redis_url_check, setting
from llmesh.kit.defaults import DEFAULT_PORTS
from llmesh.kit.forecast import ForecastSettings
from llmesh.kit.streams import parse_domains

MAX_TTL_S = 30 * 24 * 3600


def _ttl_check(value: float) -> str | None:
    return None if 0 < value <= MAX_TTL_S else f"must be in (0, {MAX_TTL_S}] seconds (30 days)"


@dataclasses.dataclass(frozen=True)
class CacheSettings(ForecastSettings):
    port: int = setting("LLMESH_PORT", DEFAULT_PORTS["cache"], "gRPC port (0 picks a free one)", port_check)
    default_ttl_s: float = setting(
        "LLMESH_CACHE_DEFAULT_TTL_S", 3600.0, "TTL of an answer whose request and policy set none", _ttl_check
    )
    max_entries: int = setting(
        "LLMESH_CACHE_MAX_ENTRIES", 100_000, "entries the in-process LRU holds before evicting (per replica)", positive
    )
    redis_url: str = setting(
        "LLMESH_REDIS_URL",
        "",
        "Redis for the exact layer, shared by the replicas (the URL may carry its password); empty: in-process LRU",
        redis_url_check,
        secret=True,
    )
    redis_prefix: str = setting("LLMESH_CACHE_REDIS_PREFIX", "llmesh:cache:", "prefix of the cache's Redis keys")
    replica_id: str = setting(
        "LLMESH_CACHE_REPLICA_ID",
        "",
        "names this replica's durable invalidation consumer, distinct per replica (empty: the hostname)",
    )
    semantic: bool = setting(
        "LLMESH_CACHE_SEMANTIC", True, "run the semantic layer (settings: LLMESH_CACHE_SEMANTIC_*, LLMESH_QDRANT_*)"
    )
    purge_interval_s: float = setting(
        "LLMESH_CACHE_PURGE_S", 60.0, "seconds between purges of expired exact-layer entries (0: off)", non_negative
    )
    catch_up_timeout_s: float = setting(
        "LLMESH_CACHE_CATCH_UP_S",
        30.0,
        "seconds a starting replica waits to apply the invalidations it missed before serving anyway",
        non_negative,
    )
    peer_domains: str = setting(
        "LLMESH_NATS_PEER_DOMAINS",
        "",
        "JetStream domains of the other regions, comma-separated: this region's invalidation stream copies "
        "theirs (ADR 0017; empty: one region)",
        parses(parse_domains),
    )
    admin_token: str = admin_token_setting(
        "bearer token of the admin RPCs (PinEntry, DeleteEntry, Warm); empty disables them"
    )

    @property
    def replica(self) -> str:
        # Resolved late: a documented default must not depend on the machine that renders the docs.
        return self.replica_id or socket.gethostname()
