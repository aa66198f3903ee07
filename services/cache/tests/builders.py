"""Requests the cache tests build again and again."""

from __future__ import annotations

from llmesh.cache.v1 import cache_pb2
from llmesh.common.v1 import common_pb2


def user(text: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)


def system(text: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=text)


def key(tenant: str, question: str, *, use_case: str = "support", system_prompt: str | None = None, **kw):
    messages = ([system(system_prompt)] if system_prompt else []) + [user(question)]
    return cache_pb2.CacheKey(tenant_id=tenant, use_case=use_case, messages=messages, **kw)


def store(tenant: str, question: str, answer: str, *, key_kw=None, **kw):
    fields = dict(
        model="llama-3-8b",
        backend="local",
        tier=common_pb2.TIER_2,
        usage=common_pb2.Usage(prompt_tokens=12, completion_tokens=30),
        cost_usd=0.002,
    )
    fields.update(kw)
    return cache_pb2.StoreRequest(key=key(tenant, question, **(key_kw or {})), content=answer, **fields)


def lookup(tenant: str, question: str, *, key_kw=None, **kw):
    return cache_pb2.LookupRequest(key=key(tenant, question, **(key_kw or {})), **kw)
