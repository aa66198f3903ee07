"""The usage ledger on both stores: written once per request id (alone or in batches), grouped
reports, forecast, and the service consuming LLMESH_USAGE across a restart without losing or
doubling an entry."""

from __future__ import annotations

import asyncio
import os
import sys

import grpc
import nats
import pytest
from google.protobuf import timestamp_pb2
from llmesh.common.v1 import common_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.bus import TYPE_HEADER
from llmesh.kit.errors import InvalidArgument
from llmesh.kit.streams import USAGE, usage_subject
from llmesh.kit.testing import assert_eventually, ensure_identity, identity_env, unique
from llmesh.kit.usage import BATCH_TYPE, pack_usage
from llmesh.services.tenancy.ledger import DAY_US, Ledger, UsageEntry, forecast, month_start_us
from llmesh.services.tenancy.repository import Repository, now_us
from llmesh.tenancy.v1 import tenancy_pb2 as pb

from services.tenancy.tests.conftest import tenancy_client

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def ledger(store_url):
    repository = Repository(store_url)
    await repository.open()
    yield Ledger(repository)
    await repository.close()


def _entry(request_id: str, tenant: str, *, bu="bu-a", use_case="chat", model="m1", cost=1.0, at_us=None, **kw):
    fields = dict(
        request_id=request_id,
        tenant_id=tenant,
        business_unit=bu,
        use_case=use_case,
        key_id="k_1",
        model=model,
        tier="1",
        backend="triton",
        region="local",
        cache_outcome="miss",
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=cost,
        cost_avoided_usd=0.0,
        occurred_at_us=at_us or now_us(),
    )
    fields.update(kw)
    return UsageEntry(**fields)


async def test_an_entry_is_written_once_per_request_id(ledger):
    tenant = unique("t")
    assert await ledger.record(_entry("r1", tenant))
    assert not await ledger.record(_entry("r1", tenant, cost=99.0)), "a redelivery is skipped"
    report = await ledger.report([], since_us=None, until_us=None, tenant_id=tenant)
    assert report.totals.requests == 1 and report.totals.cost_usd == 1.0


async def test_report_groups_totals_and_top_use_cases(ledger):
    tenant = unique("t")
    now = now_us()
    entries = [
        _entry("a", tenant, bu="bu-a", use_case="chat", model="m1", cost=1.0, at_us=now - 10),
        _entry("b", tenant, bu="bu-a", use_case="chat", model="m2", cost=2.0, at_us=now - 10),
        _entry("c", tenant, bu="bu-b", use_case="search", model="m1", cost=4.0, at_us=now - 10),
        _entry("d", tenant, bu="bu-b", use_case="code", model="m1", cost=0.5, at_us=now - 10, cost_avoided_usd=3.0),
        _entry("old", tenant, bu="bu-b", use_case="code", cost=100.0, at_us=now - 40 * DAY_US),
    ]
    for e in entries:
        await ledger.record(e)
    report = await ledger.report(
        ["business_unit,use_case", "model"], since_us=now - DAY_US, until_us=now, tenant_id=tenant, top=2
    )
    got = {
        (r.group["business_unit"], r.group["use_case"], r.group["model"]): (r.requests, r.cost_usd) for r in report.rows
    }
    assert got == {
        ("bu-a", "chat", "m1"): (1, 1.0),
        ("bu-a", "chat", "m2"): (1, 2.0),
        ("bu-b", "search", "m1"): (1, 4.0),
        ("bu-b", "code", "m1"): (1, 0.5),
    }
    assert report.totals.requests == 4 and report.totals.cost_usd == 7.5
    assert report.totals.cost_avoided_usd == 3.0 and report.totals.prompt_tokens == 40
    assert [(r.group["use_case"], r.cost_usd) for r in report.top_use_cases] == [("search", 4.0), ("chat", 3.0)]
    everything = await ledger.report(["api_key"], since_us=None, until_us=None, tenant_id=tenant)
    assert everything.totals.requests == 5 and everything.rows[0].group == {"api_key": "k_1"}


