"""Router configuration (environment variables, validated at start-up)."""

from __future__ import annotations

import dataclasses
import json

from llmesh.kit.config import (
    non_negative,
    one_of,
    parses,
    port_check,
    positive,
    redis_url_check,
    setting,
)
from llmesh.kit.defaults import DEFAULT_PORTS
from llmesh.kit.forecast import ForecastSettings
from llmesh.services.router.queueing import DEFAULT_QUEUE_CLASSES, parse_queue_classes
from llmesh.services.router.region_health import parse_region_addrs


def _loopback(service: str) -> str:
    return f"127.0.0.1:{DEFAULT_PORTS[service]}"


def _tier(value: int) -> str | None:
    return None if value in (1, 2, 3) else "must be 1, 2 or 3"


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _percent(value: float) -> str | None:
    return None if 0 <= value <= 100 else "must be in 0..100"


def parse_tier_models(value: str) -> dict[int, str]:
    """ "1=model-a,2=model-b" → {1: "model-a", 2: "model-b"}."""
    mapping: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        tier, sep, model = item.partition("=")
        if not sep or tier.strip() not in ("1", "2", "3") or not model.strip():
            raise ValueError(f"expected comma-separated TIER=MODEL pairs with TIER in 1..3 (bad item {item!r})")
        mapping[int(tier)] = model.strip()
    return mapping


def parse_prices(value: str) -> dict[str, tuple[float, float]]:
    """JSON {"model": {"prompt_per_1k": x, "completion_per_1k": y}} → {model: (x, y)}."""
    if not value.strip():
        return {}
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"must be a JSON object: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("must be a JSON object of model → prices")
    prices = {}
    for model, entry in doc.items():
        try:
            prompt, completion = float(entry["prompt_per_1k"]), float(entry["completion_per_1k"])
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{model}: needs numeric prompt_per_1k and completion_per_1k") from None
        if prompt < 0 or completion < 0:
            raise ValueError(f"{model}: prices must be >= 0")
        prices[model] = (prompt, completion)
    return prices


