"""User arguments turned into what commands and queries take: shared by every front end.

What lives here: the conversions the embedded store (`memora.Memora`) and the REST API
(`memora.api`) both make from values a user hands over (vectors as lists or arrays, edge kinds
as one string or many, "a vector or a node id" as a similarity target), and the text embedder of
a namespace. What must not: validation against state (the state machine does that), I/O, or
anything specific to one front end.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import attrs
import numpy as np

from memora.core import queries
from memora.core.errors import ValidationError
from memora.core.namespace import NamespaceState
from memora.core.types import FloatArray, SimpleCommand, vector_to_bytes
from memora.service.embedding import HashingEmbedder


def kinds_set(kinds: Iterable[str] | None) -> frozenset[str] | None:
    """Edge kinds to filter on: None for every kind; one string is one kind."""
    if kinds is None:
        return None
    if isinstance(kinds, str):
        return frozenset((kinds,))
    return frozenset(kinds)


def optional_vector_bytes(vector: Any) -> bytes | None:
    return None if vector is None else vector_bytes(vector)


def vector_bytes(vector: Any) -> bytes:
    """float32 bytes from bytes, a list of numbers or an array (one-dimensional)."""
    if isinstance(vector, bytes):
        return vector
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValidationError(f"vector must be a list of numbers: {error}", "vector") from error
    if array.ndim != 1:
        raise ValidationError("vector must be one-dimensional", "vector")
    return vector_to_bytes(array)


def normalise_vectors(command: SimpleCommand) -> SimpleCommand:
    """The command with its vector (if it has one) as float32 bytes."""
    vector = getattr(command, "vector", None)
    if vector is None or isinstance(vector, bytes):
        return command
    return attrs.evolve(command, vector=vector_bytes(vector))  # type: ignore[arg-type]


def similarity_target(
    ns: NamespaceState, target: Any, as_of: int | None
) -> tuple[FloatArray, int | None]:
    """The query vector of "similar to this": a node id means that node's own vector (and the
    node is excluded from the answer); anything else is the vector itself."""
    if isinstance(target, int) and not isinstance(target, bool):
        node = queries.require_node(ns, target, as_of, "node_id")
        return queries.own_vector(node), node.id
    return queries.query_vector(ns, target), None


@functools.lru_cache(maxsize=64)
def text_embedder(dimension: int) -> HashingEmbedder:
    """The embedder for a namespace of `dimension`: text queries and text writes share it, so
    a query's vector is comparable with the stored ones."""
    return HashingEmbedder(dimension)
