"""HTTP errors of the REST API: the typed errors only HTTP has, and the status of every code.

What lives here: the `MemoraError` subclasses raised by the HTTP layer itself (authentication,
routing, timeouts), the table from an error's stable `code` to its HTTP status, and the JSON body
`{"error": {"code", "message", "field"}}` every error answer carries. What must not: deciding
*whether* a request is bad (the handlers, `memora.api.arguments` and the state machine do that).
"""

from __future__ import annotations

from typing import Any, Final

from memora.core.errors import MemoraError
from memora.net.node_api import NotLeaderError, UnavailableError

# Seconds a client is told to wait (Retry-After) before retrying an unavailable request.
retry_after_s: Final = 1


class UnauthenticatedError(MemoraError):
    """No bearer token, or one that matches no configured token."""

    code = "unauthenticated"


class ForbiddenError(MemoraError):
    """The token is valid but its role or namespaces do not cover the request."""

    code = "forbidden"


class RouteNotFoundError(MemoraError):
    """No endpoint has this path."""

    code = "not_found"


class MethodNotAllowedError(MemoraError):
    """The path exists, but not with this method."""

    code = "method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message, None)
        self.allowed = allowed


class BodyTooLargeError(MemoraError):
    """The request body is larger than the configured limit (`body_bytes_max`)."""

    code = "body_too_large"


class UnprocessableError(MemoraError):
    """The request matches the published schema but breaks a rule the schema cannot state: two
    fields that exclude each other, or an index or record the state does not allow."""

    code = "unprocessable"


class RequestTimeoutError(MemoraError):
    """The request did not finish within the configured time; a write's outcome is unknown."""

    code = "timeout"


# 400 means the request does not match `/openapi.json` (a type, range, pattern, enum, required or
# unknown field, or malformed JSON). A request that matches it but is refused all the same gets
# 422: a limit JSON Schema cannot count (UTF-8 bytes rather than characters), a rule joining two
# fields, or the state (a vector of another dimension than the namespace's).
STATUS_BY_CODE: Final[dict[str, int]] = {
    "invalid": 400,
    "bad_encoding": 400,
    "wrong_dimension": 422,
    "too_large": 422,
    "unprocessable": 422,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "invalid_configuration_change": 409,
    "not_clustered": 409,
    "body_too_large": 413,
    "unavailable": 503,
    "not_leader": 503,
    "closed": 503,
    "timeout": 503,
}

# Codes whose answer carries Retry-After: the same request may succeed later.
RETRYABLE_CODES: Final = frozenset(("unavailable", "not_leader", "closed", "timeout"))

assert STATUS_BY_CODE.keys() >= RETRYABLE_CODES
assert all(400 <= status < 600 for status in STATUS_BY_CODE.values())
assert UnavailableError.code in RETRYABLE_CODES and NotLeaderError.code in RETRYABLE_CODES


def status_of(error: MemoraError) -> int:
    """The HTTP status of a typed error; a code with no entry is a bad request."""
    return STATUS_BY_CODE.get(error.code, 400)


def error_body(error: MemoraError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, "field": error.field}}


def error_headers(error: MemoraError) -> dict[str, str]:
    """Headers an error answer needs besides its body."""
    headers: dict[str, str] = {}
    if error.code in RETRYABLE_CODES:
        headers["Retry-After"] = str(retry_after_s)
    if isinstance(error, UnauthenticatedError):
        headers["WWW-Authenticate"] = 'Bearer realm="memora"'
    if isinstance(error, MethodNotAllowedError):
        headers["Allow"] = ", ".join(error.allowed)
    return headers
