"""Generates the Python contracts (src/llmesh/<svc>/v1/*_pb2*.py) from protos/.

One command for one job: `make gen` runs this; tests/test_contracts.py runs it into a temporary
folder and fails when the committed code differs.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "libs" / "proto" / "src"
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


def generated_tree(root: pathlib.Path) -> dict[str, bytes]:
    """The generated files under root/llmesh/<svc>/v1, by relative path."""
    tree = {}
    for p in (root / "llmesh").glob("*/v1/*"):
        if p.suffix in {".py", ".pyi"}:
            tree[str(p.relative_to(root))] = p.read_bytes()
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed code is stale")
    args = parser.parse_args(argv)
    if not args.check:
        for old in (DEFAULT_OUT / "llmesh").glob("*/v1"):
            shutil.rmtree(old)
        generate(DEFAULT_OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = pathlib.Path(tmp)
        (tmp_root / "llmesh").mkdir()
        generate(tmp_root)
        fresh, committed = generated_tree(tmp_root), generated_tree(DEFAULT_OUT)
    stale = sorted(set(fresh) ^ set(committed) | {k for k in fresh if committed.get(k) != fresh[k]})
    if stale:
        print("generated code is stale; run `make gen`:\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
