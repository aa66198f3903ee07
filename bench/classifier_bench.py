"""Classifier benchmark: Classify latency in-process and over gRPC on 2 KB prompts, PII detection
latency, and the detectors' precision and recall on the labelled snippet set.

    .venv/bin/python bench/classifier_bench.py [--calls 2000] [--out bench/results/classifier.md]
                                               [--pii-report docs/reports/classifier_pii.md]

Hosts the classifier in this process on a free port with a private nats-server and a fresh
feedback store; client and server share this process and its event loop, so the gRPC figures
include both sides; three classifiers are hosted at once (plain calls, calls with request ids that
are recorded for feedback, and calls during a rollout with two versions) and called in turn, so
the machine's other load falls on all three alike. Prompts are 2 KB: MMLU prompts from ../shared/data joined up to 2,048
characters when that folder is there, else generated text. One thread for numpy/BLAS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc  # noqa: E402
from llmesh.common.v1 import common_pb2  # noqa: E402
from llmesh.kit.chat import Message  # noqa: E402
from llmesh.kit.client import open_channel  # noqa: E402
from llmesh.kit.config import load_settings  # noqa: E402
from llmesh.kit.nats_server import NatsServerProcess  # noqa: E402
from llmesh.kit.testing import hosted  # noqa: E402
from llmesh.services.classifier.app import ClassifierApp  # noqa: E402
from llmesh.services.classifier.policy import ClassifierPolicy  # noqa: E402
from llmesh.services.classifier.sensitivity.evaluation import evaluate, load_snippets  # noqa: E402
from llmesh.services.classifier.sensitivity.scanner import SensitivityScanner  # noqa: E402
from llmesh.services.classifier.settings import ClassifierSettings  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEV_DATA = ROOT.parent / "shared" / "data" / "routing" / "mmlu_dev.csv"
SNIPPETS = ROOT / "services" / "classifier" / "tests" / "data" / "pii_snippets.jsonl"
PROMPT_CHARS = 2048


def prompts_2kb(count: int) -> list[str]:
    if DEV_DATA.is_file():
        import csv

        with open(DEV_DATA, newline="") as f:
            texts = [row["prompt"] for row in csv.DictReader(f)]
    else:
        rng = np.random.default_rng(0)
        words = "the of a to in is for how many what which when each total price time rate 12 7 3.5".split()
        texts = [" ".join(rng.choice(words, 80)) + "?" for _ in range(200)]
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        parts, size = [], 0
        while size < PROMPT_CHARS:
            t = texts[int(rng.integers(len(texts)))]
            parts.append(t)
            size += len(t) + 2
        out.append("\n\n".join(parts)[:PROMPT_CHARS])
    return out


def with_pii(text: str) -> str:
    return (
        "Customer jane.doe@acme.com (+1 415-555-0132) paid with 4111 1111 1111 1111; "
        "IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789. "
    ) + text[: PROMPT_CHARS - 140]


def timed(fn, items, warmup: int = 50) -> np.ndarray:
    for item in items[:warmup]:
        fn(item)
    out = np.empty(len(items))
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        fn(item)
        out[i] = time.perf_counter() - t0
    return out


def row(name: str, seconds: np.ndarray) -> str:
    ms = seconds * 1e3
    return (
        f"| {name} | {len(ms)} | {np.median(ms):.3f} | {np.percentile(ms, 90):.3f} | "
        f"{np.percentile(ms, 99):.3f} | {ms.max():.3f} |"
    )


async def grpc_latencies(setups: list[tuple[ClassifierApp, ClassifierSettings, bool, dict | None]], prompts: list[str]):
    """Classify over gRPC on each (app, settings, request_ids, rollout) at once, the calls
    interleaved (one call to each in turn, the order rotating) so that the machine's other load
    falls on all alike. With request ids each call is recorded for feedback; with a rollout (a
    classifier.rollout value, written to the policy first) two versions score each request."""
    from llmesh.kit.bus import Bus
    from llmesh.kit.policy import PolicyStore

    async with contextlib.AsyncExitStack() as stack:
        stubs, requests = [], []
        for app, settings, request_ids, rollout in setups:
            if rollout is not None:
                bus = await Bus.connect(settings.nats_url, "bench")
                store = PolicyStore(bus, bucket=settings.policy_bucket)
                await store.start()
                await store.put("global", {"classifier": {"rollout": rollout}})
                await store.stop()
                await bus.close()
            host = await stack.enter_async_context(hosted(app, settings, serve_metrics=False))
            channel = await stack.enter_async_context(open_channel(host.address))
            if rollout is not None:
                while app.models.serving().candidate is None:
                    await asyncio.sleep(0.05)
            stubs.append(classifier_pb2_grpc.ClassifierServiceStub(channel))
            requests.append(
                [
                    classifier_pb2.ClassifyRequest(
                        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=p)],
                        tenant_id="bench",
                        request_id=f"bench-{i}-{time.time_ns()}" if request_ids else "",
                    )
                    for i, p in enumerate(prompts)
                ]
            )
        for stub, reqs in zip(stubs, requests):
            for r in reqs[:100]:
                await stub.Classify(r)
        out = [np.empty(len(prompts)) for _ in setups]
        order = list(range(len(setups)))
        for i in range(len(prompts)):
            for k in order:
                t0 = time.perf_counter()
                await stubs[k].Classify(requests[k][i])
                out[k][i] = time.perf_counter() - t0
            order = order[1:] + order[:1]
        return out


def pii_table(report) -> list[str]:
    lines = [
        "| kind | true pos. | false pos. | false neg. | precision | recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, s in report.by_kind.items():
        lines.append(
            f"| {kind.value} | {s.true_positives} | {s.false_positives} | {s.false_negatives} | "
            f"{s.precision:.3f} | {s.recall:.3f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "classifier.md"))
    parser.add_argument("--pii-report", default=str(ROOT / "docs" / "reports" / "classifier_pii.md"))
    args = parser.parse_args()

    prompts = prompts_2kb(args.calls)
    pii_prompts = [with_pii(p) for p in prompts]
    with tempfile.TemporaryDirectory() as tmp:
        nats = NatsServerProcess(tmp).start()
        try:

            def make_app(name: str, **overrides) -> tuple[ClassifierApp, ClassifierSettings]:
                settings = load_settings(
                    ClassifierSettings,
                    environ={},
                    port=0,
                    metrics_port=0,
                    nats_url=nats.url,
                    feedback_db=os.path.join(tmp, f"{name}.sqlite3"),
                    policy_bucket=f"bench-{name}",
                    # each hosted classifier is a replica of its own: one durable outcome consumer each
                    replica_id=f"bench-{name}",
                    log_level="warning",
                    **overrides,
                )
                return ClassifierApp(settings), settings

            plain, plain_settings = make_app("plain")
            plain.registry.load_or_fail()
            model = plain.registry.model
            # A rollout: the packaged version and a copy of it as the candidate, half the traffic each.
            models = pathlib.Path(tmp) / "models"
            shutil.copytree(model.path, models / model.path.name)
            candidate = "29990101T000000Z-bench"
            shutil.copytree(model.path, models / candidate)
            meta = json.loads((models / candidate / "metadata.json").read_text())
            (models / candidate / "metadata.json").write_text(json.dumps(dict(meta, version=candidate)))
            plan = {"current": model.version, "candidate": candidate, "share": 0.5}
            via_grpc, with_ids, in_rollout = asyncio.run(
                grpc_latencies(
                    [
                        (plain, plain_settings, False, None),
                        (*make_app("ids"), True, None),
                        (*make_app("rollout", model_dir=str(models)), True, plan),
                    ],
                    prompts,
                )
            )
        finally:
            nats.stop()

    from llmesh.services.classifier.classify import Classifier
    from llmesh.services.classifier.complexity.registry import ModelRegistry
    from llmesh.services.classifier.rollout import ModelSelector, RolloutPlan

    registry = ModelRegistry(model.path.parent)
    registry.refresh()
    classifier = Classifier(ModelSelector(registry, RolloutPlan), SensitivityScanner())
    policy = ClassifierPolicy()
    in_process = timed(lambda p: classifier.classify([Message("user", p)], policy), prompts)
    model_only = timed(model.predict, prompts)
    scanner = SensitivityScanner()
    scan_clean = timed(lambda p: scanner.scan([p]), prompts)
    scan_pii = timed(lambda p: scanner.scan([p]), pii_prompts)
    detection = evaluate(load_snippets(SNIPPETS), scanner)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = ["| what | calls | p50 ms | p90 ms | p99 ms | max ms |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines = [
        "# Classifier benchmark",
        "",
        f"{when}; {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, one BLAS thread; "
        f"model `{model.version}`. Prompts: {PROMPT_CHARS} characters "
        f"({'MMLU dev prompts joined' if DEV_DATA.is_file() else 'generated text'}). "
        "Other processes may share the machine: compare runs on the same machine only.",
        "",
        "    .venv/bin/python bench/classifier_bench.py",
        "",
        "## Classify",
        "",
        *header,
        row("Classify over gRPC (client and server in one process)", via_grpc),
        row("same, with request ids (each call recorded for feedback)", with_ids),
        row("same, during a rollout (two versions score each request, both recorded)", in_rollout),
        row("Classify in-process (score + tier + scan + metrics)", in_process),
        row("complexity model alone (features + score)", model_only),
        "",
        "## PII detection (2 KB prompt)",
        "",
        *header,
        row("scan, no PII in the text", scan_clean),
        row("scan, five findings in the text", scan_pii),
        "",
        "Targets: Classify p50 ≤ 5 ms, PII detection p50 ≤ 1 ms for a 2 KB prompt.",
        "",
        f"## Detector precision and recall ({detection.snippets} labelled snippets, `services/classifier/tests/data/pii_snippets.jsonl`)",
        "",
        *pii_table(detection),
        "",
    ]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))

    pii_lines = [
        "# Classifier: PII detection report",
        "",
        f"{detection.snippets} labelled snippets in `services/classifier/tests/data/pii_snippets.jsonl`: true cases of each "
        "kind in varied wording and formats, and look-alikes that must not be reported (order and tracking "
        "numbers that pass the Luhn check, dates, versions, ISBNs, invalid check digits, placeholder secrets, "
        "public keys, never-issued SSNs, a tenant term inside a longer word). Tenant terms assumed: "
        '"Project Falcon", "Globex Corporation". A finding counts when it overlaps an expected span of the '
        "same kind.",
        "",
        *pii_table(detection),
        "",
        "Misses and false findings:",
        "",
        *([f"- {e}" for e in detection.errors] or ["- none"]),
        "",
        "The set was written together with the detectors, so these figures are an upper bound on what unseen "
        "text will show; its value is as a regression check and a list of the cases handled. Latency: "
        f"scan of a 2 KB prompt p50 {np.median(scan_clean) * 1e3:.3f} ms without PII, "
        f"{np.median(scan_pii) * 1e3:.3f} ms with five findings (`bench/results/classifier.md`).",
        "",
        "Reproduce: `.venv/bin/python bench/classifier_bench.py`.",
        "",
    ]
    pii_out = pathlib.Path(args.pii_report)
    pii_out.parent.mkdir(parents=True, exist_ok=True)
    pii_out.write_text("\n".join(pii_lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
