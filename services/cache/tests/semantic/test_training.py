"""Training and calibration pieces: the split, features, the exported trees, operating points,
and a small end-to-end run of the training command on the team-written pairs in data/."""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import shutil

import numpy as np
import pytest
from llmesh.services.cache.semantic.calibrate import outcome, similarity_only, two_stage
from llmesh.services.cache.semantic.decision import Calibration
from llmesh.services.cache.semantic.features import NAMES, DocumentFrequencies, pair_features
from llmesh.services.cache.semantic.pairs import (
    Pair,
    question_key,
    read_pairs,
    read_text_pairs,
    rewordings_by_split,
    split_by_question,
)
from llmesh.services.cache.semantic.verifier import PairVerifier, Trees

DATA = pathlib.Path(__file__).parent / "data"


def test_split_never_shares_a_question_and_is_stable():
    rng = np.random.default_rng(0)
    questions = [f"question {i}" for i in range(400)]
    pairs = [
        Pair(questions[a], questions[b], bool(rng.integers(2))) for a, b in rng.integers(0, 400, (600, 2)) if a != b
    ]
    splits = split_by_question(pairs)
    assert sum(len(v) for v in splits.values()) == len(pairs)
    seen = {name: {q for p in v for q in (p.a, p.b)} for name, v in splits.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    reordered = split_by_question(list(reversed(pairs)))
    assert all(sorted(map(repr, reordered[k])) == sorted(map(repr, v)) for k, v in splits.items())


def test_a_rewording_joins_the_split_of_its_question_and_strangers_are_left_out(tmp_path):
    pairs = [Pair(f"question {i}", f"question {i + 1000}", i % 2 == 0) for i in range(300)]
    splits = split_by_question(pairs)
    some = {name: v[0].a for name, v in splits.items()}
    rows = ["question_sha1,rewording"] + [f"{question_key(q)},{name} rewording" for name, q in some.items()]
    rows.append(f"{question_key('not in the data')},orphan")
    path = tmp_path / "rewordings.csv"
    path.write_text("\n".join(rows) + "\n")
    found = rewordings_by_split(path, splits)
    assert found == {name: [(q, f"{name} rewording")] for name, q in some.items()}


def test_the_shipped_rewordings_name_dev_questions_without_copying_them():
    import csv
    import pathlib

    path = pathlib.Path(__file__).parent / "data" / "quora_rewordings.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 1000 and list(rows[0]) == ["question_sha1", "rewording"]
    assert all(len(r["question_sha1"]) == 16 and r["rewording"].strip() for r in rows)
    assert len({r["question_sha1"] for r in rows}) == len(rows)


def test_all_trees_walked_at_once_agree_with_a_walk_node_by_node():
    rng = np.random.default_rng(1)

    def random_tree(depth: int) -> dict[str, list]:
        tree = {k: [] for k in ("feature", "threshold", "left", "right", "leaf", "value")}

        def grow(level: int) -> int:
            node = len(tree["leaf"])
            for k in tree:
                tree[k].append(0)
            if level == depth or rng.random() < 0.3:
                tree["leaf"][node], tree["value"][node] = 1, float(rng.normal())
                return node
            tree["feature"][node], tree["threshold"][node] = int(rng.integers(3)), float(rng.normal())
            tree["left"][node] = grow(level + 1)
            tree["right"][node] = grow(level + 1)
            return node

        grow(0)
        return tree

    raw_trees = [random_tree(int(rng.integers(0, 6))) for _ in range(40)]
    trees = Trees(0.25, raw_trees)

    def one_by_one(x) -> float:
        total = 0.25
        for t in raw_trees:
            node = 0
            while not t["leaf"][node]:
                node = t["left"][node] if x[t["feature"][node]] <= t["threshold"][node] else t["right"][node]
            total += t["value"][node]
        return total

    for x in rng.normal(size=(200, 3)):
        assert trees.raw(x) == pytest.approx(one_by_one(x), abs=1e-12)


def test_features_see_numbers_negations_and_rare_unmatched_words():
    df = DocumentFrequencies.from_texts(
        ["how do I cancel my order", "how do I track my order"] * 5 + ["congo"], min_count=1
    )
    same = dict(
        zip(NAMES, pair_features("How do I cancel my order?", "how do i cancel my order", 0.99, df), strict=True)
    )
    negated = dict(
        zip(NAMES, pair_features("Can I cancel my order?", "Can I not cancel my order?", 0.95, df), strict=True)
    )
    number = dict(zip(NAMES, pair_features("JEE 2016 syllabus", "JEE 2017 syllabus", 0.97, df), strict=True))
    assert same["word_jaccard"] == 1.0 and same["unmatched_weight_max"] == 0.0 and same["number_mismatch"] == 0.0
    assert negated["negation_mismatch"] == 1.0
    assert number["number_mismatch"] == 1.0 and number["unmatched_idf_max"] > 0


def test_exported_trees_agree_with_scikit_learn_and_survive_json(tmp_path):
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, len(NAMES)))
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).astype(int)
    model = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=8, random_state=0).fit(x, y)
    trees = Trees.from_sklearn(model)
    assert np.allclose([trees.probability(row) for row in x[:100]], model.predict_proba(x[:100])[:, 1], atol=1e-9)
    verifier = PairVerifier(trees, DocumentFrequencies({"order": 3}, 10))
    verifier.save(tmp_path / "v.json")
    loaded = PairVerifier.load(tmp_path / "v.json")
    assert loaded.probability("a b", "a c", 0.9) == pytest.approx(verifier.probability("a b", "a c", 0.9))
    doc = json.loads((tmp_path / "v.json").read_text())
    doc["features"] = doc["features"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError):
        PairVerifier.load(tmp_path / "bad.json")


