"""No trust by network position (docs/adr/0023): against the running mesh, a caller on the same
network gets nothing from the internal services without a service credential, nor another
tenant's data with one, nor anything with an expired, forged or misused token; the normal path
through the router still works (its calls carry the router's credential and the tenant's token)."""

from __future__ import annotations

import contextlib
import dataclasses

import grpc
import pytest
from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit import identity
from llmesh.kit.client import open_channel
from llmesh.kit.identity import SERVICE_METADATA_KEY, TENANT_TOKEN_METADATA_KEY, Signer
from llmesh.router.v1 import router_pb2
from llmesh.services.router import convert
from llmesh.services.router.domain import CacheKey
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

from tests.e2e.test_mesh import generate, request

pytestmark = pytest.mark.timeout(120)

DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclasses.dataclass
class Probe:
    """Stubs of the internal services on channels without the kit's credentials: what a caller
    on the network has, plus whatever metadata a test hands each call."""

    cache: cache_pb2_grpc.CacheServiceStub
    classifier: classifier_pb2_grpc.ClassifierServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    tenancy: tenancy_pb2_grpc.TenancyServiceStub


@pytest.fixture
async def probe(mesh):
    async with contextlib.AsyncExitStack() as stack:

        async def bare(name: str) -> grpc.aio.Channel:
            return await stack.enter_async_context(grpc.aio.insecure_channel(mesh.hosts[name].address))

        yield Probe(
            cache=cache_pb2_grpc.CacheServiceStub(await bare("cache")),
            classifier=classifier_pb2_grpc.ClassifierServiceStub(await bare("classifier")),
            inference=inference_pb2_grpc.InferenceServiceStub(await bare("inference")),
            tenancy=tenancy_pb2_grpc.TenancyServiceStub(await bare("tenancy")),
        )


def credential(directory, service: str) -> tuple[str, str]:
    return (SERVICE_METADATA_KEY, identity.credential_file(directory, service).read_text().strip())


async def tenant_token(mesh, directory, api_key: str) -> str:
    """The token tenancy hands the router for `api_key` (asked with the router's credential)."""
    channel = open_channel(mesh.hosts["tenancy"].address, identity=identity.load_provisioned(directory, "router"))
    async with channel:
        response = await tenancy_pb2_grpc.TenancyServiceStub(channel).Authenticate(
            tenancy_pb2.AuthenticateRequest(api_key=api_key)
        )
    assert response.tenant_token and response.tenant_token_expires_at.seconds > 0
    return response.tenant_token


