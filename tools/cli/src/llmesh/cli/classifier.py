"""`llmesh classifier ...`: train the complexity model (writes a model version and the report),
and classify a prompt through the running classifier service."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import time

import grpc
from llmesh.kit.logging import get_logger
from llmesh.launcher.state import endpoint, home

_REPO = pathlib.Path(__file__).resolve().parents[5]
# The training data is not in the repository: the MMLU dev answers are public data kept beside
# the checkout (../shared/data/routing/), or wherever LLMESH_CLASSIFIER_TRAIN_DATA or --data says.
TRAIN_DATA_ENV = "LLMESH_CLASSIFIER_TRAIN_DATA"
TRAIN_COLUMNS = "source,subject,prompt,weak_correct,strong_correct"
DEFAULT_DATA = _REPO.parent / "shared" / "data" / "routing" / "mmlu_dev.csv"
DEFAULT_REPORT_DIR = _REPO / "docs" / "reports"
DATA_HELP = (
    f"CSV of recorded answers with the header {TRAIN_COLUMNS}: one row per prompt, weak_correct and "
    "strong_correct 1 when the weak (tier 1) or the strong model answered it right, else 0 (source is "
    f"not used). Default: ${TRAIN_DATA_ENV}, else ../shared/data/routing/mmlu_dev.csv beside the checkout"
)


def train_data_path(explicit: str | None) -> tuple[pathlib.Path, str]:
    """The training CSV and where its name came from (for the error message)."""
    if explicit:
        return pathlib.Path(explicit), "--data"
    if os.environ.get(TRAIN_DATA_ENV):
        return pathlib.Path(os.environ[TRAIN_DATA_ENV]), TRAIN_DATA_ENV
    return DEFAULT_DATA, "the default beside the checkout"


def register(subparsers) -> None:
    classifier = subparsers.add_parser("classifier", help="train the complexity model; classify a prompt")
    commands = classifier.add_subparsers(dest="classifier_command", required=True)

    train = commands.add_parser(
        "train",
        help="cross-validate and train the complexity model; writes a model version (picked up by running services) and the report",
    )
    train.add_argument("--data", default=None, metavar="CSV", help=DATA_HELP)
    train.add_argument("--out", default="", help="models folder to write the version to (default: the packaged models)")
    train.add_argument(
        "--report-dir",
        default=str(DEFAULT_REPORT_DIR) if (_REPO / "docs").is_dir() else "",
        help="where classifier.md and its PNG go (empty: no report)",
    )
    train.add_argument(
        "--with-feedback",
        action="store_true",
        help="fold in rated requests and the router's routing outcomes (escalations, quality-check passes) "
        "from the feedback store",
    )
    train.add_argument(
        "--outcome-weight",
        type=float,
        default=None,
        metavar="W",
        help="training weight of one routing-outcome label against one dev-data row (default 0.5; "
        "times 1 / the label's sample rate)",
    )
    train.add_argument(
        "--feedback-db",
        default="",
        help="feedback SQLite file (default: LLMESH_CLASSIFIER_FEEDBACK_DB, else $LLMESH_HOME/classifier/feedback.sqlite3)",
    )
    train.add_argument("--no-cv", action="store_true", help="skip cross-validation and the report (quick refit)")
    train.set_defaults(func=_train)

    rollout = commands.add_parser(
        "rollout",
        help="the gradual rollout of a model version: status, start, promote, rollback",
        description="The rollout is the classifier.rollout object of the global policy document "
        "(services/classifier/README.md); these commands read and write it.",
    )
    steps = rollout.add_subparsers(dest="rollout_command", required=True)
    for name, text in (
        ("status", "the rollout in force, the versions on disk, and both versions' APGR on the rated requests"),
        ("promote", "the candidate serves everything from now on"),
        ("rollback", "the candidate serves nothing from now on (the current version everything)"),
        ("start", "a version serves a share of the requests beside the current one"),
    ):
        step = steps.add_parser(name, help=text)
        if name == "start":
            step.add_argument("version", help="the candidate version (a folder of the models folder)")
            step.add_argument("--share", type=float, default=0.1, help="share of requests it serves (default 0.1)")
        step.add_argument(
            "--models",
            default=os.environ.get("LLMESH_CLASSIFIER_MODEL_DIR", ""),
            help="models folder (default: LLMESH_CLASSIFIER_MODEL_DIR, else the packaged models)",
        )
        step.add_argument(
            "--feedback-db",
            default="",
            help="feedback SQLite file for status (default: LLMESH_CLASSIFIER_FEEDBACK_DB, else $LLMESH_HOME/classifier/feedback.sqlite3)",
        )
        step.add_argument("--reason", default="", help="why (kept in the audit line and the event)")
        _policy_cli().nats_arguments(step)
        step.set_defaults(func=_rollout)

    classify = commands.add_parser("classify", help="classify a prompt with the running classifier service")
    classify.add_argument("prompt", help="the user message ('-' reads standard input)")
    classify.add_argument("--system", default="", help="a system message to send before it")
    classify.add_argument("--tenant", default="", help="tenant id (selects its policy)")
    classify.add_argument("--use-case", default="")
    classify.add_argument("--addr", default="", help="classifier host:port (default: the local mesh)")
    classify.set_defaults(func=_classify)


def _train(args: argparse.Namespace) -> int:
    data_path, origin = train_data_path(args.data)
    if not data_path.is_file():
        print(
            f"llmesh classifier train: no training data at {data_path} (from {origin}).\n"
            f"Pass --data FILE or set {TRAIN_DATA_ENV}=FILE: a CSV with the header {TRAIN_COLUMNS},\n"
            "one row per prompt, weak_correct/strong_correct 1 when the weak/strong model answered it right.\n"
            "The MMLU dev answers the shipped model was trained on are public data kept beside the checkout\n"
            "(../shared/data/routing/mmlu_dev.csv), not in the repository.",
            file=sys.stderr,
        )
        return 2
    try:
        import numpy as np
        from llmesh.services.classifier.complexity.trainer import train
        from llmesh.services.classifier.complexity.training import (
            DEFAULT_OUTCOME_WEIGHT,
            TrainConfig,
            feedback_examples,
            load_routing_data,
            outcome_examples,
        )
        from llmesh.services.classifier.feedback import FeedbackStore
        from llmesh.services.classifier.settings import PACKAGED_MODELS_DIR
    except ModuleNotFoundError as exc:
        print(
            f"llmesh classifier train: {exc.name} is not installed; training needs the classifier service "
            "with its train extra beside this command (`make setup` installs both)",
            file=sys.stderr,
        )
        return 2
    try:
        data = load_routing_data(data_path)
    except ValueError as exc:  # UnicodeDecodeError included
        print(f"llmesh classifier train: {exc} (expected the header {TRAIN_COLUMNS})", file=sys.stderr)
        return 2
    outcome_weight = DEFAULT_OUTCOME_WEIGHT if args.outcome_weight is None else args.outcome_weight
    if not (outcome_weight >= 0.0 and np.isfinite(outcome_weight)):
        print(f"llmesh classifier train: --outcome-weight must be 0 or more (got {outcome_weight})", file=sys.stderr)
        return 2
    feedback = recent = outcomes = None
    if args.with_feedback:
        db = (
            args.feedback_db
            or os.environ.get("LLMESH_CLASSIFIER_FEEDBACK_DB")
            or str(home() / "classifier" / "feedback.sqlite3")
        )
        if not pathlib.Path(db).is_file():
            print(f"llmesh: no feedback store at {db}", file=sys.stderr)
            return 2
        from llmesh.services.classifier.complexity.features import FEATURE_NAMES, FEATURE_SET

        store = FeedbackStore(db)
        try:
            feedback = feedback_examples(store.rated())
            outcomes = outcome_examples(store.outcome_labelled()) if outcome_weight > 0 else None
            rows = [r for r in store.recent_features(FEATURE_SET) if len(r) == len(FEATURE_NAMES)]
            recent = np.array(rows, dtype=float).reshape(-1, len(FEATURE_NAMES))
        finally:
            store.close()
    result = train(
        data,
        models_dir=pathlib.Path(args.out) if args.out else PACKAGED_MODELS_DIR,
        report_dir=pathlib.Path(args.report_dir) if args.report_dir and not args.no_cv else None,
        config=TrainConfig(outcome_weight=outcome_weight),
        feedback=feedback,
        recent=recent,
        outcomes=outcomes,
        cross_validation=not args.no_cv,
    )
    print(result.version)
    return 0


def _policy_cli():
    from llmesh.cli import policy

    return policy


def _feedback_db(explicit: str) -> str:
    return (
        explicit or os.environ.get("LLMESH_CLASSIFIER_FEEDBACK_DB") or str(home() / "classifier" / "feedback.sqlite3")
    )


def _rollout(args: argparse.Namespace) -> int:
    policy = _policy_cli()
    try:
        from llmesh.services.classifier import rollout as ro
        from llmesh.services.classifier.complexity.model import version_folders
        from llmesh.services.classifier.convert import ROLLOUT_SUBJECT, rollout_event
        from llmesh.services.classifier.settings import PACKAGED_MODELS_DIR
    except ModuleNotFoundError as exc:
        print(f"llmesh classifier rollout: {exc.name} is not installed (`make setup` installs it)", file=sys.stderr)
        return 2
    models = pathlib.Path(args.models) if args.models else PACKAGED_MODELS_DIR
    versions = [p.name for p in version_folders(models)]

    async def command(nc, args) -> None:
        kv = await policy.bucket(nc, args.bucket, create=args.rollout_command != "status")
        documents = await policy.read_bucket(kv)
        doc = documents.get("global") if isinstance(documents.get("global"), dict) else None
        plan = ro.plan_from_policy(doc or {}) or ro.RolloutPlan()
        current = plan.current or next((v for v in reversed(versions) if v != plan.candidate), "")
        if args.rollout_command == "status":
            _rollout_status(plan, current, versions, _feedback_db(args.feedback_db), ro)
            return
        if args.rollout_command == "start":
            if args.version not in versions:
                raise policy.PolicyError(f"no version {args.version!r} in {models}")
            if not 0.0 < args.share <= 1.0:
                raise policy.PolicyError(f"--share must be in (0, 1] (got {args.share})")
            if plan.candidate and plan.candidate != args.version:
                raise policy.PolicyError(f"{plan.candidate} is being rolled out: promote or roll it back first", code=1)
            current = plan.current or next((v for v in reversed(versions) if v != args.version), "")
            new = ro.RolloutPlan(current=current, candidate=args.version, share=args.share, started_at=time.time())
            decision = "started"
        else:
            if not plan.candidate:
                raise policy.PolicyError("no rollout in progress (no classifier.rollout.candidate in global)", code=1)
            keep = plan.candidate if args.rollout_command == "promote" else current
            new = ro.RolloutPlan(current=keep)
            decision = "promoted" if args.rollout_command == "promote" else "rolled_back"
        candidate = new.candidate or plan.candidate
        revision = await kv.put("global", json.dumps(ro.with_plan(doc, new)).encode())
        event = rollout_event(
            decision, current=new.current, candidate=candidate, share=new.share, reason=args.reason or "by hand"
        )
        await nc.publish(ROLLOUT_SUBJECT, event.SerializeToString())
        await nc.flush()
        # The audit trail until tenancy's audit RPC exists: one structured line per change.
        get_logger("llmesh.audit").info(
            "classifier_rollout_" + decision,
            user=os.environ.get("USER", ""),
            current=new.current,
            candidate=candidate,
            share=new.share,
            reason=args.reason,
            policy_revision=revision,
        )
        print(
            f"rollout {decision}: current {new.current or '-'}, candidate {candidate or '-'} (global revision {revision})"
        )

    return policy.run_nats(command, args, prog="llmesh classifier rollout")


def _rollout_status(plan, current: str, versions: list[str], db: str, ro) -> None:
    out: dict = {"current": current, "candidate": plan.candidate, "share": plan.share, "versions": versions}
    if plan.candidate and pathlib.Path(db).is_file():
        from llmesh.services.classifier.feedback import FeedbackStore

        store = FeedbackStore(db)
        try:
            rows = store.labelled((current, plan.candidate), since=plan.started_at)
            outcomes = store.outcome_counts()
        finally:
            store.close()
        out["labelled"] = len(rows)
        out["routing_outcomes_stored"] = outcomes  # by source, all time (ADR 0027)
        if rows:
            c = ro.compare(rows, current, plan.candidate)
            out.update(
                current_apgr=c.current_apgr,
                candidate_apgr=c.candidate_apgr,
                difference_90ci=[c.difference_low, c.difference_high],
            )
    print(json.dumps(out, indent=2))


def _classify(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
    from llmesh.common.v1 import common_pb2
    from llmesh.kit.client import open_channel

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    messages = []
    if args.system:
        messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=args.system))
    messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt))
    request = classifier_pb2.ClassifyRequest(messages=messages, tenant_id=args.tenant, use_case=args.use_case)

    async def call():
        async with open_channel(args.addr or endpoint("classifier")) as channel:
            return await classifier_pb2_grpc.ClassifierServiceStub(channel).Classify(request)

    try:
        response = asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        print(f"llmesh: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(json_format.MessageToDict(response, always_print_fields_with_no_presence=True), indent=2))
    return 0