async def test_an_unreadable_usage_message_is_dropped_and_a_good_one_written(ledger):
    tenant = unique("t")
    await ledger.record_message(b"\xff\xfe not a protobuf")
    await ledger.record_message(events_pb2.UsageRecorded(tenant_id=tenant).SerializeToString())  # no request id
    await ledger.record_message(_usage_event("good", tenant, "chat").SerializeToString())
    report = await ledger.report(["tier"], since_us=None, until_us=None, tenant_id=tenant)
    assert report.totals.requests == 1 and report.rows[0].group == {"tier": "2"}


def _batch(*records: events_pb2.UsageRecorded) -> tuple[bytes, dict[str, str]]:
    """A router's batch as it arrives: data and headers."""
    return pack_usage(records).SerializeToString(), {TYPE_HEADER: BATCH_TYPE}


async def test_a_batch_is_written_once_per_request_id_also_when_redelivered_or_overlapping(ledger):
    tenant = unique("t")
    await ledger.record_message(_usage_event("single", tenant, "chat").SerializeToString())  # an older router
    data, headers = _batch(
        _usage_event("single", tenant, "chat"),  # also sent alone before (another router's retry)
        _usage_event("b1", tenant, "chat"),
        _usage_event("b2", tenant, "search"),
        events_pb2.UsageRecorded(tenant_id=tenant),  # no request id: dropped alone
        _usage_event("b1", tenant, "chat"),  # twice in the batch
    )
    await ledger.record_message(data, headers)
    await ledger.record_message(data, headers)  # redelivered
    await ledger.record_message(_usage_event("b2", tenant, "search").SerializeToString())  # a single after it
    report = await ledger.report(["use_case"], since_us=None, until_us=None, tenant_id=tenant)
    assert report.totals.requests == 3 and report.totals.cost_usd == pytest.approx(0.75)
    assert {r.group["use_case"]: r.requests for r in report.rows} == {"chat": 2, "search": 1}


async def test_a_batch_longer_than_one_statement_is_written_whole(ledger):
    tenant = unique("t")
    entries = [_entry(f"r{i}", tenant, cost=0.5) for i in range(600)]
    assert await ledger.record_many(entries[:10]) == {f"r{i}" for i in range(10)}
    assert await ledger.record_many(entries) == {f"r{i}" for i in range(10, 600)}, "the ten written before are skipped"
    report = await ledger.report([], since_us=None, until_us=None, tenant_id=tenant)
    assert report.totals.requests == 600 and report.totals.cost_usd == pytest.approx(300.0)


async def test_bad_report_arguments_are_refused(ledger):
    with pytest.raises(InvalidArgument, match="cannot group by 'prompt'"):
        await ledger.report(["prompt"], since_us=None, until_us=None, tenant_id=None)
    with pytest.raises(InvalidArgument, match="since must be before until"):
        await ledger.report([], since_us=10, until_us=10, tenant_id=None)
    with pytest.raises(InvalidArgument, match="top_use_cases"):
        await ledger.report([], since_us=None, until_us=None, tenant_id=None, top=-1)


def test_forecast_extends_the_recent_daily_spend_to_the_month_end():
    start, end = month_start_us(1_764_547_200_000_000)  # 2025-12-01T00:00Z
    assert (end - start) == 31 * DAY_US
    now = start + 10 * DAY_US
    # 100 USD so far, 70 of them in the last 7 days: 10 USD a day for 21 more days.
    f = forecast(start, end, now, 100.0, 70.0)
    assert f.daily_rate_usd == pytest.approx(10.0) and f.month_end_usd == pytest.approx(310.0)
    early = forecast(start, end, start + 2 * DAY_US, 20.0, 20.0)
    assert early.daily_rate_usd == pytest.approx(10.0) and early.month_end_usd == pytest.approx(310.0)


