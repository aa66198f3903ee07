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
    # Work-queue retention: a message leaves the stream once a consumer acknowledged it.
    work_queue: bool = False
    #: JetStream domains of other regions whose stream of the same name this one copies (ADR 0017)
    source_domains: tuple[str, ...] = ()

    def sourcing(self, domains: tuple[str, ...] | list[str]) -> "StreamSpec":
        """This stream, also copying the same stream of each region's JetStream domain in `domains`."""
        for domain in domains:
            if not SUBJECT_TOKEN.match(domain):
                raise ValueError(f"JetStream domain {domain!r} is not a valid subject token")
        return dataclasses.replace(self, source_domains=tuple(domains))


CACHE_INVALIDATE = StreamSpec("LLMESH_CACHE_INVALIDATE", ("llmesh.cache.invalidate.>",), max_age_s=7 * DAY_S)
TENANCY = StreamSpec("LLMESH_TENANCY", ("llmesh.tenancy.>",), max_age_s=7 * DAY_S)
# Every request's usage (UsageRecorded, Nats-Msg-Id = request id): the ledger's source, so it is
# kept long enough for a ledger that was down for a while, and deduplicated over 10 minutes.
USAGE = StreamSpec("LLMESH_USAGE", ("llmesh.usage.>",), max_age_s=30 * DAY_S, duplicate_window_s=600.0)
USAGE_SUBJECTS = "llmesh.usage.>"
# AuditRecorded on llmesh.audit.<tenant> (or .platform), Nats-Msg-Id = event id; tenancy appends
# each to its hash-chained audit log.
AUDIT = StreamSpec("LLMESH_AUDIT", ("llmesh.audit.>",), max_age_s=7 * DAY_S)
AUDIT_SUBJECTS = "llmesh.audit.>"

# RoutingOutcome on llmesh.classifier.outcome.<region>, Nats-Msg-Id = "outcome-<request id>": the
# router's quality-check verdicts on tier-1 answers, labels for the classifier (ADR 0027). A week
# covers a classifier that was down for a while; labels older than that are not worth the replay.
CLASSIFIER_OUTCOME = StreamSpec("LLMESH_CLASSIFIER_OUTCOME", ("llmesh.classifier.outcome.>",), max_age_s=7 * DAY_S)
CLASSIFIER_OUTCOME_SUBJECTS = "llmesh.classifier.outcome.>"

KEY_REVOKED_SUBJECT = "llmesh.tenancy.key.revoked"
# The classifier's complexity model (core NATS, not durable; a subscriber that reconnects assumes
# it missed some): a version loaded or rewritten in place, and rollout decisions.
CLASSIFIER_MODEL_SUBJECT = "llmesh.classifier.model"
CLASSIFIER_ROLLOUT_SUBJECT = "llmesh.classifier.rollout"
# Core NATS (not a stream): llmesh.inference.load.<region>.<model>, model load snapshots.
MODEL_LOAD_SUBJECT_PREFIX = "llmesh.inference.load"
# Core NATS: llmesh.router.breaker.<region>.<model>, a router replica's breaker state changes.
BREAKER_SUBJECT_PREFIX = "llmesh.router.breaker"


def _subject(prefix: str, token: str, what: str) -> str:
    """`prefix`.`token`, where the token (a tenant id, a region) must be one valid subject token."""
    if not SUBJECT_TOKEN.match(token):
        raise ValueError(f"{what} {token!r} is not a valid subject token")
    return f"{prefix}.{token}"


def breaker_subject(region: str, model: str) -> str:
    """The subject of a breaker change; characters a subject token may not hold become '_'."""
    return f"{BREAKER_SUBJECT_PREFIX}.{re.sub(r'[^A-Za-z0-9_-]', '_', region) or '_'}.{re.sub(r'[^A-Za-z0-9_-]', '_', model)}"


# Core NATS: llmesh.region.health.<region>, each router's view of its region once a second (ADR 0017).
REGION_HEALTH_SUBJECT_PREFIX = "llmesh.region.health"


def parse_domains(value: str) -> tuple[str, ...]:
    """`b,c` → ("b", "c"): the JetStream domains of the other regions (LLMESH_NATS_PEER_DOMAINS)."""
    domains = tuple(d.strip() for d in value.split(",") if d.strip())
    for domain in domains:
        if not SUBJECT_TOKEN.match(domain):
            raise ValueError(f"JetStream domain {domain!r} is not a valid subject token")
    return domains


def region_health_subject(region: str) -> str:
    return _subject(REGION_HEALTH_SUBJECT_PREFIX, region, "region")


def cache_invalidate_subject(tenant_id: str) -> str:
    return _subject("llmesh.cache.invalidate", tenant_id, "tenant id")


CACHE_REMOVED_SUBJECT_PREFIX = "llmesh.cache.removed"
# Each cache replica announces, on core NATS, every invalidation it applied from its region's stream
# (CacheInvalidated, as published): the routers' copies of exact answers (docs/adr/0033) also
# hear those published in another region, which the stream copies in but core subscribers never see.
CACHE_APPLIED_SUBJECT_PREFIX = "llmesh.cache.applied"
# Exact hits the routers answered from their copies of cache entries (docs/adr/0033), core NATS;
# the cache replicas subscribe in one queue group so that one replica counts each report.
CACHE_HITS_SUBJECT = "llmesh.cache.hits"
CACHE_HITS_QUEUE = "cache-hits"


def cache_applied_subject(tenant_id: str) -> str:
    """llmesh.cache.applied.<tenant_id>: a CacheInvalidated a cache replica applied (core NATS)."""
    return _subject(CACHE_APPLIED_SUBJECT_PREFIX, tenant_id, "tenant id")


def cache_removed_subject(tenant_id: str) -> str:
    """llmesh.cache.removed.<tenant_id>: one CacheEntryRemoved per entry removed (core NATS)."""
    return _subject(CACHE_REMOVED_SUBJECT_PREFIX, tenant_id, "tenant id")


def usage_subject(tenant_id: str) -> str:
    """llmesh.usage.<tenant_id>: one UsageRecorded per request (stream LLMESH_USAGE)."""
    return _subject("llmesh.usage", tenant_id, "tenant id")


def audit_subject(tenant_id: str = "") -> str:
    """The subject of an audit event about `tenant_id`, or about the platform when empty."""
    return _subject("llmesh.audit", tenant_id, "tenant id") if tenant_id else "llmesh.audit.platform"


def budget_alert_subject(tenant_id: str) -> str:
    """llmesh.tenancy.budget.<tenant_id>: BudgetAlert at 50/80/100 % (stream LLMESH_TENANCY)."""
    return _subject("llmesh.tenancy.budget", tenant_id, "tenant id")


def classifier_outcome_subject(region: str) -> str:
    """llmesh.classifier.outcome.<region>: one RoutingOutcome per judged tier-1 answer."""
    return _subject("llmesh.classifier.outcome", region, "region")
