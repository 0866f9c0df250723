"""The data model: records, commands, log entries and results, as frozen attrs classes.

Everything here is a plain value. Nothing here validates against state or does I/O; the state
machine (`memora.core.state`) checks commands, and the codec (`memora.core.codec`) turns these
values into bytes and back.

Vectors travel and rest as little-endian float32 bytes (`vector_to_bytes`), so records stay
hashable, compact and comparable, and every replica sees identical floats.

Records are immutable versions. A change to a node writes a new `Node` with `version + 1`; a delete
writes one more version with `deleted=True` (a tombstone). The history of a record is the list of
its versions, which is what makes `as_of` reads possible.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, TypeAlias

import attrs
import numpy as np
import numpy.typing as npt

Metric: TypeAlias = Literal["cosine", "l2"]
Direction: TypeAlias = Literal["out", "in", "both"]
PropertyValue: TypeAlias = Any  # JSON-like: None, bool, int, float, str, list, dict of these.
Properties: TypeAlias = dict[str, PropertyValue]
FloatArray: TypeAlias = npt.NDArray[np.float32]


class ReadOnlyError(TypeError):
    """A record's property map (or a list or map inside it) was changed in place."""


def _refuse(self: object, *args: object, **kwargs: object) -> Any:
    raise ReadOnlyError(
        "a record's properties are read-only: change a copy (copy.deepcopy gives one you can "
        "change) and write it with an update"
    )


def _thawed(value: Any) -> Any:
    """A deep copy of a property value with plain (changeable) dicts and lists."""
    if isinstance(value, dict):
        return {key: _thawed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_thawed(item) for item in value]
    return value


class FrozenMap(dict[str, Any]):
    """A record's property map (or a map inside one): a dict that refuses every change.

    A record is an immutable version that the state machine keeps for history and hashes: a
    caller who changed a map in place would change what every later read sees, on this replica
    only. It is a dict still, so it compares equal to a dict, encodes as one (JSON, CBOR) and
    type-checks as `Properties`. `copy.deepcopy` gives a copy made of plain dicts and lists.
    """

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (dict(self),))

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: _thawed(item) for key, item in self.items()}


class FrozenList(list[Any]):
    """A list inside a record's property map: a list that refuses every change."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = reverse = sort = clear = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [_thawed(item) for item in self]


def frozen_properties(properties: Properties) -> Properties:
    """A record's property map, deeply read-only (a copy, unless it is read-only already)."""
    if type(properties) is FrozenMap:
        return properties
    return FrozenMap({key: _frozen_value(value) for key, value in properties.items()})


def _frozen_value(value: Any) -> Any:
    if isinstance(value, dict):
        return frozen_properties(value)
    if isinstance(value, (list, tuple)) and type(value) is not FrozenList:
        return FrozenList(_frozen_value(item) for item in value)
    return value


VECTOR_DTYPE = np.dtype("<f4")


def vector_to_bytes(vector: Any) -> bytes:
    """Encode a sequence or array of numbers as little-endian float32 bytes."""
    array = np.asarray(vector, dtype=VECTOR_DTYPE)
    if array.ndim != 1:
        raise ValueError("a vector must be one-dimensional")
    return array.tobytes()


def vector_from_bytes(data: bytes) -> FloatArray:
    """Decode little-endian float32 bytes into a read-only array (no copy)."""
    return np.frombuffer(data, dtype=VECTOR_DTYPE)


def _vector_repr(vector: bytes | None) -> str:
    return "None" if vector is None else f"<{len(vector) // VECTOR_DTYPE.itemsize} floats>"


# ---------------------------------------------------------------------------------------------
# Metadata every record carries.


@attrs.frozen
class Provenance:
    """What the writer says about a fact: where it came from, how sure, and when it holds."""

    source: str | None = None
    confidence: float = 1.0
    valid_from_ms: int | None = None
    valid_to_ms: int | None = None


@attrs.frozen
class Stamp:
    """Who wrote a version and when: the commit index and the leader's timestamp of its entry."""

    index: int
    timestamp_ms: int
    principal: str
    session: str | None


# ---------------------------------------------------------------------------------------------
# Records.


@attrs.frozen
class Namespace:
    name: str
    dimension: int
    metric: Metric
    created: Stamp


@attrs.frozen
class Node:
    namespace: str
    id: int
    version: int
    label: str
    name: str | None
    properties: Properties = attrs.field(converter=frozen_properties)
    text: str | None
    vector: bytes | None = attrs.field(repr=_vector_repr)
    provenance: Provenance
    created: Stamp
    updated: Stamp
    deleted: bool = False


@attrs.frozen
class Edge:
    namespace: str
    id: int
    version: int
    source: int
    target: int
    kind: str
    properties: Properties = attrs.field(converter=frozen_properties)
    provenance: Provenance
    created: Stamp
    updated: Stamp
    deleted: bool = False


