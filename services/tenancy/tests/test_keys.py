"""Key format, salted hashing and the admin token check."""

from __future__ import annotations

import pytest
from llmesh.kit.errors import Unauthenticated
from llmesh.kit.streams import SUBJECT_TOKEN
from llmesh.services.tenancy import keys
from llmesh.services.tenancy.models import new_key_id, new_tenant_id


def test_ids_are_subject_tokens_and_distinct():
    tenant_ids = {new_tenant_id() for _ in range(1000)}
    key_ids = {new_key_id() for _ in range(1000)}
    assert len(tenant_ids) == len(key_ids) == 1000
    assert all(SUBJECT_TOKEN.match(i) and i.startswith("t_") for i in tenant_ids)
    assert all(SUBJECT_TOKEN.match(i) and i.startswith("k_") for i in key_ids)


def test_a_key_embeds_its_id_and_parses_back():
    key_id, secret = new_key_id(), keys.new_secret()
    api_key = keys.format_key(key_id, secret)
    assert api_key.startswith(f"llmesh_{key_id}_")
    assert keys.parse_key(api_key) == (key_id, secret)
    # 32 random bytes, whatever characters the encoding produced.
    assert len(secret) == 43


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("", "missing API key"),
        ("x" * 10_000, "too long"),
        ("Bearer abc", "malformed"),
        ("llmesh_k_0123456789abcdef_short", "malformed"),
        ("llmesh_t_0123456789abcdef_" + "a" * 43, "malformed"),
        ("llmesh_k_0123456789abcdef_" + "a" * 42 + "!", "malformed"),
    ],
)
def test_malformed_keys_are_rejected_without_echo(bad, needle):
    with pytest.raises(Unauthenticated, match=needle) as exc:
        keys.parse_key(bad)
    if bad:
        assert bad not in exc.value.message


def test_hash_is_salted_and_verifies_only_the_right_secret():
    secret = keys.new_secret()
    first, second = keys.hash_secret(secret), keys.hash_secret(secret)
    assert first.salt_hex != second.salt_hex and first.hash_hex != second.hash_hex
    assert secret not in first.hash_hex + first.salt_hex
    assert keys.verify_secret(secret, first) and keys.verify_secret(secret, second)
    assert not keys.verify_secret(keys.new_secret(), first)
    assert not keys.verify_secret(secret, keys.DECOY)
