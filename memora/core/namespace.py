"""The state of one namespace (tenant), and the journal that makes a command atomic.

`NamespaceState` holds the version history of every node, edge and observation of one namespace
and the derived indexes that make reads fast: unique names, labels, live adjacency, and the vector
indexes. Every change goes through the few `put_*`/`index_*` methods below, and each records how to
undo itself in a `Journal`, so that a command that fails half way leaves no trace.

Vector index changes cannot be undone (hnswlib cannot remove a point), so they are queued in the
journal and run only once the whole command has succeeded.

Nothing here validates input; `memora.core.state` does that before it calls in.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import TypeVar

import attrs
import numpy as np

from memora.core.types import (
    Edge,
    FloatArray,
    Namespace,
    Node,
    Observation,
    Record,
    vector_from_bytes,
)
from memora.core.vectors import VectorIndex

RecordT = TypeVar("RecordT", Node, Edge, Observation)
# (index, key, vector or None for a removal, log index of the entry)
VectorChange = tuple[VectorIndex, int, "FloatArray | None", int]
EdgeKey = tuple[int, int, str]  # (source, target, kind)
# node -> edge id -> the other end. Each inner map is kept in edge id order (`_insert_sorted`), so
# a BFS can walk it as it is, and it reads the same on every replica however the map was built.
Adjacency = dict[int, dict[int, int]]


@attrs.define
class Journal:
    """What one command changed: how to undo it, and what to do once it has succeeded."""

    undo: list[Callable[[], None]] = attrs.field(factory=list)
    vector_changes: list[VectorChange] = attrs.field(factory=list)
    written: list[Record | Namespace] = attrs.field(factory=list)

    def rollback(self) -> None:
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()
        self.vector_changes.clear()
        self.written.clear()

    def commit(self, unsettled: set[VectorIndex]) -> None:
        """Run the queued vector changes, adding runs of vectors to one index in one call.

        An index given a single vector may leave its graph insert waiting (`VectorIndex.add_one`);
        an index that does is added to `unsettled`.
        """
        changes = self.vector_changes
        start = 0
        while start < len(changes):
            index, key, vector, log_index = changes[start]
            if vector is None:
                index.remove(key)
                start += 1
                continue
            end = start + 1
            while end < len(changes) and changes[end][0] is index and changes[end][2] is not None:
                end += 1
            if end == start + 1:
                index.add_one(key, vector, log_index)  # The usual command: one vector.
                if index.graph_backlog:
                    unsettled.add(index)
            else:
                run = changes[start:end]
                vectors = [change[2] for change in run if change[2] is not None]
                index.add([change[1] for change in run], np.stack(vectors), log_index)
            start = end
        self.undo.clear()
        self.vector_changes.clear()


def _undo_append(versions: list[RecordT], table: dict[int, list[RecordT]], key: int) -> None:
    versions.pop()
    if not versions:
        del table[key]


def _insert_sorted(edges: dict[int, int], edge_id: int, other: int) -> None:
    """Insert into a map kept in edge id order. New ids are the largest, so this is an append but
    for explicit ids and undone deletes, which re-sort the (one node's) map."""
    assert edge_id not in edges
    last = next(reversed(edges), 0)
    edges[edge_id] = other
    if edge_id < last:
        ordered = sorted(edges.items())
        edges.clear()
        edges.update(ordered)


def _pop(items: list[int]) -> None:
    items.pop()


class NamespaceState:
    """One namespace: record histories, derived indexes and vector indexes."""

    def __init__(self, info: Namespace) -> None:
        self.info = info
        self.nodes: dict[int, list[Node]] = {}
        self.edges: dict[int, list[Edge]] = {}
        self.observations: dict[int, list[Observation]] = {}
        # Derived from the latest versions; rebuilt on restore.
        self.names: dict[str, int] = {}
        self.labels: dict[str, list[int]] = {}  # label -> sorted live node ids
        self.edge_keys: dict[EdgeKey, int] = {}
        self.out_live: Adjacency = {}
        self.in_live: Adjacency = {}
        self.observations_live: dict[int, dict[int, None]] = {}  # node -> live observation ids
        # Derived from every version; never shrinks.
        self.edges_ever: dict[int, list[int]] = {}  # node -> edges that ever touched it
        self.observations_ever: dict[int, list[int]] = {}  # node -> its observations, ever
        self.node_vectors = VectorIndex(info.dimension, info.metric)
        self.observation_vectors = VectorIndex(info.dimension, info.metric)
        self.next_node_id = 1
        self.next_edge_id = 1
        self.next_observation_id = 1

    def restore_histories(
        self,
        nodes: dict[int, list[Node]],
        edges: dict[int, list[Edge]],
        observations: dict[int, list[Observation]],
    ) -> None:
        """Take record histories from a snapshot and rebuild the derived indexes from them.

        The tables keep log order (a dict's order is that of each record's first version), so the
        "ever" lists come out in creation order, as on a replica that applied every entry; the
        adjacency maps are built in edge id order, their invariant everywhere.
        """
        assert not self.nodes and not self.edges and not self.observations
        self.nodes, self.edges, self.observations = nodes, edges, observations
        for node_id, node_versions in nodes.items():
            node = node_versions[-1]
            if not node.deleted:
                if node.name is not None:
                    self.names[node.name] = node_id
                self.labels.setdefault(node.label, []).append(node_id)
        for ids in self.labels.values():
            ids.sort()
        for edge_id, edge_versions in edges.items():
            edge = edge_versions[-1]
            self.edges_ever.setdefault(edge.source, []).append(edge_id)
            if edge.target != edge.source:
                self.edges_ever.setdefault(edge.target, []).append(edge_id)
        for edge_id in sorted(edges):
            edge = edges[edge_id][-1]
            if not edge.deleted:
                self.edge_keys[(edge.source, edge.target, edge.kind)] = edge_id
                self.out_live.setdefault(edge.source, {})[edge_id] = edge.target
                self.in_live.setdefault(edge.target, {})[edge_id] = edge.source
        for observation_id, observation_versions in observations.items():
            observation = observation_versions[-1]
            self.observations_ever.setdefault(observation.node_id, []).append(observation_id)
            if not observation.deleted:
                self.observations_live.setdefault(observation.node_id, {})[observation_id] = None

    # -- Reads of the latest version ------------------------------------------------------------

    def live_node(self, node_id: int) -> Node | None:
        versions = self.nodes.get(node_id)
        if versions is None or versions[-1].deleted:
            return None
        return versions[-1]

    def live_edge(self, edge_id: int) -> Edge | None:
        versions = self.edges.get(edge_id)
        if versions is None or versions[-1].deleted:
            return None
        return versions[-1]

    def live_observation(self, observation_id: int) -> Observation | None:
        versions = self.observations.get(observation_id)
        if versions is None or versions[-1].deleted:
            return None
        return versions[-1]

    # -- Writes: each records its undo in the journal -------------------------------------------

    def put_node(self, journal: Journal, node: Node) -> None:
        previous = self.live_node(node.id)
        self._append_version(journal, self.nodes, node)
        self._reindex_node(journal, previous, None if node.deleted else node, node.updated.index)
        if node.id >= self.next_node_id:
            self._set_counter(journal, "next_node_id", node.id + 1)

    def put_edge(self, journal: Journal, edge: Edge) -> None:
        previous = self.live_edge(edge.id)
        first_version = edge.id not in self.edges
        self._append_version(journal, self.edges, edge)
        if first_version:
            self._append_ever(journal, self.edges_ever, edge.source, edge.id)
            if edge.target != edge.source:
                self._append_ever(journal, self.edges_ever, edge.target, edge.id)
        if previous is None and not edge.deleted:
            self._link_edge(journal, edge)
        elif previous is not None and edge.deleted:
            self._unlink_edge(journal, previous)
        if edge.id >= self.next_edge_id:
            self._set_counter(journal, "next_edge_id", edge.id + 1)

    def put_observation(self, journal: Journal, observation: Observation) -> None:
        previous = self.live_observation(observation.id)
        first_version = observation.id not in self.observations
        self._append_version(journal, self.observations, observation)
        if first_version:
            self._append_ever(journal, self.observations_ever, observation.node_id, observation.id)
        live = self.observations_live.setdefault(observation.node_id, {})
        if previous is None and not observation.deleted:
            live[observation.id] = None
            journal.undo.append(lambda: live.__delitem__(observation.id))
        elif previous is not None and observation.deleted:
            del live[observation.id]
            journal.undo.append(lambda: live.__setitem__(observation.id, None))
        had_vector = previous is not None and previous.vector is not None
        vector = None if observation.deleted else observation.vector
        if vector is not None or had_vector:
            self._queue_vector(
                journal,
                self.observation_vectors,
                observation.id,
                vector,
                observation.updated.index,
            )
        if observation.id >= self.next_observation_id:
            self._set_counter(journal, "next_observation_id", observation.id + 1)

    # -- Helpers --------------------------------------------------------------------------------

    def _append_version(
        self, journal: Journal, table: dict[int, list[RecordT]], record: RecordT
    ) -> None:
        versions = table.setdefault(record.id, [])
        assert not versions or versions[-1].version + 1 == record.version, record
        assert not versions or versions[-1].updated.index <= record.updated.index
        versions.append(record)
        journal.undo.append(lambda: _undo_append(versions, table, record.id))
        journal.written.append(record)

    def _append_ever(
        self, journal: Journal, table: dict[int, list[int]], node_id: int, record_id: int
    ) -> None:
        ids = table.setdefault(node_id, [])
        ids.append(record_id)
        journal.undo.append(lambda: _pop(ids))

    def _set_counter(self, journal: Journal, name: str, value: int) -> None:
        previous = getattr(self, name)
        assert value > previous
        setattr(self, name, value)
        journal.undo.append(lambda: setattr(self, name, previous))

    def _reindex_node(
        self, journal: Journal, previous: Node | None, node: Node | None, log_index: int
    ) -> None:
        name_before = None if previous is None else previous.name
        name_after = None if node is None else node.name
        if name_before != name_after:
            if name_before is not None:
                self._unset_name(journal, name_before)
            if name_after is not None and node is not None:
                self._set_name(journal, name_after, node.id)
        if previous is not None and (node is None or previous.label != node.label):
            self._unlabel(journal, previous.label, previous.id)
        if node is not None and (previous is None or previous.label != node.label):
            self._label(journal, node.label, node.id)
        vector_before = None if previous is None else previous.vector
        vector_after = None if node is None else node.vector
        if vector_before != vector_after:
            node_id = node.id if node is not None else previous.id if previous is not None else 0
            self._queue_vector(journal, self.node_vectors, node_id, vector_after, log_index)

    def _set_name(self, journal: Journal, name: str, node_id: int) -> None:
        assert name not in self.names, name
        self.names[name] = node_id
        journal.undo.append(lambda: self.names.__delitem__(name))

    def _unset_name(self, journal: Journal, name: str) -> None:
        node_id = self.names.pop(name)
        journal.undo.append(lambda: self.names.__setitem__(name, node_id))

    def _label(self, journal: Journal, label: str, node_id: int) -> None:
        ids = self.labels.setdefault(label, [])
        bisect.insort(ids, node_id)
        journal.undo.append(lambda: ids.remove(node_id))

    def _unlabel(self, journal: Journal, label: str, node_id: int) -> None:
        ids = self.labels[label]
        ids.remove(node_id)
        journal.undo.append(lambda: bisect.insort(ids, node_id))

    def _link_edge(self, journal: Journal, edge: Edge) -> None:
        key = (edge.source, edge.target, edge.kind)
        assert key not in self.edge_keys, key
        self.edge_keys[key] = edge.id
        outgoing = self.out_live.setdefault(edge.source, {})
        incoming = self.in_live.setdefault(edge.target, {})
        _insert_sorted(outgoing, edge.id, edge.target)
        _insert_sorted(incoming, edge.id, edge.source)

        def undo() -> None:
            del self.edge_keys[key]
            del outgoing[edge.id]
            del incoming[edge.id]

        journal.undo.append(undo)

    def _unlink_edge(self, journal: Journal, edge: Edge) -> None:
        key = (edge.source, edge.target, edge.kind)
        assert self.edge_keys[key] == edge.id
        del self.edge_keys[key]
        del self.out_live[edge.source][edge.id]
        del self.in_live[edge.target][edge.id]

        def undo() -> None:
            self.edge_keys[key] = edge.id
            _insert_sorted(self.out_live[edge.source], edge.id, edge.target)
            _insert_sorted(self.in_live[edge.target], edge.id, edge.source)

        journal.undo.append(undo)

    def _queue_vector(
        self,
        journal: Journal,
        index: VectorIndex,
        key: int,
        vector: bytes | None,
        log_index: int,
    ) -> None:
        """Queue the vector index change that makes `key`'s entry hold `vector` (or none)."""
        assert key >= 1
        array = None if vector is None else vector_from_bytes(vector)
        journal.vector_changes.append((index, key, array, log_index))
