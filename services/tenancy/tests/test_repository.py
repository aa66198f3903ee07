"""The SQL layer on a real SQLite file and a real PostgreSQL database: migrations, constraints,
revocation with its outbox event."""

from __future__ import annotations

import os

import pytest
from llmesh.events.v1 import events_pb2
from llmesh.kit.errors import AlreadyExists
from llmesh.kit.vocabulary import Sensitivity
from llmesh.services.tenancy import keys
from llmesh.services.tenancy.models import ApiKey, Tenant, new_key_id, new_tenant_id
from llmesh.services.tenancy.outbox import OutboxRelay, outbox_event
from llmesh.services.tenancy.repository import Repository, now_us


@pytest.fixture
async def repo(store_url):
    repository = Repository(store_url)
    await repository.open()
    yield repository
    await repository.close()


def _tenant(name: str = "acme", clearance: Sensitivity = Sensitivity.INTERNAL) -> Tenant:
    return Tenant(new_tenant_id(), name, "research", clearance, now_us())


async def _key(repo: Repository, tenant: Tenant) -> tuple[ApiKey, str]:
    key = ApiKey(new_key_id(), tenant.tenant_id, "ci", now_us())
    secret = keys.new_secret()
    await repo.insert_key(key, keys.hash_secret(secret))
    return key, secret


def _revocation(key: ApiKey, event_id: str = "e1"):
    event = events_pb2.ApiKeyRevoked(event_id=event_id, key_id=key.key_id, tenant_id=key.tenant_id)
    return outbox_event(event_id, "llmesh.tenancy.key.revoked", event, now_us())


async def test_migrations_are_applied_once(store_url):
    applied = []
    for _ in range(2):
        repository = Repository(store_url)
        applied.append(await repository.open())
        await repository.close()
    assert applied[0] and applied[0][0] == "0001_tenants-keys-outbox"
    assert applied[1] == [], "a second start applies nothing"
    if repository.dialect == "sqlite":
        assert os.stat(store_url).st_mode & 0o777 == 0o600, "key hashes are readable by the owner only"


async def test_tenants_are_unique_by_name_and_found_by_id_or_name(repo):
    tenant = await repo.insert_tenant(_tenant("acme", Sensitivity.RESTRICTED))
    with pytest.raises(AlreadyExists, match="'acme' already exists"):
        await repo.insert_tenant(_tenant("acme"))
    await repo.insert_tenant(_tenant("Acme"))
    assert await repo.tenant_by_id(tenant.tenant_id) == tenant
    assert await repo.tenant_by_name("acme") == tenant
    assert await repo.tenant_by_name("nobody") is None
    assert [t.name for t in await repo.list_tenants()] == ["Acme", "acme"]


async def test_credentials_join_key_secret_and_tenant(repo):
    tenant = await repo.insert_tenant(_tenant())
    key, secret = await _key(repo, tenant)
    found = await repo.credentials(key.key_id)
    assert found.key == key and found.tenant == tenant
    assert keys.verify_secret(secret, found.secret)
    assert await repo.credentials(new_key_id()) is None


async def test_a_key_needs_an_existing_tenant(repo):
    with pytest.raises(Exception, match="(?i)foreign key"):
        await repo.insert_key(ApiKey(new_key_id(), new_tenant_id(), "", now_us()), keys.hash_secret("x"))


async def test_revocation_records_one_event_and_is_idempotent(repo):
    tenant = await repo.insert_tenant(_tenant())
    key, _ = await _key(repo, tenant)
    revoked, newly = await repo.revoke_key(key.key_id, 123, _revocation(key, "e1"))
    assert newly and revoked.revoked_at_us == 123
    again, newly = await repo.revoke_key(key.key_id, 456, _revocation(key, "e2"))
    assert not newly and again.revoked_at_us == 123
    assert [e.event_id for e in await repo.pending_events()] == ["e1"]
    assert await repo.revoke_key(new_key_id(), 1, _revocation(key, "e3")) is None
    assert [e.event_id for e in await repo.pending_events()] == ["e1"]


async def test_relay_keeps_events_nats_did_not_take_and_publishes_them_later(repo):
    tenant = await repo.insert_tenant(_tenant())
    key, _ = await _key(repo, tenant)
    await repo.revoke_key(key.key_id, now_us(), _revocation(key, "e1"))
    published: list[tuple[str, str, str]] = []
    nats_up = False

    async def publish(subject, message, msg_id):
        if not nats_up:
            raise ConnectionError("nats is down")
        published.append((subject, message.key_id, msg_id))

    relay = OutboxRelay(repo, publish)
    assert await relay.flush() == 1
    assert published == []
    nats_up = True
    assert await relay.flush() == 0
    assert published == [("llmesh.tenancy.key.revoked", key.key_id, "e1")]
    assert await repo.pending_events() == []
    assert await relay.flush() == 0 and len(published) == 1


async def test_postgresql_out_of_reach_is_unavailable_and_the_pool_reconnects_when_it_is_back():
    """Its own server: this test stops it."""
    import shutil
    import tempfile

    from llmesh.kit import errors
    from llmesh.kit.postgres_server import PostgresServerProcess
    from llmesh.kit.testing import assert_eventually
    from llmesh.services.tenancy.db import PostgresDatabase

    folder = tempfile.mkdtemp(prefix="llmesh-postgres-")
    server = PostgresServerProcess(folder)
    try:
        server.start()
        db = PostgresDatabase(server.url, pool_size=2)
        await db.open()
        try:
            assert await db.fetchrow("SELECT 1") == (1,)
            server.stop()
            with pytest.raises(errors.Unavailable, match="tenancy database is unreachable"):
                await db.fetchrow("SELECT 1")
            with pytest.raises(errors.Unavailable):
                async with db.transaction() as session:
                    await session.execute("SELECT 1")
            server.resume()

            async def answers() -> None:
                try:
                    assert await db.fetchrow("SELECT 2") == (2,)
                except errors.Unavailable as exc:  # a pooled connection from before the restart
                    raise AssertionError(str(exc)) from None

            await assert_eventually(answers, timeout_s=15, message="the pool serves again")
        finally:
            await db.close()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
