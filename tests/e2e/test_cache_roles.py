"""The cache's admin RPCs take tenancy's roles (docs/adr/0023, amendment): an admin API key trades
itself at tenancy (IssueAdminToken) for a short-lived signed admin token; with it a tenant admin
invalidates, pins, deletes and warms its own tenant's entries and never another's, a platform admin
any tenant's; an auditor's token and a plain key get nothing; bad tokens are UNAUTHENTICATED."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import grpc
import pytest
from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.cli.main import main
from llmesh.common.v1 import common_pb2
from llmesh.kit import identity
from llmesh.kit.client import open_channel
from llmesh.kit.identity import ADMIN_TOKEN_METADATA_KEY, TENANT_TOKEN_METADATA_KEY, Signer
from llmesh.kit.testing import assert_eventually
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

from tests.e2e.test_mesh import request
from tests.e2e.test_zero_trust import credential, lookup_of, refused, tenant_token

pytestmark = pytest.mark.timeout(120)


@dataclasses.dataclass
class Bare:
    """The cache and tenancy on channels without the kit's credentials."""

    cache: cache_pb2_grpc.CacheServiceStub
    tenancy: tenancy_pb2_grpc.TenancyServiceStub


@pytest.fixture
async def bare(mesh):
    async with (
        grpc.aio.insecure_channel(mesh.hosts["cache"].address) as cache,
        grpc.aio.insecure_channel(mesh.hosts["tenancy"].address) as tenancy,
    ):
        yield Bare(cache_pb2_grpc.CacheServiceStub(cache), tenancy_pb2_grpc.TenancyServiceStub(tenancy))


async def role_key(mesh, tenant_id: str, role: int) -> str:
    created = await mesh.tenancy.CreateApiKey(
        tenancy_pb2.CreateApiKeyRequest(tenant_id=tenant_id, label="admin", role=role), metadata=mesh.admin
    )
    return created.api_key


async def admin_token(bare, api_key: str) -> tenancy_pb2.IssueAdminTokenResponse:
    # No service credential: IssueAdminToken is public, the API key is what counts.
    return await bare.tenancy.IssueAdminToken(
        tenancy_pb2.IssueAdminTokenRequest(), metadata=(("authorization", f"Bearer {api_key}"),)
    )


def store_of(tenant_id: str, text: str) -> cache_pb2.StoreRequest:
    return cache_pb2.StoreRequest(
        key=lookup_of(tenant_id, request(text)).key, content="an answer", model="gemma-3-270m", tier=common_pb2.TIER_1
    )


async def stored(mesh, tenant_id: str, text: str) -> str:
    """An entry of `tenant_id`, stored with the operator's credential (the tests' own)."""
    async with open_channel(mesh.hosts["cache"].address) as channel:
        response = await cache_pb2_grpc.CacheServiceStub(channel).Store(store_of(tenant_id, text))
    assert response.stored, response.reason
    return response.entry_id


async def cached(mesh, tenant_id: str, text: str) -> bool:
    async with open_channel(mesh.hosts["cache"].address) as channel:
        found = await cache_pb2_grpc.CacheServiceStub(channel).Lookup(lookup_of(tenant_id, request(text)))
    return found.outcome == cache_pb2.LOOKUP_OUTCOME_EXACT_HIT


async def eventually_gone(mesh, tenant_id: str, text: str) -> None:
    async def gone():
        return not await cached(mesh, tenant_id, text)

    await assert_eventually(gone, timeout_s=5, message=f"{tenant_id}'s entry is invalidated")


