"""Text embeddings computed by the service layer before a command is proposed.

The vector travels inside the command, so replicas never run a model: a follower applying a
write, or a node restoring a snapshot, gets the leader's vector and never needs the embedder.
What lives here: the `Embedder` protocol every front end codes against, the built-in
`HashingEmbedder`, and `embedder_from_spec`, the one place a configuration string becomes an
embedder. The model-backed embedders live in `memora.service.embedders` (MiniLM on onnxruntime,
a remote OpenAI-compatible service). What must not: Raft, the state machine, or storage; an
embedder only maps texts to vectors.

`HashingEmbedder` is the dependency-free embedder: it hashes words and character trigrams into a
fixed number of dimensions (feature hashing) and normalises the result. It captures lexical
overlap, not meaning; it is fast and deterministic, for tests and for namespaces whose dimension
is not a model's. `MiniLmEmbedder` (the default, `DEFAULT_EMBEDDER_SPEC`) captures meaning.

Specs of `embedder_from_spec`:
  "minilm"             all-MiniLM-L6-v2 int8 (384 dimensions); MEMORA_MINILM_MODEL and
                       MEMORA_MINILM_TOKENIZER override the packaged files.
  "hashing"            HashingEmbedder(384); "hashing:N" HashingEmbedder(N).
  "openai:BASE_URL"    POST BASE_URL/embeddings; the model is MEMORA_EMBEDDING_MODEL (default
                       "text-embedding-3-small"), the bearer key MEMORA_EMBEDDING_API_KEY.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from memora.core import constants
from memora.core.errors import ValidationError
from memora.service.embedders.base import (
    Embedder,
    EmbeddingError,
    checked_text,
    checked_texts,
    embed_texts_max,
)
from memora.service.embedders.minilm import MiniLmEmbedder
from memora.service.embedders.openai_compatible import OpenAICompatibleEmbedder

__all__ = [
    "DEFAULT_EMBEDDER_SPEC",
    "Embedder",
    "EmbeddingError",
    "HashingEmbedder",
    "MiniLmEmbedder",
    "OpenAICompatibleEmbedder",
    "embed_texts_max",
    "embedder_from_spec",
]

DEFAULT_EMBEDDER_SPEC: Final = "minilm"
hashing_dimension_default: Final = 384
openai_model_default: Final = "text-embedding-3-small"
OPENAI_MODEL_ENVIRONMENT_VARIABLE: Final = "MEMORA_EMBEDDING_MODEL"
OPENAI_KEY_ENVIRONMENT_VARIABLE: Final = "MEMORA_EMBEDDING_API_KEY"
_SPEC_FORMS: Final = '"minilm", "hashing", "hashing:N" (N dimensions) or "openai:BASE_URL"'

_WORD: Final = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Deterministic feature-hashing embedder (words weighted 1.0, trigrams 0.5)."""

    def __init__(self, dimension: int) -> None:
        assert dimension >= 1
        self.dimension = dimension
        self.name = f"hashing-{dimension}"

    def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        checked = checked_texts(texts)
        result = np.zeros((len(checked), self.dimension), dtype=np.float32)
        for row, text in enumerate(checked):
            result[row] = self.embed(text)
        return result

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        checked_text(text)
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


def embedder_from_spec(spec: str, environ: Mapping[str, str] = os.environ) -> Embedder:
    """The embedder a spec names (see the module docstring); `ValidationError` for any other
    string. Nothing loads or connects here: MiniLM loads on first use (or `load()`)."""
    kind, separator, argument = spec.partition(":")
    if spec == "minilm":
        return MiniLmEmbedder(environ=environ)
    if spec == "hashing":
        return HashingEmbedder(hashing_dimension_default)
    if kind == "hashing" and separator:
        return HashingEmbedder(_hashing_dimension(argument))
    if kind == "openai" and argument:
        model = environ.get(OPENAI_MODEL_ENVIRONMENT_VARIABLE) or openai_model_default
        api_key = environ.get(OPENAI_KEY_ENVIRONMENT_VARIABLE) or None
        return OpenAICompatibleEmbedder(argument, model, api_key=api_key)
    raise ValidationError(f"unknown embedder {spec!r}: use {_SPEC_FORMS}", "embedder")


def _hashing_dimension(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        message = f"hashing:N needs a whole number of dimensions, not {text!r}"
        raise ValidationError(message, "embedder")
    dimension = int(text)
    if not constants.dimension_min <= dimension <= constants.dimension_max:
        message = f"hashing:N needs N in [{constants.dimension_min}, {constants.dimension_max}]"
        raise ValidationError(message, "embedder")
    return dimension
