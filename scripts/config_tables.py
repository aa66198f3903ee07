"""Writes the generated tables of the documentation from the code, so they cannot drift from it
(`make docs`; `--check` fails naming every stale file, which tests/test_docs.py runs):

- README.md: every service's settings (between <!-- config-tables:begin/end -->);
- services/<svc>/README.md: that service's settings (between <!-- settings:begin/end -->);
- docs/policy.md: the policy's fields, from the JSON Schema in llmesh.kit (between
  <!-- policy-fields:begin/end -->).

    python scripts/config_tables.py [--check] [--root DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import re
import sys
from collections.abc import Callable

from llmesh.kit.config import ServerSettings, settings_table
from llmesh.kit.defaults import SERVICES
from llmesh.kit.policy import load_schema

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- config-tables:begin -->", "<!-- config-tables:end -->"
SERVICE_BEGIN, SERVICE_END = "<!-- settings:begin -->", "<!-- settings:end -->"
POLICY_BEGIN, POLICY_END = "<!-- policy-fields:begin -->", "<!-- policy-fields:end -->"
# Settings classes a service reads besides its own, listed in its README: (module, class, heading).
EXTRA_SETTINGS = {
    "cache": [
        (
            "llmesh.services.cache.semantic.config",
            "SemanticConfig",
            "The semantic layer (read when LLMESH_CACHE_SEMANTIC is on)",
        )
    ],
}


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


def _repository_paths(text: str) -> str:
    # Defaults computed from the install location read as repository paths.
    return text.replace(f"{ROOT}/", "")


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
    return _repository_paths("\n".join(parts))


def render_service(service: str) -> str:
    """Every variable the service reads, the common ones included: its README stands alone."""
    parts = [settings_table(service_settings(service)), ""]
    for module, name, heading in EXTRA_SETTINGS.get(service, []):
        parts += [f"{heading}:\n", settings_table(getattr(importlib.import_module(module), name)), ""]
    return _repository_paths("\n".join(parts))


def _type(schema: dict, defs: dict) -> str:
    if "$ref" in schema:
        return _type(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "oneOf" in schema:
        return " or ".join(_type(s, defs) for s in schema["oneOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        count = schema.get("minItems") if schema.get("minItems") == schema.get("maxItems") else None
        return f"{'' if count is None else f'{count} '}{_type(schema.get('items', {}), defs)}s (list)"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'], defs)}"
    if kind == "string" and "pattern" in schema:
        return "string `low,high`" if "," in schema["pattern"] else "string"
    return kind or "any"


def _range(schema: dict) -> str:
    bounds = []
    for word, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if word in schema:
            bounds.append(f"{sign} {schema[word]}")
    return f" ({', '.join(bounds)})" if bounds else ""


def render_policy() -> str:
    """One table per section of a policy document: field, type, meaning (the schema's words)."""
    schema = load_schema()
    defs = schema["$defs"]
    parts = []
    for section, ref in defs["document"]["properties"].items():
        body = defs[ref["$ref"].rsplit("/", 1)[-1]]
        parts += [f"#### `{section}` ({body.get('title', section)})\n", body.get("description", ""), ""]
        if "properties" in body:
            parts += ["| field | type | meaning |", "| --- | --- | --- |"]
            for name, field in body["properties"].items():
                value = field.get("additionalProperties", field)
                kind = _type(field, defs) + _range(value if isinstance(value, dict) else field)
                parts.append(f"| `{name}` | {kind} | {field.get('description', '')} |")
            parts.append("")
        elif body.get("type") == "array":
            item = body["items"]
            parts += ["A list of objects of these fields:", "", "| field | type | meaning |", "| --- | --- | --- |"]
            for name, field in item["properties"].items():
                required = " (required)" if name in item.get("required", []) else ""
                default = f" Default `{json.dumps(field['default'])}`." if "default" in field else ""
                parts.append(
                    f"| `{name}` | {_type(field, defs)}{_range(field)}{required} | {field.get('description', '')}{default} |"
                )
            parts.append("")
        else:
            value = body.get("additionalProperties", {})
            target = defs[value["$ref"].rsplit("/", 1)[-1]] if "$ref" in value else value
            keys = body.get("propertyNames", {})
            key_text = (
                " \\| ".join(f"`{k}`" for k in keys["enum"])
                if "enum" in keys
                else keys.get("description", "a model name")
            )
            if "properties" in target:
                parts += [f"Keys: {key_text}. Values: objects of these fields:", ""]
                parts += ["| field | type | meaning |", "| --- | --- | --- |"]
                for name, field in target["properties"].items():
                    required = " (required)" if name in target.get("required", []) else ""
                    parts.append(
                        f"| `{name}` | {_type(field, defs)}{_range(field)}{required} | {field['description']} |"
                    )
            else:
                parts.append(f"Keys: {key_text}. Values: {_type(value, defs)}.")
            parts.append("")
    return "\n".join(parts)


def _replace(text: str, begin: str, end: str, body: str) -> str | None:
    pattern = re.escape(begin) + ".*?" + re.escape(end)
    if not re.search(pattern, text, flags=re.S):
        return None
    return re.sub(pattern, lambda _: f"{begin}\n{body}\n{end}", text, flags=re.S)


def targets(root: pathlib.Path) -> list[tuple[pathlib.Path, str, str, Callable[[], str]]]:
    found = [(root / "README.md", BEGIN, END, render)]
    for service in SERVICES:
        found.append(
            (root / "services" / service / "README.md", SERVICE_BEGIN, SERVICE_END, lambda s=service: render_service(s))
        )
    found.append((root / "docs" / "policy.md", POLICY_BEGIN, POLICY_END, render_policy))
    return found


def updates(root: pathlib.Path) -> tuple[dict[pathlib.Path, str], list[str]]:
    """(new text of every file whose tables changed, problems such as a missing file or marker)."""
    changed, problems = {}, []
    for path, begin, end, make in targets(root):
        if not path.is_file():
            problems.append(f"{path.relative_to(root)} is missing")
            continue
        text = path.read_text()
        new = _replace(text, begin, end, make())
        if new is None:
            problems.append(f"{path.relative_to(root)} has no {begin} ... {end} block")
        elif new != text:
            changed[path] = new
    return changed, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    parser.add_argument("--root", type=pathlib.Path, default=ROOT, help="repository root (default: this one)")
    args = parser.parse_args(argv)
    changed, problems = updates(args.root)
    for problem in problems:
        print(problem, file=sys.stderr)
    if args.check:
        for path in changed:
            print(f"{path.relative_to(args.root)}: generated tables are stale: run `make docs`", file=sys.stderr)
        return 1 if changed or problems else 0
    for path, text in changed.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(args.root)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
