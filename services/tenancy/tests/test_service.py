"""The tenancy service end to end: real gRPC server, real SQLite file, real nats-server."""

from __future__ import annotations

import asyncio

import grpc
import nats
import nats.errors
import nats.js.errors
import pytest
from grpc_health.v1 import health_pb2
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.client import open_channel
from llmesh.kit.nats_server import NatsServerProcess
from llmesh.kit.streams import KEY_REVOKED_SUBJECT, TENANCY
from llmesh.kit.testing import assert_eventually, free_port, health_status, starting, unique
from llmesh.services.tenancy.app import TenancyApp
from llmesh.tenancy.v1 import tenancy_pb2 as pb
from llmesh.tenancy.v1 import tenancy_pb2_grpc
from structlog.testing import capture_logs

from services.tenancy.tests.conftest import tenancy_client, tenancy_settings

pytestmark = pytest.mark.timeout(60)


async def _expect(code: grpc.StatusCode, call, needle: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == code, exc.value.details()
    assert needle in exc.value.details()
    return exc.value.details()


async def _tenant_with_key(stub, admin, **fields) -> tuple[pb.Tenant, pb.CreateApiKeyResponse]:
    tenant = (await stub.CreateTenant(pb.CreateTenantRequest(name=unique("acme"), **fields), metadata=admin)).tenant
    key = await stub.CreateApiKey(pb.CreateApiKeyRequest(tenant_id=tenant.tenant_id, label="ci"), metadata=admin)
    return tenant, key


async def test_create_authenticate_revoke_publishes_event(service, admin, nats_url):
    _, stub = service
    tenant, created = await _tenant_with_key(
        stub, admin, business_unit="research", clearance=common_pb2.SENSITIVITY_CONFIDENTIAL
    )
    assert tenant.tenant_id.startswith("t_") and tenant.clearance == common_pb2.SENSITIVITY_CONFIDENTIAL
    assert created.api_key.startswith(f"llmesh_{created.key.key_id}_")
    assert not created.key.HasField("revoked_at")

    principal = (await stub.Authenticate(pb.AuthenticateRequest(api_key=created.api_key))).principal
    assert principal == common_pb2.Principal(
        tenant_id=tenant.tenant_id,
        tenant_name=tenant.name,
        business_unit="research",
        clearance=common_pb2.SENSITIVITY_CONFIDENTIAL,
        key_id=created.key.key_id,
    )

    nc = await nats.connect(nats_url)
    events: list[tuple[events_pb2.ApiKeyRevoked, str]] = []

    async def on_event(msg) -> None:
        event = events_pb2.ApiKeyRevoked.FromString(msg.data)
        if event.key_id == created.key.key_id:
            events.append((event, (msg.headers or {}).get("Nats-Msg-Id", "")))

    await nc.subscribe(KEY_REVOKED_SUBJECT, cb=on_event)
    await nc.flush()  # the server knows the subscription before the service publishes
    try:
        revoked = (await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=created.key.key_id), metadata=admin)).key
        assert revoked.HasField("revoked_at") and revoked.tenant_id == tenant.tenant_id
        await _expect(
            grpc.StatusCode.UNAUTHENTICATED,
            stub.Authenticate(pb.AuthenticateRequest(api_key=created.api_key)),
            "has been revoked",
        )
        await assert_eventually(lambda: len(events) == 1, message="ApiKeyRevoked on NATS")
        event, msg_id = events[0]
        assert event.tenant_id == tenant.tenant_id and event.revoked_at == revoked.revoked_at
        assert msg_id == event.event_id

        again = (await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=created.key.key_id), metadata=admin)).key
        assert again.revoked_at == revoked.revoked_at
        # Durable in the stream, and a repeated revoke recorded nothing new.
        assert await _stored_revocations(nc, created.key.key_id) == [event]
    finally:
        await nc.close()


async def _stored_revocations(nc, key_id: str) -> list[events_pb2.ApiKeyRevoked]:
    sub = await nc.jetstream().subscribe(KEY_REVOKED_SUBJECT, ordered_consumer=True)
    found = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return found
            event = events_pb2.ApiKeyRevoked.FromString(msg.data)
            if event.key_id == key_id:
                found.append(event)
    finally:
        await sub.unsubscribe()


async def test_tenants_are_listed_and_found_by_id_or_name(service, admin):
    _, stub = service
    first = (await stub.CreateTenant(pb.CreateTenantRequest(name=unique("a")), metadata=admin)).tenant
    second = (await stub.CreateTenant(pb.CreateTenantRequest(name=unique("b")), metadata=admin)).tenant
    assert first.clearance == common_pb2.SENSITIVITY_INTERNAL, "clearance defaults to INTERNAL"
    by_id = (await stub.GetTenant(pb.GetTenantRequest(tenant_id=second.tenant_id), metadata=admin)).tenant
    by_name = (await stub.GetTenant(pb.GetTenantRequest(name=second.name), metadata=admin)).tenant
    assert by_id == by_name == second
    listed = (await stub.ListTenants(pb.ListTenantsRequest(), metadata=admin)).tenants
    assert [first, second] == [t for t in listed if t.tenant_id in (first.tenant_id, second.tenant_id)]


