"""The memory state machine: `apply(entry) -> result` is the only way state changes.

Rules of this file:
- `apply` is deterministic. It reads no clock (time comes in the entry, and must not go backwards),
  no randomness, and iterates only over containers ordered by the log.
- A command is checked and applied in one pass through `NamespaceState`'s journaled writes. A typed
  error anywhere rolls the journal back, so a rejected command (or batch) leaves the state exactly
  as it was, while the applied index still advances: rejection is itself a deterministic outcome.
- `state_hash()` digests the logical state: every version of every record, the namespaces, the id
  counters and the applied index. It is kept incrementally as a sum of per-version digests (order
  does not matter), and recomputed from scratch on restore, which is how a restore is checked.

Reads live in `memora.core.queries`; snapshots in `memora.core.snapshot`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from memora.core import constants, queries, validate
from memora.core.codec import digest_input, encode
from memora.core.errors import (
    ConflictError,
    LimitError,
    MemoraError,
    NotFoundError,
    ValidationError,
)
from memora.core.namespace import Journal, NamespaceState
from memora.core.types import (
    AddObservation,
    Applied,
    Batch,
    Command,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    DeleteObservation,
    Edge,
    Entry,
    InsertEdge,
    InsertNode,
    Namespace,
    Node,
    Observation,
    Rejected,
    Result,
    SetVector,
    SimpleCommand,
    Stamp,
    UpdateEdge,
    UpdateNode,
)
from memora.core.vectors import VectorIndex

HASH_BYTES: Final = 32
HASH_MODULUS: Final = 2 ** (8 * HASH_BYTES)
CLEARABLE_NODE_FIELDS: Final = ("name", "text", "vector")


def version_digest(record: object) -> int:
    """The digest of one record version, as an integer to be summed into the state hash."""
    return int.from_bytes(hashlib.sha256(digest_input(record)).digest(), "big")


def _new_id(next_id: int, explicit: object) -> int:
    """The id of a new record: the explicit one (checked), else the next free one, if any is left.

    An explicit id near `record_id_max` pushes the counter to the end of the range, so running out
    is bad input to refuse, not an invariant to assert.
    """
    assert next_id >= constants.record_id_min
    if explicit is not None:
        return validate.record_id(explicit, "id")
    if next_id > constants.record_id_max:
        raise LimitError(f"no ids are left after {constants.record_id_max}; pass an id", "id")
    return next_id


@attrs.define
class _Context:
    """What every command of one entry shares."""

    namespace: str
    stamp: Stamp
    journal: Journal


class StateMachine:
    """All namespaces of one replica, changed only by `apply`."""

    def __init__(self) -> None:
        self.namespaces: dict[str, NamespaceState] = {}
        self.applied_index = 0
        self.last_timestamp_ms = 0
        self._records_digest = 0  # Sum of version digests, modulo HASH_MODULUS...
        self._undigested: list[object] = []  # ...but of these, digested when a hash is asked for.
        # Indexes whose last add may await its graph; each settles alone, so order is moot.
        self._unsettled: set[VectorIndex] = set()

    # -- Apply ------------------------------------------------------------------------------------

    def apply(self, entry: Entry) -> Result:
        assert entry.index == self.applied_index + 1, (entry.index, self.applied_index)
        assert entry.timestamp_ms >= self.last_timestamp_ms, "timestamps must not go backwards"
        journal = Journal()
        stamp = Stamp(entry.index, entry.timestamp_ms, entry.principal, entry.session)
        context = _Context(entry.namespace, stamp, journal)
        result: Result
        try:
            self._check_entry(entry)
            value = self._apply_command(context, entry.command)
        except MemoraError as error:
            journal.rollback()
            result = Rejected(entry.index, error)
        else:
            self._add_digests(journal.written)
            journal.commit(self._unsettled)
            result = Applied(entry.index, value)
        self.applied_index = entry.index
        self.last_timestamp_ms = entry.timestamp_ms
        return result

    @property
    def graphs_unsettled(self) -> bool:
        """Whether a vector may wait for its HNSW graph (`settle_graphs` would add it)."""
        return bool(self._unsettled)

    def settle_graphs(self) -> None:
        """Add the vectors that wait for their HNSW graphs (see `memora.core.vectors`). Nothing
        that a read or a hash can see changes: searches settle first, and answer the same."""
        for index in self._unsettled:
            index.settle_graphs()
        self._unsettled.clear()

    def skip(self, index: int) -> None:
        """Account for a log entry that carries no command (a Raft no-op or configuration), so
        the applied index follows the log exactly."""
        assert index == self.applied_index + 1, (index, self.applied_index)
        self.applied_index = index

    def state_hash(self) -> str:
        """The digest replicas compare: the logical content at this applied index."""
        return hashlib.sha256(self.state_header()).hexdigest()

    def state_header(self) -> bytes:
        """What `state_hash` digests: the applied index, the sum of version digests and the id
        counters. Cheap (one flat CBOR array, the digest sum as 32 bytes rather than a CBOR
        bignum, which cbor2 encodes slowly), because the simulator asks after every entry."""
        digest = self.records_digest.to_bytes(HASH_BYTES, "big")
        return encode([self.applied_index, digest, *self._counters()])

    def content_hash(self) -> str:
        """The digest of the records and id counters alone, without the applied index.

        A rejected command advances the applied index (so `state_hash` changes) but leaves this
        unchanged, which is how tests check that a rejection left no trace.
        """
        digest = self.records_digest.to_bytes(HASH_BYTES, "big")
        return hashlib.sha256(encode([digest, *self._counters()])).hexdigest()

    def _counters(self) -> list[str | int]:
        """Each namespace's name and next ids, flat, in name order."""
        counters: list[str | int] = []
        for name in sorted(self.namespaces):
            ns = self.namespaces[name]
            counters += (name, ns.next_node_id, ns.next_edge_id, ns.next_observation_id)
        return counters

    def namespace(self, name: str) -> NamespaceState:
        """The namespace called `name`, or a NotFoundError."""
        state = self.namespaces.get(name)
        if state is None:
            raise NotFoundError(f"namespace {name!r} does not exist", "namespace")
        return state

    def reader(self, name: str, as_of: int | None = None) -> NamespaceState:
        """The namespace to run a `memora.core.queries` read on, after checking `as_of`."""
        queries.check_as_of(as_of, self.applied_index)
        return self.namespace(name)

    @property
    def records_digest(self) -> int:
        """The sum of the digests of every version written, modulo HASH_MODULUS.

        Versions are digested when this is asked for rather than as they are applied: a server
        or an embedded store rarely asks (the simulator asks after every entry), and a digest
        costs a version's CBOR and a SHA-256 of it, the vector included, on every write's path.
        """
        self._digest_written()
        return self._records_digest

    def _add_digests(self, written: Iterable[object]) -> None:
        self._undigested.extend(written)
        if len(self._undigested) > constants.undigested_versions_max:
            self._digest_written()

    def _digest_written(self) -> None:
        total = self._records_digest
        for record in self._undigested:
            total += version_digest(record)
        self._records_digest = total % HASH_MODULUS
        self._undigested.clear()

    def _check_entry(self, entry: Entry) -> None:
        validate.text_field(entry.principal, "principal", constants.principal_bytes_max)
        validate.optional_text(entry.session, "session", constants.session_bytes_max)
        # The name of an existing namespace passed this check when it was created (or restored).
        if not (isinstance(entry.namespace, str) and entry.namespace in self.namespaces):
            validate.namespace_name(entry.namespace)

    def _apply_command(self, context: _Context, command: Command) -> Any:
        if isinstance(command, Batch):
            return self._apply_batch(context, command)
        return self._apply_simple(context, command)

    def _apply_batch(self, context: _Context, batch: Batch) -> tuple[Any, ...]:
        if len(batch.commands) > constants.batch_commands_max:
            raise LimitError(
                f"a batch holds at most {constants.batch_commands_max} commands", "commands"
            )
        results = []
        for position, command in enumerate(batch.commands):
            if isinstance(command, Batch):
                raise ValidationError("a batch cannot contain a batch", f"commands[{position}]")
            try:
                results.append(self._apply_simple(context, command))
            except MemoraError as error:
                field = f"commands[{position}]" + (f".{error.field}" if error.field else "")
                raise type(error)(f"command {position}: {error.message}", field) from error
        return tuple(results)

    def _apply_simple(self, context: _Context, command: SimpleCommand) -> Any:
        handler = _HANDLERS.get(type(command))
        if handler is None:
            raise ValidationError(f"unknown command {type(command).__name__}", "command")
        return handler(self, context, command)

    # -- Namespaces -------------------------------------------------------------------------------

    def _create_namespace(self, context: _Context, command: CreateNamespace) -> Namespace:
        name = context.namespace
        if name in self.namespaces:
            raise ConflictError(f"namespace {name!r} already exists", "namespace")
        if len(self.namespaces) >= constants.namespaces_max:
            raise LimitError(f"at most {constants.namespaces_max} namespaces", "namespace")
        info = Namespace(
            name,
            validate.dimension(command.dimension),
            validate.metric(command.metric),
            context.stamp,
        )
        self.namespaces[name] = NamespaceState(info)
        context.journal.undo.append(lambda: self.namespaces.__delitem__(name))
        context.journal.written.append(info)
        return info

    # -- Nodes ------------------------------------------------------------------------------------

    def _insert_node(self, context: _Context, command: InsertNode) -> Node:
        ns = self.namespace(context.namespace)
        node_id = _new_id(ns.next_node_id, command.id)
        if ns.live_node(node_id) is not None:
            raise ConflictError(f"node {node_id} already exists", "id")
        name = None
        if command.name is not None:
            name = validate.text_field(command.name, "name", constants.name_bytes_max)
            self._check_name_free(ns, name)
        if command.vector is not None:
            validate.vector(command.vector, ns.info.dimension)
        history = ns.nodes.get(node_id)
        node = Node(
            namespace=context.namespace,
            id=node_id,
            version=1 if history is None else history[-1].version + 1,
            label=validate.text_field(command.label, "label", constants.label_bytes_max),
            name=name,
            properties=validate.properties(command.properties),
            text=validate.optional_text(command.text, "text", constants.text_bytes_max),
            vector=command.vector,
            provenance=validate.provenance(command.provenance),
            created=context.stamp,
            updated=context.stamp,
        )
        ns.put_node(context.journal, node)
        return node

    def _update_node(self, context: _Context, command: UpdateNode) -> Node:
        ns = self.namespace(context.namespace)
        node = self._require_node(ns, command.id, "id")
        for field in command.clear:
            if field not in CLEARABLE_NODE_FIELDS:
                raise ValidationError(
                    f"clear accepts only {', '.join(CLEARABLE_NODE_FIELDS)}", "clear"
                )
            if getattr(command, field) is not None:
                raise ValidationError(f"{field} is both set and cleared", "clear")
        changes: dict[str, Any] = {f: None for f in command.clear}
        if command.label is not None:
            changes["label"] = validate.text_field(
                command.label, "label", constants.label_bytes_max
            )
        if command.name is not None:
            changes["name"] = validate.text_field(command.name, "name", constants.name_bytes_max)
            if changes["name"] != node.name:
                self._check_name_free(ns, changes["name"])
        if command.properties is not None:
            changes["properties"] = validate.properties(command.properties)
        if command.text is not None:
            changes["text"] = validate.text_field(
                command.text, "text", constants.text_bytes_max, empty_ok=True
            )
        if command.vector is not None:
            validate.vector(command.vector, ns.info.dimension)
            changes["vector"] = command.vector
        if command.provenance is not None:
            changes["provenance"] = validate.provenance(command.provenance)
        updated = attrs.evolve(node, version=node.version + 1, updated=context.stamp, **changes)
        ns.put_node(context.journal, updated)
        return updated

    def _set_vector(self, context: _Context, command: SetVector) -> Node:
        ns = self.namespace(context.namespace)
        node = self._require_node(ns, command.node_id, "node_id")
        validate.vector(command.vector, ns.info.dimension)
        updated = attrs.evolve(
            node, version=node.version + 1, updated=context.stamp, vector=command.vector
        )
        ns.put_node(context.journal, updated)
        return updated

    def _delete_node(self, context: _Context, command: DeleteNode) -> Node:
        ns = self.namespace(context.namespace)
        node = self._require_node(ns, command.id, "id")
        touching = [*ns.out_live.get(node.id, {}), *ns.in_live.get(node.id, {})]
        for edge_id in dict.fromkeys(touching):  # A self-loop is in both maps; delete it once.
            self._tombstone_edge(context, ns, edge_id)
        for observation_id in list(ns.observations_live.get(node.id, {})):
            self._tombstone_observation(context, ns, observation_id)
        tombstone = attrs.evolve(
            node, version=node.version + 1, updated=context.stamp, deleted=True
        )
        ns.put_node(context.journal, tombstone)
        return tombstone

    def _check_name_free(self, ns: NamespaceState, name: str | None) -> None:
        if name is not None and name in ns.names:
            raise ConflictError(f"name {name!r} already belongs to node {ns.names[name]}", "name")

    @staticmethod
    def _require_node(ns: NamespaceState, node_id: object, field: str) -> Node:
        node = ns.live_node(validate.record_id(node_id, field))
        if node is None:
            raise NotFoundError(f"node {node_id} does not exist", field)
        return node

    # -- Edges ------------------------------------------------------------------------------------

    def _insert_edge(self, context: _Context, command: InsertEdge) -> Edge:
        ns = self.namespace(context.namespace)
        source = self._require_node(ns, command.source, "source")
        target = self._require_node(ns, command.target, "target")
        kind = validate.text_field(command.kind, "kind", constants.edge_kind_bytes_max)
        existing = ns.edge_keys.get((source.id, target.id, kind))
        if existing is not None:
            raise ConflictError(
                f"edge {existing} already links {source.id} to {target.id} as {kind!r}", "kind"
            )
        edge_id = _new_id(ns.next_edge_id, command.id)
        if edge_id in ns.edges:
            raise ConflictError(f"edge id {edge_id} is already used", "id")
        edge = Edge(
            namespace=context.namespace,
            id=edge_id,
            version=1,
            source=source.id,
            target=target.id,
            kind=kind,
            properties=validate.properties(command.properties),
            provenance=validate.provenance(command.provenance),
            created=context.stamp,
            updated=context.stamp,
        )
        ns.put_edge(context.journal, edge)
        return edge

    def _update_edge(self, context: _Context, command: UpdateEdge) -> Edge:
        ns = self.namespace(context.namespace)
        edge = self._require_edge(ns, command.id)
        changes: dict[str, Any] = {}
        if command.properties is not None:
            changes["properties"] = validate.properties(command.properties)
        if command.provenance is not None:
            changes["provenance"] = validate.provenance(command.provenance)
        updated = attrs.evolve(edge, version=edge.version + 1, updated=context.stamp, **changes)
        ns.put_edge(context.journal, updated)
        return updated

    def _delete_edge(self, context: _Context, command: DeleteEdge) -> Edge:
        ns = self.namespace(context.namespace)
        edge = self._require_edge(ns, command.id)
        return self._tombstone_edge(context, ns, edge.id)

    def _tombstone_edge(self, context: _Context, ns: NamespaceState, edge_id: int) -> Edge:
        edge = ns.live_edge(edge_id)
        assert edge is not None, edge_id
        tombstone = attrs.evolve(
            edge, version=edge.version + 1, updated=context.stamp, deleted=True
        )
        ns.put_edge(context.journal, tombstone)
        return tombstone

    @staticmethod
    def _require_edge(ns: NamespaceState, edge_id: object) -> Edge:
        edge = ns.live_edge(validate.record_id(edge_id, "id"))
        if edge is None:
            raise NotFoundError(f"edge {edge_id} does not exist", "id")
        return edge

    # -- Observations -----------------------------------------------------------------------------

    def _add_observation(self, context: _Context, command: AddObservation) -> Observation:
        ns = self.namespace(context.namespace)
        node = self._require_node(ns, command.node_id, "node_id")
        observation_id = _new_id(ns.next_observation_id, command.id)
        if observation_id in ns.observations:
            raise ConflictError(f"observation id {observation_id} is already used", "id")
        if command.vector is not None:
            validate.vector(command.vector, ns.info.dimension)
        observation = Observation(
            namespace=context.namespace,
            id=observation_id,
            version=1,
            node_id=node.id,
            text=validate.text_field(command.text, "text", constants.text_bytes_max),
            vector=command.vector,
            provenance=validate.provenance(command.provenance),
            created=context.stamp,
            updated=context.stamp,
        )
        ns.put_observation(context.journal, observation)
        return observation

    def _delete_observation(self, context: _Context, command: DeleteObservation) -> Observation:
        ns = self.namespace(context.namespace)
        observation_id = validate.record_id(command.id, "id")
        if ns.live_observation(observation_id) is None:
            raise NotFoundError(f"observation {observation_id} does not exist", "id")
        return self._tombstone_observation(context, ns, observation_id)

    def _tombstone_observation(
        self, context: _Context, ns: NamespaceState, observation_id: int
    ) -> Observation:
        observation = ns.live_observation(observation_id)
        assert observation is not None, observation_id
        tombstone = attrs.evolve(
            observation, version=observation.version + 1, updated=context.stamp, deleted=True
        )
        ns.put_observation(context.journal, tombstone)
        return tombstone


_Handler = Callable[[StateMachine, _Context, Any], Any]
_HANDLERS: Final[dict[type, _Handler]] = {
    CreateNamespace: StateMachine._create_namespace,
    InsertNode: StateMachine._insert_node,
    UpdateNode: StateMachine._update_node,
    SetVector: StateMachine._set_vector,
    DeleteNode: StateMachine._delete_node,
    InsertEdge: StateMachine._insert_edge,
    UpdateEdge: StateMachine._update_edge,
    DeleteEdge: StateMachine._delete_edge,
    AddObservation: StateMachine._add_observation,
    DeleteObservation: StateMachine._delete_observation,
}
