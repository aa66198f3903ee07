"""Router configuration (environment variables, validated at start-up)."""

from __future__ import annotations

import dataclasses
import json

from llmesh.kit.config import ServerSettings, non_negative, parses, port_check, positive, setting
from llmesh.kit.defaults import DEFAULT_PORTS
from llmesh.services.router.region_health import parse_region_addrs


def _loopback(service: str) -> str:
    return f"127.0.0.1:{DEFAULT_PORTS[service]}"


def _tier(value: int) -> str | None:
    return None if value in (1, 2, 3) else "must be 1, 2 or 3"


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
class RouterSettings(ServerSettings):
    port: int = setting("LLMESH_PORT", DEFAULT_PORTS["router"], "gRPC port (0 picks a free one)", port_check)

    tenancy_addr: str = setting("LLMESH_TENANCY_ADDR", _loopback("tenancy"), "tenancy service host:port")
    classifier_addr: str = setting("LLMESH_CLASSIFIER_ADDR", _loopback("classifier"), "classifier service host:port")
    cache_addr: str = setting("LLMESH_CACHE_ADDR", _loopback("cache"), "cache service host:port")
    inference_addr: str = setting("LLMESH_INFERENCE_ADDR", _loopback("inference"), "inference service host:port")

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
    principal_cache_size: int = setting(
        "LLMESH_ROUTER_PRINCIPAL_CACHE_SIZE", 10_000, "most API keys whose principal is cached", positive
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
    # regions12: multi-region failover (ADR 0012)
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