async def test_a_restart_on_the_same_database_keeps_tenants_and_keys(store_url, nats_url, admin_token, admin):
    db = store_url
    async with tenancy_client(db, nats_url, admin_token) as (_, stub):
        tenant, kept = await _tenant_with_key(stub, admin)
        revoked = await stub.CreateApiKey(pb.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin)
        await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=revoked.key.key_id), metadata=admin)
    async with tenancy_client(db, nats_url, admin_token) as (_, stub):
        principal = (await stub.Authenticate(pb.AuthenticateRequest(api_key=kept.api_key))).principal
        assert principal.tenant_id == tenant.tenant_id and principal.key_id == kept.key.key_id
        assert (await stub.GetTenant(pb.GetTenantRequest(name=tenant.name), metadata=admin)).tenant == tenant
        await _expect(
            grpc.StatusCode.UNAUTHENTICATED,
            stub.Authenticate(pb.AuthenticateRequest(api_key=revoked.api_key)),
            "revoked",
        )
        await _expect(
            grpc.StatusCode.ALREADY_EXISTS, stub.CreateTenant(pb.CreateTenantRequest(name=tenant.name), metadata=admin)
        )


async def test_bad_input_on_every_rpc_and_the_service_keeps_serving(service, admin, admin_token):
    _, stub = service
    tenant, created = await _tenant_with_key(stub, admin)
    key_id = created.key.key_id
    UNAUTH, INVALID, DENIED = (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    NOT_FOUND, EXISTS = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS

    def auth(api_key):
        return stub.Authenticate(pb.AuthenticateRequest(api_key=api_key))

    wrong_secret = created.api_key[:-4] + ("aaaa" if not created.api_key.endswith("aaaa") else "bbbb")
    unknown_id = f"llmesh_k_{'0' * 16}_{created.api_key[-43:]}"
    for bad, needle in [
        ("", "missing API key"),
        ("x" * 100_000, "malformed"),
        ("not-a-key", "malformed"),
        (wrong_secret, "invalid API key"),
        (unknown_id, "invalid API key"),
    ]:
        details = await _expect(UNAUTH, auth(bad), needle)
        assert created.api_key[-43:] not in details and (not bad or bad[:40] not in details)

    no_admin = grpc.aio.Metadata()
    wrong_admin = grpc.aio.Metadata(("authorization", f"Bearer {admin_token}x"))
    not_bearer = grpc.aio.Metadata(("authorization", admin_token))
    admin_calls = [
        lambda md: stub.CreateTenant(pb.CreateTenantRequest(name=unique("x")), metadata=md),
        lambda md: stub.GetTenant(pb.GetTenantRequest(tenant_id=tenant.tenant_id), metadata=md),
        lambda md: stub.ListTenants(pb.ListTenantsRequest(), metadata=md),
        lambda md: stub.CreateApiKey(pb.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=md),
        lambda md: stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=key_id), metadata=md),
    ]
    for call in admin_calls:
        await _expect(UNAUTH, call(no_admin), "missing admin token")
        await _expect(UNAUTH, call(not_bearer), "expected 'Bearer <admin token>'")
        details = await _expect(DENIED, call(wrong_admin), "admin token is not valid")
        assert admin_token not in details

    def create(**fields):
        return stub.CreateTenant(pb.CreateTenantRequest(**fields), metadata=admin)

    await _expect(INVALID, create(name=""), "name is empty")
    await _expect(INVALID, create(name="has space"), "must be 1-64 characters")
    await _expect(INVALID, create(name="a" * 65), "must be 1-64 characters")
    details = await _expect(INVALID, create(name="a" * 100_000), "must be 1-64 characters")
    assert len(details) < 300
    await _expect(INVALID, create(name=unique("c"), clearance=99), "clearance 99")
    await _expect(INVALID, create(name=unique("c"), business_unit="b" * 129), "business_unit has 129")
    await _expect(INVALID, create(name=unique("c"), business_unit="a\x00b"), "control characters")
    await _expect(EXISTS, create(name=tenant.name), "already exists")

    def get(**fields):
        return stub.GetTenant(pb.GetTenantRequest(**fields), metadata=admin)

    await _expect(INVALID, get(), "set tenant_id or name")
    await _expect(INVALID, get(tenant_id=""), "tenant_id is empty")
    await _expect(INVALID, get(tenant_id="t.1"), "not a valid tenant id")
    await _expect(INVALID, get(name="a/b"), "must be 1-64 characters")
    await _expect(NOT_FOUND, get(tenant_id="t_0000000000000000"), "no tenant with id")
    await _expect(NOT_FOUND, get(name=unique("nobody")), "no tenant named")

    def create_key(**fields):
        return stub.CreateApiKey(pb.CreateApiKeyRequest(**fields), metadata=admin)

    await _expect(INVALID, create_key(), "tenant_id is empty")
    await _expect(INVALID, create_key(tenant_id="x" * 100_000), "not a valid tenant id")
    await _expect(NOT_FOUND, create_key(tenant_id="t_0000000000000000"), "no tenant")
    await _expect(INVALID, create_key(tenant_id=tenant.tenant_id, label="l" * 129), "label has 129")

    def revoke(key_id):
        return stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=key_id), metadata=admin)

    await _expect(INVALID, revoke(""), "key_id is empty")
    await _expect(INVALID, revoke("k>1"), "not a valid key id")
    await _expect(NOT_FOUND, revoke("k_0000000000000000"), "no API key")

    principal = (await stub.Authenticate(pb.AuthenticateRequest(api_key=created.api_key))).principal
    assert principal.key_id == key_id


