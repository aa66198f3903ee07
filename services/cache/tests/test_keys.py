"""Key canonicalisation: the same request gives the same key, any differing field another."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from llmesh.kit.chat import Message, Sampling
from llmesh.services.cache.keys import (
    RequestKey,
    context_hash,
    exact_key,
    normalize_text,
    params_hash,
    semantic_text,
)

BASE = RequestKey(
    tenant_id="acme",
    use_case="support",
    messages=(Message("system", "You are terse."), Message("user", "How do I reset my password?")),
    model="",
    sampling=Sampling(temperature=0.2, top_p=0.9, top_k=40, seed=7, stop=("\n\n", "END")),
    max_tokens=256,
)


def with_messages(*messages: Message) -> RequestKey:
    return dataclasses.replace(BASE, messages=tuple(messages))


def test_same_request_same_key_and_whitespace_variants_agree():
    again = RequestKey(
        tenant_id="acme",
        use_case="support",
        messages=(Message("system", "You are terse."), Message("user", "How do I reset my password?")),
        sampling=Sampling(temperature=0.2, top_p=0.9, top_k=40, seed=7, stop=("END", "\n\n", "END")),
        max_tokens=256,
    )
    assert exact_key(again) == exact_key(BASE)
    spaced = with_messages(
        Message("system", "  You are terse.\r\n"), Message("user", "How do  I\treset my password?   \n\n\n")
    )
    assert exact_key(spaced) == exact_key(BASE)
    assert len(exact_key(BASE)) == 64


VARIANTS = {
    "tenant": dataclasses.replace(BASE, tenant_id="acme2"),
    "use_case": dataclasses.replace(BASE, use_case="sales"),
    "model": dataclasses.replace(BASE, model="gpt-4o"),
    "max_tokens": dataclasses.replace(BASE, max_tokens=257),
    "temperature": dataclasses.replace(BASE, sampling=dataclasses.replace(BASE.sampling, temperature=0.3)),
    "temperature unset": dataclasses.replace(BASE, sampling=dataclasses.replace(BASE.sampling, temperature=None)),
    "top_p": dataclasses.replace(BASE, sampling=dataclasses.replace(BASE.sampling, top_p=0.95)),
    "top_k": dataclasses.replace(BASE, sampling=dataclasses.replace(BASE.sampling, top_k=41)),
    "seed": dataclasses.replace(BASE, sampling=dataclasses.replace(BASE.sampling, seed=8)),
    "stop": dataclasses.replace(BASE, sampling=dataclasses.replace(BASE.sampling, stop=("END",))),
    "case": with_messages(Message("system", "You are terse."), Message("user", "How do I reset my PASSWORD?")),
    "content": with_messages(Message("system", "You are terse."), Message("user", "How do I reset my email?")),
    "role": with_messages(Message("user", "You are terse."), Message("user", "How do I reset my password?")),
    "system prompt": with_messages(
        Message("system", "You are chatty."), Message("user", "How do I reset my password?")
    ),
    "extra turn": with_messages(
        Message("system", "You are terse."),
        Message("user", "Hi"),
        Message("assistant", "Hello"),
        Message("user", "How do I reset my password?"),
    ),
    "order": with_messages(Message("user", "How do I reset my password?"), Message("system", "You are terse.")),
    "indentation": with_messages(
        Message("system", "You are terse."), Message("user", "How do I reset\n    my password?")
    ),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_any_differing_field_gives_another_key(name):
    assert exact_key(VARIANTS[name]) != exact_key(BASE)


def test_all_variant_keys_are_distinct():
    keys = {exact_key(k) for k in VARIANTS.values()} | {exact_key(BASE)}
    assert len(keys) == len(VARIANTS) + 1


def test_float32_and_float64_of_one_value_agree():
    import struct

    float32 = struct.unpack("f", struct.pack("f", 0.7))[0]  # what a proto float field yields
    a = dataclasses.replace(BASE, sampling=Sampling(temperature=0.7))
    b = dataclasses.replace(BASE, sampling=Sampling(temperature=float32))
    assert float32 != 0.7 and exact_key(a) == exact_key(b)


def test_semantic_parts_split_the_last_user_message_from_its_context():
    reworded = with_messages(Message("system", "You are terse."), Message("user", "password reset: how?"))
    assert context_hash(reworded) == context_hash(BASE)
    assert params_hash(reworded) == params_hash(BASE)
    assert semantic_text(reworded) == "password reset: how?"
    assert context_hash(VARIANTS["system prompt"]) != context_hash(BASE)
    assert context_hash(VARIANTS["extra turn"]) != context_hash(BASE)
    assert params_hash(VARIANTS["temperature"]) != params_hash(BASE)
    assert params_hash(VARIANTS["model"]) != params_hash(BASE)
    assert params_hash(VARIANTS["tenant"]) == params_hash(BASE)


def test_normalisation_keeps_case_and_indentation():
    assert normalize_text("  Hello   World \r\n\r\n\r\n  indented\tline  ") == "Hello World\n\n  indented line"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC


@given(st.text(max_size=200))
def test_normalisation_is_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once


@given(st.text(min_size=1, max_size=100), st.sampled_from([" ", "\n", "\t", "  \n "]))
def test_surrounding_whitespace_never_changes_the_key(text, pad):
    a = with_messages(Message("user", text))
    b = with_messages(Message("user", pad + text + pad))
    assert exact_key(a) == exact_key(b)