@attrs.frozen
class Observation:
    namespace: str
    id: int
    version: int
    node_id: int
    text: str
    vector: bytes | None = attrs.field(repr=_vector_repr)
    provenance: Provenance
    created: Stamp
    updated: Stamp
    deleted: bool = False


Record: TypeAlias = Node | Edge | Observation


# ---------------------------------------------------------------------------------------------
# Commands. Each is applied to the namespace named by its entry.


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class CreateNamespace:
    dimension: int = 128
    metric: Metric = "cosine"


@attrs.frozen
class InsertNode:
    """Insert a node. With `id=None` the state machine assigns the next free id."""

    label: str
    id: int | None = None
    name: str | None = None
    properties: Properties = attrs.field(factory=dict)
    text: str | None = None
    vector: bytes | None = None
    provenance: Provenance = Provenance()


@attrs.frozen
class UpdateNode:
    """Change some fields of a live node. A field left as None keeps its value.

    `properties` replaces the whole map when given. `clear` names optional fields to remove:
    any of "name", "text" and "vector".
    """

    id: int
    label: str | None = None
    name: str | None = None
    properties: Properties | None = None
    text: str | None = None
    vector: bytes | None = None
    provenance: Provenance | None = None
    clear: tuple[str, ...] = attrs.field(default=(), converter=_strings)


@attrs.frozen
class DeleteNode:
    """Tombstone a node together with its observations and every edge that touches it."""

    id: int


@attrs.frozen
class SetVector:
    """Set (or replace) the vector of a live node: the seed's `insert_vector`."""

    node_id: int
    vector: bytes


@attrs.frozen
class InsertEdge:
    source: int
    target: int
    kind: str
    id: int | None = None
    properties: Properties = attrs.field(factory=dict)
    provenance: Provenance = Provenance()


@attrs.frozen
class UpdateEdge:
    id: int
    properties: Properties | None = None
    provenance: Provenance | None = None


@attrs.frozen
class DeleteEdge:
    id: int


@attrs.frozen
class AddObservation:
    node_id: int
    text: str
    vector: bytes | None = None
    id: int | None = None
    provenance: Provenance = Provenance()


@attrs.frozen
class DeleteObservation:
    id: int


SimpleCommand: TypeAlias = (
    CreateNamespace
    | InsertNode
    | UpdateNode
    | DeleteNode
    | SetVector
    | InsertEdge
    | UpdateEdge
    | DeleteEdge
    | AddObservation
    | DeleteObservation
)


def _commands(commands: Iterable[SimpleCommand]) -> tuple[SimpleCommand, ...]:
    return tuple(commands)


@attrs.frozen
class Batch:
    """Commands applied atomically: all of them, or none when one fails."""

    commands: tuple[SimpleCommand, ...] = attrs.field(converter=_commands)


Command: TypeAlias = SimpleCommand | Batch


@attrs.frozen
class Entry:
    """One committed log entry: the state machine's only input.

    The timestamp is the leader's clock when it accepted the command; `apply` never reads a clock.
    """

    index: int
    term: int
    timestamp_ms: int
    principal: str
    namespace: str
    session: str | None
    command: Command


@attrs.frozen
class ExpireClients:
    """Forget the exactly-once records of clients not seen since `before_ms` (leader time).

    Proposed by the leader's driver from time to time; applied at the same log index everywhere,
    so every replica forgets the same clients.
    """

    before_ms: int


@attrs.frozen
class Proposal:
    """What a Raft entry of kind NORMAL carries: a command, who sent it, and when.

    `client_id` and `sequence` make a command exactly-once: a client numbers its commands 1, 2,
    3, ... and retries with the same number; a replica applies each number once and answers a
    retry with the reply it cached. `timestamp_ms` is the proposing leader's clock; the replica
    never lets applied timestamps go backwards (a new leader's clock may be behind).
    """

    timestamp_ms: int
    principal: str
    namespace: str
    session: str | None
    command: Command | ExpireClients
    client_id: str | None = None
    sequence: int = 0


# ---------------------------------------------------------------------------------------------
# Results of apply, and of queries.


def _tuple_if_list(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen
class Applied:
    """A command took effect. `value` is the record written (a tuple of them for a batch).

    A list becomes a tuple, so that a batch's reply decoded from CBOR (a cached reply in a
    restored client table) equals the one the state machine returned.
    """

    index: int
    value: Any = attrs.field(converter=_tuple_if_list)


@attrs.frozen
class Rejected:
    """A command was refused with a typed error; the state is exactly as before it."""

    index: int
    error: Exception


Result: TypeAlias = Applied | Rejected


RelatedNode: TypeAlias = tuple[Node, int]
"""(node, hops): a node reached by a graph walk and its distance in edges."""

SimilarHit: TypeAlias = tuple[Node, float]
"""(node, distance): a vector hit; smaller is nearer (cosine distance, or squared L2)."""


@attrs.frozen
class HybridHit:
    """A vector hit and the graph neighbourhood reached from it."""

    node: Node
    distance: float
    neighbours: tuple[RelatedNode, ...]
