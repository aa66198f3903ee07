"""The hash-chained audit log on both stores: a clean chain verifies; an entry changed, removed or
reordered in the store, entries cut off the end, a rewritten chain or a forged checkpoint is found
and the first bad entry named."""

from __future__ import annotations

import grpc
import nats
import pytest
from llmesh.events.v1 import events_pb2
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.streams import audit_subject
from llmesh.kit.testing import assert_eventually, unique
from llmesh.services.tenancy.audit import AuditLog
from llmesh.services.tenancy.repository import Repository
from llmesh.tenancy.v1 import tenancy_pb2 as pb

from services.tenancy.tests.conftest import tenancy_client

pytestmark = pytest.mark.timeout(60)

KEY = "audit-key-for-the-tests"


@pytest.fixture
async def repo(store_url):
    repository = Repository(store_url)
    await repository.open()
    yield repository
    await repository.close()


async def _filled(repo: Repository, n: int = 6, every: int = 3) -> AuditLog:
    log = AuditLog(repo, KEY, checkpoint_every=every)
    for i in range(1, n + 1):
        await log.append("admin-token", "policy.changed", tenant_id="t_1", target=f"v{i}", detail={"i": i})
    return log


async def test_a_clean_chain_verifies_with_its_checkpoints(repo):
    log = await _filled(repo, 7)
    result = await log.verify()
    assert result.ok and result.entries == 7 and result.checkpoints == 2, result
    entries = await log.entries(tenant_id="t_1", after_seq=0, limit=0)
    assert [e.seq for e in entries] == list(range(1, 8))
    assert entries[0].prev_hash == "0" * 64 and entries[1].prev_hash == entries[0].entry_hash
    assert entries[0].detail_json == '{"i":1}'


async def test_a_changed_entry_is_named(repo):
    log = await _filled(repo)
    await repo.db.execute("UPDATE audit_log SET detail_json = ? WHERE seq = 2", '{"i":99}')
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 2 and "entry 2 was changed" in result.problem


async def test_a_removed_entry_is_named(repo):
    log = await _filled(repo)
    await repo.db.execute("DELETE FROM audit_log WHERE seq = 4")
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 4 and "entry 4 is missing" in result.problem


async def test_reordered_entries_are_named(repo):
    log = await _filled(repo)
    async with repo.db.transaction() as tx:
        await tx.execute("UPDATE audit_log SET seq = -1 WHERE seq = 2")
        await tx.execute("UPDATE audit_log SET seq = 2 WHERE seq = 3")
        await tx.execute("UPDATE audit_log SET seq = 3 WHERE seq = -1")
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 2 and "does not chain to entry 1" in result.problem


async def test_entries_cut_off_behind_a_checkpoint_are_found(repo):
    log = await _filled(repo, 6, every=3)
    await repo.db.execute("DELETE FROM audit_log WHERE seq > 4")
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 5 and "entries 5..6 were removed" in result.problem


async def test_a_rewritten_chain_differs_from_its_signed_checkpoint(repo):
    """Whoever edits entry 2 and recomputes every hash after it still cannot re-sign."""
    log = await _filled(repo, 6, every=3)
    entries = await log.entries(tenant_id=None, after_seq=0, limit=0)
    forged = AuditLog(repo, "", checkpoint_every=1000)
    await repo.db.execute("DELETE FROM audit_log")
    for e in entries:
        await forged.append(
            e.actor, e.action, tenant_id=e.tenant_id, target=e.target, detail="{}" if e.seq == 2 else e.detail_json
        )
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 3 and "signed checkpoint" in result.problem
    await repo.db.execute("UPDATE audit_checkpoints SET signature = ? WHERE seq = 3", "0" * 64)
    assert "bad signature" in (await log.verify()).problem


async def test_bad_appends_are_refused(repo):
    log = AuditLog(repo, KEY)
    for kwargs, needle in [
        (dict(action="Bad Action"), "action must be"),
        (dict(action="x", detail="[1]"), "must be a JSON object"),
        (dict(action="x", detail="{not json"), "not JSON"),
        (dict(action="x", detail="[" * 8000), "nested too deeply|not JSON"),
        (dict(action="x", tenant_id="a.b"), "tenant_id"),
        (dict(action="x", target="\x00"), "control characters"),
    ]:
        action = kwargs.pop("action")
        with pytest.raises(InvalidArgument, match=needle):
            await log.append("admin-token", action, **kwargs)
    assert (await log.verify()).entries == 0


