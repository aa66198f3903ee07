"""Trains and calibrates the semantic cache's decision from labelled question pairs.

    .venv/bin/python -m llmesh.services.cache.semantic.train \
        [--data ../shared/data/cache/paraphrase_pairs_dev.csv] [--layers 2] [--epochs 3] [--base]

1. Splits the pairs 60/20/20 into train / validation / test by question (pairs.py).
2. Fine-tunes the top `--layers` encoder layers of all-MiniLM-L6-v2 on the train split
   (finetune.py) and writes them to models/minilm_paraphrase.safetensors (`--base`: keeps the base
   model and calibrates it instead; `--weights FILE`: calibrates weights trained before).
3. Embeds every question with the runtime embedder (the written float16 weights).
4. Second stage: gradient-boosted trees over the similarity and lexical features (verifier.py),
   fitted on the train split's pairs plus the team-written rewordings of train questions
   (services/cache/tests/semantic/data/quora_rewordings.csv, positives): Quora's duplicates are loose
   ("best way to lose weight" / "how to lose weight fast") and teach little about a plain
   rewording, which is what a cache sees most.
5. Operating points for each target false-hit rate, fitted on validation (calibrate.py): the
   verifier never saw those pairs.
6. Reports every point on the test split, on the rewordings of test questions, and on the
   hand-written rewordings and near misses of services/cache/tests/semantic/data. Writes
   models/calibration.<model>.json, models/verifier.<model>.json and models/metrics.<model>.json
   (read by docs/reports/semantic_cache.md). `--salt` draws another split, to see how much the
   figures move.
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
from .embedder import MINILM_ID, OnnxMiniLMEmbedder, collection_name
from .evaluate import as_pairs, embed_texts, measure, rewordings_and_near_misses, similarities, vetoes
from .features import DocumentFrequencies, pair_features
from .finetune import FinetuneSettings, finetune, weights_id
from .pairs import read_pairs, split_by_question
from .tuned import TUNED_WEIGHTS, TunedMiniLMEmbedder
from .verifier import PairVerifier, Trees

SERVICE_ROOT = pathlib.Path(__file__).resolve().parents[5]  # services/cache in the repository
DEFAULT_DATA = SERVICE_ROOT.parents[1].parent / "shared" / "data" / "cache" / "paraphrase_pairs_dev.csv"
HANDWRITTEN = SERVICE_ROOT / "tests" / "semantic" / "data"
MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"


def _gbt():
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=30, l2_regularization=1.0, random_state=0
    )


def fit_verifier(features: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> Trees:
    final = _gbt().fit(features, y, sample_weight=weights)
    trees = Trees.from_sklearn(final)
    check = final.predict_proba(features[:50])[:, 1]
    mine = np.array([trees.probability(row) for row in features[:50]])
    if not np.allclose(check, mine, atol=1e-6):
        raise AssertionError("the exported trees disagree with scikit-learn")
    return trees


def slug(model_id: str) -> str:
    return collection_name(model_id).removeprefix("llmesh_semantic_")


async def run(args) -> dict:
    started = time.perf_counter()
    splits = split_by_question(read_pairs(args.data), salt=args.salt)
    report: dict = {
        "data": str(pathlib.Path(args.data).name),
        "split_salt": args.salt,
        "split_sizes": {k: {"pairs": len(v), "duplicates": sum(p.duplicate for p in v)} for k, v in splits.items()},
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.base:
        embedder = OnnxMiniLMEmbedder(threads=args.threads)
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

    quora_rewordings, unlabelled = rewordings_and_near_misses(HANDWRITTEN, splits)
    train_pairs, train_y = as_pairs(splits["train"])
    val_pairs, val_y = as_pairs(splits["val"])
    test_pairs, test_y = as_pairs(splits["test"])
    fit_pairs = train_pairs + quora_rewordings["train"]
    fit_y = np.concatenate([train_y, np.ones(len(quora_rewordings["train"]), dtype=bool)])
    fit_weights = np.concatenate(
        [np.ones(len(train_y)), np.full(len(quora_rewordings["train"]), args.rewording_weight)]
    )
    texts = [q for pairs in (fit_pairs, val_pairs, test_pairs, *unlabelled.values()) for pair in pairs for q in pair]
    vectors = await embed_texts(embedder, texts)
    await embedder.close()

    df = DocumentFrequencies.from_texts(q for p in splits["train"] for q in (p.a, p.b))

    def feature_rows(pairs, sims):
        return np.array([pair_features(a, b, s, df) for (a, b), s in zip(pairs, sims, strict=True)])

    val_sim, test_sim = similarities(vectors, val_pairs), similarities(vectors, test_pairs)
    val_vetoed = vetoes(val_pairs)
    trees = fit_verifier(feature_rows(fit_pairs, similarities(vectors, fit_pairs)), fit_y, fit_weights)
    verifier = PairVerifier(trees, df)

    def stage2_of(pairs, sims):
        return np.array([verifier.probability(a, b, s) for (a, b), s in zip(pairs, sims, strict=True)])

    val_stage2 = stage2_of(val_pairs, val_sim)
    fit = dict(margin=args.margin, sure_share=args.sure_share, vetoed=val_vetoed)

    calibration = Calibration(
        embedder=model_id,
        stage2=f"verifier.{slug(model_id)}.json",
        points=tuple(two_stage(val_sim, val_stage2, val_y, t, **fit) for t in TARGETS),
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
            "val_stage2": roc_auc_score(val_y, val_stage2),
            "test_stage2": roc_auc_score(test_y, test_stage2),
        },
        two_stage=measure(calibration, vectors, stage2_of, labelled, unlabelled),
        similarity_only=measure(plain, vectors, stage2_of, labelled, unlabelled),
        unlabelled_sets={name: len(pairs) for name, pairs in unlabelled.items()},
        verifier_fit={
            "pairs": len(train_y),
            "rewordings": len(quora_rewordings["train"]),
            "rewording_weight": args.rewording_weight,
        },
        margin=args.margin,
        sure_share=args.sure_share,
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
            f"precision {t['precision']:.3f}; rewordings of test questions {row['quora_rewordings_served']:.2f}, "
            f"hand-written rewordings {row['rewordings_served']:.2f}, "
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
    parser.add_argument("--margin", type=float, default=0.75, help="fit each target at margin x target on validation")
    parser.add_argument(
        "--sure-share",
        type=float,
        default=0.0,
        help="share of the budget the similarity alone may spend (calibrate.py)",
    )
    parser.add_argument(
        "--rewording-weight", type=float, default=2.0, help="weight of a rewording in the verifier's fit"
    )
    parser.add_argument("--base", action="store_true", help="calibrate the base model, no fine-tuning")
    parser.add_argument("--weights", default="", help="calibrate these fine-tuned weights instead of training new ones")
    parser.add_argument(
        "--salt", default="llmesh", help="another salt draws another split (to see how much a figure moves)"
    )
    parser.add_argument("--out", default=str(MODELS_DIR))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
