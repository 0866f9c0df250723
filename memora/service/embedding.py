"""Text embeddings computed by the service layer before a command is proposed.

The vector travels inside the command, so replicas never run a model. `HashingEmbedder` is the
built-in, dependency-free embedder: it hashes words and character trigrams into a fixed number of
dimensions (feature hashing) and normalises the result. It captures lexical overlap, not meaning;
it exists so that text search works offline with no model download. A semantic model can be
plugged in later behind the same `embed(text) -> float32 array` call.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import numpy as np
import numpy.typing as npt

_WORD: Final = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Deterministic feature-hashing embedder (words weighted 1.0, trigrams 0.5)."""

    def __init__(self, dimension: int) -> None:
        assert dimension >= 1
        self.dimension = dimension

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        vector = np.zeros(self.dimension, dtype=np.float32)
        for word in _WORD.findall(text.lower()):
            self._add(vector, "w:" + word, 1.0)
            padded = f"#{word}#"
            for start in range(len(padded) - 2):
                self._add(vector, "t:" + padded[start : start + 3], 0.5)
        norm = float(np.linalg.norm(vector))
        if norm > 0.0:
            vector /= norm
        return vector

    def _add(self, vector: npt.NDArray[np.float32], feature: str, weight: float) -> None:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        sign = 1.0 if value & 1 else -1.0
        vector[(value >> 1) % self.dimension] += sign * weight
