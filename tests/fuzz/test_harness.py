"""The harness itself: a service that breaks one of the properties fails it and the report says
so; the RPC selection and the report's merge of shards."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.kit.interceptors import ServerInterceptor

from tests.fuzz import harness

pytestmark = pytest.mark.timeout(120)

CLASSIFY = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].methods_by_name["Classify"]
CREDENTIALS = {"key": "k", "admin": "a", "service": "s"}


class BrokenOnEmptyField(classifier_pb2_grpc.ClassifierServiceServicer):
    """A classifier with the bug the issue names: INTERNAL for a request with an empty field."""

    async def Classify(self, request, context):
        if not request.request_id:
            await context.abort(grpc.StatusCode.INTERNAL, "broken on purpose")
        return classifier_pb2.ClassifyResponse()


class CrashesOnEmptyField(classifier_pb2_grpc.ClassifierServiceServicer):
    """One that raises instead (the interceptor turns it into INTERNAL)."""

    async def Classify(self, request, context):
        if not request.request_id:
            raise RuntimeError("broken on purpose")
        return classifier_pb2.ClassifyResponse()


class Fine(classifier_pb2_grpc.ClassifierServiceServicer):
    async def Classify(self, request, context):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")


async def _serve(servicer, serving=True):
    server = grpc.aio.server(interceptors=[ServerInterceptor("broken")])
    classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(servicer, server)
    checker = health.aio.HealthServicer()
    await checker.set(
        "", health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("servicer", [BrokenOnEmptyField, CrashesOnEmptyField])
async def test_a_service_answering_internal_on_an_empty_field_fails_it_and_the_report_says_so(servicer, tmp_path):
    server, address = await _serve(servicer())
    try:
        row = harness.new_row()
        with pytest.raises(AssertionError, match="classifier.Classify answered INTERNAL"):
            await asyncio.to_thread(
                harness.fuzz, address, "classifier", CLASSIFY, CREDENTIALS, {}, row, examples=200, shrink=False
            )
    finally:
        await server.stop(None)
    assert "answered INTERNAL" in row["failure"]
    assert row["codes"]["INTERNAL"] >= 1
    report = tmp_path / "fuzz.md"
    harness.write_report(str(report), {("classifier", "Classify"): row}, fresh=True, known={"classifier.Classify"})
    assert "| classifier | Classify |" in report.read_text()
    assert "answered INTERNAL" in report.read_text()


async def test_a_service_that_stops_serving_fails_it():
    server, address = await _serve(Fine(), serving=False)
    try:
        row = harness.new_row()
        with pytest.raises(AssertionError, match="classifier is not serving after the fuzzing"):
            await asyncio.to_thread(
                harness.fuzz, address, "classifier", CLASSIFY, CREDENTIALS, {}, row, examples=20, shrink=False
            )
    finally:
        await server.stop(None)
    assert row["calls"] >= 20
    # only the health check failed it
    assert not {code.name for code in harness.CALLERS_MISTAKE_NEVER} & set(row["codes"]), row["codes"]


async def test_a_sound_service_passes_with_every_request_sent():
    server, address = await _serve(Fine())
    try:
        row = harness.new_row()
        await asyncio.to_thread(harness.fuzz, address, "classifier", CLASSIFY, CREDENTIALS, {}, row, examples=50)
    finally:
        await server.stop(None)
    assert row["calls"] >= 50
    assert row["failure"] == ""


def test_selection_by_pattern_and_shard():
    methods = list(harness.all_methods())
    names = [f"{s}.{m.name}" for s, m in methods]
    assert "cache.Store" in names and "router.SubmitBatch" in names
    assert [f"{s}.{m.name}" for s, m in harness.select(methods, "cache.Store")] == ["cache.Store"]
    cache = {f"{s}.{m.name}" for s, m in harness.select(methods, "cache.*")}
    assert cache and all(name.startswith("cache.") for name in cache)
    shards = [{f"{s}.{m.name}" for s, m in harness.select(methods, "*", f"{i}/3")} for i in (1, 2, 3)]
    assert set().union(*shards) == set(names)
    assert sum(len(s) for s in shards) == len(names)
    assert harness.select(methods, "nothing.*") == []
    with pytest.raises(ValueError, match="i/n"):
        harness.select(methods, "*", "4/3")


def test_shards_merge_into_one_report(tmp_path):
    report = tmp_path / "fuzz.md"
    known = {"cache.Store", "cache.Lookup", "tenancy.GetTenant"}
    first, second = harness.new_row(), harness.new_row()
    first["calls"], second["calls"] = 11, 22
    first["codes"]["INVALID_ARGUMENT"] = 11
    second["codes"]["OK"] = 22
    harness.write_report(str(report), {("cache", "Store"): first}, fresh=False, known=known)
    harness.write_report(str(report), {("cache", "Lookup"): second}, fresh=False, known=known)
    rows = json.loads(report.with_suffix(".json").read_text())
    assert set(rows) == {"cache.Store", "cache.Lookup"}
    text = report.read_text()
    assert "| cache | Store | 11 | none |" in text and "| cache | Lookup | 22 | none |" in text
    # a run of everything starts over; rows of RPCs that no longer exist go
    harness.write_report(str(report), {("cache", "Lookup"): second}, fresh=True, known=known)
    assert set(json.loads(report.with_suffix(".json").read_text())) == {"cache.Lookup"}
    harness.write_report(str(report), {("gone", "Rpc"): first}, fresh=False, known=known)
    assert set(json.loads(report.with_suffix(".json").read_text())) == {"cache.Lookup"}
