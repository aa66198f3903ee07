"""NATS subjects and JetStream streams: part of the contract between services."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

DAY_S = 24 * 3600

# Subject tokens may not contain '.', '*', '>' or whitespace; tenant ids are checked against this.
SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    duplicate_window_s: float = 120.0
    #: JetStream domains of other regions whose stream of the same name this one copies (ADR 0012)
    source_domains: tuple[str, ...] = ()

    def sourcing(self, domains: tuple[str, ...] | list[str]) -> "StreamSpec":
        """This stream, also copying the same stream of each region's JetStream domain in `domains`."""
        for domain in domains:
            if not SUBJECT_TOKEN.match(domain):
                raise ValueError(f"JetStream domain {domain!r} is not a valid subject token")
        return dataclasses.replace(self, source_domains=tuple(domains))


CACHE_INVALIDATE = StreamSpec("LLMESH_CACHE_INVALIDATE", ("llmesh.cache.invalidate.>",), max_age_s=7 * DAY_S)
TENANCY = StreamSpec("LLMESH_TENANCY", ("llmesh.tenancy.>",), max_age_s=7 * DAY_S)

KEY_REVOKED_SUBJECT = "llmesh.tenancy.key.revoked"
# Core NATS (not a stream): llmesh.inference.load.<region>.<model>, model load snapshots.
MODEL_LOAD_SUBJECT_PREFIX = "llmesh.inference.load"
# Core NATS: llmesh.region.health.<region>, each router's view of its region once a second (ADR 0012).
REGION_HEALTH_SUBJECT_PREFIX = "llmesh.region.health"


def parse_domains(value: str) -> tuple[str, ...]:
    """`b,c` → ("b", "c"): the JetStream domains of the other regions (LLMESH_NATS_PEER_DOMAINS)."""
    domains = tuple(d.strip() for d in value.split(",") if d.strip())
    for domain in domains:
        if not SUBJECT_TOKEN.match(domain):
            raise ValueError(f"JetStream domain {domain!r} is not a valid subject token")
    return domains


def region_health_subject(region: str) -> str:
    if not SUBJECT_TOKEN.match(region):
        raise ValueError(f"region {region!r} is not a valid subject token")
    return f"{REGION_HEALTH_SUBJECT_PREFIX}.{region}"


def cache_invalidate_subject(tenant_id: str) -> str:
    if not SUBJECT_TOKEN.match(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} is not a valid subject token")
    return f"llmesh.cache.invalidate.{tenant_id}"
