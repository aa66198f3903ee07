"""The documentation against the code: generated tables are current (README.md, each service's
README, docs/policy.md), a stale one is caught, the README's Python example names real stubs and
fields, each service README lists its proto's RPCs, and the links of those pages resolve."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from llmesh.kit.defaults import SERVICES

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "config_tables.py"
GENERATED = ["README.md", *(f"services/{s}/README.md" for s in SERVICES), "docs/policy.md"]


def readme_python_example() -> str:
    """The code block of the README's "Calling the router from Python" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Calling the router from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "the section has a ```python block"
    return match.group(1)


def check_tables(root: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(root)], capture_output=True, text=True, timeout=60
    )


def test_generated_tables_are_current():
    result = check_tables(ROOT)
    assert result.returncode == 0, result.stderr


def test_a_stale_or_missing_table_is_caught(tmp_path):
    for name in GENERATED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert check_tables(tmp_path).returncode == 0

    router = tmp_path / "services" / "router" / "README.md"
    router.write_text(
        router.read_text().replace("| `LLMESH_ROUTER_FALLBACK_TIER` | `2` |", "| `LLMESH_ROUTER_FALLBACK_TIER` | `3` |")
    )
    policy = tmp_path / "docs" / "policy.md"
    policy.write_text(
        policy.read_text().replace("<!-- policy-fields:end -->", "| `stale` | row |\n<!-- policy-fields:end -->")
    )
    cache = tmp_path / "services" / "cache" / "README.md"
    cache.write_text(cache.read_text().replace("<!-- settings:begin -->", ""))
    result = check_tables(tmp_path)
    assert result.returncode == 1
    assert "services/router/README.md: generated tables are stale: run `make docs`" in result.stderr
    assert "docs/policy.md: generated tables are stale" in result.stderr
    assert "services/cache/README.md has no <!-- settings:begin -->" in result.stderr

    assert subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path)], capture_output=True).returncode == 1
    assert "`LLMESH_ROUTER_FALLBACK_TIER` | `2` |" in router.read_text(), "make docs rewrote the stale table"


def test_the_python_example_runs_itself_and_names_real_stubs_and_fields():
    tree = ast.parse(readme_python_example())
    modules = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("llmesh."):
            for alias in node.names:
                modules[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
    assert {"common_pb2", "router_pb2", "router_pb2_grpc"} <= set(modules)

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            assert hasattr(modules[node.value.id], node.attr), f"{node.value.id}.{node.attr} does not exist"
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
        ):
            owner = modules.get(node.func.value.id)
            message = getattr(owner, node.func.attr, None)
            if message is not None and hasattr(message, "DESCRIPTOR") and hasattr(message.DESCRIPTOR, "fields_by_name"):
                for keyword in node.keywords:
                    assert keyword.arg in message.DESCRIPTOR.fields_by_name, (
                        f"{node.func.attr} has no field {keyword.arg}"
                    )
    from llmesh.router.v1 import router_pb2

    response_fields = set(router_pb2.GenerateResponse.DESCRIPTOR.fields_by_name)
    used = {
        n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "HasField"
    }
    assert used <= response_fields
    last = tree.body[-1]
    assert isinstance(last, ast.Expr) and ast.unparse(last.value).startswith("asyncio.run(ask("), (
        "the example runs itself"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_readme_lists_the_rpcs_of_its_proto(service):
    readme = (ROOT / "services" / service / "README.md").read_text()
    proto = "\n".join(p.read_text() for p in (ROOT / "protos" / "llmesh" / service / "v1").glob("*.proto"))
    rpcs = re.findall(r"^\s*rpc (\w+)\(", proto, flags=re.M)
    # The edge has no proto of its own: its API is HTTP (OpenAI's), described route by route.
    api = "## HTTP API" if service == "edge" else "## RPCs"
    assert rpcs or service == "edge"
    for rpc in rpcs:
        assert f"`{rpc}`" in readme, f"services/{service}/README.md does not describe {rpc}"
    for needed in (api, "## Settings", "## Running it alone", "## Tests", f"llmesh-{service}"):
        assert needed in readme


@pytest.mark.parametrize("page", ["docs/policy.md", *(f"services/{s}/README.md" for s in SERVICES)])
def test_relative_links_resolve(page):
    path = ROOT / page
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{page} links to {target}, which does not exist"


def test_the_readme_links_the_pages_and_files_it_introduces():
    readme = (ROOT / "README.md").read_text()
    for target in ("docs/policy.md", "examples/cache_warm.jsonl"):
        assert f"]({target})" in readme and (ROOT / target).exists()
    for command in ("llmesh cache warm examples/cache_warm.jsonl", "llmesh policy validate examples/policy.json"):
        assert command in readme