async def test_admin_rpcs_are_disabled_without_a_token(store_url, nats_url):
    async with tenancy_client(store_url, nats_url, "") as (_, stub):
        any_token = grpc.aio.Metadata(("authorization", "Bearer whatever-it-is-here"))
        await _expect(
            grpc.StatusCode.PERMISSION_DENIED,
            stub.ListTenants(pb.ListTenantsRequest(), metadata=any_token),
            "admin RPCs are disabled: LLMESH_ADMIN_TOKEN is not set",
        )
        await _expect(grpc.StatusCode.UNAUTHENTICATED, stub.Authenticate(pb.AuthenticateRequest()), "missing API key")


async def test_api_keys_never_reach_the_logs(service, admin, admin_token, capfd):
    _, stub = service
    with capture_logs() as logs:
        tenant, created = await _tenant_with_key(stub, admin)
        await stub.Authenticate(pb.AuthenticateRequest(api_key=created.api_key))
        wrong = created.api_key[:-1] + ("A" if created.api_key[-1] != "A" else "B")
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Authenticate(pb.AuthenticateRequest(api_key=wrong))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Authenticate(pb.AuthenticateRequest(api_key=created.api_key + "x"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ListTenants(pb.ListTenantsRequest(), metadata=[("authorization", f"Bearer {created.api_key}")])
        await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=created.key.key_id), metadata=admin)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Authenticate(pb.AuthenticateRequest(api_key=created.api_key))
    events = {entry["event"] for entry in logs}
    assert {"tenant_created", "api_key_created", "api_key_revoked", "rpc_error"} <= events, events
    captured = capfd.readouterr()
    text = repr(logs) + captured.out + captured.err
    # llmesh_<key id>_<secret>: the secret itself may hold "_" (URL-safe base64).
    prefix = f"llmesh_{created.key.key_id}_"
    assert created.api_key.startswith(prefix) and wrong.startswith(prefix)
    for needle in (created.api_key[len(prefix) :], wrong[len(prefix) :], admin_token):
        assert needle not in text


@pytest.mark.timeout(90)
async def test_waits_for_nats_and_publishes_a_revocation_made_while_nats_was_down(
    tmp_path, store_url, admin_token, admin
):
    port = free_port()
    nats_server = NatsServerProcess(str(tmp_path / "nats"), port=port)
    settings = tenancy_settings(store_url, f"nats://127.0.0.1:{port}", admin_token)
    try:
        async with starting(TenancyApp(settings), settings) as (host, start), open_channel(host.address) as channel:
            assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            await asyncio.to_thread(nats_server.start)
            await asyncio.wait_for(start, 30)
            assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING

            stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
            _, created = await _tenant_with_key(stub, admin)
            await asyncio.to_thread(nats_server.stop)
            # The revocation is committed and effective at once; its event waits in the outbox.
            await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=created.key.key_id), metadata=admin, timeout=10)
            await _expect(
                grpc.StatusCode.UNAUTHENTICATED,
                stub.Authenticate(pb.AuthenticateRequest(api_key=created.api_key)),
                "revoked",
            )

            await asyncio.to_thread(nats_server.start)
            nc = await nats.connect(nats_server.url)
            try:
                js = nc.jetstream()

                async def published() -> bool:
                    try:
                        msg = await js.get_last_msg(TENANCY.name, KEY_REVOKED_SUBJECT)
                    except nats.js.errors.NotFoundError:
                        return False
                    return events_pb2.ApiKeyRevoked.FromString(msg.data).key_id == created.key.key_id

                await assert_eventually(published, timeout_s=20, message="deferred ApiKeyRevoked published")
            finally:
                await nc.close()
    finally:
        await asyncio.to_thread(nats_server.stop)
