"""Typed errors for bad input.

A `MemoraError` is the answer to bad input from a user, a client or a peer: it names the field
at fault and leaves the state unchanged. A programmer error is an `AssertionError` instead, never
one of these. The `code` of each class is stable: REST and MCP put it in their error bodies.
"""

from __future__ import annotations


class MemoraError(Exception):
    """Base class of every error that bad input can cause."""

    code = "invalid"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and isinstance(other, MemoraError)
            and (self.message, self.field) == (other.message, other.field)
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.message, self.field))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class ValidationError(MemoraError):
    """A value is malformed: wrong type, out of range, NaN in a vector."""

    code = "invalid"


class LimitError(MemoraError):
    """A value is well formed but larger than a limit in `memora.core.constants`."""

    code = "too_large"


class NotFoundError(MemoraError):
    """A referenced record or namespace does not exist (or is deleted)."""

    code = "not_found"


class ConflictError(MemoraError):
    """The command clashes with existing state: a duplicate id or unique name."""

    code = "conflict"


class DimensionError(ValidationError):
    """A vector's length is not the dimension of its namespace."""

    code = "wrong_dimension"


class CodecError(MemoraError):
    """Bytes that do not decode to a known record or command."""

    code = "bad_encoding"