def _synthetic(n=4000, seed=2):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    sim = np.clip(np.where(y, rng.normal(0.9, 0.05, n), rng.normal(0.8, 0.08, n)), -1, 1)
    stage2 = np.clip(np.where(y, rng.normal(0.7, 0.2, n), rng.normal(0.3, 0.2, n)), 0, 1)
    return sim, stage2, y


@pytest.mark.parametrize("target", [0.005, 0.01, 0.05])
def test_operating_points_meet_their_target_with_the_margin_on_the_fitting_pairs(target):
    sim, stage2, y = _synthetic()
    plain = similarity_only(sim, y, target, margin=0.75)
    assert outcome(plain, sim, None, y).false_hit_rate <= 0.75 * target + 1e-12
    point = two_stage(sim, stage2, y, target, margin=0.75)
    result = outcome(point, sim, stage2, y)
    assert result.false_hit_rate <= 0.75 * target + 1e-12
    assert point.lower <= point.upper
    # The informative second stage serves more paraphrases than the similarity alone.
    assert result.recall > outcome(plain, sim, None, y).recall


def test_a_held_out_sample_stays_near_its_target():
    sim, stage2, y = _synthetic(seed=3)
    point = two_stage(sim, stage2, y, 0.01)
    held_sim, held_stage2, held_y = _synthetic(n=20000, seed=4)
    assert outcome(point, held_sim, held_stage2, held_y).false_hit_rate < 0.015


def _team_written_training_data(folder: pathlib.Path) -> pathlib.Path:
    """Labelled pairs and a rewording set from the team-written sets in data/ (no Quora text):
    each near miss is a non-duplicate pair; a question with a near miss gives its rewording to the
    rewording set (named by question_sha1, as quora_rewordings.csv names dev questions); the other
    rewordings are duplicate pairs. Returns the labelled CSV; `folder` stands in for data/."""
    rewordings = read_text_pairs(DATA / "rewordings.csv")
    near_misses = read_text_pairs(DATA / "near_misses.csv")
    with_near_miss = {q for q, _ in near_misses}
    pairs = [Pair(q, r, True) for q, r in rewordings if q not in with_near_miss]
    pairs += [Pair(q, m, False) for q, m in near_misses]
    folder.mkdir()
    with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question1", "question2", "is_duplicate"])
        writer.writerows([p.a, p.b, int(p.duplicate)] for p in pairs)
    with open(folder / "quora_rewordings.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question_sha1", "rewording"])
        writer.writerows([question_key(q), r] for q, r in rewordings if q in with_near_miss)
    for name in ("rewordings.csv", "near_misses.csv"):
        shutil.copy(DATA / name, folder / name)
    return folder / "pairs.csv"


