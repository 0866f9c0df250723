"""The typed errors of `memora.Client` and `memora.AsyncClient`, and the map from an error answer
of the REST API to them.

What lives here: `ClientError` (a refusal whose code has no class in `memora.core.errors`, with
its `code`, HTTP `status` and `field`), its subclasses for authentication, permission and
unprocessable requests,
`UnavailableError` (no URL answered before the call's deadline) and `ClientClosedError`, and
`error_from_answer`, which turns `{"error": {"code", "message", "field"}}` into one of them or
into the `memora.core.errors` class of the same code (a `NotFoundError` from the server is the
same class the embedded `memora.Memora` raises). What must not: I/O, or deciding what to retry
(`memora.client.calls` does).
"""

from __future__ import annotations

import json
from typing import Any, Final

from memora.core.errors import (
    CodecError,
    ConflictError,
    DimensionError,
    LimitError,
    MemoraError,
    NotFoundError,
    ValidationError,
)


class ClientError(MemoraError):
    """The server refused a request with a code that has no class of its own here.

    `code` is the stable code of the answer (`unprocessable`, `body_too_large`, ...), `status`
    its HTTP status and `field` the part of the request at fault, if any."""

    code = "client_error"

    def __init__(self, message: str, field: str | None = None, *, code: str, status: int) -> None:
        super().__init__(message, field)
        self.code = code
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r}, code={self.code!r})"


class BadAnswerError(ClientError):
    """A success answer the client cannot read: not JSON, or not the shape the API publishes.
    A bug or a version mismatch on one side; retrying would not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, None, code="bad_answer", status=status)


class UnauthenticatedError(ClientError):
    """401: no bearer token was sent, or the server knows no such token."""


class ForbiddenError(ClientError):
    """403: the token is valid, but its role or namespaces do not cover the request."""


class UnprocessableError(ClientError, ValidationError):
    """422 unprocessable: the request was well formed but refused (fields that exclude each
    other, an `as_of` past the applied index, a node without a vector). The embedded store
    raises `ValidationError` for the same, so this is one too."""


class UnavailableError(MemoraError):
    """No URL served the call before its deadline: every one was unreachable, timed out or
    answered 503. `cause` says what the last attempt met. The outcome of a write that raised
    this is unknown: it may have been applied. Calling the method again is a new write, with a
    new sequence number, so read before writing again if a duplicate matters."""

    code = "unavailable"

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(f"{message}; last: {cause}", None)
        self.cause = cause


class ClientClosedError(MemoraError):
    """The client was closed; it sends nothing more."""

    code = "closed"


# The codes whose class is the embedded store's own: the server names them the same.
_CORE_CLASSES: Final[dict[str, type[MemoraError]]] = {
    ValidationError.code: ValidationError,
    CodecError.code: CodecError,
    LimitError.code: LimitError,
    DimensionError.code: DimensionError,
    NotFoundError.code: NotFoundError,
    ConflictError.code: ConflictError,
}
_CLIENT_CLASSES: Final[dict[str, type[ClientError]]] = {
    "unauthenticated": UnauthenticatedError,
    "forbidden": ForbiddenError,
    "unprocessable": UnprocessableError,
}


def error_from_answer(status: int, content: bytes) -> MemoraError:
    """The typed error of an error answer. A body that is not the API's error shape (a proxy's
    HTML page, say) becomes a `ClientError` with the code `http_<status>`."""
    code, message, field = _error_fields(status, content)
    core = _CORE_CLASSES.get(code)
    if core is not None:
        return core(message, field)
    kind = _CLIENT_CLASSES.get(code, ClientError)
    return kind(message, field, code=code, status=status)


def _error_fields(status: int, content: bytes) -> tuple[str, str, str | None]:
    fallback = (f"http_{status}", f"HTTP {status}: {content[:200]!r}", None)
    try:
        body: Any = json.loads(content)
    except (UnicodeDecodeError, ValueError):
        return fallback
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return fallback
    code, message, field = error.get("code"), error.get("message"), error.get("field")
    if not isinstance(code, str) or not isinstance(message, str):
        return fallback
    return code, message, field if isinstance(field, str) else None
