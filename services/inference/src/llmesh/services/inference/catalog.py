"""The model catalog: every model this inference service serves, where it runs and what it may
receive. Domain code only (no grpc).

A catalog is JSON, from a file or inline (LLMESH_INFERENCE_CATALOG)::

    {"models": [
      {"name": "gemma-3-270m", "backend": "triton", "endpoint": "127.0.0.1:8001",
       "remote_model": "gemma-3-270m", "tiers": [1, 2], "hosting": "self_hosted",
       "max_sensitivity": "restricted", "gpu_hour_cost": 2.5, "capacity": 8},
      {"name": "frontier", "backend": "openai", "endpoint": "http://127.0.0.1:8090/v1",
       "remote_model": "gemma-3-270m", "tiers": [3], "hosting": "external",
       "max_sensitivity": "internal", "prompt_price_per_1k": 0.0025, "completion_price_per_1k": 0.01,
       "api_key_env": "LLMESH_FRONTIER_API_KEY"},
      {"name": "gemma-3-270m-local", "backend": "llama_cpp", "tiers": [1, 2, 3], "fallback": true}
    ]}

Fields left out take the defaults given to `parse_catalog` (the service's settings). Any problem
raises kit.config.ConfigError naming the entry and the field, so a bad catalog stops start-up.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from llmesh.kit.config import ConfigError
from llmesh.kit.vocabulary import Sensitivity

TIERS = (1, 2, 3)
MAX_NAME_CHARS = 128
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


class BackendKind(enum.Enum):
    LLAMA_CPP = "llama_cpp"
    TRITON = "triton"
    OPENAI = "openai"


class Hosting(enum.Enum):
    SELF_HOSTED = "self_hosted"
    EXTERNAL = "external"


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogEntry:
    name: str
    backend: BackendKind
    endpoint: str  # URL or host:port; empty for llama_cpp
    remote_model: str  # the model's name at the backend (llama_cpp: the served name)
    tiers: tuple[int, ...]
    region: str
    hosting: Hosting
    max_sensitivity: Sensitivity
    context_length: int
    max_concurrency: int
    max_queue: int
    capacity: int  # concurrent generations the deployment sustains (utilization's denominator)
    prompt_price_per_1k: float = 0.0
    completion_price_per_1k: float = 0.0
    gpu_hour_cost: float = 0.0
    batch_model: str = ""  # Triton model for batch-class requests
    fallback: bool = False  # the fallback of last resort
    api_key_env: str = ""  # environment variable holding the API key (openai)

    def allows(self, sensitivity: Sensitivity) -> bool:
        return sensitivity <= self.max_sensitivity


@dataclasses.dataclass(frozen=True)
class Catalog:
    entries: tuple[CatalogEntry, ...]

    def __post_init__(self):
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError("duplicate model names")

    def get(self, name: str) -> CatalogEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def groups(self) -> dict[tuple[BackendKind, str], list[CatalogEntry]]:
        """Entries by (backend kind, endpoint): one backend instance each."""
        groups: dict[tuple[BackendKind, str], list[CatalogEntry]] = {}
        for entry in self.entries:
            groups.setdefault((entry.backend, entry.endpoint), []).append(entry)
        return groups


@dataclasses.dataclass(frozen=True)
class CatalogDefaults:
    """What an entry leaves out (from the service's settings)."""

    region: str = "local"
    local_model_name: str = "gemma-3-270m"
    context_length: int = 2048
    max_concurrency: int = 2
    max_queue: int = 2


def default_catalog(defaults: CatalogDefaults) -> Catalog:
    """No catalog configured: the in-process llama.cpp model alone, serving every tier, allowed
    restricted data, and the fallback of last resort."""
    return Catalog(
        (
            CatalogEntry(
                name=defaults.local_model_name,
                backend=BackendKind.LLAMA_CPP,
                endpoint="",
                remote_model=defaults.local_model_name,
                tiers=TIERS,
                region=defaults.region,
                hosting=Hosting.SELF_HOSTED,
                max_sensitivity=Sensitivity.RESTRICTED,
                context_length=defaults.context_length,
                max_concurrency=defaults.max_concurrency,
                max_queue=defaults.max_queue,
                capacity=defaults.max_concurrency,
                fallback=True,
            ),
        )
    )


def load_catalog(source: str, defaults: CatalogDefaults) -> Catalog:
    """The catalog from LLMESH_INFERENCE_CATALOG: empty → the default, text starting with "{"
    → inline JSON, anything else → the path of a JSON file."""
    source = source.strip()
    if not source:
        return default_catalog(defaults)
    if source.startswith("{"):
        text, origin = source, "LLMESH_INFERENCE_CATALOG (inline JSON)"
    else:
        path = pathlib.Path(source).expanduser()
        origin = f"catalog {path}"
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"LLMESH_INFERENCE_CATALOG: cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{origin}: not valid JSON: {exc}") from None
    return parse_catalog(doc, defaults, origin=origin)


