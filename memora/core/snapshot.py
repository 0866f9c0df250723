"""Snapshots of the state machine as named byte parts, and restore from them.

`take` returns parts named after the directories of DESIGN.md's disk layout ("nodes", "edges",
"observations", "vectors", and "state" for the rest); the storage layer decides where the bytes
go. `restore` rebuilds a `StateMachine` from them: record histories as they were, derived indexes
rebuilt from the records (in log order, so the "ever" lists match a replica that applied every
entry), vector indexes through `VectorIndex.restore` (sealed segments as saved, the active segment
rebuilt).

A snapshot may come from a peer (InstallSnapshot) or a damaged disk, so `restore` treats it as bad
input: anything malformed is a `CodecError`, never an assertion. The state hash is recomputed from
the records and must equal the one `take` stored, and every live vector must equal its record's,
which is what makes a restore a check.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

from memora.core import validate
from memora.core.codec import decode, encode
from memora.core.errors import CodecError, ValidationError
from memora.core.namespace import NamespaceState, RecordT
from memora.core.state import StateMachine
from memora.core.types import Edge, Namespace, Node, Observation
from memora.core.vectors import VectorIndex

# Format 2 (2026-11-24) digests record versions differently, so its state hash differs from
# format 1's for the same records. A format 1 snapshot is still restored: its records go through
# the same checks, and only its stored hash, which this code can no longer recompute, is not
# compared (the snapshot's files carry their own CRCs).
SNAPSHOT_FORMAT: Final = 2
_FORMATS_READ: Final = (1, SNAPSHOT_FORMAT)
PARTS: Final = ("state", "nodes", "edges", "observations", "vectors")
VectorRecordT = TypeVar("VectorRecordT", Node, Observation)


def take(machine: StateMachine) -> dict[str, bytes]:
    namespaces = list(machine.namespaces.values())
    state = {
        "format": SNAPSHOT_FORMAT,
        "applied_index": machine.applied_index,
        "last_timestamp_ms": machine.last_timestamp_ms,
        "state_hash": machine.state_hash(),
        "namespaces": [
            [ns.info, ns.next_node_id, ns.next_edge_id, ns.next_observation_id] for ns in namespaces
        ],
    }
    return {
        "state": encode(state),
        "nodes": encode([list(ns.nodes.values()) for ns in namespaces]),
        "edges": encode([list(ns.edges.values()) for ns in namespaces]),
        "observations": encode([list(ns.observations.values()) for ns in namespaces]),
        "vectors": encode(
            [[ns.node_vectors.snapshot(), ns.observation_vectors.snapshot()] for ns in namespaces]
        ),
    }


def restore(parts: dict[str, bytes]) -> StateMachine:
    """Rebuild a machine from `take`'s parts. Raises `CodecError` on anything malformed."""
    try:
        return _restore(parts)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as error:
        # The codec builds records without checking their field types, so a damaged record can
        # fail anywhere it is used; that is still bad input, not a bug.
        raise CodecError(f"malformed snapshot: {error!r}") from error


def _restore(parts: dict[str, bytes]) -> StateMachine:
    missing = [name for name in PARTS if name not in parts]
    if missing:
        raise CodecError(f"snapshot lacks parts: {', '.join(missing)}")
    state = decode(parts["state"])
    if not isinstance(state, dict) or state.get("format") not in _FORMATS_READ:
        raise CodecError("snapshot state part has an unknown format", "format")
    headers = _list(state.get("namespaces"), "namespaces")
    tables = [_list(decode(parts[name]), name) for name in PARTS[1:]]
    if any(len(table) != len(headers) for table in tables):
        raise CodecError("snapshot parts disagree on the number of namespaces", "namespaces")
    machine = StateMachine()
    written: list[object] = []
    for header, nodes, edges, observations, vectors in zip(headers, *tables, strict=True):
        ns = _restore_namespace(header, nodes, edges, observations, vectors)
        if ns.info.name in machine.namespaces:
            raise CodecError(f"snapshot holds namespace {ns.info.name!r} twice", "namespaces")
        machine.namespaces[ns.info.name] = ns
        written.append(ns.info)
        for table in (ns.nodes, ns.edges, ns.observations):
            for versions in table.values():
                written.extend(versions)
    machine.applied_index = _count(state.get("applied_index"), "applied_index")
    machine.last_timestamp_ms = _count(state.get("last_timestamp_ms"), "last_timestamp_ms")
    machine._add_digests(written)
    if state["format"] == SNAPSHOT_FORMAT and machine.state_hash() != state.get("state_hash"):
        raise CodecError("snapshot records do not match its state hash", "state_hash")
    return machine


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise CodecError(f"snapshot {field} is not a list", field)
    return value


