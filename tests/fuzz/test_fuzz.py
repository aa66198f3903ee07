"""Every RPC of every service, called with generated requests (proto_strategies.py) and
metadata: no crash (INTERNAL, UNKNOWN), no UNIMPLEMENTED, no answer later than the deadline, and
the service still SERVING afterwards.

`make test` runs 100 requests per RPC (CI 500: .ci/run); `make fuzz` runs LLMESH_FUZZ_EXAMPLES
(10,000) per RPC and writes its table to LLMESH_FUZZ_REPORT (bench/results/fuzz.md)."""

from __future__ import annotations

import asyncio
import collections
import importlib
import os
import pathlib
import pkgutil
import string
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmesh.kit import identity

from tests.fuzz.proto_strategies import request_bytes

pytestmark = pytest.mark.timeout(3600)

SERVICES = ("tenancy", "classifier", "cache", "inference", "router")
EXAMPLES = int(os.environ.get("LLMESH_FUZZ_EXAMPLES", "100"))
DEADLINE_S = 2.0
# A call may end this much after its deadline (the transport's own timers) before it counts as a hang.
LATE_S = 1.0
CALLERS_MISTAKE_NEVER = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
}
PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "


def _methods():
    """Every method of every gRPC service in each service's stubs package (router: RouterService
    and BatchService, ...)."""
    for service in SERVICES:
        package = importlib.import_module(f"llmesh.{service}.v1")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.endswith("_pb2"):
                continue
            module = importlib.import_module(f"llmesh.{service}.v1.{info.name}")
            for svc in module.DESCRIPTOR.services_by_name.values():
                for method in svc.methods:
                    yield service, method


METHODS = list(_methods())


def _metadata(credentials: dict[str, str]):
    auth = st.sampled_from([None, "key", "admin", "garbage", "empty"]).map(
        lambda kind: {
            None: None,
            "key": f"Bearer {credentials['key']}",
            "admin": f"Bearer {credentials['admin']}",
            "garbage": "Bearer lmk_not-a-key",
            "empty": "Bearer ",
        }[kind]
    )
    request_id = st.one_of(st.none(), st.text(PRINTABLE, max_size=20), st.just("r" * 5_000))
    # The caller's service credential (docs/adr/0023): mostly the operator's, so the requests
    # reach the servicers, else none or garbage, which the gate must refuse cleanly.
    service = st.sampled_from([credentials["service"]] * 3 + [None, "garbage.token", ""])
    return st.tuples(auth, request_id, service).map(
        lambda items: tuple(
            (k, v)
            for k, v in (("authorization", items[0]), ("x-request-id", items[1]), ("x-llmesh-service", items[2]))
            if v is not None
        )
    )


def _call(channel: grpc.Channel, method, payloads: list[bytes], metadata) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    callable_ = getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)
    request = iter(payloads) if method.client_streaming else payloads[0]
    try:
        if method.server_streaming:
            call = callable_(request, timeout=DEADLINE_S, metadata=metadata)
            for i, _ in enumerate(call):
                if i >= 2:  # a well-formed generation is not the point: cut it short
                    call.cancel()
                    break
        else:
            callable_(request, timeout=DEADLINE_S, metadata=metadata)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def _fuzz(address: str, service: str, method, credentials, hints, stats) -> None:
    payload = request_bytes(method.input_type, hints)
    payloads = st.lists(payload, min_size=0, max_size=3) if method.client_streaming else payload.map(lambda p: [p])

    @settings(
        max_examples=EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(requests=payloads, metadata=_metadata(credentials))
    def one_call(requests, metadata):
        started = time.monotonic()
        code = _call(channel, method, [p for _, p in requests] or [b""], metadata)
        elapsed = time.monotonic() - started
        row = stats[(service, method.name)]
        row["calls"] += 1
        row["codes"][code.name] += 1
        row["max_s"] = max(row["max_s"], elapsed)
        assert code not in CALLERS_MISTAKE_NEVER, f"{service}.{method.name} answered {code.name}"
        assert elapsed <= DEADLINE_S + LATE_S, f"{service}.{method.name} took {elapsed:.2f} s"

    with grpc.insecure_channel(address) as channel:
        one_call()
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, f"{service} is not serving after the fuzzing"


def _report(stats, seconds: float) -> str:
    lines = [
        "# Fuzzing every RPC",
        "",
        f"{EXAMPLES} generated requests per RPC (hypothesis strategies from the proto descriptors, "
        "2 in 10 damaged on the wire), with generated metadata, against the in-process mesh; "
        f"deadline {DEADLINE_S:g} s per call; {seconds:.0f} s in all. Reproduce: `make fuzz`.",
        "",
        "| service | RPC | calls | slowest (s) | status codes |",
        "|---|---|---:|---:|---|",
    ]
    for (service, name), row in sorted(stats.items()):
        codes = ", ".join(f"{c} {n}" for c, n in row["codes"].most_common())
        lines.append(f"| {service} | {name} | {row['calls']} | {row['max_s']:.3f} | {codes} |")
    return "\n".join(lines) + "\n"


async def test_every_rpc_survives_generated_requests(mesh):
    api_key, tenant_id, key_id = await mesh.new_tenant()
    hints = {
        "tenant_id": [tenant_id],
        "key_id": [key_id],
        "api_key": [api_key],
        "use_case": ["default", "support-bot"],
        "content": ["How do I reset my password?", "Prove that the square root of 2 is irrational."],
        "model": ["gemma-3-270m"],
        "name": ["fuzz-tenant"],
        "business_unit": ["qa"],
        "entry_id": ["0" * 64],
        "document_id": ["handbook"],
    }
    credentials = {
        "key": api_key,
        "admin": mesh.admin[0][1].removeprefix("Bearer "),
        "service": identity.default().credential,
    }
    stats = collections.defaultdict(lambda: {"calls": 0, "codes": collections.Counter(), "max_s": 0.0})
    started = time.monotonic()
    for service, method in METHODS:
        address = mesh.hosts[service].address
        await asyncio.to_thread(_fuzz, address, service, method, credentials, hints, stats)
    report = os.environ.get("LLMESH_FUZZ_REPORT")
    if report:
        pathlib.Path(report).write_text(_report(stats, time.monotonic() - started))
    assert {(s, m.name) for s, m in METHODS} == set(stats)


async def test_the_fuzzer_catches_a_service_that_crashes_on_an_empty_field():
    """The harness itself: a classifier that raises on an empty request_id must fail it."""
    from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
    from llmesh.kit.interceptors import ServerInterceptor

    class Broken(classifier_pb2_grpc.ClassifierServiceServicer):
        async def Classify(self, request, context):
            if not request.request_id:
                raise RuntimeError("broken on purpose")
            return classifier_pb2.ClassifyResponse()

    server = grpc.aio.server(interceptors=[ServerInterceptor("broken")])
    classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(Broken(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        method = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].methods_by_name["Classify"]
        stats = collections.defaultdict(lambda: {"calls": 0, "codes": collections.Counter(), "max_s": 0.0})
        with pytest.raises(AssertionError, match="answered INTERNAL"):
            await asyncio.to_thread(
                _fuzz, f"127.0.0.1:{port}", "classifier", method, {"key": "k", "admin": "a", "service": "s"}, {}, stats
            )
    finally:
        await server.stop(None)
