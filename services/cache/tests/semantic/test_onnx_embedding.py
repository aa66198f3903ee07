"""The ONNX Runtime embedder gives the torch embedder's vectors (same model id, collection and
calibration), and its export is keyed by the weights and written atomically."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest
from llmesh.services.cache.semantic import onnx_model
from llmesh.services.cache.semantic.config import SemanticConfig
from llmesh.services.cache.semantic.embedder import (
    MINILM_ID,
    MiniLMEmbedder,
    OnnxMiniLMEmbedder,
    minilm_path,
    session_options,
)
from llmesh.services.cache.semantic.factory import load_calibration
from llmesh.services.cache.semantic.pairs import read_text_pairs

# The first test may export the model (~30 s on two busy cores) when `make setup` has not.
pytestmark = pytest.mark.timeout(300)

DATA = pathlib.Path(__file__).resolve().parent / "data"
WANTED = 500


AWKWARD = [
    "",
    "?",
    "Ünïcødé façade: naïve café, 東京, Привет! " * 3,
    "word " * 400,  # past the 256 tokens both runtimes read
    "How do I reset my password? " * 40,
]


def real_questions() -> list[str]:
    """The hand-written rewordings and near misses (~370 distinct questions), topped up to 500
    with rewordings of dev questions (all committed), plus the awkward cases."""
    texts = [t for name in ("rewordings.csv", "near_misses.csv") for pair in read_text_pairs(DATA / name) for t in pair]
    with open(DATA / "quora_rewordings.csv", newline="", encoding="utf-8") as f:
        texts += [row["rewording"] for row in csv.DictReader(f)]
    return list(dict.fromkeys(texts))[:WANTED] + AWKWARD


@pytest.fixture(scope="module")
def embedders():
    torch_embedder, onnx_embedder = MiniLMEmbedder(threads=1), OnnxMiniLMEmbedder(threads=1)
    torch_embedder.encode_blocking(["load"])
    onnx_embedder.encode_blocking(["load"])
    return torch_embedder, onnx_embedder


def test_same_tokens_as_the_torch_path_including_truncation(embedders):
    torch_embedder, onnx_embedder = embedders
    texts = real_questions()
    expected = torch_embedder._model.tokenizer(texts, truncation=True, max_length=torch_embedder._model.max_seq_length)[
        "input_ids"
    ]
    got = [e.ids for e in onnx_embedder._tokenizer.encode_batch(texts)]
    lengths = [len(g) - g.count(0) for g in got]  # the batch pads to its longest
    assert [g[:n] for g, n in zip(got, lengths, strict=True)] == expected
    assert max(lengths) == torch_embedder._model.max_seq_length == 256


@pytest.mark.parametrize("one_at_a_time", [True, False], ids=["one question a call", "padded batches"])
def test_onnx_vectors_are_the_torch_vectors(embedders, one_at_a_time):
    torch_embedder, onnx_embedder = embedders
    if one_at_a_time:  # what a lookup does
        texts = real_questions()
        assert len(texts) >= 400
        expected = np.concatenate([torch_embedder.encode_blocking([t]) for t in texts])
        got = np.concatenate([onnx_embedder.encode_blocking([t]) for t in texts])
    else:  # short questions padded to a long one (not to 256 tokens: seconds a batch on one core)
        texts = real_questions()[:100] + AWKWARD[:3] + ["How do I reset my password? " * 8]
        expected, got = torch_embedder.encode_blocking(texts), onnx_embedder.encode_blocking(texts)
    assert got.shape == expected.shape == (len(texts), 384) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - expected).max() < 1e-4
    assert (got * expected).sum(axis=1).min() > 0.9999
    assert onnx_embedder.model_id == torch_embedder.model_id == MINILM_ID
    assert onnx_embedder.dim == torch_embedder.dim == 384


def test_shipped_calibration_decides_the_same_on_both_runtimes(embedders):
    """Every operating point puts every hand-written pair on the same side of its thresholds."""
    torch_embedder, onnx_embedder = embedders
    pairs = read_text_pairs(DATA / "rewordings.csv") + read_text_pairs(DATA / "near_misses.csv")
    calibration = load_calibration(SemanticConfig(), onnx_embedder.model_id)

    def similarities(embedder) -> np.ndarray:
        a = embedder.encode_blocking([p[0] for p in pairs])
        b = embedder.encode_blocking([p[1] for p in pairs])
        return (a * b).sum(axis=1)

    expected, got = similarities(torch_embedder), similarities(onnx_embedder)
    assert np.abs(got - expected).max() < 1e-5
    for point in calibration.points:
        for threshold in (point.lower, point.upper):
            # A pair within float noise of a threshold could flip on either runtime alike.
            clear = np.abs(expected - threshold) > 1e-5
            assert ((got >= threshold) == (expected >= threshold))[clear].all()


def test_session_runs_on_the_configured_threads_without_spinning():
    options = session_options(1)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_the_runtime_setting_picks_the_embedder(tmp_path):
    from llmesh.services.cache.semantic.tuned import tuned_minilm

    missing = tmp_path / "none.safetensors"
    assert SemanticConfig().embed_runtime == "onnx"
    onnx_embedder = tuned_minilm(weights=missing, runtime="onnx")
    torch_embedder = tuned_minilm(weights=missing, runtime="torch")
    assert isinstance(onnx_embedder, OnnxMiniLMEmbedder) and type(torch_embedder) is MiniLMEmbedder
    assert onnx_embedder.model_id == torch_embedder.model_id == MINILM_ID


def model_folder(folder: pathlib.Path, weights: bytes) -> pathlib.Path:
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    return folder


def test_export_is_keyed_by_the_weights(tmp_path):
    a = model_folder(tmp_path / "a", b"weights one")
    b = model_folder(tmp_path / "b", b"weights two")
    same = model_folder(tmp_path / "same", b"weights one")
    tuned = tmp_path / "tuned.safetensors"
    tuned.write_bytes(b"tensors")
    key = onnx_model.source_key
    assert key(a) == key(same) != key(b)
    assert key(a, tuned) != key(a)
    path, _ = onnx_model.exported_path(a, directory=str(tmp_path / "onnx"))
    assert path.parent == tmp_path / "onnx" and path.suffix == ".onnx"
    assert onnx_model.exported_path(b, directory=str(tmp_path / "onnx"))[0] != path


def test_an_existing_export_is_reused_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    model = model_folder(tmp_path / "m", b"weights")
    out = tmp_path / "onnx"

    def failing_export(model_path, partial, **kwargs):
        pathlib.Path(partial).write_bytes(b"half a file")
        raise RuntimeError("export failed")

    monkeypatch.setattr(onnx_model, "export", failing_export)
    with pytest.raises(RuntimeError):
        onnx_model.ensure_exported(model, directory=str(out))
    assert list(out.iterdir()) == []  # no partial file, and no target a later start would trust

    def export(model_path, partial, **kwargs):
        pathlib.Path(partial).write_bytes(b"onnx")
        calls.append(kwargs["key"])

    calls: list[str] = []
    monkeypatch.setattr(onnx_model, "export", export)
    first = onnx_model.ensure_exported(model, directory=str(out))
    second = onnx_model.ensure_exported(model, directory=str(out))
    assert first == second and first.read_bytes() == b"onnx" and len(calls) == 1
    assert [p.name for p in out.iterdir()] == [first.name]


def test_setup_prepares_the_export_the_service_loads(tmp_path, monkeypatch):
    exported = []
    monkeypatch.setattr(onnx_model, "ensure_exported", lambda *a, **k: exported.append((a, k)) or tmp_path)
    assert onnx_model.prepare(SemanticConfig(embed_runtime="torch")) is None
    assert onnx_model.prepare(SemanticConfig(embedder="triton")) is None
    assert onnx_model.prepare(SemanticConfig(onnx_dir=str(tmp_path))) == tmp_path
    ((args, kwargs),) = exported
    assert args[0] == minilm_path() and kwargs["directory"] == str(tmp_path)


async def test_fine_tuned_weights_export_to_the_same_vectors(embedders, tmp_path):
    """A fresh export (empty folder) of the base model with tuned tensors applied."""
    from llmesh.services.cache.semantic.tuned import TunedMiniLMEmbedder, tuned_minilm
    from safetensors.torch import save_file

    torch_embedder, _ = embedders
    layer = "encoder.layer.5.output.dense.weight"
    original = torch_embedder._model[0].auto_model.state_dict()[layer]
    path = tmp_path / "w.safetensors"
    save_file({layer: (original * 1.5).half().contiguous()}, str(path), metadata={"model_id": "test-tuned"})

    tuned_torch = TunedMiniLMEmbedder(path, threads=1)
    tuned_onnx = tuned_minilm(weights=path, runtime="onnx", onnx_dir=str(tmp_path / "onnx"))
    try:
        assert tuned_onnx.model_id == tuned_torch.model_id == "test-tuned"
        texts = real_questions()[:60]
        expected = await tuned_torch.embed(texts)
        got = await tuned_onnx.embed(texts)
        assert pathlib.Path(tuned_onnx.onnx_path).parent == tmp_path / "onnx"
        assert np.abs(got - expected).max() < 1e-4
        # The tuned tensors took effect: not the base model's vectors.
        assert np.abs(got - torch_embedder.encode_blocking(texts)).max() > 1e-3
    finally:
        await tuned_torch.close()
        await tuned_onnx.close()
