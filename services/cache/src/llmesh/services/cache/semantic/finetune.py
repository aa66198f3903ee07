"""Fine-tunes the top encoder layers of all-MiniLM-L6-v2 on labelled question pairs.

Loss: CoSENT (every duplicate pair of a batch must score above every non-duplicate pair: the
ranking a threshold at a low false-hit rate needs) plus MultipleNegativesRanking on the batch's
duplicates (a duplicate must be closer than the other questions of the batch: keeps the space
useful for nearest-neighbour search).

The frozen bottom layers run once per question (their outputs are kept), so an epoch costs the
trained layers only: minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from collections.abc import Callable

import numpy as np

from .pairs import Pair


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    layers: int = 2  # top encoder layers trained (6: all)
    epochs: int = 3
    learning_rate: float = 1e-4
    batch_pairs: int = 32
    cosent_scale: float = 20.0
    mnrl_weight: float = 1.0
    seed: int = 0
    threads: int = 2


def _load_transformer():
    import torch  # noqa: F401
    from sentence_transformers import SentenceTransformer

    from .embedder import minilm_path

    model = SentenceTransformer(minilm_path(), device="cpu")
    return model, model[0].auto_model, model.tokenizer


class _TopLayers:
    """Runs the top `layers` encoder layers on cached inputs, with mean pooling."""

    def __init__(self, transformer, layers: int):
        import torch

        encoder = transformer.encoder.layer
        self.cut = len(encoder) - layers
        self.layers = encoder[self.cut :]
        self.torch = torch

    def __call__(self, hidden: list, ids: list[int]):
        torch = self.torch
        length = max(hidden[i].shape[0] for i in ids)
        x = torch.zeros(len(ids), length, hidden[ids[0]].shape[1])
        mask = torch.zeros(len(ids), length)
        for row, i in enumerate(ids):
            n = hidden[i].shape[0]
            x[row, :n] = hidden[i]
            mask[row, :n] = 1
        additive = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min
        h = x
        for layer in self.layers:
            h = layer(h, attention_mask=additive)
            h = h[0] if isinstance(h, tuple) else h
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)


def _inputs_of_layer(transformer, tokenizer, texts: list[str], cut: int, batch: int = 128) -> list:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            enc = tokenizer(
                texts[start : start + batch], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            states = transformer(**enc, output_hidden_states=True).hidden_states[cut]
            lengths = enc["attention_mask"].sum(1).tolist()
            out.extend(states[row, : int(n)].clone() for row, n in enumerate(lengths))
    return out


def finetune(
    train: list[Pair],
    settings: FinetuneSettings,
    *,
    log: Callable[[str], None] = print,
) -> dict:
    """Returns the trained tensors (name -> float16 tensor) of the transformer."""
    import torch

    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    _, transformer, tokenizer = _load_transformer()
    transformer.eval()
    top = _TopLayers(transformer, settings.layers)
    texts = sorted({q for p in train for q in (p.a, p.b)})
    position = {q: i for i, q in enumerate(texts)}
    started = time.perf_counter()
    hidden = _inputs_of_layer(transformer, tokenizer, texts, top.cut)
    log(f"inputs of layer {top.cut} for {len(texts)} questions: {time.perf_counter() - started:.0f} s")

    for p in transformer.parameters():
        p.requires_grad = False
    params = [p for p in top.layers.parameters()]
    for p in params:
        p.requires_grad = True
    rows = [(position[p.a], position[p.b], float(p.duplicate)) for p in train]
    steps = settings.epochs * ((len(rows) + settings.batch_pairs - 1) // settings.batch_pairs)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    warmup = max(1, int(0.1 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    rng = random.Random(settings.seed)
    for epoch in range(settings.epochs):
        top.layers.train()
        rng.shuffle(rows)
        started, total = time.perf_counter(), 0.0
        for start in range(0, len(rows), settings.batch_pairs):
            batch = rows[start : start + settings.batch_pairs]
            a = top(hidden, [r[0] for r in batch])
            b = top(hidden, [r[1] for r in batch])
            y = torch.tensor([r[2] for r in batch])
            loss = _cosent(a, b, y, settings.cosent_scale)
            if settings.mnrl_weight > 0 and y.sum() > 1:
                loss = loss + settings.mnrl_weight * _mnrl(a, b, y.bool())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {total:.1f}, {time.perf_counter() - started:.0f} s")
    state = transformer.state_dict()
    names = [n for n in state if _layer_index(n) is not None and _layer_index(n) >= top.cut]
    return {n: state[n].detach().to(torch.float16).contiguous() for n in names}


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "encoder" and parts[1] == "layer":
        return int(parts[2])
    return None


def _cosent(a, b, y, scale: float):
    import torch

    cos = (a * b).sum(-1) * scale
    diff = cos[None, :] - cos[:, None]  # [i, j]: cos_j - cos_i, penalised where y_i > y_j
    diff = diff - (1 - (y[:, None] > y[None, :]).float()) * 1e12
    return torch.logsumexp(torch.cat([torch.zeros(1), diff.flatten()]), 0)


def _mnrl(a, b, duplicate):
    import torch

    sims = a[duplicate] @ torch.cat([b[duplicate], b[~duplicate]]).T * 20.0
    return torch.nn.functional.cross_entropy(sims, torch.arange(int(duplicate.sum())))


def weights_id(tensors: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name].float().numpy()).tobytes())
    return digest.hexdigest()[:8]