_FIELDS = {
    "name",
    "backend",
    "endpoint",
    "remote_model",
    "tiers",
    "region",
    "hosting",
    "max_sensitivity",
    "context_length",
    "max_concurrency",
    "max_queue",
    "capacity",
    "prompt_price_per_1k",
    "completion_price_per_1k",
    "gpu_hour_cost",
    "batch_model",
    "fallback",
    "api_key_env",
}


class _EntryError(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def parse_catalog(doc: Any, defaults: CatalogDefaults, *, origin: str = "catalog") -> Catalog:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("models"), list):
        raise ConfigError(f'{origin}: expected a JSON object {{"models": [ ... ]}}')
    unknown_top = set(doc) - {"models"}
    if unknown_top:
        raise ConfigError(f"{origin}: unknown top-level field(s) {', '.join(sorted(unknown_top))}")
    if not doc["models"]:
        raise ConfigError(f"{origin}: models is empty; list at least one model")
    entries: list[CatalogEntry] = []
    seen: set[str] = set()
    for index, raw in enumerate(doc["models"]):
        label = f"models[{index}]"
        if isinstance(raw, Mapping) and isinstance(raw.get("name"), str) and raw["name"]:
            label = f"models[{index}] ({raw['name']})"
        try:
            entry = _parse_entry(raw, defaults)
        except _EntryError as exc:
            raise ConfigError(f"{origin}: {label}: field {exc.field}: {exc.problem}") from None
        if entry.name in seen:
            raise ConfigError(f"{origin}: {label}: field name: {entry.name!r} is listed twice")
        seen.add(entry.name)
        entries.append(entry)
    local = [e.name for e in entries if e.backend is BackendKind.LLAMA_CPP]
    if len(local) > 1:
        raise ConfigError(f"{origin}: only one llama_cpp model runs in process; found {', '.join(local)}")
    keys: dict[str, str] = {}
    for entry in entries:
        if entry.backend is BackendKind.OPENAI:
            previous = keys.setdefault(entry.endpoint, entry.api_key_env)
            if previous != entry.api_key_env:
                raise ConfigError(
                    f"{origin}: model {entry.name}: field api_key_env: every model at {entry.endpoint} "
                    f"must use the same key variable ({previous!r} elsewhere)"
                )
    return Catalog(tuple(entries))