def _usage_event(request_id: str, tenant: str, use_case: str) -> events_pb2.UsageRecorded:
    at = timestamp_pb2.Timestamp()
    at.FromMicroseconds(now_us())
    return events_pb2.UsageRecorded(
        request_id=request_id,
        tenant_id=tenant,
        business_unit="bu",
        use_case=use_case,
        key_id="k_x",
        model="m",
        tier=common_pb2.TIER_2,
        backend="api",
        region="local",
        cache_outcome="miss",
        usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=2),
        cost_usd=0.25,
        occurred_at=at,
    )


async def test_a_restart_mid_load_loses_and_doubles_no_entry(store_url, nats_url, admin_token, admin):
    tenant = unique("tl").replace(".", "-")
    total = 60
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    published = 0

    async def publish(upto: int) -> None:
        nonlocal published
        while published < upto:
            event = _usage_event(f"{tenant}-r{published}", tenant, "chat" if published % 2 else "search")
            await js.publish(
                usage_subject(tenant), event.SerializeToString(), headers={"Nats-Msg-Id": event.request_id}
            )
            published += 1

    async def counted(stub) -> int:
        report = await stub.UsageReport(pb.UsageReportRequest(tenant_id=tenant), metadata=admin)
        return report.totals.requests

    try:
        async with tenancy_client(store_url, nats_url, admin_token) as (_, stub):
            await publish(20)
            await assert_eventually(lambda: _ge(counted(stub), 1), message="first entries written")
            # Publishing goes on while the service stops and while it is down.
            load = asyncio.create_task(publish(45))
        await load
        # A republish with a new Nats-Msg-Id (outside JetStream's dedup) hits the ledger's key.
        again = _usage_event(f"{tenant}-r3", tenant, "chat")
        await js.publish(usage_subject(tenant), again.SerializeToString(), headers={"Nats-Msg-Id": "other"})
        async with tenancy_client(store_url, nats_url, admin_token) as (_, stub):
            await publish(total)

            async def all_there() -> bool:
                return await counted(stub) == total

            await assert_eventually(all_there, timeout_s=30, message=f"{total} ledger rows")
            await asyncio.sleep(0)
            report = await stub.UsageReport(
                pb.UsageReportRequest(tenant_id=tenant, group_by=["use_case", "tier"]), metadata=admin
            )
            assert {(r.group["use_case"], r.group["tier"], r.requests) for r in report.rows} == {
                ("chat", "2", 30),
                ("search", "2", 30),
            }
            assert report.totals.cost_usd == pytest.approx(0.25 * total)
            assert report.forecast.month_to_date_usd >= report.totals.cost_usd - 1e-9
            assert [r.group["use_case"] for r in report.top_use_cases] == ["chat", "search"]
    finally:
        await nc.close()
    assert USAGE.name == "LLMESH_USAGE"


async def test_two_replicas_share_the_consumer_and_write_each_entry_once(store_url, nats_url, admin_token, admin):
    tenant = unique("tr").replace(".", "-")
    total = 40
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        async with (
            tenancy_client(store_url, nats_url, admin_token) as (_, first),
            tenancy_client(store_url, nats_url, admin_token) as (_, second),
        ):
            for i in range(total):
                event = _usage_event(f"{tenant}-{i}", tenant, "chat")
                await js.publish(
                    usage_subject(tenant), event.SerializeToString(), headers={"Nats-Msg-Id": event.request_id}
                )

            async def all_there() -> bool:
                report = await second.UsageReport(pb.UsageReportRequest(tenant_id=tenant), metadata=admin)
                return report.totals.requests == total

            await assert_eventually(all_there, timeout_s=30, message=f"{total} ledger rows")
            report = await first.UsageReport(pb.UsageReportRequest(tenant_id=tenant), metadata=admin)
            assert report.totals.requests == total and report.totals.cost_usd == pytest.approx(0.25 * total)
    finally:
        await nc.close()


