"""Recall quality on the labelled set of tests/mcp/recall_set.py: MiniLM finds the memory that
answers a paraphrased question among its top 5 by cosine, and word overlap (the hashing
embedder) mostly does not, which shows that the set asks for meaning."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mcp"))

from recall_set import MEMORIES, QUESTIONS

from memora.service.embedding import Embedder, HashingEmbedder, MiniLmEmbedder

TOP_K = 5
MINILM_HIT_RATE_MIN = 0.90
# Word overlap may find some memories (names are shared); it must stay far below meaning.
HASHING_HIT_RATE_MAX = 0.50


def hits_and_misses(embedder: Embedder) -> tuple[float, list[str]]:
    """The fraction of questions whose memory is among the TOP_K nearest, and the misses."""
    keys = [key for key, _ in MEMORIES]
    memories = embedder.embed_many([text for _, text in MEMORIES])
    questions = embedder.embed_many([question for question, _ in QUESTIONS])
    # Rows are unit length, so the dot product is the cosine; brute force over every memory.
    nearest = np.argsort(-(questions @ memories.T), axis=1, kind="stable")[:, :TOP_K]
    misses = [
        f"{question!r} wants {key}, got {[keys[index] for index in row]}"
        for (question, key), row in zip(QUESTIONS, nearest, strict=True)
        if key not in {keys[index] for index in row}
    ]
    return 1.0 - len(misses) / len(QUESTIONS), misses


def test_the_set_is_well_formed() -> None:
    keys = [key for key, _ in MEMORIES]
    assert len(MEMORIES) >= 50 and len(QUESTIONS) >= 50
    assert len(set(keys)) == len(keys)
    assert {key for _, key in QUESTIONS} <= set(keys)
    assert len({question for question, _ in QUESTIONS}) == len(QUESTIONS)
    assert all(text.strip() and len(text) < 200 for _, text in MEMORIES)


@pytest.fixture(scope="module")
def minilm_result() -> tuple[float, list[str]]:
    return hits_and_misses(MiniLmEmbedder())


def test_minilm_recalls_the_answering_memory(minilm_result: tuple[float, list[str]]) -> None:
    hit_rate, misses = minilm_result
    print(f"\nMiniLM top-{TOP_K} hit rate: {hit_rate:.3f} ({len(misses)} misses)")
    print("\n".join(misses))
    assert hit_rate >= MINILM_HIT_RATE_MIN, misses


def test_word_overlap_does_clearly_worse(minilm_result: tuple[float, list[str]]) -> None:
    hashing_rate, misses = hits_and_misses(HashingEmbedder(384))
    print(f"\nhashing top-{TOP_K} hit rate: {hashing_rate:.3f} ({len(misses)} misses)")
    assert hashing_rate <= HASHING_HIT_RATE_MAX
    assert hashing_rate < minilm_result[0] - 0.4