def _parse_entry(raw: Any, defaults: CatalogDefaults) -> CatalogEntry:
    if not isinstance(raw, Mapping):
        raise _EntryError("(entry)", "must be a JSON object")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise _EntryError(sorted(unknown)[0], f"unknown field; known: {', '.join(sorted(_FIELDS))}")

    name = _string(raw, "name", required=True)
    if len(name) > MAX_NAME_CHARS or not _NAME.match(name):
        raise _EntryError("name", f"{name!r} must be 1..{MAX_NAME_CHARS} letters, digits or . _ : / - ")
    backend = _enum(raw, "backend", BackendKind, required=True)
    endpoint = _string(raw, "endpoint")
    if backend is BackendKind.LLAMA_CPP:
        if endpoint:
            raise _EntryError("endpoint", "must be empty for llama_cpp (the model runs in process)")
    elif not endpoint:
        raise _EntryError("endpoint", f"is required for {backend.value} (host:port or URL)")
    if backend is BackendKind.OPENAI and not endpoint.startswith(("http://", "https://")):
        raise _EntryError("endpoint", f"{endpoint!r} must be an http:// or https:// URL")
    remote_model = _string(raw, "remote_model") or name

    tiers_raw = raw.get("tiers", [])
    if not isinstance(tiers_raw, list) or not all(type(t) is int and t in TIERS for t in tiers_raw):
        raise _EntryError("tiers", f"must be a list of tiers from {TIERS} (got {tiers_raw!r})")
    tiers = tuple(sorted(set(tiers_raw)))

    hosting_default = Hosting.SELF_HOSTED if backend is not BackendKind.OPENAI else None
    hosting = _enum(raw, "hosting", Hosting, required=hosting_default is None) or hosting_default
    if backend is BackendKind.LLAMA_CPP and hosting is not Hosting.SELF_HOSTED:
        raise _EntryError("hosting", "the in-process llama_cpp model is self_hosted")
    sensitivity_default = "restricted" if hosting is Hosting.SELF_HOSTED else "internal"
    sensitivity_name = _string(raw, "max_sensitivity") or sensitivity_default
    try:
        max_sensitivity = Sensitivity.parse(sensitivity_name)
    except Exception:
        raise _EntryError(
            "max_sensitivity", f"{sensitivity_name!r} is not public, internal, confidential or restricted"
        ) from None
    if max_sensitivity is Sensitivity.UNSPECIFIED:
        raise _EntryError("max_sensitivity", "must be public, internal, confidential or restricted")
    if hosting is Hosting.EXTERNAL and max_sensitivity >= Sensitivity.RESTRICTED:
        raise _EntryError("max_sensitivity", "restricted data never leaves self-hosted models")

    context_length = _int(raw, "context_length", defaults.context_length, minimum=1)
    max_concurrency = _int(raw, "max_concurrency", defaults.max_concurrency, minimum=1)
    max_queue = _int(raw, "max_queue", defaults.max_queue, minimum=0)
    capacity = _int(raw, "capacity", max_concurrency, minimum=1)
    prompt_price = _price(raw, "prompt_price_per_1k")
    completion_price = _price(raw, "completion_price_per_1k")
    gpu_hour_cost = _price(raw, "gpu_hour_cost")
    batch_model = _string(raw, "batch_model")
    if batch_model and backend is not BackendKind.TRITON:
        raise _EntryError("batch_model", "only Triton models have a batch model")
    fallback = raw.get("fallback", False)
    if not isinstance(fallback, bool):
        raise _EntryError("fallback", "must be true or false")
    api_key_env = _string(raw, "api_key_env")
    if api_key_env and backend is not BackendKind.OPENAI:
        raise _EntryError("api_key_env", "only openai models take an API key")
    region = _string(raw, "region") or defaults.region
    return CatalogEntry(
        name=name,
        backend=backend,
        endpoint=endpoint,
        remote_model=remote_model,
        tiers=tiers,
        region=region,
        hosting=hosting,
        max_sensitivity=max_sensitivity,
        context_length=context_length,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        capacity=capacity,
        prompt_price_per_1k=prompt_price,
        completion_price_per_1k=completion_price,
        gpu_hour_cost=gpu_hour_cost,
        batch_model=batch_model,
        fallback=fallback,
        api_key_env=api_key_env,
    )


def _string(raw: Mapping, field: str, *, required: bool = False) -> str:
    value = raw.get(field, "")
    if not isinstance(value, str):
        raise _EntryError(field, f"must be a string (got {value!r})")
    value = value.strip()
    if required and not value:
        raise _EntryError(field, "is required")
    return value


def _enum(raw: Mapping, field: str, kind: type[enum.Enum], *, required: bool = False):
    value = _string(raw, field, required=required)
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise _EntryError(field, f"{value!r} is not one of {', '.join(m.value for m in kind)}") from None


def _int(raw: Mapping, field: str, default: int, *, minimum: int) -> int:
    value = raw.get(field, default)
    if type(value) is not int or value < minimum:
        raise _EntryError(field, f"must be an integer >= {minimum} (got {value!r})")
    return value


def _price(raw: Mapping, field: str) -> float:
    value = raw.get(field, 0.0)
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise _EntryError(field, f"must be a number >= 0 (got {value!r})")
    return float(value)
