"""The second stage: gradient-boosted trees over the pair's similarity and cheap lexical features
(features.py), trained by train.py. The trees are stored as JSON and evaluated here with numpy,
so the file does not depend on the scikit-learn version that trained it (and is not a pickle)."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from .features import NAMES, DocumentFrequencies, pair_features


class Trees:
    """A binary gradient-boosted ensemble: sigmoid(baseline + sum of leaf values)."""

    def __init__(self, baseline: float, trees: list[dict[str, list]]):
        self.baseline = baseline
        self.trees = [{k: np.asarray(v) for k, v in t.items()} for t in trees]
        # All trees walked together, one level per step (numpy over the trees): a walk node by
        # node in Python costs ~1 ms for 200 trees, this ~0.05 ms. Padding nodes are leaves of 0.
        width = max(len(t["leaf"]) for t in self.trees)

        def packed(key: str, dtype, fill) -> np.ndarray:
            out = np.full((len(self.trees), width), fill, dtype=dtype)
            for row, t in enumerate(self.trees):
                out[row, : len(t[key])] = t[key]
            return out

        self._feature = packed("feature", np.int64, 0)
        self._threshold = packed("threshold", np.float64, 0.0)
        self._left = packed("left", np.int64, 0)
        self._right = packed("right", np.int64, 0)
        self._leaf = packed("leaf", bool, True)
        self._value = packed("value", np.float64, 0.0)
        self._rows = np.arange(len(self.trees))
        self._depth = max((_depth(t) for t in self.trees), default=0)

    @classmethod
    def from_sklearn(cls, model) -> Trees:
        trees = []
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            trees.append(
                {
                    "feature": nodes["feature_idx"].astype(int).tolist(),
                    "threshold": nodes["num_threshold"].astype(float).tolist(),
                    "left": nodes["left"].astype(int).tolist(),
                    "right": nodes["right"].astype(int).tolist(),
                    "leaf": nodes["is_leaf"].astype(int).tolist(),
                    "value": nodes["value"].astype(float).tolist(),
                }
            )
        return cls(float(np.ravel(model._baseline_prediction)[0]), trees)

    def raw(self, x: list[float] | np.ndarray) -> float:
        x = np.asarray(x, dtype=np.float64)
        rows, node = self._rows, np.zeros(len(self._rows), dtype=np.int64)
        for _ in range(self._depth):
            left = x[self._feature[rows, node]] <= self._threshold[rows, node]
            step = np.where(left, self._left[rows, node], self._right[rows, node])
            node = np.where(self._leaf[rows, node], node, step)
        return self.baseline + float(self._value[rows, node].sum())

    def probability(self, x) -> float:
        return 1.0 / (1.0 + math.exp(-self.raw(x)))

    def to_json(self) -> dict:
        return {"baseline": self.baseline, "trees": [{k: v.tolist() for k, v in t.items()} for t in self.trees]}


def _depth(tree: dict[str, np.ndarray], node: int = 0) -> int:
    if tree["leaf"][node]:
        return 0
    return 1 + max(_depth(tree, int(tree["left"][node])), _depth(tree, int(tree["right"][node])))


class PairVerifier:
    name = "gbt-lexical"

    def __init__(self, trees: Trees, df: DocumentFrequencies):
        self.trees = trees
        self.df = df

    def probability(self, query_text: str, candidate_text: str, similarity: float) -> float:
        return self.trees.probability(pair_features(query_text, candidate_text, similarity, self.df))

    async def score(self, query_text: str, candidate_text: str, similarity: float) -> float:
        # Microseconds of work: not worth a thread hop.
        return self.probability(query_text, candidate_text, similarity)

    def save(self, path: str | pathlib.Path, **meta) -> None:
        doc = {
            "kind": self.name,
            "features": list(NAMES),
            "document_frequencies": {"documents": self.df.documents, "counts": self.df.counts},
            **self.trees.to_json(),
            **meta,
        }
        pathlib.Path(path).write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True))

    @classmethod
    def load(cls, path: str | pathlib.Path) -> PairVerifier:
        doc = json.loads(pathlib.Path(path).read_text())
        if doc.get("kind") != cls.name or doc.get("features") != list(NAMES):
            raise ValueError(f"{path} is not a {cls.name} verifier for these features")
        df = DocumentFrequencies(doc["document_frequencies"]["counts"], doc["document_frequencies"]["documents"])
        return cls(Trees(doc["baseline"], doc["trees"]), df)
