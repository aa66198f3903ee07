"""Prints the README's configuration tables from the services' settings classes, so the
documentation cannot drift from the code (`make docs` rewrites the block in README.md)."""

from __future__ import annotations

import importlib
import pathlib
import re
import sys

from llmesh.kit.config import ServerSettings, settings_table
from llmesh.kit.defaults import SERVICES

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- config-tables:begin -->", "<!-- config-tables:end -->"


def service_settings(service: str) -> type:
    module = importlib.import_module(f"llmesh.services.{service}.settings")
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, ServerSettings)
        and obj is not ServerSettings
        and obj.__module__ == module.__name__
    ]
    return classes[0]


def render() -> str:
    parts = [
        "A secret (marked so below) can instead be read from a file named by the same variable with `_FILE`",
        "appended, e.g. `LLMESH_ADMIN_TOKEN_FILE=/var/run/secrets/llmesh/admin-token` (a mounted Kubernetes",
        "Secret); setting both is an error, and the file's trailing newline is ignored.\n",
        "Every service reads these:\n",
        settings_table(ServerSettings),
        "",
    ]
    common = set(settings_table(ServerSettings).splitlines()[2:])
    for service in SERVICES:
        rows = [r for r in settings_table(service_settings(service)).splitlines() if r not in common]
        parts += [f"#### {service}\n", *rows, ""]
    # Defaults computed from the install location read as repository paths.
    return "\n".join(parts).replace(f"{ROOT}/", "")


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{BEGIN}\n{render()}\n{END}"
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if "--check" in sys.argv:
        if new != text:
            print("README.md configuration tables are stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
