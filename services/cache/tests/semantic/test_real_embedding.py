"""The shipped configuration end to end: the real embedder (fine-tuned MiniLM, CPU), the shipped
calibration and second stage, the embedded store."""

from __future__ import annotations

import numpy as np
import pytest
from llmesh.kit.testing import unique
from llmesh.services.cache.semantic import Decision, open_semantic_index
from llmesh.services.cache.semantic.config import SemanticConfig
from llmesh.services.cache.semantic.factory import load_calibration

from .fakes import entry, query

pytestmark = pytest.mark.timeout(90)

SERVED = (Decision.HIT, Decision.GRAY_HIT)


@pytest.fixture(scope="module")
async def index(tmp_path_factory):
    config = SemanticConfig(store_path=str(tmp_path_factory.mktemp("semantic")), purge_interval_s=0)
    opened = await open_semantic_index(config)
    yield opened
    await opened.close()


async def test_embeddings_are_unit_vectors_and_put_paraphrases_closest(index):
    texts = [
        "How do I reset my password?",
        "What are the steps to reset my password?",
        "What is the capital of France?",
    ]
    vectors = await index.embedder.embed(texts)
    assert vectors.shape == (3, index.embedder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


async def test_same_question_is_served_near_misses_and_unrelated_ones_are_not(index):
    t = unique("tenant")
    await index.add(entry(t, "cancel", "Can I cancel my order?"))
    await index.add(entry(t, "capital", "What is the capital of Australia?"))
    same = await index.lookup(query(t, "Can I cancel my order?"))
    assert same.decision is Decision.HIT and same.entry.entry_id == "cancel"
    for near_miss in ("Can I not cancel my order?", "What is the capital of Austria?"):
        match = await index.lookup(query(t, near_miss))
        assert match.decision not in SERVED, (near_miss, match.similarity, match.stage2_score)
    unrelated = await index.lookup(query(t, "Which laptop should I buy for video editing?"))
    assert unrelated.decision is Decision.MISS


async def test_one_tenants_answer_never_reaches_another(index):
    a, b = unique("tenant"), unique("tenant")
    await index.add(entry(a, "e", "How do I export my data from the app?"))
    assert (await index.lookup(query(b, "How do I export my data from the app?"))).entry is None


def test_the_shipped_calibration_belongs_to_the_shipped_embedder(index):
    calibration = load_calibration(SemanticConfig(), index.embedder.model_id)
    assert calibration.embedder == index.embedder.model_id
    assert [p.target_false_hit_rate for p in calibration.points] == sorted(
        p.target_false_hit_rate for p in calibration.points
    )
    # Stricter targets never loosen the first stage.
    uppers = [p.upper for p in calibration.points]
    assert uppers == sorted(uppers, reverse=True)
