"""all-MiniLM-L6-v2 (optionally with fine-tuned weights) as an ONNX file for ONNX Runtime.

The transformer alone is exported (inputs input_ids, attention_mask[, token_type_ids]; output
last_hidden_state; dynamic batch and sequence axes) with torch's TorchScript exporter, in fp32:
the pooling and normalisation stay in numpy (embedder.OnnxMiniLMEmbedder), so the vectors are
the torch path's to float rounding and the shipped calibration applies unchanged.

Where the file lies: `<dir>/minilm-<key>.onnx`, `<dir>` being LLMESH_CACHE_ONNX_DIR or else
$XDG_CACHE_HOME/llmesh/onnx (~/.cache/llmesh/onnx), `<key>` a sha256 over the source weights,
the model's config, the fine-tuned weights if any, and EXPORT_VERSION: changed weights get a new
file, never a stale graph. Not under $LLMESH_HOME: that is one mesh's state, and tests and
benchmarks point it at temporary folders, which would re-export (seconds of CPU) at every start;
the file is a pure function of its key, so every home on the machine shares it, as the bundled
Gemma file is shared (inference/model_files.py).

Beside it lies `minilm-<key>.tokenizer.json`, the model folder's tokenizer: an image ships the
two files alone (services/cache/Dockerfile) and runs without torch or the weights package
(`shipped_export`).

When it is made: `make setup` runs `python -m llmesh.services.cache.semantic.onnx_model`, which
calls `prepare()`; a start that finds no file exports it then (`ensure_exported`), written
to a temporary name and renamed, so a concurrent start never reads half a file. No network.

    python -m llmesh.services.cache.semantic.onnx_model [--weights FILE]   # export, print the path
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pathlib
import shutil
import sys
import warnings

# Bumped when the export itself changes (inputs, opset, exporter options): old files are ignored.
EXPORT_VERSION = "1"
OPSET = 17
META_MAX_SEQ_LENGTH = "llmesh.max_seq_length"
META_KEY = "llmesh.source_key"


def onnx_dir(configured: str | os.PathLike | None = None) -> pathlib.Path:
    """The configured folder (SemanticConfig.onnx_dir), else the user's cache folder."""
    if configured:
        return pathlib.Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache) / "llmesh" / "onnx"


def _weights_files(model_path: pathlib.Path) -> list[pathlib.Path]:
    files = sorted(model_path.glob("*.safetensors")) or sorted(model_path.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"no model weights (*.safetensors, pytorch_model*.bin) in {model_path}")
    return files


def source_key(model_path: str | os.PathLike, weights: str | os.PathLike | None = None) -> str:
    """sha256 of what the exported graph is made of (about 0.1 s for MiniLM's 90 MB)."""
    model_path = pathlib.Path(model_path)
    digest = hashlib.sha256(f"llmesh-onnx-export-v{EXPORT_VERSION}-opset{OPSET}\n".encode())
    files = [*_weights_files(model_path), model_path / "config.json"]
    if weights is not None:
        files.append(pathlib.Path(weights))
    for path in files:
        digest.update(f"{path.name}\n".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def exported_path(
    model_path: str | os.PathLike, weights: str | os.PathLike | None = None, directory: str | None = None
) -> tuple[pathlib.Path, str]:
    """Where the export of these weights lies, and its source key."""
    key = source_key(model_path, weights)
    return onnx_dir(directory) / f"minilm-{key[:20]}.onnx", key


def tokenizer_file(onnx_path: pathlib.Path) -> pathlib.Path:
    """The tokenizer saved beside an export."""
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".tokenizer.json")


