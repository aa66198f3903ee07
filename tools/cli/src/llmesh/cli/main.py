"""`llmesh` command line. Each command group lives in its own module with a `register(subparsers)`
that adds its parser(s) and sets `func` (a callable taking the parsed args, returning an exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

from llmesh.kit import identity
from llmesh.launcher import state as mesh_state
from llmesh.launcher.state import operator_identity

# Modules under llmesh.cli, each owning one command group.
COMMAND_MODULES = (
    "mesh",
    "tenant",
    "usage",
    "audit",
    "chat",
    "cache",
    "classifier",
    "policy",
    "call",
    "models",
    "batch",
    "observe",
    "top",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmesh", description="llmesh: an enterprise LLM serving mesh")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"llmesh.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"llmesh.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The services take internal calls from known callers only (docs/adr/0023): the CLI calls
    # as the operator, with the local mesh's credential (`llmesh up` writes it).
    previous = identity.default()
    operator = operator_identity()
    if operator is not None:
        identity.set_default(operator)
    if args.command != "up":  # `up` makes its own (or none): a stopped mesh's must not leak into it
        mesh_state.use_mesh_tls()
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = 130
    finally:
        identity.set_default(previous)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
