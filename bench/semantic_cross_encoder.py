"""The cross-encoder candidate for the semantic cache's second stage, measured and not chosen
(docs/reports/semantic_cache.md): all-MiniLM-L6-v2 fine-tuned on concatenated question pairs,
all layers, binary cross-entropy, both orders of every train pair.

    .venv/bin/python bench/semantic_cross_encoder.py [--epochs 1] [--lr 4e-5] [--threads 2]

Same split as the shipped decision (pairs.py, by question). Prints validation and test ROC AUC,
the share of duplicates served at the score thresholds that allow 0.5 / 1 / 2 / 5 % of the
validation non-duplicates, and the share of the hand-written rewordings and near misses served
at the same thresholds. About 10 minutes per epoch on two idle cores; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent

from llmesh.services.cache.semantic.embedder import minilm_path  # noqa: E402
from llmesh.services.cache.semantic.pairs import read_pairs, read_text_pairs, split_by_question  # noqa: E402

RATES = (0.005, 0.01, 0.02, 0.05)


def main() -> None:
    import torch
    from sklearn.metrics import roc_auc_score
    from transformers import AutoModel, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cache" / "paraphrase_pairs_dev.csv"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=4e-5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    splits = split_by_question(read_pairs(args.data))
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path())
    head = torch.nn.Linear(model.config.hidden_size, 1)

    def logits(pairs):
        enc = tokenizer(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            padding=True,
            truncation=True,
            max_length=128,
            return_tensors="pt",
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return head((hidden * mask).sum(1) / mask.sum(1)).squeeze(-1)

    def scores(pairs):
        model.eval()
        with torch.inference_mode():
            return torch.cat([logits(pairs[i : i + 128]) for i in range(0, len(pairs), 128)]).numpy()

    train = [(p.a, p.b, float(p.duplicate)) for p in splits["train"]]
    train += [(b, a, y) for a, b, y in train]
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    batch = 32
    steps = args.epochs * ((len(train) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, (steps - s) / steps)
    )
    rng = random.Random(0)
    for epoch in range(args.epochs):
        model.train()
        rng.shuffle(train)
        started = time.perf_counter()
        for i in range(0, len(train), batch):
            rows = train[i : i + batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits([(a, b) for a, b, _ in rows]), torch.tensor([y for *_, y in rows])
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}: {time.perf_counter() - started:.0f} s", flush=True)

    val = [(p.a, p.b) for p in splits["val"]]
    val_y = np.array([p.duplicate for p in splits["val"]])
    val_s = scores(val)
    negatives = np.sort(val_s[~val_y])[::-1]
    thresholds = {r: negatives[int(r * len(negatives))] for r in RATES}
    test = [(p.a, p.b) for p in splits["test"]]
    test_y = np.array([p.duplicate for p in splits["test"]])
    test_s = scores(test)
    handwritten = ROOT / "services" / "cache" / "tests" / "semantic" / "data"
    rewordings = scores(read_text_pairs(handwritten / "rewordings.csv"))
    near_misses = scores(read_text_pairs(handwritten / "near_misses.csv"))
    print(f"ROC AUC: validation {roc_auc_score(val_y, val_s):.3f}, test {roc_auc_score(test_y, test_s):.3f}")
    for rate, t in thresholds.items():
        print(
            f"validation false-hit rate {rate:.1%}: test recall {(test_s[test_y] > t).mean():.3f}, "
            f"test false-hit rate {(test_s[~test_y] > t).mean():.4f}, rewordings {(rewordings > t).mean():.2f}, "
            f"near misses {(near_misses > t).mean():.2f}"
        )


if __name__ == "__main__":
    main()