@pytest.mark.timeout(120)
async def test_the_training_command_calibrates_the_base_model_end_to_end(tmp_path, monkeypatch):
    from llmesh.services.cache.semantic import train

    small = _team_written_training_data(tmp_path / "data")
    assert 100 < len(read_pairs(small)) <= 500
    monkeypatch.setattr(train, "HANDWRITTEN", tmp_path / "data")
    args = argparse.Namespace(
        data=str(small),
        layers=1,
        epochs=1,
        threads=1,
        margin=0.75,
        sure_share=0.0,
        rewording_weight=1.0,
        salt="llmesh",
        base=True,
        weights="",
        out=str(tmp_path / "models"),
    )
    report = await train.run(args)
    calibration = Calibration.load(tmp_path / "models" / "calibration.all_minilm_l6_v2.json")
    assert calibration.embedder == "all-MiniLM-L6-v2" and len(calibration.points) == 6
    assert PairVerifier.load(tmp_path / "models" / calibration.stage2)
    for row in report["two_stage"]:
        assert 0 <= row["test"]["recall"] <= 1 and 0 <= row["rewordings_served"] <= 1
    # The verifier learned from the rewordings of the sample's train questions.
    assert report["verifier_fit"]["rewordings"] > 0


@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [
        ("Can I cancel my order?", "Can I not cancel my order?", "negation"),
        ("Why can't I log in?", "Why can I log in?", "negation"),
        ("JEE Mains 2017 syllabus", "JEE Mains 2016 syllabus", "number"),
        ("How do I reset my password?", "What are the steps to reset my password?", None),
        ("Is 5G safe?", "Is 5G really safe?", None),
        # The same number written another way, and a negation without a negation word.
        ("Does it violate the 4th Amendment?", "Does it violate the Fourth Amendment?", None),
        ("Best laptop under 60000 in India?", "Best laptop in India under 60,000?", None),
        ("What will humans look like in 100 years?", "What will humans look like a hundred years from now?", None),
        ("Why dont Indian Muslims join the army?", "Why don't Indian Muslims join the army?", None),
        ("Why can't I post a picture?", "Why am I unable to post a picture?", None),
        ("Is the iPhone 6s waterproof?", "Is the iPhone 6 waterproof?", "number"),
        ("Why don't I get paid?", "Why do I get paid?", "negation"),
        # The same words on the other side of a direction.
        ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?", "order"),
        ("Why is Messi better than Ronaldo?", "How is Ronaldo better than Messi?", "order"),
        ("How do I go from Delhi to Mumbai?", "How do I get to Mumbai from Delhi?", None),
        ("How does Python compare to Java?", "How does Java compare to Python?", None),
        ("Does nitric acid react with metals?", "Do metals react with nitric acid?", None),
    ],
)
def test_vetoes(a, b, reason):
    from llmesh.services.cache.semantic.features import veto

    assert veto(a, b) == reason


@pytest.mark.timeout(120)
async def test_fine_tuned_layers_load_into_the_runtime_embedder(tmp_path):
    from llmesh.services.cache.semantic.finetune import FinetuneSettings, finetune, weights_id
    from llmesh.services.cache.semantic.tuned import TunedMiniLMEmbedder, tuned_model_id
    from safetensors.torch import save_file

    pairs = [Pair(f"How do I fix error {i}?", f"How can I fix error {i}?", True) for i in range(8)] + [
        Pair(f"How do I fix error {i}?", f"How do I cause error {i}?", False) for i in range(8)
    ]
    tensors = finetune(pairs, FinetuneSettings(layers=1, epochs=1, batch_pairs=8, threads=1), log=lambda _: None)
    assert tensors and all(name.startswith("encoder.layer.5.") for name in tensors)
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"model_id": f"test-{weights_id(tensors)}"})
    assert tuned_model_id(path) == f"test-{weights_id(tensors)}"
    embedder = TunedMiniLMEmbedder(path, threads=1)
    try:
        vectors = await embedder.embed(["How do I fix error 3?", "How can I fix error 3?"])
        assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    finally:
        await embedder.close()
