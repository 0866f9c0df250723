"""`memora.Memora`: the embedded, durable store.

Every write is a `Proposal` that goes through a one-voter Raft node (`LocalNode`): it is appended
to the Raft log, made durable by group commit (one fsync covers every writer waiting at that
moment), committed, and only then applied to the replica; the caller gets the reply of its own
entry. What is applied is the entry decoded back from the log, so a restart applies exactly what
the live store did. A cluster (issue 6) changes the driver, not this surface.

On open, the newest snapshot is restored and the committed log after it applied. A torn log tail
is cut and reported in `recovery_report`; corruption in the middle of the log stops the open with
an error naming the file and offset.

Thread safety: any number of threads may call in; see `LocalNode` for how writers share fsyncs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from memora.core import constants, queries
from memora.core.codec import encode_model
from memora.core.errors import CodecError, LimitError, MemoraError, ValidationError
from memora.core.namespace import NamespaceState
from memora.core.types import (
    AddObservation,
    Applied,
    Batch,
    Command,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    DeleteObservation,
    Direction,
    Edge,
    HybridHit,
    InsertEdge,
    InsertNode,
    Metric,
    Namespace,
    Node,
    Observation,
    Properties,
    Proposal,
    Provenance,
    RelatedNode,
    SetVector,
    SimilarHit,
    SimpleCommand,
    UpdateEdge,
    UpdateNode,
)
from memora.net.log_store import RecoveryReport
from memora.service.arguments import (
    kinds_set,
    normalise_vectors,
    optional_vector_bytes,
    similarity_target,
    vector_bytes,
)
from memora.service.local_node import LocalNode

logger = logging.getLogger(__name__)
# The provenance of a write that names none: frozen, so one instance serves every call.
NO_PROVENANCE = Provenance()


class StoreClosedError(MemoraError):
    code = "closed"


class Memora:
    """A durable memory graph in a directory: `Memora.open(path)`, best as a context manager."""

    def __init__(self, data_dir: str, local: LocalNode, *, namespace: str, principal: str) -> None:
        self.data_dir = data_dir
        self.namespace = namespace
        self.principal = principal
        self.recovery_report: RecoveryReport = local.storage.recovery.log
        self._local = local
        self._clock_lock = threading.Lock()
        self._last_timestamp_ms = local.replica.machine.last_timestamp_ms
        self._closed = False

    # -- Opening and closing ----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        namespace: str = constants.namespace_default,
        dimension: int = constants.dimension_default,
        metric: Metric = "cosine",
        principal: str = "local",
    ) -> Memora:
        """Open (or create) the store in `path`; create `namespace` if it does not exist yet."""
        data_dir = os.fspath(path)
        os.makedirs(data_dir, exist_ok=True)
        local = LocalNode.open(data_dir)
        report = local.storage.recovery.log
        if report.truncated_path is not None:
            logger.warning(
                "cut a torn log tail: %d bytes at %s offset %s (%s)",
                report.truncated_bytes,
                report.truncated_path,
                report.truncated_offset,
                report.reason,
            )
        store = cls(data_dir, local, namespace=namespace, principal=principal)
        if namespace not in local.replica.machine.namespaces:
            store.create_namespace(namespace, dimension=dimension, metric=metric)
        return store

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._local.close()

    def __enter__(self) -> Memora:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- Writes -----------------------------------------------------------------------------------

    def create_namespace(
        self, name: str, *, dimension: int = constants.dimension_default, metric: Metric = "cosine"
    ) -> Namespace:
        value: Namespace = self._propose(CreateNamespace(dimension, metric), name)
        return value

    def insert_node(
        self,
        label: str,
        *,
        id: int | None = None,
        name: str | None = None,
        properties: Properties | None = None,
        text: str | None = None,
        vector: Any = None,
        provenance: Provenance | None = None,
        namespace: str | None = None,
    ) -> Node:
        command = InsertNode(
            label,
            id=id,
            name=name,
            properties={} if properties is None else properties,
            text=text,
            vector=optional_vector_bytes(vector),
            provenance=provenance or NO_PROVENANCE,
        )
        node: Node = self._propose(command, namespace)
        return node

    def update_node(
        self,
        id: int,
        *,
        label: str | None = None,
        name: str | None = None,
        properties: Properties | None = None,
        text: str | None = None,
        vector: Any = None,
        provenance: Provenance | None = None,
        clear: Sequence[str] = (),
        namespace: str | None = None,
    ) -> Node:
        command = UpdateNode(
            id, label, name, properties, text, optional_vector_bytes(vector), provenance, clear
        )
        node: Node = self._propose(command, namespace)
        return node

    def delete_node(self, id: int, *, namespace: str | None = None) -> Node:
        node: Node = self._propose(DeleteNode(id), namespace)
        return node

    def insert_vector(self, node_id: int, vector: Any, *, namespace: str | None = None) -> Node:
        """Set the vector of an existing node (the seed's name for it)."""
        node: Node = self._propose(SetVector(node_id, vector_bytes(vector)), namespace)
        return node

    def insert_edge(
        self,
        source: int,
        target: int,
        kind: str = "related",
        *,
        id: int | None = None,
        properties: Properties | None = None,
        provenance: Provenance | None = None,
        namespace: str | None = None,
    ) -> Edge:
        command = InsertEdge(
            source,
            target,
            kind,
            id,
            {} if properties is None else properties,
            provenance or NO_PROVENANCE,
        )
        edge: Edge = self._propose(command, namespace)
        return edge

    def update_edge(
        self,
        id: int,
        *,
        properties: Properties | None = None,
        provenance: Provenance | None = None,
        namespace: str | None = None,
    ) -> Edge:
        edge: Edge = self._propose(UpdateEdge(id, properties, provenance), namespace)
        return edge

    def delete_edge(self, id: int, *, namespace: str | None = None) -> Edge:
        edge: Edge = self._propose(DeleteEdge(id), namespace)
        return edge

    def add_observation(
        self,
        node_id: int,
        text: str,
        *,
        vector: Any = None,
        provenance: Provenance | None = None,
        namespace: str | None = None,
    ) -> Observation:
        command = AddObservation(
            node_id, text, optional_vector_bytes(vector), None, provenance or NO_PROVENANCE
        )
        observation: Observation = self._propose(command, namespace)
        return observation

    def delete_observation(self, id: int, *, namespace: str | None = None) -> Observation:
        observation: Observation = self._propose(DeleteObservation(id), namespace)
        return observation

    def batch(
        self, commands: Iterable[SimpleCommand], *, namespace: str | None = None
    ) -> tuple[Any, ...]:
        """Apply commands atomically: all take effect, or none and the first error is raised.

        Vectors inside the commands may be lists or numpy arrays; they are converted to float32.
        """
        normalised = tuple(normalise_vectors(command) for command in commands)
        values: tuple[Any, ...] = self._propose(Batch(normalised), namespace)
        return values

    @property
    def applied_index(self) -> int:
        """The commit index of the last entry applied (Raft's no-ops and membership included)."""
        return self._local.replica.applied_index

    def _propose(self, command: Command, namespace: str | None) -> Any:
        if self._closed:
            raise StoreClosedError("the store is closed")
        proposal = Proposal(
            self._timestamp_ms(), self.principal, namespace or self.namespace, None, command
        )
        try:
            data = encode_model(proposal)
        except (CodecError, TypeError, ValueError, OverflowError) as error:
            message = f"the command cannot be encoded: {error}"
            raise ValidationError(message, "command") from error
        if len(data) > constants.entry_bytes_max:
            raise LimitError(
                f"the command encodes to {len(data)} bytes; the limit is "
                f"{constants.entry_bytes_max}",
                "command",
            )
        result = self._local.propose(data)
        if isinstance(result, Applied):
            return result.value
        raise result.error

    def _timestamp_ms(self) -> int:
        """The wall clock in ms, never going backwards within this process."""
        with self._clock_lock:
            self._last_timestamp_ms = max(self._last_timestamp_ms, time.time_ns() // 1_000_000)
            return self._last_timestamp_ms

    # -- Reads ------------------------------------------------------------------------------------

    def get_node(
        self, id: int, *, as_of: int | None = None, namespace: str | None = None
    ) -> Node | None:
        with self._local.apply_lock:
            return queries.get_node(self._reader(namespace, as_of), id, as_of)

    def get_node_by_name(self, name: str, *, namespace: str | None = None) -> Node | None:
        with self._local.apply_lock:
            return queries.node_by_name(self._reader(namespace, None), name)

    def get_edge(
        self, id: int, *, as_of: int | None = None, namespace: str | None = None
    ) -> Edge | None:
        with self._local.apply_lock:
            return queries.get_edge(self._reader(namespace, as_of), id, as_of)

    def node_history(self, id: int, *, namespace: str | None = None) -> list[Node]:
        with self._local.apply_lock:
            return list(self._reader(namespace, None).nodes.get(id, ()))

    def edges_of(
        self,
        node_id: int,
        *,
        direction: Direction = "both",
        kinds: Iterable[str] | None = None,
        as_of: int | None = None,
        namespace: str | None = None,
    ) -> list[Edge]:
        with self._local.apply_lock:
            ns = self._reader(namespace, as_of)
            return queries.edges_of(ns, node_id, direction, kinds_set(kinds), as_of)

    def observations_of(
        self, node_id: int, *, as_of: int | None = None, namespace: str | None = None
    ) -> list[Observation]:
        with self._local.apply_lock:
            return queries.observations_of(self._reader(namespace, as_of), node_id, as_of)

    def list_nodes(
        self,
        *,
        label: str | None = None,
        after_id: int = 0,
        limit: int = 100,
        as_of: int | None = None,
        namespace: str | None = None,
    ) -> list[Node]:
        with self._local.apply_lock:
            ns = self._reader(namespace, as_of)
            return queries.list_nodes(ns, label, after_id, limit, as_of)

    def query_related(
        self,
        node_id: int,
        depth: int = 1,
        *,
        kinds: Iterable[str] | None = None,
        direction: Direction = "both",
        as_of: int | None = None,
        limit: int = constants.related_nodes_max,
        namespace: str | None = None,
    ) -> dict[int, int]:
        """Node id -> hops for every node within `depth` hops (not the start), in BFS order.

        Ids only, like networkx's shortest-path-length maps: a walk over thousands of nodes then
        never touches their records. `query_related_nodes` returns the records themselves.
        """
        with self._local.apply_lock:
            ns = self._reader(namespace, as_of)
            return queries.related_depths(
                ns, node_id, depth, kinds_set(kinds), direction, as_of, limit
            )

    def query_related_nodes(
        self,
        node_id: int,
        depth: int = 1,
        *,
        kinds: Iterable[str] | None = None,
        direction: Direction = "both",
        as_of: int | None = None,
        limit: int = constants.related_nodes_max,
        namespace: str | None = None,
    ) -> list[RelatedNode]:
        """`(node, hops)` for every node within `depth` hops (not the start), in BFS order."""
        with self._local.apply_lock:
            ns = self._reader(namespace, as_of)
            return queries.related(ns, node_id, depth, kinds_set(kinds), direction, as_of, limit)

    def query_similar(
        self,
        vector_or_node_id: Any,
        top_k: int = 10,
        *,
        label: str | None = None,
        exact: bool = False,
        ef: int | None = None,
        as_of: int | None = None,
        namespace: str | None = None,
    ) -> list[SimilarHit]:
        """Nearest nodes to a vector, or to a node's own vector (the node itself excluded)."""
        with self._local.apply_lock:
            ns = self._reader(namespace, as_of)
            vector, exclude = similarity_target(ns, vector_or_node_id, as_of)
            return queries.similar(ns, vector, top_k, label, exact, ef, as_of, exclude)

    def query_hybrid(
        self,
        node_id: int,
        depth: int = 1,
        top_k: int = 10,
        *,
        vector: Any = None,
        kinds: Iterable[str] | None = None,
        direction: Direction = "both",
        as_of: int | None = None,
        namespace: str | None = None,
    ) -> list[SimilarHit]:
        """The node's neighbourhood within `depth` hops, ranked by similarity to `vector` (or to
        the node's own vector): `(node, distance)` pairs, nearest first."""
        with self._local.apply_lock:
            ns = self._reader(namespace, as_of)
            query = None if vector is None else queries.query_vector(ns, vector)
            return queries.hybrid_around_node(
                ns, node_id, depth, top_k, query, kinds_set(kinds), direction, as_of
            )

    def query_hybrid_by_vector(
        self,
        vector: Any,
        top_k: int = 10,
        depth: int = 1,
        *,
        label: str | None = None,
        kinds: Iterable[str] | None = None,
        direction: Direction = "both",
        exact: bool = False,
        as_of: int | None = None,
        namespace: str | None = None,
    ) -> list[HybridHit]:
        """The `top_k` nearest nodes to `vector`, each with its neighbourhood within `depth`."""
        with self._local.apply_lock:
            ns = self._reader(namespace, as_of)
            query = queries.query_vector(ns, vector)
            return queries.hybrid_from_vector(
                ns, query, top_k, depth, label, kinds_set(kinds), direction, exact, as_of
            )

    def state_hash(self) -> str:
        """The digest of the whole replicated state at the applied index (see StateMachine)."""
        with self._local.apply_lock:
            return self._local.replica.state_hash()

    def content_hash(self) -> str:
        """The digest of the records and id counters alone: equal across a reopen, whose new
        Raft term only advances the applied index."""
        with self._local.apply_lock:
            return self._local.replica.machine.content_hash()

    def stats(self, *, namespace: str | None = None) -> dict[str, Any]:
        with self._local.apply_lock:
            ns = self._reader(namespace, None)
            return {
                "namespace": ns.info.name,
                "dimension": ns.info.dimension,
                "metric": ns.info.metric,
                "applied_index": self._local.replica.machine.applied_index,
                "nodes": sum(1 for versions in ns.nodes.values() if not versions[-1].deleted),
                "edges": len(ns.edge_keys),
                "vectors": len(ns.node_vectors),
                "observation_vectors": len(ns.observation_vectors),
                "vector_segments": ns.node_vectors.segment_count(),
                "vector_index_bytes": ns.node_vectors.memory_bytes()
                + ns.observation_vectors.memory_bytes(),
            }

    def _reader(self, namespace: str | None, as_of: int | None) -> NamespaceState:
        if self._closed:
            raise StoreClosedError("the store is closed")
        machine = self._local.replica.machine
        if as_of is None:
            return machine.namespace(namespace or self.namespace)  # Nothing to check in `reader`.
        return machine.reader(namespace or self.namespace, as_of)

    # -- Snapshots --------------------------------------------------------------------------------

    def snapshot(self) -> int:
        """Snapshot the applied state and drop the log it covers; returns the snapshot's index."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        return self._local.snapshot()
