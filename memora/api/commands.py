"""Request bodies turned into state machine commands, for single writes and for batches alike.

What lives here: one parser per command, reading the fields `memora.api.schemas` allows, with
the types and limits the state machine will check again; a batch item is parsed by the same
parser as the endpoint of its `op`. Properties and provenance are validated here already, so a
malformed one is a clear 400 before anything is proposed. What must not: I/O or state. Text is
embedded through the `Embed` callable the caller hands in (None when no field asks for it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from memora.api import schemas
from memora.api.arguments import Arguments
from memora.api.errors import UnprocessableError
from memora.api.routing import refusals_as_unprocessable
from memora.core import constants, validate
from memora.core.errors import MemoraError, ValidationError
from memora.core.types import (
    AddObservation,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    DeleteObservation,
    InsertEdge,
    InsertNode,
    Provenance,
    SetVector,
    SimpleCommand,
    UpdateEdge,
    UpdateNode,
)
from memora.service.arguments import optional_vector_bytes, vector_bytes

Embed = Callable[[str], bytes]
"""Text -> float32 bytes of its embedding in the namespace written to."""

_PROVENANCE_FIELDS: Final = schemas.body_fields("ProvenanceInput")


def asks_for_embedding(body: Arguments) -> bool:
    """Whether a body (or any batch command in it) sets `"embed": true`."""
    commands = body.raw("commands")
    if isinstance(commands, list):
        return any(isinstance(item, dict) and item.get("embed") is True for item in commands)
    return body.raw("embed") is True


def insert_node(args: Arguments, embed: Embed | None) -> InsertNode:
    text = args.text("text", constants.text_bytes_max, None)
    return InsertNode(
        args.text("label", constants.label_bytes_max),
        id=args.integer("id", constants.record_id_min, constants.record_id_max, None),
        name=args.text("name", constants.name_bytes_max, None),
        properties=_properties(args, {}),
        text=text,
        vector=_vector_or_embedding(args, text, embed),
        provenance=_provenance(args) or Provenance(),
    )


def update_node(args: Arguments, node_id: int, embed: Embed | None) -> UpdateNode:
    text = args.text("text", constants.text_bytes_max, None)
    clear = args.text_list("clear", constants.label_bytes_max, 3) or []
    for item in clear:
        if item not in ("name", "text", "vector"):
            raise ValidationError("clear may name only name, text and vector", args.field("clear"))
    return UpdateNode(
        node_id,
        label=args.text("label", constants.label_bytes_max, None),
        name=args.text("name", constants.name_bytes_max, None),
        properties=_properties(args, None),
        text=text,
        vector=_vector_or_embedding(args, text, embed),
        provenance=_provenance(args),
        clear=tuple(clear),
    )


def set_vector(args: Arguments) -> SetVector:
    node_id = args.integer("node_id", constants.record_id_min, constants.record_id_max)
    return SetVector(node_id, vector_bytes(args.vector("vector")))


def insert_edge(args: Arguments) -> InsertEdge:
    return InsertEdge(
        source=args.integer("source", constants.record_id_min, constants.record_id_max),
        target=args.integer("target", constants.record_id_min, constants.record_id_max),
        kind=args.text("kind", constants.edge_kind_bytes_max, "related"),
        id=args.integer("id", constants.record_id_min, constants.record_id_max, None),
        properties=_properties(args, {}),
        provenance=_provenance(args) or Provenance(),
    )


def update_edge(args: Arguments, edge_id: int) -> UpdateEdge:
    return UpdateEdge(edge_id, _properties(args, None), _provenance(args))


def add_observation(args: Arguments, node_id: int, embed: Embed | None) -> AddObservation:
    text = args.text("text", constants.text_bytes_max)
    vector = _vector_or_embedding(args, text, embed)
    return AddObservation(node_id, text, vector, None, _provenance(args) or Provenance())


def create_namespace(args: Arguments) -> tuple[str, CreateNamespace]:
    name = args.text("name", constants.namespace_name_bytes_max)
    try:
        validate.namespace_name(name)
    except MemoraError as error:
        raise type(error)(error.message, args.field("name")) from None
    dimension = args.integer(
        "dimension", constants.dimension_min, constants.dimension_max, constants.dimension_default
    )
    metric = args.choice("metric", constants.metrics, constants.metric_default)
    return name, CreateNamespace(dimension, metric)


def batch_command(item: Any, position: int, embed: Embed | None) -> SimpleCommand:
    """One item of a batch's `commands`, by its `op`."""
    prefix = f"commands[{position}]."
    if not isinstance(item, dict):
        raise ValidationError("a batch command must be a JSON object", f"commands[{position}]")
    op = item.get("op")
    if not isinstance(op, str) or op not in schemas.BATCH_COMMANDS:
        choices = ", ".join(schemas.BATCH_COMMANDS)
        raise ValidationError(f"op must be one of {choices}", prefix + "op")
    allowed = schemas.BATCH_COMMANDS[op]["properties"]
    args = Arguments.json_object(item, allowed, prefix=prefix, field=f"commands[{position}]")
    return _BATCH_PARSERS[op](args, embed)


