"""The principal cache and the bearer-token parser."""

from __future__ import annotations

import dataclasses

import pytest
from llmesh.kit.auth import bearer_token
from llmesh.kit.errors import Unauthenticated
from llmesh.kit.vocabulary import Principal, Sensitivity
from llmesh.services.router.principals import TOKEN_RENEW_MARGIN_S, PrincipalCache, TokenRenewer


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def principal(key_id: str, tenant_id: str = "t1") -> Principal:
    return Principal(tenant_id, tenant_id, "bu", Sensitivity.INTERNAL, key_id)


def test_entries_expire_after_the_ttl():
    clock = Clock()
    cache = PrincipalCache(ttl_s=30, max_entries=10, clock=clock)
    assert cache.put("sk-1", principal("k1"), epoch=cache.epoch)
    clock.now += 29.9
    assert cache.get("sk-1") == principal("k1")
    clock.now += 0.2
    assert cache.get("sk-1") is None and len(cache) == 0


def test_size_is_bounded_and_the_least_recently_used_goes_first():
    cache = PrincipalCache(ttl_s=30, max_entries=2, clock=Clock())
    cache.put("a", principal("ka"), epoch=cache.epoch)
    cache.put("b", principal("kb"), epoch=cache.epoch)
    assert cache.get("a") is not None
    cache.put("c", principal("kc"), epoch=cache.epoch)
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") and cache.get("c")


def test_revocation_drops_the_key_or_the_tenant():
    cache = PrincipalCache(ttl_s=30, max_entries=10, clock=Clock())
    for key, key_id, tenant in [("a", "ka", "t1"), ("b", "kb", "t1"), ("c", "kc", "t2")]:
        cache.put(key, principal(key_id, tenant), epoch=cache.epoch)
    assert cache.revoke("ka") == 1 and cache.get("a") is None and cache.get("b") is not None
    assert cache.revoke("", tenant_id="t1") == 1 and cache.get("b") is None
    assert cache.revoke("unknown") == 0 and cache.get("c") is not None
    cache.clear()
    assert len(cache) == 0


def test_a_lookup_racing_a_revocation_is_not_cached():
    cache = PrincipalCache(ttl_s=30, max_entries=10, clock=Clock())
    epoch = cache.epoch  # read when the call to tenancy started
    cache.revoke("k1")  # heard while tenancy was answering
    assert not cache.put("sk-1", principal("k1"), epoch=epoch)
    assert cache.get("sk-1") is None


def test_keys_are_not_held_in_the_clear():
    cache = PrincipalCache(ttl_s=30, max_entries=10, clock=Clock())
    cache.put("sk-secret-value", principal("k1"), epoch=cache.epoch)
    assert all(b"sk-secret-value" not in fingerprint for fingerprint in cache._entries)


def test_a_zero_ttl_disables_caching():
    cache = PrincipalCache(ttl_s=0, max_entries=10, clock=Clock())
    assert not cache.put("a", principal("ka"), epoch=cache.epoch)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (None, "missing credentials"),
        ("", "missing credentials"),
        ("Token abc", "malformed authorization"),
        ("Bearer", "malformed authorization"),
        ("Bearer x\ty", "malformed API key"),
        ("Bearer " + "k" * 513, "malformed API key"),
    ],
)
def test_bad_authorization_values(value, needle):
    with pytest.raises(Unauthenticated, match=needle):
        bearer_token(value)


def test_bearer_token():
    assert bearer_token("Bearer sk-abc") == "sk-abc"
    assert bearer_token("bearer  sk-abc ") == "sk-abc"


def test_a_key_past_its_ttl_answers_while_tenancy_cannot_within_the_stale_window():
    clock = Clock()
    cache = PrincipalCache(ttl_s=30, max_entries=10, stale_s=300, clock=clock)
    cache.put("sk-1", principal("k1"), epoch=cache.epoch)
    cache.put("sk-2", principal("k2"), epoch=cache.epoch)
    assert cache.stale_get("sk-3") is None  # never authenticated
    clock.now += 31
    assert cache.get("sk-1") is None, "past its TTL a key is asked of tenancy again"
    assert cache.stale_get("sk-1") == principal("k1"), "but answers if tenancy cannot"
    cache.revoke("k2")
    assert cache.stale_get("sk-2") is None, "a revoked key never"
    cache.stale_allowed = False  # NATS disconnected: revocations may be missed
    assert cache.stale_get("sk-1") is None
    cache.stale_allowed = True
    clock.now += 300
    assert cache.stale_get("sk-1") is None and cache.get("sk-1") is None and len(cache) == 0


def test_no_stale_key_whose_tenant_token_nears_expiry_and_none_without_a_window():
    clock, wall = Clock(), Clock()
    wall.now = 1_000.0
    cache = PrincipalCache(ttl_s=30, max_entries=10, stale_s=300, clock=clock, wall_clock=wall)
    cache.put("sk-1", with_token(principal("k1"), expires_at=1_200.0), epoch=cache.epoch)
    clock.now += 31
    assert cache.stale_get("sk-1") is not None
    wall.now = 1_200.0 - TOKEN_RENEW_MARGIN_S + 1  # a call made with it could outlive the token
    assert cache.stale_get("sk-1") is None
    plain = PrincipalCache(ttl_s=30, max_entries=10, clock=clock)
    plain.put("sk-1", principal("k1"), epoch=plain.epoch)
    clock.now += 31
    assert plain.stale_get("sk-1") is None


def with_token(p: Principal, expires_at: float) -> Principal:
    return dataclasses.replace(p, tenant_token=f"token-{expires_at}", tenant_token_expires_at=expires_at)


def test_a_principal_whose_tenant_token_nears_expiry_is_fetched_again():
    clock, wall = Clock(), Clock()
    wall.now = 1_000.0
    cache = PrincipalCache(ttl_s=600, max_entries=10, clock=clock, wall_clock=wall)
    cache.put("sk-1", with_token(principal("k1"), expires_at=1_300.0), epoch=cache.epoch)
    wall.now = 1_300.0 - TOKEN_RENEW_MARGIN_S - 1
    assert cache.get("sk-1") is not None
    wall.now += 2  # less than the margin left: the next call must not go out with it
    assert cache.get("sk-1") is None


async def test_the_token_renewer_asks_tenancy_once_per_key_while_the_token_is_good():
    wall = Clock()
    wall.now = 1_000.0
    asked: list[str] = []

    async def renew(key_id: str) -> Principal:
        asked.append(key_id)
        return with_token(principal(key_id), expires_at=wall.now + 300)

    renewer = TokenRenewer(renew, wall_clock=wall)
    stale = principal("k1")  # a batch job's principal: stored without a token
    first = await renewer.fresh(stale)
    assert first.tenant_token and asked == ["k1"]
    assert await renewer.fresh(stale) is first and asked == ["k1"]
    assert await renewer.fresh(first) is first  # a good token is used as it is
    wall.now += 300 - TOKEN_RENEW_MARGIN_S + 1
    assert (await renewer.fresh(stale)).tenant_token_expires_at > first.tenant_token_expires_at
    assert asked == ["k1", "k1"]
    renewer.revoke("k1")
    await renewer.fresh(stale)
    assert asked == ["k1", "k1", "k1"]
