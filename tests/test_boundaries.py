"""Service boundaries, read from the code: a service imports the kit, the generated contracts, its
own package and the third-party packages its own pyproject declares; never another service, the
launcher or the CLI (they are reached over gRPC or NATS)."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").is_file())
PROTO_PACKAGES = {p.name for p in (ROOT / "libs" / "proto" / "src" / "llmesh").iterdir() if p.is_dir()}


def imports_of(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, nested and lazy ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def boundary_violations(service: str, source_root: pathlib.Path) -> list[str]:
    """Imports under source_root (a service's src/) that reach another service, the launcher or the CLI."""
    bad = []
    for path in sorted(source_root.rglob("*.py")):
        for line, module in imports_of(path):
            parts = module.split(".")
            if parts[0] != "llmesh":
                continue
            allowed = (
                parts[1:2] == ["kit"]
                or (len(parts) > 1 and parts[1] in PROTO_PACKAGES)
                or parts[1:3] == ["services", service]
            )
            if not allowed:
                bad.append(f"{path.relative_to(source_root)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_nor_the_launcher(service):
    source = ROOT / "services" / service / "src"
    assert boundary_violations(service, source) == []


def test_the_boundary_check_catches_a_cross_service_import(tmp_path):
    package = tmp_path / "llmesh" / "services" / "router"
    package.mkdir(parents=True)
    (package / "bad.py").write_text(
        "from llmesh.services.cache.core import Cache\n"
        "def late():\n    import llmesh.launcher.state\n"
        "from llmesh.kit.server import ServiceApp\nfrom llmesh.router.v1 import router_pb2\n"
    )
    assert boundary_violations("router", tmp_path) == [
        "llmesh/services/router/bad.py:1 imports llmesh.services.cache.core",
        "llmesh/services/router/bad.py:3 imports llmesh.launcher.state",
    ]


def _distributions_by_module() -> dict[str, set[str]]:
    return {module: {_norm(d) for d in dists} for module, dists in importlib.metadata.packages_distributions().items()}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_closure(package: str, extras: bool) -> set[str]:
    """The distributions `package` installs according to uv.lock (with every extra when `extras`)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    by_name = {_norm(p["name"]): p for p in lock["package"]}
    seen: set[str] = set()
    todo = [_norm(package)]
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        entry = by_name[name]
        deps = list(entry.get("dependencies", []))
        if extras and name == _norm(package):
            for extra_deps in entry.get("optional-dependencies", {}).values():
                deps += extra_deps
        todo += [_norm(d["name"]) for d in deps]
    return seen


@pytest.mark.parametrize("service", SERVICES)
def test_every_third_party_import_is_declared_by_the_service(service):
    """What a service's code imports comes from its own dependencies (or its extras, for the
    training and export modules), never by luck from another package of the workspace."""
    by_module = _distributions_by_module()
    declared = _lock_closure(f"llmesh-{service}", extras=True)
    missing = []
    for path in sorted((ROOT / "services" / service / "src").rglob("*.py")):
        for line, module in imports_of(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in {"llmesh", "__future__"}:
                continue
            dists = by_module.get(top)
            if not dists:
                missing.append(f"{path.relative_to(ROOT)}:{line} imports {top}, which no installed package provides")
            elif not dists & declared:
                missing.append(
                    f"{path.relative_to(ROOT)}:{line} imports {top} ({', '.join(sorted(dists))}), undeclared"
                )
    assert missing == []