def _record_id(args: Arguments, name: str = "id") -> int:
    value: int = args.integer(name, constants.record_id_min, constants.record_id_max)
    return value


_BATCH_PARSERS: Final[dict[str, Callable[[Arguments, Embed | None], SimpleCommand]]] = {
    "insert_node": insert_node,
    "update_node": lambda args, embed: update_node(args, _record_id(args), embed),
    "delete_node": lambda args, _: DeleteNode(_record_id(args)),
    "set_vector": lambda args, _: set_vector(args),
    "insert_edge": lambda args, _: insert_edge(args),
    "update_edge": lambda args, _: update_edge(args, _record_id(args)),
    "delete_edge": lambda args, _: DeleteEdge(_record_id(args)),
    "add_observation": lambda args, embed: add_observation(
        args, _record_id(args, "node_id"), embed
    ),
    "delete_observation": lambda args, _: DeleteObservation(_record_id(args)),
}
assert set(_BATCH_PARSERS) == set(schemas.BATCH_COMMANDS)


def _vector_or_embedding(args: Arguments, text: str | None, embed: Embed | None) -> bytes | None:
    vector = optional_vector_bytes(args.vector("vector", None))
    if not args.boolean("embed", False):
        return vector
    if vector is not None or text is None:
        message = "embed needs text and no vector: it stores the text's embedding as the vector"
        raise UnprocessableError(message, args.field("embed"))
    assert embed is not None, "the handler fetches an embedder when a body asks for one"
    return embed(text)


def _properties(args: Arguments, default: Any) -> Any:
    value = args.mapping("properties", default)
    if value is default:
        return value
    with refusals_as_unprocessable():  # The schema states a map, not its values' rules.
        return _with_field(args, lambda: validate.properties(value))


def _provenance(args: Arguments) -> Provenance | None:
    value = args.raw("provenance")
    if value is None:
        return None
    given = Arguments.json_object(
        value, _PROVENANCE_FIELDS, prefix=args.field("provenance."), field="provenance"
    )
    provenance = Provenance(
        source=given.text("source", constants.source_bytes_max, None),
        confidence=given.number("confidence", 0.0, 1.0, 1.0),
        valid_from_ms=given.integer(
            "valid_from_ms", constants.int_property_min, constants.int_property_max, None
        ),
        valid_to_ms=given.integer(
            "valid_to_ms", constants.int_property_min, constants.int_property_max, None
        ),
    )
    start, end = provenance.valid_from_ms, provenance.valid_to_ms
    if start is not None and end is not None and start > end:  # A rule across two fields.
        message = "valid_from_ms must not be after valid_to_ms"
        raise UnprocessableError(message, given.field("valid_to_ms"))
    _with_field(given, lambda: validate.provenance(provenance))
    return provenance


def _with_field(args: Arguments, check: Callable[[], Any]) -> Any:
    """Run a core validator, naming fields with this body's prefix (inside a batch)."""
    try:
        return check()
    except MemoraError as error:
        field = args.field(error.field) if error.field else None
        raise type(error)(error.message, field) from None
