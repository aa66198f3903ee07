"""Puts the generated files the images COPY into build/ (git-ignored), so `docker build` can read
them from the repository root (`make image-context` runs this).

    python scripts/image_context.py [--out build]

build/cache-onnx/: the cache's exported MiniLM, `minilm-<key>.onnx` and `minilm-<key>.tokenizer.json`,
the files the cache service loads when the weights package is not installed (its image runs ONNX
Runtime without torch: onnx_model.shipped_export). The export is the one the default cache
configuration loads; `make setup` made it (~/.cache/llmesh/onnx), and it is made now if missing.
Nothing else is left in that folder, so the image ships exactly one export.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE_ONNX = "cache-onnx"


def current_export() -> pathlib.Path:
    """The ONNX file of the configured MiniLM (exported now if missing), as `make setup` prints it."""
    out = subprocess.run(
        [sys.executable, "-m", "llmesh.services.cache.semantic.onnx_model"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = pathlib.Path(out.strip().splitlines()[-1])
    if not path.is_file():
        raise FileNotFoundError(f"the cache's ONNX export is not at {path}: run `make setup`")
    return path


def tokenizer_of(onnx_path: pathlib.Path) -> pathlib.Path:
    # onnx_model.tokenizer_file, by name: this script runs in the workspace's environment.
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".tokenizer.json")


def copy_cache_onnx(onnx_path: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
    """Copies the export and its tokenizer into `out`/cache-onnx, removing anything else there;
    files already identical are left alone. Returns the two files."""
    target = out / CACHE_ONNX
    target.mkdir(parents=True, exist_ok=True)
    sources = [onnx_path, tokenizer_of(onnx_path)]
    for source in sources:
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: run `make setup`")
    wanted = {source.name for source in sources}
    for stale in target.iterdir():
        if stale.name not in wanted:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    copied = []
    for source in sources:
        dest = target / source.name
        if not (dest.is_file() and filecmp.cmp(source, dest, shallow=False)):
            partial = dest.with_name(dest.name + ".partial")
            shutil.copyfile(source, partial)
            partial.replace(dest)
        copied.append(dest)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "build"), help="build folder (default: build/ at the root)")
    args = parser.parse_args(argv)
    try:
        files = copy_cache_onnx(current_export(), pathlib.Path(args.out))
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"image-context: {exc}", file=sys.stderr)
        return 1
    for path in files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
