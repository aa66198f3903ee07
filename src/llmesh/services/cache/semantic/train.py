"""Trains and calibrates the semantic cache's decision from labelled question pairs.

    .venv/bin/python -m llmesh.services.cache.semantic.train \
        [--data ../shared/data/cache/paraphrase_pairs_dev.csv] [--layers 2] [--epochs 3] [--base]

1. Splits the pairs 60/20/20 into train / validation / test by question (pairs.py).
2. Fine-tunes the top `--layers` encoder layers of all-MiniLM-L6-v2 on the train split
   (finetune.py) and writes them to models/minilm_paraphrase.safetensors (`--base`: keeps the base
   model and calibrates it instead; `--weights FILE`: calibrates weights trained before).
3. Embeds validation and test questions with the runtime embedder (the written float16 weights).
4. Second stage: gradient-boosted trees over the similarity and lexical features (verifier.py),
   fitted on validation pairs; out-of-fold scores (5 folds) stand in for unseen pairs.
5. Operating points for each target false-hit rate, fitted on validation (calibrate.py).
6. Reports every point on the test split, and on the hand-written rewordings and near misses of
   tests/cache_semantic/data. Writes models/calibration.<model>.json, models/verifier.<model>.json
   and models/metrics.<model>.json (read by docs/reports/semantic_cache.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import time

import numpy as np

from .calibrate import TARGETS, similarity_only, two_stage
from .decision import Calibration
from .embedder import MINILM_ID, MiniLMEmbedder, collection_name
from .evaluate import as_pairs, embed_texts, measure, similarities, vetoes
from .features import DocumentFrequencies, pair_features
from .finetune import FinetuneSettings, finetune, weights_id
from .pairs import read_pairs, read_text_pairs, split_by_question
from .tuned import TUNED_WEIGHTS, TunedMiniLMEmbedder
from .verifier import PairVerifier, Trees

ROOT = pathlib.Path(__file__).resolve().parents[5]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cache" / "paraphrase_pairs_dev.csv"
HANDWRITTEN = ROOT / "tests" / "cache_semantic" / "data"
MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"


def _gbt():
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=30, l2_regularization=1.0, random_state=0
    )


def fit_verifier(features: np.ndarray, y: np.ndarray, folds: int = 5) -> tuple[Trees, np.ndarray]:
    """The trees fitted on all rows, and each row's score from trees that did not see it."""
    from sklearn.model_selection import StratifiedKFold

    out_of_fold = np.zeros(len(y))
    for fit_rows, held_rows in StratifiedKFold(folds, shuffle=True, random_state=0).split(features, y):
        model = _gbt().fit(features[fit_rows], y[fit_rows])
        out_of_fold[held_rows] = model.predict_proba(features[held_rows])[:, 1]
    final = _gbt().fit(features, y)
    trees = Trees.from_sklearn(final)
    check = final.predict_proba(features[:50])[:, 1]
    mine = np.array([trees.probability(row) for row in features[:50]])
    if not np.allclose(check, mine, atol=1e-6):
        raise AssertionError("the exported trees disagree with scikit-learn")
    return trees, out_of_fold


def slug(model_id: str) -> str:
    return collection_name(model_id).removeprefix("llmesh_semantic_")


