"""The fuzzing harness: which RPCs a run covers (LLMESH_FUZZ_RPCS, LLMESH_FUZZ_SHARD), how one RPC
is fuzzed (batches of generated requests sent at once on one channel, health checked every
LLMESH_FUZZ_HEALTH_EVERY requests and at the end), and the report (a JSON file of rows, one per
RPC, that runs of other shards update, rendered as the markdown table of bench/results/fuzz.md)."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime
import fcntl
import fnmatch
import importlib
import json
import os
import pathlib
import pkgutil
import string
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.proto_strategies import request_bytes

SERVICES = ("tenancy", "classifier", "cache", "inference", "router")
EXAMPLES = int(os.environ.get("LLMESH_FUZZ_EXAMPLES", "100"))
# Requests drawn per hypothesis example and sent together on the RPC's channel: the engine's
# per-example cost is paid once per batch, and the services see concurrent callers.
BATCH = int(os.environ.get("LLMESH_FUZZ_BATCH", "1"))
# Processes that generate and send an RPC's requests (its share each), against the mesh of the
# test's process: generating a request costs ~20x what the services spend on it, and with the
# generation in other processes the services no longer wait for it on one interpreter lock.
JOBS = int(os.environ.get("LLMESH_FUZZ_JOBS", "2"))
HEALTH_EVERY = int(os.environ.get("LLMESH_FUZZ_HEALTH_EVERY", "1000"))
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


def all_methods():
    """(service, method descriptor) of every gRPC service in each service's stubs package
    (router: RouterService and BatchService, ...)."""
    for service in SERVICES:
        package = importlib.import_module(f"llmesh.{service}.v1")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.endswith("_pb2"):
                continue
            module = importlib.import_module(f"llmesh.{service}.v1.{info.name}")
            for svc in module.DESCRIPTOR.services_by_name.values():
                for method in svc.methods:
                    yield service, method


def select(methods, patterns: str = "*", shard: str = "1/1"):
    """The methods whose `service.Method` matches one of the comma-separated shell patterns, then
    every n-th of them from the i-th on for shard "i/n" (shards 1..n together cover the selection)."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError:
        raise ValueError(f"LLMESH_FUZZ_SHARD must be i/n, not {shard!r}") from None
    if not 1 <= index <= count:
        raise ValueError(f"LLMESH_FUZZ_SHARD must be i/n with 1 <= i <= n, not {shard!r}")
    chosen = [(s, m) for s, m in methods if any(fnmatch.fnmatchcase(f"{s}.{m.name}", p) for p in wanted)]
    return chosen[index - 1 :: count]


def new_row() -> dict:
    return {"calls": 0, "codes": collections.Counter(), "max_s": 0.0, "seconds": 0.0, "failure": "", "detail": ""}


def metadata_strategy(credentials: dict[str, str]):
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


