"""Snapshots of the state machine as named byte parts, and restore from them.

`take` returns parts named after the directories of DESIGN.md's disk layout ("nodes", "edges",
"observations", "vectors", and "state" for the rest); the storage layer decides where the bytes
go. `restore` rebuilds a `StateMachine` from them: record histories as they were, derived indexes
rebuilt from the records (in log order, so BFS and list orders match a replica that applied every
entry), vector indexes through `VectorIndex.restore` (sealed segments as saved, the active segment
rebuilt), and the state hash recomputed from scratch, which is what makes it a check.
"""

from __future__ import annotations

from typing import Any, Final

from memora.core.codec import decode, encode
from memora.core.errors import CodecError
from memora.core.namespace import NamespaceState
from memora.core.state import StateMachine
from memora.core.types import Edge, Namespace, Node, Observation
from memora.core.vectors import VectorIndex

SNAPSHOT_FORMAT: Final = 1
PARTS: Final = ("state", "nodes", "edges", "observations", "vectors")


def take(machine: StateMachine) -> dict[str, bytes]:
    namespaces = list(machine.namespaces.values())
    state = {
        "format": SNAPSHOT_FORMAT,
        "applied_index": machine.applied_index,
        "last_timestamp_ms": machine.last_timestamp_ms,
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
    missing = [name for name in PARTS if name not in parts]
    if missing:
        raise CodecError(f"snapshot lacks parts: {', '.join(missing)}")
    state = decode(parts["state"])
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
        raise CodecError("snapshot state part has an unknown format")
    per_namespace = zip(
        state["namespaces"],
        _decode_list(parts["nodes"]),
        _decode_list(parts["edges"]),
        _decode_list(parts["observations"]),
        _decode_list(parts["vectors"]),
        strict=True,
    )
    machine = StateMachine()
    written: list[object] = []
    for header, nodes, edges, observations, vectors in per_namespace:
        ns = _restore_namespace(header, nodes, edges, observations, vectors)
        machine.namespaces[ns.info.name] = ns
        written.append(ns.info)
        for table in (ns.nodes, ns.edges, ns.observations):
            for versions in table.values():
                written.extend(versions)
    machine.applied_index = state["applied_index"]
    machine.last_timestamp_ms = state["last_timestamp_ms"]
    machine._add_digests(written)
    return machine


def _decode_list(data: bytes) -> list[Any]:
    value = decode(data)
    if not isinstance(value, list):
        raise CodecError("snapshot part is not a list")
    return value


def _restore_namespace(
    header: list[Any],
    nodes: list[list[Node]],
    edges: list[list[Edge]],
    observations: list[list[Observation]],
    vectors: list[bytes],
) -> NamespaceState:
    info, next_node_id, next_edge_id, next_observation_id = header
    assert isinstance(info, Namespace)
    ns = NamespaceState(info)
    ns.restore_histories(
        {versions[0].id: versions for versions in nodes},
        {versions[0].id: versions for versions in edges},
        {versions[0].id: versions for versions in observations},
    )
    ns.node_vectors = VectorIndex.restore(vectors[0])
    ns.observation_vectors = VectorIndex.restore(vectors[1])
    ns.next_node_id = next_node_id
    ns.next_edge_id = next_edge_id
    ns.next_observation_id = next_observation_id
    return ns