async def test_the_service_writes_batches_and_single_records_from_the_stream(store_url, nats_url, admin_token, admin):
    """Routers with batching and without (a rolling upgrade) feed the same ledger."""
    tenant = unique("tb").replace(".", "-")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        async with tenancy_client(store_url, nats_url, admin_token) as (_, stub):
            for n in range(3):
                data, headers = _batch(*(_usage_event(f"{tenant}-b{n}-{i}", tenant, "chat") for i in range(10)))
                await js.publish(usage_subject(tenant), data, headers={**headers, "Nats-Msg-Id": f"{tenant}-b{n}"})
            for i in range(5):
                event = _usage_event(f"{tenant}-s{i}", tenant, "search")
                await js.publish(
                    usage_subject(tenant), event.SerializeToString(), headers={"Nats-Msg-Id": event.request_id}
                )

            async def all_there() -> bool:
                report = await stub.UsageReport(
                    pb.UsageReportRequest(tenant_id=tenant, group_by=["use_case"]), metadata=admin
                )
                return {r.group["use_case"]: r.requests for r in report.rows} == {"chat": 30, "search": 5}

            await assert_eventually(all_there, timeout_s=30, message="30 batched and 5 single ledger rows")
    finally:
        await nc.close()


async def _ge(value, minimum: int) -> bool:
    return (await value) >= minimum


async def test_usage_report_rpc_refuses_bad_input(service, admin):
    _, stub = service
    cases = [
        (pb.UsageReportRequest(group_by=["nope"]), "cannot group by 'nope'"),
        (pb.UsageReportRequest(tenant_id="a.b"), "tenant_id is not a valid tenant id"),
        (
            pb.UsageReportRequest(since=timestamp_pb2.Timestamp(seconds=20), until=timestamp_pb2.Timestamp(seconds=10)),
            "since must be before until",
        ),
        (pb.UsageReportRequest(top_use_cases=1000), "top_use_cases"),
        (
            pb.UsageReportRequest(since=timestamp_pb2.Timestamp(seconds=-(2**62))),
            "since is outside the Timestamp range",
        ),
    ]
    for request, needle in cases:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.UsageReport(request, metadata=admin)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
        assert needle in exc.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.UsageReport(pb.UsageReportRequest())
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_killed_tenancy_process_loses_no_entry(store_url, nats_url, admin_token, tmp_path):
    """SIGKILL mid-load (no graceful stop, unacked messages in flight): the next process gets the
    unacked ones again (after the consumer's 30 s ack wait: slow, so `make bench` runs it) and the
    ledger ends with exactly one row per request."""
    tenant = unique("tk").replace(".", "-")
    total = 80
    env = {
        **os.environ,
        **identity_env(ensure_identity(), "tenancy"),
        "LLMESH_HOME": str(tmp_path / "home"),
        "LLMESH_PORT": "0",
        "LLMESH_METRICS_PORT": "0",
        "LLMESH_NATS_URL": nats_url,
        "LLMESH_TENANCY_DATABASE_URL": str(store_url),
        "LLMESH_ADMIN_TOKEN": admin_token,
        "LLMESH_LOG_LEVEL": "warning",
    }

    async def start(n: int) -> asyncio.subprocess.Process:
        ready = tmp_path / f"ready-{n}.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmesh.services.tenancy", env={**env, "LLMESH_READY_FILE": str(ready)}
        )
        await assert_eventually(ready.exists, timeout_s=30, message="tenancy process ready")
        return proc

    repository = Repository(store_url)
    nc = await nats.connect(nats_url)
    proc = None
    try:
        js = nc.jetstream()

        async def publish(start_at: int, end: int) -> None:
            for i in range(start_at, end):
                event = _usage_event(f"{tenant}-{i}", tenant, "chat")
                await js.publish(
                    usage_subject(tenant), event.SerializeToString(), headers={"Nats-Msg-Id": event.request_id}
                )

        proc = await start(1)
        await publish(0, 50)
        proc.kill()
        await proc.wait()
        await publish(50, total)
        proc = await start(2)
        await repository.open()

        async def all_there() -> bool:
            report = await repository.usage_totals([], None, None, tenant)
            return report[0][1][0] == total

        await assert_eventually(all_there, timeout_s=90, message=f"{total} ledger rows")
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await nc.close()
        await repository.close()