async def test_rpcs_record_admin_actions_verify_and_refuse_bad_input(store_url, nats_url, admin_token, admin):
    async with tenancy_client(store_url, nats_url, admin_token, audit_key=KEY, audit_checkpoint_every=2) as (_, stub):
        tenant = (await stub.CreateTenant(pb.CreateTenantRequest(name="audited"), metadata=admin)).tenant
        key = (await stub.CreateApiKey(pb.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin)).key
        await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=key.key_id), metadata=admin)
        appended = await stub.AppendAudit(
            pb.AppendAuditRequest(
                action="route.decided", tenant_id=tenant.tenant_id, detail_json='{"model":"m"}', source="router"
            ),
            metadata=admin,
        )
        assert appended.entry.seq == 4 and appended.entry.actor == "admin-token via router"
        listed = (await stub.ListAudit(pb.ListAuditRequest(tenant_id=tenant.tenant_id), metadata=admin)).entries
        assert [e.action for e in listed] == ["tenant.created", "key.created", "key.revoked", "route.decided"]
        verified = await stub.VerifyAudit(pb.VerifyAuditRequest(), metadata=admin)
        assert verified.ok and verified.entries == 4 and verified.checkpoints == 2

        for call, needle in [
            (stub.AppendAudit(pb.AppendAuditRequest(action=""), metadata=admin), "action must be"),
            (stub.AppendAudit(pb.AppendAuditRequest(action="a", detail_json="x"), metadata=admin), "not JSON"),
            (stub.ListAudit(pb.ListAuditRequest(limit=5000), metadata=admin), "limit"),
            (stub.ListAudit(pb.ListAuditRequest(after_seq=-1), metadata=admin), "after_seq"),
            (stub.ListAudit(pb.ListAuditRequest(tenant_id="x y"), metadata=admin), "tenant_id"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await call
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in exc.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.VerifyAudit(pb.VerifyAuditRequest())
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Tamper with the stored log while the service is down; the next start's verify names it.
    repository = Repository(store_url)
    await repository.open()
    await repository.db.execute("UPDATE audit_log SET target = ? WHERE seq = 2", "k_0000000000000000")
    await repository.close()
    async with tenancy_client(store_url, nats_url, admin_token, audit_key=KEY) as (_, stub):
        verified = await stub.VerifyAudit(pb.VerifyAuditRequest(), metadata=admin)
        assert not verified.ok and verified.first_bad_seq == 2 and "entry 2 was changed" in verified.problem


async def test_a_change_and_its_audit_entry_commit_together(service, admin):
    """A refused change leaves no entry; a revocation made twice is recorded once."""
    _, stub = service
    name = "audit-atomic"
    tenant = (await stub.CreateTenant(pb.CreateTenantRequest(name=name), metadata=admin)).tenant
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.CreateTenant(pb.CreateTenantRequest(name=name), metadata=admin)
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
    key = (await stub.CreateApiKey(pb.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin)).key
    for _ in range(2):
        await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=key.key_id), metadata=admin)
    entries = (await stub.ListAudit(pb.ListAuditRequest(), metadata=admin)).entries
    assert [(e.action, e.target) for e in entries] == [
        ("tenant.created", name),
        ("key.created", key.key_id),
        ("key.revoked", key.key_id),
    ]
    assert (await stub.VerifyAudit(pb.VerifyAuditRequest(), metadata=admin)).ok


async def test_audit_events_over_nats_are_appended_once(store_url, nats_url, admin_token, admin):
    tenant = unique("ta").replace(".", "-")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        async with tenancy_client(store_url, nats_url, admin_token, audit_key=KEY) as (_, stub):
            good = events_pb2.AuditRecorded(
                event_id=f"{tenant}-1",
                source="router",
                action="route.decided",
                tenant_id=tenant,
                target="req-1",
                detail_json='{"model":"m","tier":2}',
            )
            bad = events_pb2.AuditRecorded(event_id=f"{tenant}-2", source="router", action="Not An Action")
            for event, msg_id in ((good, "a"), (bad, "b"), (good, "c")):  # "c": past JetStream's dedup
                await js.publish(
                    audit_subject(tenant), event.SerializeToString(), headers={"Nats-Msg-Id": msg_id + tenant}
                )
            await js.publish(audit_subject(tenant), b"\xff not a protobuf", headers={"Nats-Msg-Id": "d" + tenant})

            async def listed():
                return (await stub.ListAudit(pb.ListAuditRequest(tenant_id=tenant), metadata=admin)).entries

            async def one() -> bool:
                return len(await listed()) == 1

            await assert_eventually(one, message="the routing digest in the audit log")
            # The later messages were handled too (a marker published after them shows up).
            marker = events_pb2.AuditRecorded(
                event_id=f"{tenant}-m", source="router", action="marker", tenant_id=tenant
            )
            await js.publish(audit_subject(tenant), marker.SerializeToString(), headers={"Nats-Msg-Id": "m" + tenant})

            async def two() -> bool:
                return len(await listed()) == 2

            await assert_eventually(two, message="the marker")
            entries = await listed()
            assert [(e.action, e.actor, e.target) for e in entries] == [
                ("route.decided", "nats:router", "req-1"),
                ("marker", "nats:router", ""),
            ]
            assert entries[0].detail_json == '{"model":"m","tier":2}'
            assert (await stub.VerifyAudit(pb.VerifyAuditRequest(), metadata=admin)).ok
    finally:
        await nc.close()
