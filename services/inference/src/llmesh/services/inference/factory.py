"""Backends from the model catalog: one per (backend kind, endpoint), each serving the catalog's
models there. Triton and OpenAI-compatible backends are imported only when the catalog names them."""

from __future__ import annotations

import importlib
import os

from llmesh.services.inference.backend import Backend
from llmesh.services.inference.catalog import BackendKind, Catalog, CatalogEntry
from llmesh.services.inference.llama_cpp_backend import LlamaCppBackend, LlamaCppConfig
from llmesh.services.inference.settings import InferenceSettings

_PACKAGE = "llmesh.services.inference"


def build_backends(catalog: Catalog, settings: InferenceSettings) -> list[Backend]:
    backends: list[Backend] = []
    for (kind, endpoint), entries in catalog.groups().items():
        if kind is BackendKind.LLAMA_CPP:
            backends.append(_llama_cpp(entries[0], settings))
        elif kind is BackendKind.TRITON:
            module = importlib.import_module(f"{_PACKAGE}.triton_backend")
            models = [
                module.TritonModel(
                    e.name,
                    e.remote_model,
                    e.context_length,
                    e.max_concurrency,
                    e.max_queue,
                    batch_triton_model=e.batch_model,
                )
                for e in entries
            ]
            backends.append(module.TritonBackend(endpoint, models))
        elif kind is BackendKind.OPENAI:
            module = importlib.import_module(f"{_PACKAGE}.openai_backend")
            models = [
                module.OpenAIModel(e.name, e.remote_model, e.context_length, e.max_concurrency, e.max_queue)
                for e in entries
            ]
            key_env = entries[0].api_key_env
            backends.append(
                module.OpenAIBackend(
                    endpoint,
                    models,
                    api_key=os.environ.get(key_env, "") if key_env else settings.openai_api_key,
                    timeout_s=settings.openai_timeout_s,
                    connect_timeout_s=settings.openai_connect_timeout_s,
                    read_timeout_s=settings.openai_read_timeout_s,
                    max_retries=settings.openai_max_retries,
                    retry_after_s=settings.retry_after_s,
                )
            )
        else:  # pragma: no cover - BackendKind is exhaustive
            raise ValueError(f"unknown backend {kind}")
    return backends


def _llama_cpp(entry: CatalogEntry, settings: InferenceSettings) -> LlamaCppBackend:
    return LlamaCppBackend(
        LlamaCppConfig(
            model_name=entry.name,
            model_path=settings.model_path,
            context_length=entry.context_length,
            threads=settings.threads,
            max_concurrency=entry.max_concurrency,
            max_queue=entry.max_queue,
            retry_after_s=settings.retry_after_s,
            chat_format=settings.chat_format,
            repeat_penalty=settings.repeat_penalty,
        )
    )
