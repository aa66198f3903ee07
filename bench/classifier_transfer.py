"""Which features carry over to task families the classifier has never seen: the trained
structure-feature model against MiniLM sentence embeddings and RouteLLM-style nearest-neighbour
evidence, each scored by leave-one-family-out cross-validation (complexity/families.py).

    .venv/bin/python bench/classifier_transfer.py [--data ../shared/data/routing/mmlu_dev.csv]
                                                  [--out bench/results/classifier_transfer.md]

Embeddings: the cache service's exported all-MiniLM-L6-v2 (ONNX, in ~/.cache/llmesh/onnx after
`make setup`), run here with onnxruntime and tokenizers (mean pooling, unit length, 128 tokens),
cached under ~/.cache/llmesh/classifier-bench/. Nothing here is imported by the service.

Variants (all ridge regressions on the target strong_correct - weak_correct, alpha 100):
  structure      the classifier's prompt features
  knn            similarity-weighted gain of the 50 most similar training prompts (softmax of
                 10 x cosine), RouteLLM's similarity-weighted ranking in its simplest form
  embedding      ridge on the 384 embedding dimensions (alpha 1000)
  structure+knn, structure+embedding, structure+knn+embedding   stacked; the neighbour and embedding
                 inputs of training rows come from other groups only (as for the held-out group), so
                 the stack does not learn to trust evidence that is leaked in training
Training folds only: a held-out prompt's neighbours are all in the training groups.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from llmesh.services.classifier.complexity.evaluation import routing_metrics  # noqa: E402
from llmesh.services.classifier.complexity.families import families  # noqa: E402
from llmesh.services.classifier.complexity.training import (  # noqa: E402
    feature_matrix,
    load_routing_data,
    subject_stats,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "routing" / "mmlu_dev.csv"
CACHE = pathlib.Path.home() / ".cache" / "llmesh" / "classifier-bench"
MAX_TOKENS = 128
K = 50


def embed(prompts: tuple[str, ...]) -> np.ndarray:
    key = hashlib.sha256(("\0".join(prompts) + f"|{MAX_TOKENS}").encode()).hexdigest()[:16]
    path = CACHE / f"minilm-{key}.npy"
    if path.is_file():
        return np.load(path)
    import onnxruntime as ort
    from tokenizers import Tokenizer

    onnx = sorted((pathlib.Path.home() / ".cache" / "llmesh" / "onnx").glob("minilm-*.onnx"))[-1]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx), sess_options=options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(onnx.with_name(onnx.name.removesuffix(".onnx") + ".tokenizer.json")))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    names = [i.name for i in session.get_inputs()]
    out = np.zeros((len(prompts), 384), dtype=np.float32)
    order = np.argsort([len(p) for p in prompts])
    for start in range(0, len(prompts), 32):
        idx = order[start : start + 32]
        enc = tokenizer.encode_batch([prompts[i] for i in idx])
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        (hidden,) = session.run(None, {n: feeds[n] for n in names})
        mask = feeds["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def ridge(X: np.ndarray, y: np.ndarray, alpha: float):
    mu, sd = X.mean(0), X.std(0)
    sd[sd < 1e-9] = 1.0
    Z = (X - mu) / sd
    w = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (y - y.mean()))
    return lambda Xt: y.mean() + ((Xt - mu) / sd) @ w


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "classifier_transfer.md"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = load_routing_data(args.data)
    stats = subject_stats(data)
    unusable = sorted(s.subject for s in stats if s.unusable)
    noisy = sorted(s.subject for s in stats if s.suspect)
    trainable = ~np.isin(data.subjects, unusable)
    reliable = ~np.isin(data.subjects, noisy)
    gain = data.strong_correct.astype(float) - data.weak_correct.astype(float)
    X = feature_matrix(data.prompts)
    E = embed(data.prompts)
    S = E @ E.T
    family = families(data.subjects)

    def knn(test, pool, groups=None):
        sims = S[np.ix_(test, pool)].copy()
        if groups is not None:  # a training row's neighbours: other groups only, as at test time
            sims[groups[test][:, None] == groups[pool][None, :]] = -np.inf
        top = np.argpartition(-sims, K, axis=1)[:, :K]
        top_sims = np.take_along_axis(sims, top, 1)
        w = np.exp(10 * top_sims)
        w /= w.sum(1, keepdims=True)
        return np.column_stack([(w * gain[pool][top]).sum(1), top_sims.mean(1)])

    def cross_validate(groups, variant):
        out = np.zeros(len(data))
        for g in sorted(set(groups.tolist())):
            te = np.nonzero(groups == g)[0]
            tr = np.nonzero((groups != g) & trainable)[0]
            if variant == "knn":
                out[te] = knn(te, tr)[:, 0]
                continue
            if variant == "embedding":
                out[te] = ridge(E[tr], gain[tr], 1000.0)(E[te])
                continue
            parts_tr, parts_te = [X[tr]], [X[te]]
            if "knn" in variant:
                parts_tr.append(knn(tr, tr, groups))
                parts_te.append(knn(te, tr))
            if "embedding" in variant:
                inner = np.zeros(len(tr))
                for h in sorted(set(groups[tr].tolist())):
                    a = groups[tr] == h
                    inner[a] = ridge(E[tr][~a], gain[tr][~a], 1000.0)(E[tr][a])
                parts_tr.append(inner[:, None])
                parts_te.append(ridge(E[tr], gain[tr], 1000.0)(E[te])[:, None])
            out[te] = ridge(np.hstack(parts_tr), gain[tr], 100.0)(np.hstack(parts_te))
        return out

    def apgr(scores, mask):
        return routing_metrics(scores[mask], data.weak_correct[mask], data.strong_correct[mask]).apgr

    everything = np.ones(len(data), dtype=bool)
    lines = [
        "# Classifier: which features carry over to unseen task families",
        "",
        f"`bench/classifier_transfer.py` on `{pathlib.Path(args.data).name}` ({len(data)} prompts). APGR of "
        "out-of-fold scores (ridge regressions; see the script's docstring), leaving out one subject or one "
        "whole task family at a time.",
        "",
        "| features | subject left out, all | family left out, all | family left out, reliable-label subjects |",
        "| --- | ---: | ---: | ---: |",
    ]
    for variant in ("structure", "knn", "embedding", "structure+knn", "structure+embedding", "structure+knn+embedding"):
        by_subject = cross_validate(data.subjects, variant)
        by_family = cross_validate(family, variant)
        row = (
            f"| {variant} | {apgr(by_subject, everything):.3f} | **{apgr(by_family, everything):.3f}** | "
            f"{apgr(by_family, reliable):.3f} |"
        )
        print(row, flush=True)
        lines.append(row)
    lines += ["", f"Run time {time.perf_counter() - started:.0f} s.", ""]
    pathlib.Path(args.out).write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
