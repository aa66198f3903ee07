"""Scores labelled pairs the way a lookup scores a query against its nearest entry (the runtime
embedder's cosine, then the second stage), and reports what each operating point does."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from .calibrate import Outcome, outcome
from .decision import Calibration
from .embedder import Embedder
from .features import veto
from .pairs import Pair, read_text_pairs, rewordings_by_split


@dataclasses.dataclass
class ScoredPairs:
    similarity: np.ndarray
    stage2: np.ndarray | None
    duplicate: np.ndarray
    vetoed: np.ndarray | None = None


def vetoes(pairs: list[tuple[str, str]]) -> np.ndarray:
    return np.array([veto(a, b) is not None for a, b in pairs], dtype=bool)


async def embed_texts(embedder: Embedder, texts: list[str], batch: int = 256) -> dict[str, np.ndarray]:
    unique = sorted(set(texts))
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(unique), batch):
        chunk = unique[start : start + batch]
        for text, vector in zip(chunk, await embedder.embed(chunk), strict=True):
            vectors[text] = vector
    return vectors


def similarities(vectors: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> np.ndarray:
    return np.array([float(vectors[a] @ vectors[b]) for a, b in pairs], dtype=np.float64)


def outcomes(calibration: Calibration, scored: ScoredPairs) -> dict[float, Outcome]:
    return {
        p.target_false_hit_rate: outcome(p, scored.similarity, scored.stage2, scored.duplicate, scored.vetoed)
        for p in calibration.points
    }


def served_share(
    calibration: Calibration, similarity: np.ndarray, stage2: np.ndarray | None, vetoed: np.ndarray | None
) -> dict[float, float]:
    """For pairs that are all paraphrases (or all near misses): the share a point would serve."""
    ones = np.ones(len(similarity), dtype=bool)
    return {p.target_false_hit_rate: outcome(p, similarity, stage2, ones, vetoed).recall for p in calibration.points}


def rewordings_and_near_misses(
    data_dir: pathlib.Path, splits: dict[str, list[Pair]]
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[tuple[str, str]]]]:
    """The team-written rewordings of dev questions, by split, and the sets every decision is
    judged on besides the labelled test pairs: the rewordings of test questions, the hand-written
    rewordings and the hand-written near misses (all in `data_dir`)."""
    by_split = rewordings_by_split(data_dir / "quora_rewordings.csv", splits)
    judged = {
        "quora_rewordings": by_split["test"],
        "rewordings": read_text_pairs(data_dir / "rewordings.csv"),
        "near_misses": read_text_pairs(data_dir / "near_misses.csv"),
    }
    return by_split, judged


def as_pairs(pairs: list[Pair]) -> tuple[list[tuple[str, str]], np.ndarray]:
    return [(p.a, p.b) for p in pairs], np.array([p.duplicate for p in pairs], dtype=bool)


def measure(
    calibration: Calibration,
    vectors: dict[str, np.ndarray],
    stage2_of,
    labelled: dict[str, tuple[list[tuple[str, str]], np.ndarray]],
    unlabelled: dict[str, list[tuple[str, str]]],
) -> list[dict]:
    """One row per operating point: what it does on each labelled split, and the share of each
    `unlabelled` set (all rewordings, or all near misses) it serves, as `<name>_served`.
    `stage2_of(pairs, sims)` scores pairs."""
    with_stage2 = bool(calibration.stage2)

    def score(name, pairs, sims):
        if not with_stage2:
            return None
        return stage2_of(pairs, sims)

    results = {}
    for name, (pairs, y) in labelled.items():
        sims = similarities(vectors, pairs)
        results[name] = outcomes(calibration, ScoredPairs(sims, score(name, pairs, sims), y, vetoes(pairs)))
    shares = {}
    for name, pairs in unlabelled.items():
        sims = similarities(vectors, pairs)
        shares[name] = served_share(calibration, sims, score(name, pairs, sims), vetoes(pairs))
    return [
        {
            "target": p.target_false_hit_rate,
            "point": dataclasses.asdict(p),
            **{name: dataclasses.asdict(results[name][p.target_false_hit_rate]) for name in labelled},
            **{f"{name}_served": share[p.target_false_hit_rate] for name, share in shares.items()},
        }
        for p in calibration.points
    ]