@dataclasses.dataclass(frozen=True)
class RouterSettings(ForecastSettings):
    port: int = setting("LLMESH_PORT", DEFAULT_PORTS["router"], "gRPC port (0 picks a free one)", port_check)

    tenancy_addr: str = setting("LLMESH_TENANCY_ADDR", _loopback("tenancy"), "tenancy service host:port")
    classifier_addr: str = setting("LLMESH_CLASSIFIER_ADDR", _loopback("classifier"), "classifier service host:port")
    cache_addr: str = setting("LLMESH_CACHE_ADDR", _loopback("cache"), "cache service host:port")
    inference_addr: str = setting(
        "LLMESH_INFERENCE_ADDR",
        _loopback("inference"),
        "inference service host:port (`ipv4:host:port,host:port` for several replicas: round robin over them)",
    )
    inference_replica_retry: str = setting(
        "LLMESH_ROUTER_INFERENCE_REPLICA_RETRY",
        "auto",
        "a Generate that inference failed UNAVAILABLE before any token is tried once more on the same model (round "
        "robin takes it to another replica) before the next candidate: auto when LLMESH_INFERENCE_ADDR lists "
        "several addresses, always (e.g. a DNS name of several pods), never (docs/adr/0034)",
        one_of("auto", "always", "never"),
    )

    upstream_timeout_s: float = setting(
        "LLMESH_ROUTER_UPSTREAM_TIMEOUT_S",
        2.0,
        "deadline of each unary call to tenancy, classifier and cache",
        positive,
    )
    generate_timeout_s: float = setting(
        "LLMESH_ROUTER_GENERATE_TIMEOUT_S", 300.0, "deadline of one streamed generation from inference", positive
    )
    start_timeout_s: float = setting(
        "LLMESH_ROUTER_START_TIMEOUT_S", 180.0, "how long start-up waits for inference to list its models", positive
    )
    principal_ttl_s: float = setting(
        "LLMESH_ROUTER_PRINCIPAL_TTL_S",
        30.0,
        "how long an authenticated key is trusted without asking tenancy",
        non_negative,
    )
    principal_stale_s: float = setting(
        "LLMESH_ROUTER_PRINCIPAL_STALE_S",
        300.0,
        "how long past its TTL an authenticated key is still served while tenancy cannot answer (unavailable, "
        "never after a rejection; revocations on NATS drop it at once; 0: never)",
        non_negative,
    )
    principal_cache_size: int = setting(
        "LLMESH_ROUTER_PRINCIPAL_CACHE_SIZE", 10_000, "most API keys whose principal is cached", positive
    )
    classification_memo_ttl_s: float = setting(
        "LLMESH_ROUTER_CLASSIFICATION_MEMO_TTL_S",
        10.0,
        "how long a classification is reused for exact hits of the same content (docs/adr/0028; 0: never)",
        non_negative,
    )
    exact_l1_size: int = setting(
        "LLMESH_ROUTER_EXACT_L1_SIZE",
        10_000,
        "most exact cache answers the router keeps to answer repeated requests without the cache hop "
        "(docs/adr/0033; 0: none, every request asks the cache)",
        non_negative,
    )
    exact_l1_ttl_s: float = setting(
        "LLMESH_ROUTER_EXACT_L1_TTL_S",
        5.0,
        "longest the router keeps an exact cache answer (never past the cache's own expiry; 0: none kept)",
        non_negative,
    )
    exact_l1_report_s: float = setting(
        "LLMESH_ROUTER_EXACT_L1_REPORT_S",
        1.0,
        "how often the hits answered from the router's L1 are reported to the cache's analytics "
        "(also at once when 256 are waiting)",
        positive,
    )
    classification_memo_size: int = setting(
        "LLMESH_ROUTER_CLASSIFICATION_MEMO_SIZE",
        10_000,
        "most classifications the router keeps for exact hits (0: none, every request asks the classifier)",
        non_negative,
    )
    models_refresh_s: float = setting(
        "LLMESH_ROUTER_MODELS_REFRESH_S", 30.0, "how often the list of inference models is refreshed", positive
    )
    default_model: str = setting(
        "LLMESH_ROUTER_DEFAULT_MODEL",
        "",
        "model for tiers neither the policy nor the catalog maps (empty: the first model inference lists)",
    )
    tier_models: str = setting(
        "LLMESH_ROUTER_TIER_MODELS",
        "",
        "tier → model, e.g. `1=gemma-3-270m,2=...`, over the catalog's tiers (inference ListModels); the policy "
        "overrides them",
        parses(parse_tier_models),
    )
    fallback_tier: int = setting("LLMESH_ROUTER_FALLBACK_TIER", 2, "tier used when the classifier cannot answer", _tier)
    prices: str = setting(
        "LLMESH_ROUTER_PRICES",
        "",
        'price table as JSON `{"model": {"prompt_per_1k": 0.1, "completion_per_1k": 0.2}}` (USD per 1k tokens), '
        "over the catalog's prices; the policy overrides it",
        parses(parse_prices),
    )
    default_prompt_price_per_1k: float = setting(
        "LLMESH_ROUTER_DEFAULT_PROMPT_PRICE_PER_1K",
        0.0001,
        "USD per 1k prompt tokens of a model without a price",
        non_negative,
    )
    default_completion_price_per_1k: float = setting(
        "LLMESH_ROUTER_DEFAULT_COMPLETION_PRICE_PER_1K",
        0.0004,
        "USD per 1k completion tokens of a model without a price",
        non_negative,
    )
    load_max_age_s: float = setting(
        "LLMESH_ROUTER_LOAD_MAX_AGE_S",
        3.0,
        "a model load snapshot older than this counts as unknown load (inference sends one a second)",
        positive,
    )
    policy_bucket: str = setting("LLMESH_ROUTER_POLICY_BUCKET", "llmesh-policy", "NATS KV bucket of the routing policy")
    # Multi-region failover (ADR 0017)
    region_inference: str = setting(
        "LLMESH_ROUTER_REGION_INFERENCE",
        "",
        "other regions' inference, `b=host:port,...`: a tier whose local models are down goes to a healthy one "
        "(empty: no failover)",
        parses(parse_region_addrs),
    )
    failback_after_s: float = setting(
        "LLMESH_ROUTER_FAILBACK_S",
        10.0,
        "seconds the local region must stay healthy before traffic comes back",
        positive,
    )
    region_health_max_age_s: float = setting(
        "LLMESH_ROUTER_REGION_HEALTH_MAX_AGE_S",
        3.0,
        "a region whose last health report is older than this is unknown and takes no failover traffic",
        positive,
    )
    ttft_sla_ms: float = setting(
        "LLMESH_ROUTER_TTFT_SLA_MS",
        5000.0,
        "p95 time to first token over which a region's model counts as down",
        positive,
    )
    hit_chunk_chars: int = setting(
        "LLMESH_ROUTER_HIT_CHUNK_CHARS",
        64,
        "a cached answer is streamed in deltas of at most this many characters",
        positive,
    )
    request_log_level: str = setting(
        "LLMESH_ROUTER_REQUEST_LOG_LEVEL",
        "debug",
        "level of the one line logged per answered request (served_from_cache, generated): at debug it is "
        "not formatted under the default LLMESH_LOG_LEVEL=info (metrics, traces and usage events still cover "
        "every request); info logs each one",
        one_of("debug", "info"),
    )
    batch_workers: int = setting(
        "LLMESH_ROUTER_BATCH_WORKERS",
        1,
        "batch items this replica runs at once (0: this replica accepts batch jobs but runs no items)",
        non_negative,
    )
    batch_ack_wait_s: float = setting(
        "LLMESH_ROUTER_BATCH_ACK_WAIT_S",
        120.0,
        "a batch item whose worker went silent this long is handed to another worker",
        positive,
    )
    batch_window_min_s: float = setting(
        "LLMESH_ROUTER_BATCH_WINDOW_MIN_S",
        0.05,
        "shortest wait to gather batch items, while items keep coming",
        positive,
    )
    batch_window_max_s: float = setting(
        "LLMESH_ROUTER_BATCH_WINDOW_MAX_S", 0.5, "longest wait to gather batch items, when idle", positive
    )
    cache_refresh_interval_s: float = setting(
        "LLMESH_ROUTER_CACHE_REFRESH_INTERVAL_S",
        600.0,
        "how often this replica plans the cache refresh jobs of the use cases that turned it on (0: never)",
        non_negative,
    )
    breaker_consecutive_failures: int = setting(
        "LLMESH_ROUTER_BREAKER_CONSECUTIVE_FAILURES",
        5,
        "failures in a row (UNAVAILABLE, deadline, cut streams) that eject a model endpoint",
        positive,
    )
    breaker_error_rate: float = setting(
        "LLMESH_ROUTER_BREAKER_ERROR_RATE",
        0.5,
        "error rate over the window that ejects a model endpoint (with at least the minimum requests)",
        _fraction,
    )
    breaker_min_requests: int = setting(
        "LLMESH_ROUTER_BREAKER_MIN_REQUESTS", 10, "results in the window before the error rate counts", positive
    )
    breaker_window_s: float = setting(
        "LLMESH_ROUTER_BREAKER_WINDOW_S", 10.0, "window of the breaker's error rate, seconds", positive
    )
    breaker_base_ejection_s: float = setting(
        "LLMESH_ROUTER_BREAKER_BASE_EJECTION_S",
        5.0,
        "ejection time of a first ejection; the n-th ejection in a row lasts n times this",
        positive,
    )
    breaker_max_ejection_s: float = setting(
        "LLMESH_ROUTER_BREAKER_MAX_EJECTION_S", 120.0, "longest ejection, seconds", positive
    )
    breaker_max_ejection_percent: float = setting(
        "LLMESH_ROUTER_BREAKER_MAX_EJECTION_PERCENT",
        50.0,
        "most model endpoints ejected at once, in percent of the catalog (one may always be)",
        _percent,
    )
    breaker_hint_probe_share: float = setting(
        "LLMESH_ROUTER_BREAKER_HINT_PROBE_SHARE",
        0.1,
        "share of requests in which an endpoint a peer replica ejected keeps its place (a probe, one at a time); "
        "in the others it is tried last (0: peers' ejections are only displayed)",
        _fraction,
    )
    breaker_hint_successes: int = setting(
        "LLMESH_ROUTER_BREAKER_HINT_SUCCESSES",
        3,
        "successes in a row that end a peer's hint before its ejection time is over",
        positive,
    )
    breaker_hint_max_age_s: float = setting(
        "LLMESH_ROUTER_BREAKER_HINT_MAX_AGE_S",
        10.0,
        "a peer's breaker event older than this on arrival (by this replica's clock: allows for skew) is ignored",
        positive,
    )
    overflow_threshold: float = setting(
        "LLMESH_ROUTER_OVERFLOW_THRESHOLD",
        0.8,
        "self-hosted utilization at which eligible requests overflow to external models (policy `overflow`)",
        _fraction,
    )
    overflow_resume_below: float = setting(
        "LLMESH_ROUTER_OVERFLOW_RESUME_BELOW",
        0.65,
        "utilization under which overflowing stops again (hysteresis; policy `overflow`)",
        _fraction,
    )
    escalation_threshold: float = setting(
        "LLMESH_ROUTER_ESCALATION_THRESHOLD",
        0.7,
        "tier-1 answers scoring below this are answered again on tier 2 (policy `escalation`)",
        _fraction,
    )
    escalation_stream_mode: str = setting(
        "LLMESH_ROUTER_ESCALATION_STREAM_MODE",
        "release",
        "`release`: stream at once, escalate only answers with nothing released; `hold`: hold the first "
        "LLMESH_ROUTER_ESCALATION_HOLD_TOKENS deltas until scored (policy `escalation`, ADR 0012)",
        one_of("release", "hold"),
    )
    escalation_hold_tokens: int = setting(
        "LLMESH_ROUTER_ESCALATION_HOLD_TOKENS", 32, "deltas held for scoring in `hold` mode", positive
    )
    speculation_enabled: bool = setting(
        "LLMESH_ROUTER_SPECULATION_ENABLED",
        True,
        "on an exact cache miss, dispatch to the first candidate while the semantic lookup runs "
        "(policy `speculation`, ADR 0029)",
    )
    speculation_external: bool = setting(
        "LLMESH_ROUTER_SPECULATION_EXTERNAL",
        False,
        "speculate on external candidates too (an external API bills the prompt even when cancelled)",
    )
    speculation_early: bool = setting(
        "LLMESH_ROUTER_SPECULATION_EARLY",
        True,
        "after an exact miss, dispatch to the self-hosted model the tenant's use case went to first lately "
        "before the classifier answered; cancelled when the classification picks another (policy "
        "`speculation.early`, ADR 0038)",
    )
    speculation_hold_ms: float = setting(
        "LLMESH_ROUTER_SPECULATION_HOLD_MS",
        25.0,
        "longest time the model's first events are held while the semantic lookup is pending; a hit "
        "after it is ignored",
        lambda v: None if 0.0 <= v <= 10_000.0 else "must be in [0, 10000]",
    )
    outcome_pass_sample: float = setting(
        "LLMESH_ROUTER_OUTCOME_PASS_SAMPLE",
        1.0,
        "share of tier-1 answers that passed the quality check reported to the classifier as labels "
        "(escalations are always reported; ADR 0027); 0: none",
        lambda v: None if 0.0 <= v <= 1.0 else "must be in [0, 1]",
    )
    outcome_outbox_size: int = setting(
        "LLMESH_ROUTER_OUTCOME_OUTBOX_SIZE",
        5_000,
        "routing outcomes for the classifier kept in memory while NATS cannot take them (the oldest is dropped beyond)",
        positive,
    )
    queue_classes: str = setting(
        "LLMESH_ROUTER_QUEUE_CLASSES",
        DEFAULT_QUEUE_CLASSES,
        "priority classes of the fair queues in front of each model, as the policy's `queues` section (weight, "
        "ttft_slo_ms, deadline_s, max_queue per class); the policy overrides them",
        parses(parse_queue_classes),
    )
    replicas: int = setting(
        "LLMESH_ROUTER_REPLICAS",
        1,
        "router replicas in the region (the launcher passes its router count), used while the router hears no "
        "router's health report (NATS down, the first second); otherwise the routers heard count (docs/adr/0037). "
        "Each router queues for its share of a model's concurrency summed over the live inference replicas",
        positive,
    )
    queue_initial_service_s: float = setting(
        "LLMESH_ROUTER_QUEUE_INITIAL_SERVICE_S",
        1.0,
        "estimated duration of one generation of a model until the router has measured some (admission control)",
    )
    # Budgets, global rate limits and usage records (docs/adr/0014).
    quota_redis_url: str = setting(
        "LLMESH_ROUTER_QUOTA_REDIS_URL",
        "",
        "Redis holding the budget and rate-limit counters, shared by every router replica (the URL may carry its "
        "password); empty: counters in this process (one router only)",
        redis_url_check,
        secret=True,
    )
    quota_timeout_s: float = setting(
        "LLMESH_ROUTER_QUOTA_TIMEOUT_S",
        0.5,
        "deadline of one call to the quota store; past it hard budgets follow LLMESH_ROUTER_BUDGETS_FAIL_OPEN, "
        "rate limits their policy",
        positive,
    )
    budgets_fail_open: bool = setting(
        "LLMESH_ROUTER_BUDGETS_FAIL_OPEN",
        False,
        "while the quota store is unreachable: false refuses requests under a hard budget (UNAVAILABLE, the "
        "default: no spend past a limit); true admits them and their spend counts only if the store is back "
        "when they settle (rate limits follow each limit's `fail_open`)",
    )
    reservation_ttl_s: float = setting(
        "LLMESH_ROUTER_RESERVATION_TTL_S",
        600.0,
        "a budget hold nobody settled (a crashed router) is released after this long; keep it above "
        "LLMESH_ROUTER_GENERATE_TIMEOUT_S",
        positive,
    )
    usage_outbox_size: int = setting(
        "LLMESH_ROUTER_USAGE_OUTBOX_SIZE",
        10_000,
        "usage records and budget alerts kept in memory while NATS cannot take them (the oldest is dropped beyond)",
        positive,
    )
    usage_batch_records: int = setting(
        "LLMESH_ROUTER_USAGE_BATCH_RECORDS",
        64,
        "usage records of one tenant published together as one UsageRecordedBatch (docs/adr/0035); 1: one "
        "UsageRecorded message per request, as routers before batching did",
        lambda v: None if 1 <= v <= 1000 else "must be in 1..1000 (a batch stays far below NATS's 1 MiB payload)",
    )
    usage_batch_linger_s: float = setting(
        "LLMESH_ROUTER_USAGE_BATCH_LINGER_S",
        0.02,
        "the longest a usage record waits for others to fill its batch before it is published; 0: one "
        "UsageRecorded message per request, as routers before batching did",
        lambda v: None if 0 <= v <= 5 else "must be in 0..5 seconds",
    )