async def run(args) -> dict:
    started = time.perf_counter()
    splits = split_by_question(read_pairs(args.data))
    report: dict = {
        "data": str(pathlib.Path(args.data).name),
        "split_sizes": {k: {"pairs": len(v), "duplicates": sum(p.duplicate for p in v)} for k, v in splits.items()},
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.base:
        embedder = MiniLMEmbedder(threads=args.threads)
    elif args.weights:
        embedder = TunedMiniLMEmbedder(pathlib.Path(args.weights), threads=args.threads)
        report["finetune"] = {"reused": str(pathlib.Path(args.weights).name)}
    else:
        settings = FinetuneSettings(layers=args.layers, epochs=args.epochs, threads=args.threads)
        t0 = time.perf_counter()
        tensors = finetune(splits["train"], settings)
        report["finetune"] = {**dataclasses.asdict(settings), "seconds": round(time.perf_counter() - t0)}
        from safetensors.torch import save_file

        model_id = f"{MINILM_ID}-paraphrase-{weights_id(tensors)}"
        weights = out / TUNED_WEIGHTS.name
        save_file(
            tensors,
            str(weights),
            metadata={"model_id": model_id, "base": MINILM_ID, "layers": str(args.layers), "epochs": str(args.epochs)},
        )
        embedder = TunedMiniLMEmbedder(weights, threads=args.threads)
    await embedder.start()
    model_id = embedder.model_id
    print(f"embedder {model_id}", flush=True)

    rewordings = read_text_pairs(HANDWRITTEN / "rewordings.csv")
    near_misses = read_text_pairs(HANDWRITTEN / "near_misses.csv")
    val_pairs, val_y = as_pairs(splits["val"])
    test_pairs, test_y = as_pairs(splits["test"])
    texts = [q for pairs in (val_pairs, test_pairs, rewordings, near_misses) for pair in pairs for q in pair]
    vectors = await embed_texts(embedder, texts)
    await embedder.close()

    df = DocumentFrequencies.from_texts(q for p in splits["train"] for q in (p.a, p.b))

    def feature_rows(pairs, sims):
        return np.array([pair_features(a, b, s, df) for (a, b), s in zip(pairs, sims, strict=True)])

    val_sim, test_sim = similarities(vectors, val_pairs), similarities(vectors, test_pairs)
    val_vetoed = vetoes(val_pairs)
    trees, val_stage2 = fit_verifier(feature_rows(val_pairs, val_sim), val_y)
    verifier = PairVerifier(trees, df)

    def stage2_of(pairs, sims):
        return np.array([verifier.probability(a, b, s) for (a, b), s in zip(pairs, sims, strict=True)])

    calibration = Calibration(
        embedder=model_id,
        stage2=f"verifier.{slug(model_id)}.json",
        points=tuple(two_stage(val_sim, val_stage2, val_y, t, margin=args.margin, vetoed=val_vetoed) for t in TARGETS),
    )
    plain = Calibration(
        model_id, tuple(similarity_only(val_sim, val_y, t, margin=args.margin, vetoed=val_vetoed) for t in TARGETS)
    )

    test_stage2 = stage2_of(test_pairs, test_sim)
    labelled = {"val": (val_pairs, val_y), "test": (test_pairs, test_y)}

    from sklearn.metrics import roc_auc_score

    report.update(
        model_id=model_id,
        auc={
            "val_similarity": roc_auc_score(val_y, val_sim),
            "test_similarity": roc_auc_score(test_y, test_sim),
            "val_stage2_out_of_fold": roc_auc_score(val_y, val_stage2),
            "test_stage2": roc_auc_score(test_y, test_stage2),
        },
        two_stage=measure(
            calibration, vectors, stage2_of, labelled, rewordings, near_misses, stage2_given={"val": val_stage2}
        ),
        similarity_only=measure(plain, vectors, stage2_of, labelled, rewordings, near_misses),
        handwritten={"rewordings": len(rewordings), "near_misses": len(near_misses)},
        margin=args.margin,
        seconds=round(time.perf_counter() - started),
    )
    name = slug(model_id)
    verifier.save(out / calibration.stage2, model_id=model_id)
    (out / f"calibration.{name}.json").write_text(json.dumps(calibration.to_json(), indent=1) + "\n")
    (out / f"metrics.{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    for row in report["two_stage"]:
        t = row["test"]
        print(
            f"target {row['target']:.3f}: test recall {t['recall']:.3f} false hits {t['false_hit_rate']:.4f} "
            f"precision {t['precision']:.3f}; rewordings {row['rewordings_served']:.2f}, "
            f"near misses {row['near_misses_served']:.2f}",
            flush=True,
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--margin", type=float, default=0.7, help="fit each target at margin x target on validation")
    parser.add_argument("--base", action="store_true", help="calibrate the base model, no fine-tuning")
    parser.add_argument("--weights", default="", help="calibrate these fine-tuned weights instead of training new ones")
    parser.add_argument("--out", default=str(MODELS_DIR))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