def call(channel: grpc.Channel, method, payloads: list[bytes], metadata) -> tuple[grpc.StatusCode, float]:
    """(status code, seconds) of one call of `method` with these serialized requests."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    callable_ = getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)
    request = iter(payloads) if method.client_streaming else payloads[0]
    started = time.monotonic()
    try:
        if method.server_streaming:
            response = callable_(request, timeout=DEADLINE_S, metadata=metadata)
            for i, _ in enumerate(response):
                if i >= 2:  # a well-formed generation is not the point: cut it short
                    response.cancel()
                    break
        else:
            callable_(request, timeout=DEADLINE_S, metadata=metadata)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    return code, time.monotonic() - started


def check_health(channel: grpc.Channel, service: str, when: str) -> None:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING, f"{service} is not serving {when}"


def describe(exc: BaseException) -> str:
    """One line for the report: the assertion that failed (hypothesis wraps a failure it could not
    reproduce, and several distinct ones, in an exception group)."""
    inner = getattr(exc, "exceptions", None)
    if inner:
        flaky = "unreliable" in str(exc)
        return ("not reproduced on replay: " if flaky else "") + "; ".join(describe(e) for e in inner)
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def check_health_of(address: str, service: str) -> None:
    with grpc.insecure_channel(address) as channel:
        check_health(channel, service, "after the fuzzing")


def fuzz(
    address: str, service: str, method, credentials, hints, row: dict, *, examples: int = EXAMPLES, shrink: bool = True
) -> None:
    """Sends `examples` generated requests (at least) to `method`, BATCH at a time, and fails on the
    first INTERNAL/UNKNOWN/DATA_LOSS/UNIMPLEMENTED, answer later than the deadline, or health check
    that is not SERVING (hypothesis then shrinks the batch, unless not `shrink`, and prints it).
    `row` gets the figures, and the failure's first line."""
    payload = request_bytes(method.input_type, hints)
    payloads = st.lists(payload, min_size=0, max_size=3) if method.client_streaming else payload.map(lambda p: [p])
    one = st.tuples(payloads, metadata_strategy(credentials))
    batch = max(1, min(BATCH, examples))
    started = time.monotonic()
    with (
        grpc.insecure_channel(address) as channel,
        concurrent.futures.ThreadPoolExecutor(batch, thread_name_prefix="fuzz") as pool,
    ):
        next_health = [HEALTH_EVERY]

        def send(item):
            requests, metadata = item
            return call(channel, method, [p for _, p in requests] or [b""], metadata)

        def some_calls(calls):
            results = list(pool.map(send, calls))
            for code, elapsed in results:
                row["calls"] += 1
                row["codes"][code.name] += 1
                row["max_s"] = max(row["max_s"], elapsed)
            for (code, elapsed), (requests, _) in zip(results, calls, strict=True):
                kinds = ",".join(kind for kind, _ in requests) or "no message"
                assert code not in CALLERS_MISTAKE_NEVER, f"{service}.{method.name} answered {code.name} ({kinds})"
                assert elapsed <= DEADLINE_S + LATE_S, f"{service}.{method.name} took {elapsed:.2f} s ({kinds})"
            if row["calls"] >= next_health[0]:
                next_health[0] = row["calls"] + HEALTH_EVERY
                check_health(channel, service, f"after {row['calls']} requests")

        try:
            while row["calls"] < examples:
                before = row["calls"]
                run = settings(
                    max_examples=-(-(examples - before) // batch),
                    database=None,
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                    print_blob=True,
                    phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
                )(given(calls=st.lists(one, min_size=batch, max_size=batch))(some_calls))
                run()
                # hypothesis ends a run early when its examples keep overrunning its buffer
                assert row["calls"] > before, f"hypothesis generated no request for {service}.{method.name}"
            check_health(channel, service, "after the fuzzing")
        except BaseException as exc:
            row["failure"], row["detail"] = describe(exc), str(exc)[:4000]
            raise
        finally:
            row["seconds"] = time.monotonic() - started


def method_named(full_name: str):
    for service, method in all_methods():
        if method.full_name == full_name:
            return service, method
    raise KeyError(full_name)


def fuzz_part(address: str, full_name: str, credentials, hints, examples: int) -> tuple[dict, str]:
    """`fuzz` in a worker process: (its row, the failure's text or "")."""
    service, method = method_named(full_name)
    row = new_row()
    try:
        fuzz(address, service, method, credentials, hints, row, examples=examples)
    except BaseException as exc:  # noqa: BLE001  (the parent fails the test with it)
        return row, f"{type(exc).__name__}: {exc}"
    return row, ""


def merge(row: dict, part: dict) -> None:
    row["calls"] += part["calls"]
    row["codes"].update(part["codes"])
    row["max_s"] = max(row["max_s"], part["max_s"])
    row["failure"] = row["failure"] or part["failure"]
    row["detail"] = row["detail"] or part.get("detail", "")


def _rows_of(stats: dict) -> dict[str, dict]:
    return {
        f"{service}.{name}": {
            "service": service,
            "rpc": name,
            "examples": EXAMPLES,
            "calls": row["calls"],
            "codes": dict(row["codes"].most_common()),
            "max_s": round(row["max_s"], 3),
            "seconds": round(row["seconds"], 1),
            "failure": row["failure"],
            "detail": row.get("detail", ""),
            "at": row.get("at") or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "load": round(row.get("load") or os.getloadavg()[0], 1),
        }
        for (service, name), row in sorted(stats.items())
    }


def write_report(path: str, stats: dict, *, fresh: bool, known: set[str]) -> None:
    """Merges this run's rows into `path` with .json (rows of RPCs this run did not cover stay,
    unless `fresh`; rows of RPCs that no longer exist go) and renders `path` from them. Shards
    running at once take turns through a lock on the JSON file."""
    report = pathlib.Path(path)
    data_path = report.with_suffix(".json")
    data_path.parent.mkdir(parents=True, exist_ok=True)
    with open(data_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        text = handle.read()
        rows = {} if fresh or not text.strip() else json.loads(text)
        rows.update(_rows_of(stats))
        rows = {key: value for key, value in sorted(rows.items()) if key in known}
        handle.seek(0)
        handle.truncate()
        json.dump(rows, handle, indent=1)
        handle.write("\n")
        report.write_text(render(rows))


def render(rows: dict[str, dict]) -> str:
    total_calls = sum(r["calls"] for r in rows.values())
    total_s = sum(r["seconds"] for r in rows.values())
    failures = [r for r in rows.values() if r["failure"]]
    examples = sorted({r["examples"] for r in rows.values()})
    loads = sorted(r["load"] for r in rows.values())
    lines = [
        "# Fuzzing every RPC",
        "",
        f"{'/'.join(str(e) for e in examples)} generated requests per RPC (hypothesis strategies from the proto "
        f"descriptors, 2 in 10 damaged on the wire), with generated metadata, against the in-process mesh, "
        f"{BATCH} at a time on one channel; deadline {DEADLINE_S:g} s per call; health checked every "
        f"{HEALTH_EVERY} requests and after each RPC. {len(rows)} RPCs, {total_calls} calls, "
        f"{total_s:.0f} s of fuzzing in all (load average {loads[0] if loads else 0:g}–{loads[-1] if loads else 0:g} "
        f"on 2 shared cores), {len(failures)} failed. Reproduce: `make fuzz` "
        "(one RPC: `LLMESH_FUZZ_RPCS=cache.Store make fuzz`; see tests/fuzz/harness.py).",
        "",
        "| service | RPC | calls | failure | time (s) | slowest call (s) | status codes | run at |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    for row in rows.values():
        codes = ", ".join(f"{c} {n}" for c, n in row["codes"].items())
        failure = row["failure"].replace("|", "\\|") or "none"
        lines.append(
            f"| {row['service']} | {row['rpc']} | {row['calls']} | {failure} | {row['seconds']:.0f} | "
            f"{row['max_s']:.3f} | {codes} | {row['at']} |"
        )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def quiet_logs(level: str = "warning"):
    """The services' logs at `level` for the block (each rejected request logs `rpc_error` at
    info: hundreds of thousands of lines in a `make fuzz`); warnings and errors, where a crash's
    traceback goes, are still written and grepped for secrets."""
    import logging

    import structlog

    previous = structlog.get_config()
    root = logging.getLogger()
    root_level = root.level
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())))
    root.setLevel(level.upper())
    try:
        yield
    finally:
        structlog.configure(**previous)
        root.setLevel(root_level)
