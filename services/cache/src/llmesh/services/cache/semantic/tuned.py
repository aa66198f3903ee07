"""all-MiniLM-L6-v2 with the encoder layers fine-tuned for telling paraphrases from near misses.

The fine-tuned weights are stored apart from the base model (models/, see train.py): only the
tensors that training changed, in float16. Without that file the base model is used, under its
own model id (and so its own collection and calibration). Either runs on torch or on ONNX Runtime
(LLMESH_CACHE_EMBED_RUNTIME; onnx_model.py exports the weights in use).
"""

from __future__ import annotations

import json
import pathlib

from .embedder import MINILM_ID, MiniLMEmbedder, OnnxMiniLMEmbedder, minilm_path

MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"
TUNED_WEIGHTS = MODELS_DIR / "minilm_paraphrase.safetensors"


def tuned_model_id(weights: pathlib.Path = TUNED_WEIGHTS) -> str | None:
    """The id the tuned model's vectors are filed under, from the weights' own metadata."""
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {}
    return meta.get("model_id") or f"{MINILM_ID}-tuned"


class TunedMiniLMEmbedder(MiniLMEmbedder):
    def __init__(self, weights: pathlib.Path, threads: int = 1):
        super().__init__(threads=threads, model_path=minilm_path(), model_id=tuned_model_id(weights) or MINILM_ID)
        self._weights = weights

    def _load(self) -> None:
        super()._load()
        apply_weights(self._model, self._weights)
        self._encode(["warm up"])


def apply_weights(sentence_model, weights: pathlib.Path) -> dict:
    """Overwrites the transformer's tensors named in `weights`; returns the file's metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    transformer = sentence_model[0].auto_model
    tensors = load_file(str(weights))
    own = transformer.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ValueError(f"{weights} holds tensors the model does not have: {unknown[:3]}")
    transformer.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=False)
    with safe_open(str(weights), framework="pt") as f:
        return json.loads(json.dumps(f.metadata() or {}))


def tuned_minilm(
    threads: int = 1, weights: pathlib.Path = TUNED_WEIGHTS, runtime: str = "torch", onnx_dir: str | None = None
) -> MiniLMEmbedder | OnnxMiniLMEmbedder:
    """MiniLM with the fine-tuned weights when they exist, on torch or on ONNX Runtime (the
    weights are applied before the export, so both runtimes give the same vectors)."""
    tuned = weights.is_file()
    if runtime == "onnx":
        return OnnxMiniLMEmbedder(
            threads=threads,
            model_id=(tuned_model_id(weights) if tuned else None) or MINILM_ID,
            weights=weights if tuned else None,
            onnx_dir=onnx_dir,
        )
    if tuned:
        return TunedMiniLMEmbedder(weights, threads=threads)
    return MiniLMEmbedder(threads=threads)
