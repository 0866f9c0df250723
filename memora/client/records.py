"""JSON of the REST API to and from the records of `memora.core.types`, on the client's side.

What lives here: the readers of records and results as `memora.api.representation` writes them
(`node`, `edge`, `observation`, `namespace`, hits, a batch's written records), and the writers
of what a request carries (vectors, provenance, the commands of a batch). A vector crosses as the
exact float32 values written as JSON numbers, so a record read back equals the embedded store's
bit for bit. What must not: I/O, or checks the server makes anyway; the checks here are the ones
that save a round trip (a vector that is not one-dimensional or not finite) or that JSON cannot
carry (a command the REST batch has no `op` for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from memora.core.errors import ValidationError
from memora.core.types import (
    AddObservation,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    DeleteObservation,
    Edge,
    HybridHit,
    InsertEdge,
    InsertNode,
    Namespace,
    Node,
    Observation,
    Provenance,
    RelatedNode,
    SetVector,
    SimilarHit,
    SimpleCommand,
    Stamp,
    UpdateEdge,
    UpdateNode,
    vector_from_bytes,
    vector_to_bytes,
)

Json = dict[str, Any]

# -- Reading answers ------------------------------------------------------------------------------


def stamp(value: Json) -> Stamp:
    return Stamp(value["commit_index"], value["timestamp_ms"], value["principal"], value["session"])


def provenance(value: Json) -> Provenance:
    return Provenance(
        value["source"], value["confidence"], value["valid_from_ms"], value["valid_to_ms"]
    )


def _vector(value: list[float] | None) -> bytes | None:
    return None if value is None else vector_to_bytes(value)


def _copied(value: Json, *names: str) -> Json:
    """The fields `names` of `value`, as they are, to pass as keywords."""
    return {name: value[name] for name in names}


def _versioned(value: Json) -> Json:
    """The fields every versioned record has (nodes, edges, observations), as keywords."""
    return {
        **_copied(value, "namespace", "id", "version", "deleted"),
        "provenance": provenance(value["provenance"]),
        "created": stamp(value["created"]),
        "updated": stamp(value["updated"]),
    }


def node(value: Json) -> Node:
    fields = _copied(value, "label", "name", "properties", "text")
    return Node(vector=_vector(value["vector"]), **fields, **_versioned(value))


def edge(value: Json) -> Edge:
    fields = _copied(value, "source", "target", "kind", "properties")
    return Edge(**fields, **_versioned(value))


def observation(value: Json) -> Observation:
    fields = _copied(value, "node_id", "text")
    return Observation(vector=_vector(value["vector"]), **fields, **_versioned(value))


def namespace(value: Json) -> Namespace:
    return Namespace(value["name"], value["dimension"], value["metric"], stamp(value["created"]))


def related(value: Json) -> RelatedNode:
    return node(value["node"]), value["hops"]


def similar(value: Json) -> SimilarHit:
    return node(value["node"]), value["distance"]


def hybrid_hit(value: Json) -> HybridHit:
    neighbours = tuple(related(item) for item in value["neighbours"])
    return HybridHit(node(value["node"]), value["distance"], neighbours)


def written_record(value: Json) -> Node | Edge | Observation:
    """One item of a batch's `results`: `{"type": "node", "node": {...}}` and so on."""
    kind = value["type"]
    reader = _WRITTEN_RECORDS.get(kind)
    if reader is None:
        raise ValueError(f"a batch result of unknown type {kind!r}")
    return reader(value[kind])


_WRITTEN_RECORDS: dict[str, Callable[[Json], Node | Edge | Observation]] = {
    "node": node,
    "edge": edge,
    "observation": observation,
}


# -- Writing requests -----------------------------------------------------------------------------


def vector_json(vector: Any, field: str = "vector") -> list[float]:
    """A vector as the exact float32 values it will be stored as: from float32 bytes, a list of
    numbers or a one-dimensional array. A NaN or infinity is refused here, since JSON has none."""
    if isinstance(vector, bytes):
        array = vector_from_bytes(vector)
    else:
        try:
            array = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError, OverflowError) as error:
            raise ValidationError(f"{field} must be a list of numbers: {error}", field) from None
    if array.ndim != 1:
        raise ValidationError(f"{field} must be one-dimensional", field)
    if not np.isfinite(array).all():
        raise ValidationError(f"{field} must hold only finite numbers", field)
    return [float(component) for component in array]


def optional_vector_json(vector: Any, field: str = "vector") -> list[float] | None:
    return None if vector is None else vector_json(vector, field)


def provenance_json(value: Provenance | None) -> Json | None:
    if value is None:
        return None
    return {
        "source": value.source,
        "confidence": value.confidence,
        "valid_from_ms": value.valid_from_ms,
        "valid_to_ms": value.valid_to_ms,
    }


def without_nulls(fields: Json) -> Json:
    """A request body without its absent fields (the API reads a null as absent anyway)."""
    return {name: value for name, value in fields.items() if value is not None}


def batch_command_json(command: SimpleCommand, position: int) -> Json:
    """One command of `Client.batch` as an item of the REST batch's `commands`."""
    field = f"commands[{position}]"
    if isinstance(command, CreateNamespace):
        message = "the REST batch cannot create a namespace; use create_namespace"
        raise ValidationError(message, field)
    if isinstance(command, AddObservation) and command.id is not None:
        raise ValidationError("the REST API assigns observation ids itself", field + ".id")
    fields = _command_fields(command, field)
    return {"op": _OPS[type(command)], **without_nulls(fields)}


_OPS: dict[type, str] = {
    InsertNode: "insert_node",
    UpdateNode: "update_node",
    DeleteNode: "delete_node",
    SetVector: "set_vector",
    InsertEdge: "insert_edge",
    UpdateEdge: "update_edge",
    DeleteEdge: "delete_edge",
    AddObservation: "add_observation",
    DeleteObservation: "delete_observation",
}


def _command_fields(command: SimpleCommand, field: str) -> Json:
    """The fields of a command under the names the REST batch uses, which are its attributes'
    names, with vectors and provenance in their JSON form."""
    if type(command) not in _OPS:
        raise ValidationError(f"{type(command).__name__} is not a batch command", field)
    fields: Json = {}
    for attribute in attrs.fields(type(command)):
        value = getattr(command, attribute.name)
        if attribute.name == "vector":
            value = optional_vector_json(value, f"{field}.vector")
        elif attribute.name == "provenance":
            value = provenance_json(value)
        elif attribute.name == "clear":
            value = list(value) or None
        fields[attribute.name] = value
    return fields
