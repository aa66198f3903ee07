"""`llmesh classifier ...`: train the complexity model (writes a model version and the report),
and classify a prompt through the running classifier service."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys

import grpc
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
    train.add_argument("--with-feedback", action="store_true", help="fold in rated requests from the feedback store")
    train.add_argument(
        "--feedback-db",
        default="",
        help="feedback SQLite file (default: LLMESH_CLASSIFIER_FEEDBACK_DB, else $LLMESH_HOME/classifier/feedback.sqlite3)",
    )
    train.add_argument("--no-cv", action="store_true", help="skip cross-validation and the report (quick refit)")
    train.set_defaults(func=_train)

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
        from llmesh.services.classifier.complexity.trainer import train
        from llmesh.services.classifier.complexity.training import TrainConfig, feedback_examples, load_routing_data
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
    feedback = None
    if args.with_feedback:
        db = (
            args.feedback_db
            or os.environ.get("LLMESH_CLASSIFIER_FEEDBACK_DB")
            or str(home() / "classifier" / "feedback.sqlite3")
        )
        if not pathlib.Path(db).is_file():
            print(f"llmesh: no feedback store at {db}", file=sys.stderr)
            return 2
        store = FeedbackStore(db)
        try:
            feedback = feedback_examples(store.rated())
        finally:
            store.close()
    result = train(
        data,
        models_dir=pathlib.Path(args.out) if args.out else PACKAGED_MODELS_DIR,
        report_dir=pathlib.Path(args.report_dir) if args.report_dir and not args.no_cv else None,
        config=TrainConfig(),
        feedback=feedback,
        cross_validation=not args.no_cv,
    )
    print(result.version)
    return 0


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