def shipped_export(directory: str | None = None) -> pathlib.Path:
    """The newest export in the folder that has its tokenizer beside it: what an image ships
    instead of the weights package (a newer export is a newer file, named by its key)."""
    folder = onnx_dir(directory)
    found = sorted(
        (p for p in folder.glob("minilm-*.onnx") if tokenizer_file(p).is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    if not found:
        raise FileNotFoundError(
            f"no exported MiniLM (minilm-*.onnx with its .tokenizer.json) in {folder}, and the weights "
            "package is not installed to export one: install llmesh-cache[export] or set LLMESH_CACHE_ONNX_DIR"
        )
    return found[0]


def ensure_exported(
    model_path: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    *,
    threads: int = 1,
    directory: str | None = None,
) -> pathlib.Path:
    """The exported file for these weights, exported now unless it is already there."""
    target, key = exported_path(model_path, weights, directory)
    tokenizer, source_tokenizer = tokenizer_file(target), pathlib.Path(model_path) / "tokenizer.json"
    if not tokenizer.is_file() and source_tokenizer.is_file():  # also for exports made before it was kept
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = tokenizer.with_name(f"{tokenizer.name}.{os.getpid()}.partial")
        shutil.copyfile(source_tokenizer, partial)
        os.replace(partial, tokenizer)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a concurrent start never reads half a file, and two
    # starts exporting at once each rename a complete one.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        export(model_path, partial, weights=weights, threads=threads, key=key)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def prepare(config) -> pathlib.Path | None:
    """The export the configured embedder will load (`make setup` runs this); None when the
    configuration runs no ONNX model."""
    if config.embedder != "minilm" or config.embed_runtime != "onnx":
        return None
    from .embedder import minilm_path
    from .tuned import TUNED_WEIGHTS

    weights = TUNED_WEIGHTS if TUNED_WEIGHTS.is_file() else None
    return ensure_exported(minilm_path(), weights, threads=config.embed_threads, directory=config.onnx_dir)


def export(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    threads: int = 1,
    key: str = "",
) -> None:
    """Exports the sentence-transformers model's transformer to `out` (fp32, dynamic axes)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import onnx
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_path), device="cpu")
    if weights is not None:
        from .tuned import apply_weights

        apply_weights(model, pathlib.Path(weights))
    model.eval()
    transformer = model[0].auto_model
    # Plain attention (matmul, mask, softmax) rather than torch's fused SDPA, which the tracer
    # unrolls into a longer graph with NaN guards: measured ~5 % faster under ONNX Runtime, same
    # vectors. This model object is the exporter's own.
    if hasattr(transformer, "set_attn_implementation"):
        transformer.set_attn_implementation("eager")
    else:
        transformer.config._attn_implementation = "eager"
    accepted = inspect.signature(transformer.forward).parameters
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in accepted else [])

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs):
            return self.transformer(**dict(zip(names, inputs, strict=True))).last_hidden_state

    # Two rows of different lengths, so padding and the mask are part of the traced example.
    sample = model.tokenizer(
        ["warm up", "a longer example sentence, padded to its batch"], padding=True, return_tensors="pt"
    )
    args = tuple(sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in names)
    axes = {0: "batch", 1: "sequence"}
    # The TorchScript exporter (needs only `onnx`); torch < 2.5 has no `dynamo` switch and no other.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with torch.inference_mode(), warnings.catch_warnings():
        # Its deprecation notice, and tracer notes on branches that the padded example fixes
        # the right way (a mask is always passed); test_onnx_embedding.py checks the vectors.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHiddenState().eval(),
            args,
            str(out),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={**{n: axes for n in names}, "last_hidden_state": axes},
            opset_version=OPSET,
            do_constant_folding=True,
            **legacy,
        )
    graph = onnx.load(str(out))
    for name, value in ((META_MAX_SEQ_LENGTH, str(model.max_seq_length)), (META_KEY, key)):
        graph.metadata_props.add(key=name, value=value)
    onnx.save(graph, str(out))


def main(argv: list[str] | None = None) -> int:
    import argparse

    from llmesh.kit.config import load_settings

    from .config import SemanticConfig
    from .embedder import minilm_path

    parser = argparse.ArgumentParser(description="Exports all-MiniLM-L6-v2 to ONNX (once) and prints the file's path.")
    parser.add_argument("--model", default=None, help="sentence-transformers folder (default: the bundled MiniLM)")
    parser.add_argument("--weights", default=None, help="fine-tuned tensors to apply (tuned.py)")
    args = parser.parse_args(argv)
    config = load_settings(SemanticConfig)
    if args.model is None and args.weights is None:
        path = prepare(config)  # what the configured embedder loads (with the shipped tuned weights)
        if path is None:
            print("the configured embedder runs no ONNX model: nothing to export", file=sys.stderr)
            return 0
    else:
        path = ensure_exported(
            args.model or minilm_path(), args.weights, threads=config.embed_threads, directory=config.onnx_dir
        )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
