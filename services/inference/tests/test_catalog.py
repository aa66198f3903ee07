"""The model catalog: parsing, defaults, validation that names the entry and field, and the
backend factory (llama_cpp for real, Triton and OpenAI as in-test stand-ins)."""

from __future__ import annotations

import json
import pathlib
import sys
import types

import pytest
from llmesh.kit.config import ConfigError, load_settings
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.inference.backend import Backend, BackendLoad, ModelInfo
from llmesh.services.inference.catalog import (
    BackendKind,
    CatalogDefaults,
    Hosting,
    default_catalog,
    load_catalog,
)
from llmesh.services.inference.factory import build_backends
from llmesh.services.inference.llama_cpp_backend import LlamaCppBackend
from llmesh.services.inference.settings import InferenceSettings

DEV_CATALOG = pathlib.Path(__file__).resolve().parents[3] / "deploy" / "catalog" / "dev.json"
DEFAULTS = CatalogDefaults(region="eu-1", local_model_name="local", context_length=1024, max_concurrency=3)


def inline(*models) -> str:
    return json.dumps({"models": list(models)})


def test_unset_is_the_local_model_alone_as_last_resort_for_every_tier():
    catalog = load_catalog("", DEFAULTS)
    assert catalog == default_catalog(DEFAULTS)
    (entry,) = catalog.entries
    assert (entry.name, entry.backend, entry.endpoint) == ("local", BackendKind.LLAMA_CPP, "")
    assert entry.tiers == (1, 2, 3) and entry.fallback and entry.hosting is Hosting.SELF_HOSTED
    assert entry.max_sensitivity is Sensitivity.RESTRICTED and entry.region == "eu-1"
    assert (entry.context_length, entry.max_concurrency, entry.capacity) == (1024, 3, 3)


def test_the_dev_catalog_parses_from_its_file():
    catalog = load_catalog(str(DEV_CATALOG), CatalogDefaults())
    by_name = {e.name: e for e in catalog.entries}
    triton, api, local = by_name["gemma-3-270m"], by_name["frontier"], by_name["gemma-3-270m-local"]
    assert triton.backend is BackendKind.TRITON and triton.tiers == (1, 2) and triton.batch_model
    assert triton.max_sensitivity is Sensitivity.RESTRICTED and triton.hosting is Hosting.SELF_HOSTED
    assert api.backend is BackendKind.OPENAI and api.tiers == (3,) and api.hosting is Hosting.EXTERNAL
    assert api.max_sensitivity is Sensitivity.INTERNAL and api.prompt_price_per_1k > 0
    assert local.fallback and local.backend is BackendKind.LLAMA_CPP
    assert set(catalog.groups()) == {
        (BackendKind.TRITON, "127.0.0.1:8001"),
        (BackendKind.OPENAI, "http://127.0.0.1:8090/v1"),
        (BackendKind.LLAMA_CPP, ""),
    }


def test_entries_take_defaults_and_hosting_implies_the_sensitivity():
    catalog = load_catalog(
        inline(
            {"name": "t", "backend": "triton", "endpoint": "h:8001", "tiers": [2, 1, 2]},
            {"name": "o", "backend": "openai", "endpoint": "https://api.example/v1", "hosting": "external"},
        ),
        DEFAULTS,
    )
    t, o = catalog.entries
    assert t.tiers == (1, 2) and t.remote_model == "t" and t.hosting is Hosting.SELF_HOSTED
    assert t.max_sensitivity is Sensitivity.RESTRICTED and t.context_length == 1024 and t.region == "eu-1"
    assert o.max_sensitivity is Sensitivity.INTERNAL and not o.fallback
    assert not o.allows(Sensitivity.RESTRICTED) and o.allows(Sensitivity.PUBLIC)


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ({"backend": "triton", "endpoint": "h:1"}, "models[0]: field name: is required"),
        ({"name": "x", "backend": "vllm", "endpoint": "h:1"}, "(x): field backend: 'vllm' is not one of"),
        ({"name": "x", "backend": "triton"}, "(x): field endpoint: is required for triton"),
        ({"name": "x", "backend": "llama_cpp", "endpoint": "h:1"}, "(x): field endpoint: must be empty"),
        ({"name": "x", "backend": "openai", "endpoint": "h:1", "hosting": "external"}, "field endpoint: 'h:1' must be"),
        ({"name": "x", "backend": "openai", "endpoint": "http://h/v1"}, "(x): field hosting: is required"),
        ({"name": "x", "backend": "triton", "endpoint": "h:1", "tiers": [4]}, "(x): field tiers: must be a list"),
        (
            {
                "name": "x",
                "backend": "openai",
                "endpoint": "http://h",
                "hosting": "external",
                "max_sensitivity": "restricted",
            },
            "(x): field max_sensitivity: restricted data never leaves self-hosted models",
        ),
        ({"name": "x", "backend": "triton", "endpoint": "h:1", "max_sensitivity": "secret"}, "field max_sensitivity:"),
        ({"name": "x", "backend": "triton", "endpoint": "h:1", "max_concurrency": 0}, "(x): field max_concurrency:"),
        ({"name": "x", "backend": "triton", "endpoint": "h:1", "prompt_price_per_1k": -1}, "field prompt_price_per_1k"),
        (
            {"name": "x", "backend": "openai", "endpoint": "http://h", "hosting": "external", "batch_model": "b"},
            "field batch_model",
        ),
        ({"name": "x", "backend": "triton", "endpoint": "h:1", "colour": "red"}, "(x): field colour: unknown field"),
        ({"name": "x", "backend": "triton", "endpoint": "h:1", "fallback": "yes"}, "(x): field fallback: must be true"),
    ],
)
def test_a_bad_entry_is_a_config_error_naming_the_entry_and_field(model, needle):
    with pytest.raises(ConfigError) as error:
        load_catalog(inline(model), DEFAULTS)
    assert needle in str(error.value) and "LLMESH_INFERENCE_CATALOG" in str(error.value)