def _count(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CodecError(f"snapshot {field} is not a count", field)
    return value


def _restore_namespace(
    header: Any, nodes: Any, edges: Any, observations: Any, vectors: Any
) -> NamespaceState:
    header = _list(header, "namespaces")
    if len(header) != 4 or not isinstance(header[0], Namespace):
        raise CodecError("snapshot namespace header is malformed", "namespaces")
    info = _namespace_info(header[0])
    vectors = _list(vectors, "vectors")
    if len(vectors) != 2 or not all(isinstance(item, bytes) for item in vectors):
        raise CodecError("snapshot vectors of a namespace are malformed", "vectors")
    ns = NamespaceState(info)
    ns.restore_histories(
        _histories(nodes, Node, info.name, "nodes"),
        _histories(edges, Edge, info.name, "edges"),
        _histories(observations, Observation, info.name, "observations"),
    )
    ns.node_vectors = _vector_index(vectors[0], info)
    ns.observation_vectors = _vector_index(vectors[1], info)
    ns.next_node_id = _next_id(header[1], ns.nodes, "next_node_id")
    ns.next_edge_id = _next_id(header[2], ns.edges, "next_edge_id")
    ns.next_observation_id = _next_id(header[3], ns.observations, "next_observation_id")
    _check_vectors(ns.node_vectors, ns.nodes, "vectors")
    _check_vectors(ns.observation_vectors, ns.observations, "vectors")
    return ns


def _namespace_info(info: Namespace) -> Namespace:
    try:
        validate.namespace_name(info.name)
        validate.dimension(info.dimension)
        validate.metric(info.metric)
    except ValidationError as error:
        raise CodecError(
            f"snapshot namespace is malformed: {error.message}", "namespaces"
        ) from error
    return info


def _histories(
    value: Any, kind: type[RecordT], namespace: str, field: str
) -> dict[int, list[RecordT]]:
    """Record id -> versions, each history numbered 1, 2, ... in order of its commit indexes."""
    histories: dict[int, list[RecordT]] = {}
    for versions in _list(value, field):
        if not isinstance(versions, list) or not versions:
            raise CodecError(f"snapshot {field} holds an empty or malformed history", field)
        first = versions[0]
        for number, version in enumerate(versions, start=1):
            if (
                type(version) is not kind
                or (version.id, version.namespace, version.version) != (first.id, namespace, number)
                or (number > 1 and version.updated.index < versions[number - 2].updated.index)
            ):
                raise CodecError(f"snapshot {field} holds a malformed history", field)
        if type(first.id) is not int or first.id in histories:
            raise CodecError(f"snapshot {field} holds id {first.id!r} twice", field)
        histories[first.id] = versions
    return histories


def _vector_index(data: bytes, info: Namespace) -> VectorIndex:
    index = VectorIndex.restore(data)
    if (index.dimension, index.metric) != (info.dimension, info.metric):
        raise CodecError("snapshot vector index does not match its namespace", "vectors")
    return index


def _next_id(value: Any, table: dict[int, Any], field: str) -> int:
    next_id = _count(value, field)
    if next_id < 1 or any(record_id >= next_id for record_id in table):
        raise CodecError(f"snapshot {field} is not after every id", field)
    return next_id


def _check_vectors(index: VectorIndex, table: dict[int, list[VectorRecordT]], field: str) -> None:
    """The index holds exactly the vectors of the live records, bit for bit."""
    expected = 0
    for record_id, versions in table.items():
        record = versions[-1]
        vector = None if record.deleted else record.vector
        if vector is None:
            continue
        expected += 1
        found = index.vector_of(record_id)
        if found is None or found.tobytes() != vector:
            raise CodecError(f"snapshot vector of record {record_id} differs", field)
    if len(index) != expected:
        raise CodecError("snapshot vector index holds vectors of no live record", field)
