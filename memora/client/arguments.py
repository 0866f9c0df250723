"""Checks and conversions of the arguments of client operations, shared by reads and writes.

What lives here: the paths of the record collections and of one record (its id checked, since
it becomes part of the path), edge kinds (one string is one kind, as the embedded store takes
them), query strings, read options, the body fields of text and vectors, and how a write's body
becomes a `Request`. What must not: checks the server makes anyway; the server is the authority
on every value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from memora.client import records
from memora.client.protocol import Json, ReadOptions, Request
from memora.core import constants
from memora.core.errors import ValidationError

NODES_PATH: Final = "/api/v1/nodes"
EDGES_PATH: Final = "/api/v1/edges"
OBSERVATIONS_PATH: Final = "/api/v1/observations"


def record_path(collection: str, value: Any, field: str, below: str = "") -> str:
    """The path of one record of `collection` (`/api/v1/nodes/7`), or of what lies `below` it
    (`/api/v1/nodes/7/edges`); the id is `value`, the argument named `field`."""
    path = f"{collection}/{record_id(value, field)}"
    return f"{path}/{below}" if below else path


def record_id(value: Any, field: str) -> int:
    """A record id, checked here because it becomes part of the URL's path."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{field} must be an integer", field)
    if not constants.record_id_min <= value <= constants.record_id_max:
        message = f"{field} must be between {constants.record_id_min} and {constants.record_id_max}"
        raise ValidationError(message, field)
    return value


def kind_list(kinds: Iterable[str] | None) -> list[str] | None:
    """Edge kinds as a list: one string is one kind (as the embedded store takes them)."""
    if kinds is None:
        return None
    return [kinds] if isinstance(kinds, str) else list(kinds)


def kinds_query(kinds: Iterable[str] | None) -> str | None:
    """Kinds for a query string, where the server splits them at commas."""
    listed = kind_list(kinds)
    if listed is None:
        return None
    if any("," in kind for kind in listed):
        raise ValidationError("an edge kind holding a comma cannot be sent in a query", "kinds")
    return ",".join(listed)


def query_string(**values: Any) -> tuple[tuple[str, str], ...]:
    """Query parameters, without the absent ones; booleans spelled as JSON spells them."""
    pairs = []
    for name, value in values.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        pairs.append((name, text))
    return tuple(pairs)


def read(
    path: str,
    options: ReadOptions,
    query: tuple[tuple[str, str], ...] = (),
    namespace: str | None = None,
) -> Request:
    """A read of `path` in `namespace`, with its read options."""
    return Request("GET", path, query, namespace=namespace, read=options)


def text_fields(text: str | None, vector: Any, embed: bool) -> dict[str, Any]:
    return {"text": text, "vector": records.optional_vector_json(vector), "embed": embed or None}


def write(method: str, path: str, body: Json | None, namespace: str | None) -> Request:
    """A write with this body (its null fields left out) in `namespace`: every write but
    `create_namespace`, which names no namespace, is made here."""
    fields = None if body is None else records.without_nulls(body)
    return Request(method, path, body=fields, namespace=namespace, write=True)