def test_whole_catalog_problems_are_config_errors(tmp_path):
    local = {"name": "a", "backend": "llama_cpp"}
    cases = {
        "{not json": "not valid JSON",
        json.dumps({"models": []}): "models is empty",
        json.dumps({"model": [local]}): 'expected a JSON object {"models"',
        inline(local, local): "field name: 'a' is listed twice",
        inline(local, dict(local, name="b")): "only one llama_cpp model runs in process",
    }
    for source, needle in cases.items():
        with pytest.raises(ConfigError) as error:
            load_catalog(source, DEFAULTS)
        assert needle in str(error.value), (source, str(error.value))
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(str(tmp_path / "missing.json"), DEFAULTS)
    bad = tmp_path / "bad.json"
    bad.write_text(inline({"name": "x", "backend": "triton"}))
    with pytest.raises(ConfigError, match=f"catalog {bad}: models.0. .x.: field endpoint"):
        load_catalog(str(bad), DEFAULTS)


class StandIn(Backend):
    """What the factory hands a Triton or OpenAI catalog group to, before those backends exist."""

    def __init__(self, url, models, **options):
        self.url, self.model_specs, self.options = url, models, options

    def models(self):
        return [
            ModelInfo(m.name, self.name, m.context_length, m.max_concurrency, m.max_queue) for m in self.model_specs
        ]

    def load(self, model):
        return BackendLoad(0, 0)

    async def generate(self, request):  # pragma: no cover - not called
        yield


def stand_in_module(monkeypatch, module: str, backend: str, model: str, kind: str, fields: tuple[str, ...]):
    mod = types.ModuleType(f"llmesh.services.inference.{module}")
    mod.__dict__[backend] = type(backend, (StandIn,), {"name": kind})

    def spec(*args, **kwargs):
        values = dict(zip(fields, args), **kwargs)
        return types.SimpleNamespace(**values)

    mod.__dict__[model] = spec
    monkeypatch.setitem(sys.modules, mod.__name__, mod)


def test_the_factory_builds_one_backend_per_kind_and_endpoint(monkeypatch):
    common = ("name", "remote_model", "context_length", "max_concurrency", "max_queue")
    stand_in_module(monkeypatch, "triton_backend", "TritonBackend", "TritonModel", "triton", common)
    stand_in_module(monkeypatch, "openai_backend", "OpenAIBackend", "OpenAIModel", "openai", common)
    monkeypatch.setenv("TEST_CATALOG_KEY", "sk-test")
    settings = load_settings(InferenceSettings, environ={}, repeat_penalty=1.3, threads=1)
    catalog = load_catalog(
        inline(
            {
                "name": "t1",
                "backend": "triton",
                "endpoint": "a:8001",
                "remote_model": "gemma",
                "batch_model": "gemma-b",
            },
            {"name": "t2", "backend": "triton", "endpoint": "a:8001"},
            {"name": "t3", "backend": "triton", "endpoint": "b:8001"},
            {
                "name": "o1",
                "backend": "openai",
                "endpoint": "http://api/v1",
                "hosting": "external",
                "api_key_env": "TEST_CATALOG_KEY",
            },
            {"name": "local", "backend": "llama_cpp", "context_length": 512, "fallback": True},
        ),
        DEFAULTS,
    )
    backends = build_backends(catalog, settings)
    assert [type(b).__name__ for b in backends] == [
        "TritonBackend",
        "TritonBackend",
        "OpenAIBackend",
        "LlamaCppBackend",
    ]
    triton_a, triton_b, api, local = backends
    assert triton_a.url == "a:8001" and [m.name for m in triton_a.model_specs] == ["t1", "t2"]
    assert triton_a.model_specs[0].remote_model == "gemma" and triton_a.model_specs[0].batch_triton_model == "gemma-b"
    assert triton_b.url == "b:8001" and [m.name for m in triton_b.model_specs] == ["t3"]
    assert api.url == "http://api/v1" and api.options == {
        "api_key": "sk-test",  # the entry's api_key_env wins over LLMESH_INFERENCE_OPENAI_API_KEY
        "timeout_s": settings.openai_timeout_s,
        "connect_timeout_s": settings.openai_connect_timeout_s,
        "read_timeout_s": settings.openai_read_timeout_s,
        "max_retries": settings.openai_max_retries,
        "retry_after_s": settings.retry_after_s,
    }
    assert isinstance(local, LlamaCppBackend)
    assert local.config.model_name == "local" and local.config.context_length == 512
    assert local.config.repeat_penalty == 1.3
