"""`python -m llmesh.launcher --foreground`: the mesh supervisor (what `llmesh up --detach` runs in
the background)."""

from __future__ import annotations

import argparse
import sys

from llmesh.launcher.supervisor import DEFAULT_TIMEOUT_S, Supervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmesh.launcher")
    parser.add_argument("--foreground", action="store_true", required=True, help="run the supervisor in this process")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for SERVING")
    parser.add_argument("--no-table", action="store_true", help="do not print the endpoint table once up")
    args = parser.parse_args(argv)
    return Supervisor(timeout_s=args.timeout, show_table=not args.no_table).run()


if __name__ == "__main__":
    sys.exit(main())