async def test_a_tenant_admin_changes_its_own_tenants_entries_and_no_one_elses(mesh, bare, mesh_identity_dir):
    _, a, _ = await mesh.new_tenant()
    _, b, _ = await mesh.new_tenant()
    issued = await admin_token(bare, await role_key(mesh, a, tenancy_pb2.ADMIN_ROLE_TENANT_ADMIN))
    assert issued.role == tenancy_pb2.ADMIN_ROLE_TENANT_ADMIN and issued.tenant_id == a
    assert issued.expires_at.seconds > 0
    claims = identity.load_provisioned(mesh_identity_dir, "cache").verifier.verify(issued.admin_token, identity.ADMIN)
    assert (claims.role, claims.subject) == (identity.TENANT_ADMIN, a)
    mine = ((ADMIN_TOKEN_METADATA_KEY, issued.admin_token),)

    # Its own tenant: pin, delete, warm and invalidate work with the admin token alone.
    entry = await stored(mesh, a, "Pin me.")
    pinned = await bare.cache.PinEntry(
        cache_pb2.PinEntryRequest(tenant_id=a, entry_id=entry, pinned=True), metadata=mine
    )
    assert pinned.answer.pinned and pinned.answer.entry_id == entry
    deleted = await bare.cache.DeleteEntry(cache_pb2.DeleteEntryRequest(tenant_id=a, entry_id=entry), metadata=mine)
    assert deleted.deleted and not await cached(mesh, a, "Pin me.")
    warm = [cache_pb2.WarmRequest(entry=store_of(a, "Warm me."))]
    progress = [p async for p in bare.cache.Warm(iter(warm), metadata=mine)]
    assert progress[-1].done and progress[-1].stored == 1
    assert await cached(mesh, a, "Warm me.")
    event = await bare.cache.Invalidate(cache_pb2.InvalidateRequest(tenant_id=a, all=True), metadata=mine)
    assert event.event_id
    await eventually_gone(mesh, a, "Warm me.")

    # Another tenant's: refused, whatever the RPC, and B's entry stays.
    theirs = await stored(mesh, b, "Not yours.")
    not_b = "tenant_admin"
    await refused(
        lambda: bare.cache.Invalidate(cache_pb2.InvalidateRequest(tenant_id=b, all=True), metadata=mine),
        grpc.StatusCode.PERMISSION_DENIED,
        not_b,
    )
    await refused(
        lambda: bare.cache.PinEntry(
            cache_pb2.PinEntryRequest(tenant_id=b, entry_id=theirs, pinned=True), metadata=mine
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        not_b,
    )
    await refused(
        lambda: bare.cache.DeleteEntry(cache_pb2.DeleteEntryRequest(tenant_id=b, entry_id=theirs), metadata=mine),
        grpc.StatusCode.PERMISSION_DENIED,
        not_b,
    )
    planted = [cache_pb2.WarmRequest(entry=store_of(b, "Planted."))]
    await refused(lambda: bare.cache.Warm(iter(planted), metadata=mine), grpc.StatusCode.PERMISSION_DENIED, not_b)
    await asyncio.sleep(0.3)  # an invalidation that slipped through would have landed by now
    assert await cached(mesh, b, "Not yours.") and not await cached(mesh, b, "Planted.")

    # The admin token is no tenant token: it opens none of the router's RPCs.
    router = credential(mesh_identity_dir, "router")
    await refused(
        lambda: bare.cache.Lookup(
            lookup_of(a, request("x")), metadata=(router, (TENANT_TOKEN_METADATA_KEY, issued.admin_token))
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "not a tenant one",
    )


async def test_a_platform_admin_changes_any_tenants_entries(mesh, bare):
    _, a, _ = await mesh.new_tenant()
    _, b, _ = await mesh.new_tenant()
    issued = await admin_token(bare, await role_key(mesh, a, tenancy_pb2.ADMIN_ROLE_PLATFORM_ADMIN))
    assert issued.role == tenancy_pb2.ADMIN_ROLE_PLATFORM_ADMIN and issued.tenant_id == ""
    theirs = await stored(mesh, b, "Any tenant's.")
    deleted = await bare.cache.DeleteEntry(
        cache_pb2.DeleteEntryRequest(tenant_id=b, entry_id=theirs),
        metadata=((ADMIN_TOKEN_METADATA_KEY, issued.admin_token),),
    )
    assert deleted.deleted


async def test_an_auditor_a_plain_key_and_bad_tokens_get_nothing(mesh, bare, mesh_identity_dir):
    plain_key, a, key_id = await mesh.new_tenant()
    entry = await stored(mesh, a, "Keep me.")
    delete = cache_pb2.DeleteEntryRequest(tenant_id=a, entry_id=entry)

    auditor = await admin_token(bare, await role_key(mesh, a, tenancy_pb2.ADMIN_ROLE_AUDITOR))
    assert auditor.role == tenancy_pb2.ADMIN_ROLE_AUDITOR
    as_auditor = ((ADMIN_TOKEN_METADATA_KEY, auditor.admin_token),)
    await refused(
        lambda: bare.cache.DeleteEntry(delete, metadata=as_auditor), grpc.StatusCode.PERMISSION_DENIED, "auditor"
    )
    await refused(
        lambda: bare.cache.Invalidate(cache_pb2.InvalidateRequest(tenant_id=a, all=True), metadata=as_auditor),
        grpc.StatusCode.PERMISSION_DENIED,
        "auditor",
    )
    # A plain key gets no admin token at all.
    await refused(lambda: admin_token(bare, plain_key), grpc.StatusCode.PERMISSION_DENIED, "no admin role")
    # Nor does a tenant token stand in for an admin token.
    good_tenant_token = await tenant_token(mesh, mesh_identity_dir, plain_key)
    await refused(
        lambda: bare.cache.DeleteEntry(delete, metadata=((ADMIN_TOKEN_METADATA_KEY, good_tenant_token),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "is a tenant token",
    )

    tenancy_key = Signer.from_file(mesh_identity_dir / identity.TENANCY_KEY)
    expired = tenancy_key.admin_token(identity.TENANT_ADMIN, tenant_id=a, key_id=key_id, ttl_s=-3600)
    await refused(
        lambda: bare.cache.DeleteEntry(delete, metadata=((ADMIN_TOKEN_METADATA_KEY, expired),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "expired",
    )
    forged = Signer.generate(tenancy_key.key_id).admin_token(identity.PLATFORM_ADMIN, ttl_s=300)
    await refused(
        lambda: bare.cache.DeleteEntry(delete, metadata=((ADMIN_TOKEN_METADATA_KEY, forged),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "signature does not verify",
    )
    # The mesh key signs service credentials only, not admin tokens.
    mesh_key = Signer.from_file(mesh_identity_dir / identity.MESH_KEY)
    minted = mesh_key.admin_token(identity.PLATFORM_ADMIN, ttl_s=300)
    await refused(
        lambda: bare.cache.DeleteEntry(delete, metadata=((ADMIN_TOKEN_METADATA_KEY, minted),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "may not issue admin",
    )
    assert await cached(mesh, a, "Keep me.")


async def test_the_cli_trades_a_tenant_admin_key_for_an_admin_token(mesh, bare, monkeypatch, capsys, tmp_path):
    _, a, _ = await mesh.new_tenant()
    _, b, _ = await mesh.new_tenant()
    monkeypatch.setenv("LLMESH_CACHE_ADDR", mesh.hosts["cache"].address)
    monkeypatch.setenv("LLMESH_TENANCY_ADDR", mesh.hosts["tenancy"].address)
    monkeypatch.setenv("LLMESH_ADMIN_TOKEN", await role_key(mesh, a, tenancy_pb2.ADMIN_ROLE_TENANT_ADMIN))
    mine = await stored(mesh, a, "CLI, mine.")
    theirs = await stored(mesh, b, "CLI, theirs.")

    def cli(*argv: str) -> int:
        return main(list(argv))

    # (The CLI runs its own event loop: give it a thread.)
    assert await asyncio.to_thread(cli, "cache", "pin", "--tenant-id", a, mine) == 0
    assert await asyncio.to_thread(cli, "cache", "delete", "--tenant-id", a, mine) == 0
    assert not await cached(mesh, a, "CLI, mine.")
    assert await asyncio.to_thread(cli, "cache", "delete", "--tenant-id", b, theirs) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert await asyncio.to_thread(cli, "cache", "invalidate", "--tenant-id", b) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert await cached(mesh, b, "CLI, theirs.")
    # Warm lines that name no tenant: the key's own.
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Warmed by the CLI?", "answer": "Yes.", "tier": 1}) + "\n")
    capsys.readouterr()
    assert await asyncio.to_thread(cli, "cache", "warm", str(pairs)) == 0
    assert "stored 1, skipped 0, failed 0 of 1 pairs" in capsys.readouterr().out
    # ...and a line naming another tenant is refused.
    pairs.write_text(json.dumps({"tenant_id": b, "prompt": "Planted?", "answer": "No.", "tier": 1}) + "\n")
    assert await asyncio.to_thread(cli, "cache", "warm", str(pairs)) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert await asyncio.to_thread(cli, "cache", "invalidate", "--tenant-id", a) == 0
