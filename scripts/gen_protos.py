"""Generates the contracts from protos/: Python (libs/proto/src/llmesh/<svc>/v1/*_pb2*.py, with
grpcio-tools) and TypeScript (clients/typescript/gen/, with buf and protoc-gen-es as buf.gen.yaml
says, plus google/rpc/error_details for the error details the services send).

One command for one job: `make gen` runs this; tests/test_contracts.py runs it into a temporary
folder and fails when the committed code (of either language) differs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "libs" / "proto" / "src"
TS_OUT = ROOT / "clients" / "typescript" / "gen"
TS_PLUGINS = ROOT / "clients" / "typescript" / "node_modules" / ".bin"
HEADER_INIT = '"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n'


def proto_files() -> list[pathlib.Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Writes generated modules under out_root and returns their paths."""
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written: list[pathlib.Path] = []
    for rel in files:
        package_dir = out_root / pathlib.Path(rel).parent
        # Every folder between out_root/llmesh and the module needs an __init__ to be importable;
        # out_root/llmesh itself is the hand-written package and keeps its own.
        d = package_dir
        while d != out_root / "llmesh":
            init = d / "__init__.py"
            if not init.exists():
                init.write_text(HEADER_INIT)
            d = d.parent
        stem = pathlib.Path(rel).stem
        written += [
            package_dir / f"{stem}_pb2.py",
            package_dir / f"{stem}_pb2.pyi",
            package_dir / f"{stem}_pb2_grpc.py",
        ]
    return written


def _buf() -> str:
    buf = pathlib.Path(sys.executable).parent / "buf"
    return str(buf) if buf.exists() else "buf"


def generate_typescript(out_root: pathlib.Path) -> None:
    """Writes clients/typescript/gen/ under out_root (the repository root, or a temporary folder)."""
    if not (TS_PLUGINS / "protoc-gen-es").exists():
        raise SystemExit(f"{TS_PLUGINS}/protoc-gen-es is missing: run `make setup` (npm ci in clients/typescript)")
    env = {**os.environ, "PATH": f"{TS_PLUGINS}{os.pathsep}{os.environ.get('PATH', '')}"}
    buf = [_buf(), "generate", "--template", str(ROOT / "buf.gen.yaml"), "--output", str(out_root)]
    subprocess.run(buf, cwd=ROOT, env=env, check=True)
    # google.rpc's error details (BadRequest, RetryInfo, ErrorInfo): the proto file ships with
    # googleapis-common-protos, which the Python side installs; generated from a copy of it alone.
    from google.rpc import error_details_pb2

    source = pathlib.Path(error_details_pb2.__file__).with_name("error_details.proto")
    with tempfile.TemporaryDirectory() as tmp:
        (pathlib.Path(tmp) / "google" / "rpc").mkdir(parents=True)
        shutil.copy(source, pathlib.Path(tmp) / "google" / "rpc" / "error_details.proto")
        subprocess.run([*buf, tmp], cwd=ROOT, env=env, check=True)


def typescript_tree(root: pathlib.Path) -> dict[str, bytes]:
    gen = root / TS_OUT.relative_to(ROOT)
    return {str(p.relative_to(root)): p.read_bytes() for p in gen.rglob("*.ts")}


def generated_tree(root: pathlib.Path) -> dict[str, bytes]:
    """The generated files under root/llmesh/<svc>/v1, by relative path."""
    tree = {}
    for p in (root / "llmesh").glob("*/v1/*"):
        if p.suffix in {".py", ".pyi"}:
            tree[str(p.relative_to(root))] = p.read_bytes()
    return tree


def merge_base() -> str:
    """Where this branch left main: `git merge-base HEAD main` (origin/main in a clone without a
    local main); on main itself, HEAD."""
    for ref in ("main", "origin/main"):
        found = subprocess.run(["git", "merge-base", "HEAD", ref], cwd=ROOT, capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.strip()
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def breaking() -> int:
    """`buf breaking` of protos/ against the merge base with main. The base's protos are taken with
    `git archive`, which works the same in a worktree, a fresh clone and a shallow CI checkout."""
    base = merge_base()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", base, "buf.yaml", "protos"], cwd=ROOT, capture_output=True)
        if archive.returncode != 0:
            print(f"git archive {base} failed: {archive.stderr.decode()}", file=sys.stderr)
            return 1
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        result = subprocess.run([_buf(), "breaking", "--against", tmp], cwd=ROOT)
    if result.returncode != 0:
        print(f"breaking changes against {base[:12]} (the merge base with main)", file=sys.stderr)
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed code is stale")
    parser.add_argument("--breaking", action="store_true", help="buf breaking against the merge base with main")
    args = parser.parse_args(argv)
    if args.breaking:
        return breaking()
    if not args.check:
        for old in (DEFAULT_OUT / "llmesh").glob("*/v1"):
            shutil.rmtree(old)
        generate(DEFAULT_OUT)
        shutil.rmtree(TS_OUT, ignore_errors=True)
        generate_typescript(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = pathlib.Path(tmp)
        (tmp_root / "llmesh").mkdir()
        generate(tmp_root)
        fresh, committed = generated_tree(tmp_root), generated_tree(DEFAULT_OUT)
        generate_typescript(tmp_root)
        fresh.update(typescript_tree(tmp_root))
        committed.update(typescript_tree(ROOT))
    stale = sorted(set(fresh) ^ set(committed) | {k for k in fresh if committed.get(k) != fresh[k]})
    if stale:
        print("generated code is stale; run `make gen`:\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
