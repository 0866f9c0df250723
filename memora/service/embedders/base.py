"""What every embedder shares: the `Embedder` protocol, its typed error, its input limits and
the checks and normalisation each one applies.

What lives here: pure functions on texts and matrices. What must not: a model, a network call,
or anything an embedder would need to import heavy libraries for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from memora.core import constants, validate
from memora.core.errors import LimitError, MemoraError, ValidationError

# One call to `embed_many` takes at most this many texts; a caller with more splits them.
embed_texts_max: Final = 1024

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]
Item = TypeVar("Item")


class EmbeddingError(MemoraError):
    """An embedder could not compute embeddings: its model or tokenizer is missing or corrupt,
    or its remote service failed or answered something malformed. Bad input texts are a
    `ValidationError` or `LimitError` instead."""

    code = "embedding_failed"


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors of a fixed dimension.

    `name` identifies the model (and so the vector space) and is recorded with the data: vectors
    of two names are not comparable. Every row of `embed_many` has L2 norm 1, except that an
    all-zero row stays zero. Bad input raises `ValidationError` (not a string, invalid Unicode,
    a NUL character) or `LimitError` (a text over `constants.text_bytes_max` bytes, more than
    `embed_texts_max` texts); a failure of the embedder itself raises `EmbeddingError`.
    """

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed_many(self, texts: Sequence[str]) -> FloatMatrix:
        """Shape (len(texts), dimension), row i the embedding of texts[i]."""
        ...

    def embed(self, text: str) -> FloatVector:
        """Shape (dimension,): the embedding of one text."""
        ...


def checked_text(text: object, field: str = "text") -> str:
    """`text` if it is a string an embedder takes; the typed error naming `field` otherwise."""
    return validate.text_field(text, field, constants.text_bytes_max, empty_ok=True)


def checked_texts(texts: object) -> list[str]:
    """The texts of one `embed_many` call, each checked as by `checked_text`."""
    # A lone str is a sequence of characters; embedding each character is never what was meant.
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise ValidationError("texts must be a sequence of strings", "texts")
    if len(texts) > embed_texts_max:
        message = f"{len(texts)} texts in one call; the limit is {embed_texts_max}"
        raise LimitError(message, "texts")
    return [checked_text(text, f"texts[{index}]") for index, text in enumerate(texts)]


def unit_rows(matrix: npt.NDArray[np.floating]) -> FloatMatrix:
    """`matrix` as float32 with every row scaled to L2 norm 1; an all-zero row stays zero."""
    assert matrix.ndim == 2
    rows = matrix.astype(np.float32, copy=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0.0)
    return rows


def chunks(items: Sequence[Item], size: int) -> list[Sequence[Item]]:
    """`items` in consecutive slices of at most `size`."""
    assert size >= 1
    return [items[start : start + size] for start in range(0, len(items), size)]
