"""A C-level getter of a record's fields as one tuple, shared by the two CBOR codecs (the memory
records' in `memora.core.codec` and Raft's in `memora.core.raft.types`): each encodes every value
it writes through one, as a CBOR array."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any


def fields_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A getter of the attributes `names` of a value, as a tuple in that order."""
    assert names
    if len(names) == 1:  # attrgetter of one name returns the value, not a 1-tuple.
        (name,) = names
        return lambda value: (getattr(value, name),)
    return operator.attrgetter(*names)