async def refused(call, code: grpc.StatusCode | tuple = DENIED, match: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        result = call()
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    codes = code if isinstance(code, tuple) else (code,)
    assert caught.value.code() in codes, (caught.value.code(), caught.value.details())
    assert match in (caught.value.details() or ""), caught.value.details()
    return caught.value.details()


def lookup_of(tenant_id: str, req: router_pb2.GenerateRequest) -> cache_pb2.LookupRequest:
    """The cache lookup the router makes for `req` from `tenant_id`."""
    command = convert.command_from_proto(req)
    key = CacheKey(tenant_id, command.use_case, command.messages, "", command.sampling, command.max_tokens)
    return convert.lookup_request_to_proto(key, business_unit="qa")


async def test_without_credentials_no_internal_rpc_answers(mesh, probe):
    api_key, tenant_id, _ = await mesh.new_tenant()
    message = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hello")]
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    need = "needs a service credential"
    await refused(lambda: probe.cache.Lookup(lookup_of(tenant_id, request())), unauthenticated, need)
    await refused(lambda: probe.cache.Stats(cache_pb2.StatsRequest()), unauthenticated, need)
    await refused(
        lambda: probe.cache.Invalidate(cache_pb2.InvalidateRequest(tenant_id=tenant_id)), unauthenticated, need
    )
    await refused(
        lambda: probe.classifier.Classify(classifier_pb2.ClassifyRequest(messages=message)), unauthenticated, need
    )
    await refused(
        lambda: probe.inference.Generate(
            inference_pb2.GenerateRequest(model="gemma-3-270m", messages=message, max_tokens=4)
        ),
        unauthenticated,
        need,
    )
    await refused(
        lambda: probe.tenancy.Authenticate(tenancy_pb2.AuthenticateRequest(api_key=api_key)), unauthenticated, need
    )


async def test_another_tenants_cached_answer_cannot_be_read_planted_wiped_or_counted(mesh, probe, mesh_identity_dir):
    victim_key, victim, _ = await mesh.new_tenant()
    attacker_key, attacker, _ = await mesh.new_tenant()
    req = request("Name three primary colours.")
    _, first, _ = await generate(mesh, victim_key, req)
    assert first.cache_outcome == router_pb2.CACHE_OUTCOME_MISS
    # The operator (the tests' credential) sees the entry: the probes below aim at something real.
    async with open_channel(mesh.hosts["cache"].address) as channel:
        seen = await cache_pb2_grpc.CacheServiceStub(channel).Lookup(lookup_of(victim, req))
    assert seen.outcome == cache_pb2.LOOKUP_OUTCOME_EXACT_HIT

    # Even holding the router's credential, the attacker's tenant token does not open the victim's keys.
    router = credential(mesh_identity_dir, "router")
    theirs = (TENANT_TOKEN_METADATA_KEY, await tenant_token(mesh, mesh_identity_dir, attacker_key))
    other_tenant = "the tenant token is for another tenant"
    await refused(
        lambda: probe.cache.Lookup(lookup_of(victim, req), metadata=(router, theirs)),
        grpc.StatusCode.PERMISSION_DENIED,
        other_tenant,
    )
    plant = cache_pb2.StoreRequest(
        key=lookup_of(victim, request("What is 2+2?")).key, content="5", model="gemma-3-270m", tier=common_pb2.TIER_1
    )
    await refused(lambda: probe.cache.Store(plant), grpc.StatusCode.UNAUTHENTICATED)
    await refused(
        lambda: probe.cache.Store(plant, metadata=(router, theirs)), grpc.StatusCode.PERMISSION_DENIED, other_tenant
    )
    # The router without any tenant token is refused too: a service acts for a tenant, never for all.
    await refused(
        lambda: probe.cache.Lookup(lookup_of(victim, req), metadata=(router,)),
        grpc.StatusCode.UNAUTHENTICATED,
        "without a tenant token",
    )
    # Another service's credential does not reach the cache's data at all.
    await refused(
        lambda: probe.cache.Lookup(lookup_of(victim, req), metadata=(credential(mesh_identity_dir, "classifier"),)),
        grpc.StatusCode.PERMISSION_DENIED,
        "not open to classifier",
    )
    # Wiping is the operator's: the router's credential (let alone none) does not do it.
    await refused(
        lambda: probe.cache.Invalidate(cache_pb2.InvalidateRequest(tenant_id=victim), metadata=(router, theirs)),
        grpc.StatusCode.PERMISSION_DENIED,
        "not open to router",
    )
    await refused(lambda: probe.cache.DeleteEntry(cache_pb2.DeleteEntryRequest(tenant_id=victim, entry_id="e")))
    # Statistics: a tenant token sees its own rows, never the victim's, and cannot ask for them.
    stats = await probe.cache.Stats(cache_pb2.StatsRequest(), metadata=(router, theirs))
    assert {row.tenant_id for row in stats.rows} <= {attacker}
    await refused(
        lambda: probe.cache.Stats(cache_pb2.StatsRequest(tenant_id=victim), metadata=(router, theirs)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    async with open_channel(mesh.hosts["cache"].address) as channel:
        everything = await cache_pb2_grpc.CacheServiceStub(channel).Stats(cache_pb2.StatsRequest())
    assert victim in {row.tenant_id for row in everything.rows}

    # Nothing was planted or wiped: the victim's answer still comes from the cache, unchanged.
    _, again, _ = await generate(mesh, victim_key, req)
    assert again.cache_outcome == router_pb2.CACHE_OUTCOME_EXACT_HIT


async def test_expired_forged_and_misused_tokens_are_refused(mesh, probe, mesh_identity_dir):
    api_key, tenant_id, key_id = await mesh.new_tenant()
    router = credential(mesh_identity_dir, "router")
    lookup = lookup_of(tenant_id, request())
    tenancy_key = Signer.from_file(mesh_identity_dir / identity.TENANCY_KEY)

    expired = tenancy_key.tenant_token(tenant_id, key_id=key_id, ttl_s=-3600)
    await refused(
        lambda: probe.cache.Lookup(lookup, metadata=(router, (TENANT_TOKEN_METADATA_KEY, expired))),
        grpc.StatusCode.UNAUTHENTICATED,
        "expired",
    )
    forger = Signer.generate(tenancy_key.key_id)  # tenancy's key id, another key
    forged = forger.tenant_token(tenant_id, key_id=key_id, ttl_s=300)
    await refused(
        lambda: probe.cache.Lookup(lookup, metadata=(router, (TENANT_TOKEN_METADATA_KEY, forged))),
        grpc.StatusCode.UNAUTHENTICATED,
        "signature does not verify",
    )
    forged_router = (SERVICE_METADATA_KEY, Signer.generate("mesh-forged").service_credential("router"))
    await refused(
        lambda: probe.tenancy.Authenticate(tenancy_pb2.AuthenticateRequest(api_key=api_key), metadata=(forged_router,)),
        grpc.StatusCode.UNAUTHENTICATED,
        "unknown key",
    )
    # Tenancy's key makes tenant tokens, not service credentials.
    minted = (SERVICE_METADATA_KEY, tenancy_key.service_credential("router"))
    await refused(
        lambda: probe.tenancy.Authenticate(tenancy_pb2.AuthenticateRequest(api_key=api_key), metadata=(minted,)),
        grpc.StatusCode.UNAUTHENTICATED,
        "may not issue svc",
    )
    # A tenant token where a service credential belongs proves nothing either.
    good = await tenant_token(mesh, mesh_identity_dir, api_key)
    await refused(
        lambda: probe.cache.Lookup(lookup, metadata=((SERVICE_METADATA_KEY, good),)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # The same token with the right caller and key is accepted (a miss: nothing was stored).
    response = await probe.cache.Lookup(lookup, metadata=(router, (TENANT_TOKEN_METADATA_KEY, good)))
    assert response.outcome == cache_pb2.LOOKUP_OUTCOME_MISS
    # ...and for the classifier, the tenant in the request must be the token's.
    other_key, other_tenant, _ = await mesh.new_tenant()
    classify = classifier_pb2.ClassifyRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")], tenant_id=other_tenant
    )
    await refused(
        lambda: probe.classifier.Classify(classify, metadata=(router, (TENANT_TOKEN_METADATA_KEY, good))),
        grpc.StatusCode.PERMISSION_DENIED,
        "another tenant",
    )


async def test_the_router_renews_a_token_for_a_key_it_saw_and_only_the_router_may(mesh, probe, mesh_identity_dir):
    api_key, tenant_id, key_id = await mesh.new_tenant()
    router = credential(mesh_identity_dir, "router")
    renewed = await probe.tenancy.RenewTenantToken(
        tenancy_pb2.RenewTenantTokenRequest(key_id=key_id), metadata=(router,)
    )
    assert renewed.principal.tenant_id == tenant_id and renewed.tenant_token
    verifier = identity.load_provisioned(mesh_identity_dir, "cache").verifier
    assert verifier.verify(renewed.tenant_token, identity.TENANT).subject == tenant_id
    await refused(
        lambda: probe.tenancy.RenewTenantToken(
            tenancy_pb2.RenewTenantTokenRequest(key_id=key_id), metadata=(credential(mesh_identity_dir, "edge"),)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await mesh.tenancy.RevokeApiKey(tenancy_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=mesh.admin)
    await refused(
        lambda: probe.tenancy.RenewTenantToken(tenancy_pb2.RenewTenantTokenRequest(key_id=key_id), metadata=(router,)),
        grpc.StatusCode.UNAUTHENTICATED,
        "revoked",
    )
