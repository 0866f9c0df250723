"""The state machine against a naive reference model, on random command sequences.

The model keeps plain dicts: for each record, the list of its versions (tombstones included), each
tagged with the commit index that wrote it. Every query is answered by brute force over those lists
(vector distances in float64), and must agree with `StateMachine` plus `memora.core.queries`:
results of apply (including the type and field of each rejection), records, BFS, exact similarity
(ties may swap), hybrid queries, edge and observation lists and pages of nodes, now and as of any
earlier index. A snapshot rule restores a second machine and carries on with it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import cbor2
import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from memora.core import constants, queries, snapshot
from memora.core.errors import (
    ConflictError,
    DimensionError,
    LimitError,
    MemoraError,
    NotFoundError,
    ValidationError,
)
from memora.core.namespace import NamespaceState
from memora.core.state import StateMachine
from memora.core.types import (
    AddObservation,
    Applied,
    Batch,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    DeleteObservation,
    Entry,
    InsertEdge,
    InsertNode,
    Provenance,
    Rejected,
    SetVector,
    SimpleCommand,
    Stamp,
    UpdateEdge,
    UpdateNode,
    vector_to_bytes,
)

DIMENSION = 4
NAMESPACES = {"cos": "cosine", "euc": "l2"}
LABELS = ("Person", "Fact", "Decision")
NAMES = ("alice", "bob", "carol", "dave", "eve")
KINDS = ("owns", "links", "related", "child_of")
PRINCIPALS = ("agent", "human")
SESSIONS = (None, "s1", "s2")
# Few distinct components, so that exact ties between distances are common.
COMPONENTS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
DISTANCE_TOLERANCE = 1e-4
TIE_TOLERANCE = 1e-5

# Inputs that must be refused, with the error each must cause.
BAD_VECTORS: tuple[tuple[bytes, type[MemoraError]], ...] = (
    (vector_to_bytes([1.0] * (DIMENSION - 1)), DimensionError),
    (vector_to_bytes([1.0] * (DIMENSION + 1)), DimensionError),
    (vector_to_bytes([1.0, math.nan, 0.0, 0.0]), ValidationError),
    (vector_to_bytes([math.inf, 0.0, 0.0, 1.0]), ValidationError),
    (vector_to_bytes([0.0, -math.inf, 0.0, 1.0]), ValidationError),
    (b"\x00\x00\x80", ValidationError),  # Not a whole number of float32 values.
)
BAD_LABELS = ("", "L" * (constants.label_bytes_max + 1), "bad\x00label", "\ud800")
BAD_TEXT = "t" * (constants.text_bytes_max + 1)
BAD_PROPERTIES: tuple[dict[str, Any], ...] = (
    {f"k{i}": i for i in range(constants.properties_count_max + 1)},
    {"big": "x" * (constants.properties_bytes_max + 1)},
    {"f": math.nan},
    {"g": [1.0, math.inf]},
    {"deep": [[[[[[[[[1]]]]]]]]]},
    {"s": "lone \udc80 surrogate"},
    {"n": 2**64},
    {"": 1},
)
BAD_IDS = (0, -3, 2**63)
UNKNOWN_ID = 10**9


# =================================================================================================
# The reference model.


class Rejection(Exception):
    """The model's answer to a command it refuses: the error type and the field it names."""

    def __init__(self, kind: type[MemoraError], field: str) -> None:
        super().__init__(kind.__name__, field)
        self.kind = kind
        self.field = field


Version = dict[str, Any]  # The fields of one record version, as attrs.asdict gives them.
Table = dict[int, list[Version]]


def check_text(value: object, field: str, bytes_max: int, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise Rejection(ValidationError, field)
    if not value and not empty_ok:
        raise Rejection(ValidationError, field)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise Rejection(ValidationError, field) from None
    if size > bytes_max:
        raise Rejection(LimitError, field)
    if "\x00" in value:
        raise Rejection(ValidationError, field)
    return value


def check_id(value: object, field: str) -> int:
    if not isinstance(value, int) or not 1 <= value < 2**63:
        raise Rejection(ValidationError, field)
    return value


def new_id(next_id: int, explicit: int | None) -> int:
    if explicit is not None:
        return check_id(explicit, "id")
    if next_id > constants.record_id_max:
        raise Rejection(LimitError, "id")
    return next_id


def check_vector(data: bytes, dimension: int) -> bytes:
    if len(data) % 4:
        raise Rejection(ValidationError, "vector")
    values = np.frombuffer(data, dtype="<f4")
    if len(values) != dimension:
        raise Rejection(DimensionError, "vector")
    if not all(math.isfinite(float(value)) for value in values):
        raise Rejection(ValidationError, "vector")
    return data


def nesting(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((nesting(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((nesting(item) for item in value.values()), default=0)
    return 1


def check_property_value(value: object, field: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Rejection(ValidationError, field) from None
    elif isinstance(value, float | int) and not isinstance(value, bool):
        in_range = math.isfinite(value) if isinstance(value, float) else -(2**63) <= value < 2**63
        if not in_range:
            raise Rejection(ValidationError, field)
    elif isinstance(value, list):
        for item in value:
            check_property_value(item, field)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_property_value(item, f"{field}.{key}")


def check_properties(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > constants.properties_count_max:
        raise Rejection(LimitError, "properties")
    for key, item in value.items():
        check_text(key, "properties key", constants.property_key_bytes_max)
        if nesting(item) > constants.property_depth_max:
            raise Rejection(LimitError, f"properties.{key}")
        check_property_value(item, f"properties.{key}")
    if len(cbor2.dumps(value)) > constants.properties_bytes_max:
        raise Rejection(LimitError, "properties")
    return value


def check_provenance(value: Provenance) -> Provenance:
    if not 0.0 <= value.confidence <= 1.0:
        raise Rejection(ValidationError, "confidence")
    return value


def live(table: Table, record_id: int) -> Version | None:
    versions = table.get(record_id)
    if not versions or versions[-1]["deleted"]:
        return None
    return versions[-1]


def at(table: Table, record_id: int, as_of: int | None) -> Version | None:
    """The version of a record current at `as_of` (the latest if None), unless deleted."""
    if as_of is None:
        return live(table, record_id)
    found = None
    for version in table.get(record_id, []):
        if version["updated"].index <= as_of:
            found = version
    return None if found is None or found["deleted"] else found


def next_version(previous: Version, stamp: Stamp, **changes: Any) -> Version:
    return {**previous, **changes, "version": previous["version"] + 1, "updated": stamp}


def append_version(table: Table, version: Version) -> None:
    versions = table.setdefault(version["id"], [])
    assert version["version"] == len(versions) + 1
    versions.append(version)


class NamespaceModel:
    def __init__(self, name: str, dimension: int, metric: str) -> None:
        self.name = name
        self.dimension = dimension
        self.metric = metric
        self.nodes: Table = {}
        self.edges: Table = {}
        self.observations: Table = {}
        self.next_node_id = 1
        self.next_edge_id = 1
        self.next_observation_id = 1

    def clone(self) -> NamespaceModel:
        copy = NamespaceModel(self.name, self.dimension, self.metric)
        copy.nodes = {key: list(versions) for key, versions in self.nodes.items()}
        copy.edges = {key: list(versions) for key, versions in self.edges.items()}
        copy.observations = {key: list(versions) for key, versions in self.observations.items()}
        copy.next_node_id = self.next_node_id
        copy.next_edge_id = self.next_edge_id
        copy.next_observation_id = self.next_observation_id
        return copy

    def live_nodes(self, as_of: int | None = None) -> list[Version]:
        found = (at(self.nodes, node_id, as_of) for node_id in sorted(self.nodes))
        return [node for node in found if node is not None]

    def live_edges(self, as_of: int | None = None) -> list[Version]:
        found = (at(self.edges, edge_id, as_of) for edge_id in sorted(self.edges))
        return [edge for edge in found if edge is not None]

    def name_owner(self, name: str) -> int | None:
        for node in self.live_nodes():
            if node["name"] == name:
                return int(node["id"])
        return None

    def require_node(self, node_id: object, field: str) -> Version:
        node = live(self.nodes, check_id(node_id, field))
        if node is None:
            raise Rejection(NotFoundError, field)
        return node


class Model:
    """Applies commands to plain tables; a refused command restores a copy taken before it."""

    def __init__(self) -> None:
        self.namespaces: dict[str, NamespaceModel] = {}

    def apply(self, entry: Entry) -> tuple[bool, Any]:
        saved = {name: ns.clone() for name, ns in self.namespaces.items()}
        stamp = Stamp(entry.index, entry.timestamp_ms, entry.principal, entry.session)
        try:
            check_text(entry.principal, "principal", constants.principal_bytes_max)
            if entry.session is not None:
                check_text(entry.session, "session", constants.session_bytes_max, empty_ok=True)
            check_text(entry.namespace, "namespace", constants.namespace_name_bytes_max)
            if isinstance(entry.command, Batch):
                value: Any = self.batch(entry.namespace, stamp, entry.command)
            else:
                value = self.simple(entry.namespace, stamp, entry.command)
        except Rejection as rejection:
            self.namespaces = saved
            return False, (rejection.kind, rejection.field)
        return True, value

    def batch(self, namespace: str, stamp: Stamp, batch: Batch) -> tuple[Any, ...]:
        values = []
        for position, command in enumerate(batch.commands):
            if isinstance(command, Batch):
                raise Rejection(ValidationError, f"commands[{position}]")
            try:
                values.append(self.simple(namespace, stamp, command))
            except Rejection as rejection:
                field = f"commands[{position}].{rejection.field}"
                raise Rejection(rejection.kind, field) from None
        return tuple(values)

    def simple(self, namespace: str, stamp: Stamp, command: SimpleCommand) -> Any:
        if isinstance(command, CreateNamespace):
            return self.create_namespace(namespace, stamp, command)
        ns = self.namespaces.get(namespace)
        if ns is None:
            raise Rejection(NotFoundError, "namespace")
        handler: Callable[[NamespaceModel, Stamp, Any], Version] = getattr(
            self, HANDLER_NAMES[type(command)]
        )
        return handler(ns, stamp, command)

    def create_namespace(self, name: str, stamp: Stamp, command: CreateNamespace) -> Version:
        if name in self.namespaces:
            raise Rejection(ConflictError, "namespace")
        self.namespaces[name] = NamespaceModel(name, command.dimension, command.metric)
        return {"name": name, "dimension": command.dimension, "metric": command.metric,
                "created": stamp}  # fmt: skip

    def insert_node(self, ns: NamespaceModel, stamp: Stamp, command: InsertNode) -> Version:
        node_id = new_id(ns.next_node_id, command.id)
        if live(ns.nodes, node_id) is not None:
            raise Rejection(ConflictError, "id")
        if command.name is not None:
            check_text(command.name, "name", constants.name_bytes_max)
            if ns.name_owner(command.name) is not None:
                raise Rejection(ConflictError, "name")
        if command.vector is not None:
            check_vector(command.vector, ns.dimension)
        check_text(command.label, "label", constants.label_bytes_max)
        check_properties(command.properties)
        if command.text is not None:
            check_text(command.text, "text", constants.text_bytes_max, empty_ok=True)
        check_provenance(command.provenance)
        node = {
            "namespace": ns.name,
            "id": node_id,
            "version": len(ns.nodes.get(node_id, [])) + 1,
            "label": command.label,
            "name": command.name,
            "properties": command.properties,
            "text": command.text,
            "vector": command.vector,
            "provenance": command.provenance,
            "created": stamp,
            "updated": stamp,
            "deleted": False,
        }
        append_version(ns.nodes, node)
        ns.next_node_id = max(ns.next_node_id, node_id + 1)
        return node

    def update_node(self, ns: NamespaceModel, stamp: Stamp, command: UpdateNode) -> Version:
        node = ns.require_node(command.id, "id")
        changes: dict[str, Any] = {}
        for field in command.clear:
            if field not in ("name", "text", "vector"):
                raise Rejection(ValidationError, "clear")
            if getattr(command, field) is not None:
                raise Rejection(ValidationError, "clear")
            changes[field] = None
        if command.label is not None:
            changes["label"] = check_text(command.label, "label", constants.label_bytes_max)
        if command.name is not None:
            changes["name"] = check_text(command.name, "name", constants.name_bytes_max)
            owner = ns.name_owner(command.name)
            if owner is not None and owner != node["id"]:
                raise Rejection(ConflictError, "name")
        if command.properties is not None:
            changes["properties"] = check_properties(command.properties)
        if command.text is not None:
            changes["text"] = check_text(
                command.text, "text", constants.text_bytes_max, empty_ok=True
            )
        if command.vector is not None:
            changes["vector"] = check_vector(command.vector, ns.dimension)
        if command.provenance is not None:
            changes["provenance"] = check_provenance(command.provenance)
        updated = next_version(node, stamp, **changes)
        append_version(ns.nodes, updated)
        return updated

    def set_vector(self, ns: NamespaceModel, stamp: Stamp, command: SetVector) -> Version:
        node = ns.require_node(command.node_id, "node_id")
        updated = next_version(node, stamp, vector=check_vector(command.vector, ns.dimension))
        append_version(ns.nodes, updated)
        return updated

    def delete_node(self, ns: NamespaceModel, stamp: Stamp, command: DeleteNode) -> Version:
        node = ns.require_node(command.id, "id")
        for edge in ns.live_edges():
            if node["id"] in (edge["source"], edge["target"]):
                append_version(ns.edges, next_version(edge, stamp, deleted=True))
        for observation_id in list(ns.observations):
            observation = live(ns.observations, observation_id)
            if observation is not None and observation["node_id"] == node["id"]:
                append_version(ns.observations, next_version(observation, stamp, deleted=True))
        tombstone = next_version(node, stamp, deleted=True)
        append_version(ns.nodes, tombstone)
        return tombstone

    def insert_edge(self, ns: NamespaceModel, stamp: Stamp, command: InsertEdge) -> Version:
        source = ns.require_node(command.source, "source")
        target = ns.require_node(command.target, "target")
        kind = check_text(command.kind, "kind", constants.edge_kind_bytes_max)
        for edge in ns.live_edges():
            if (edge["source"], edge["target"], edge["kind"]) == (source["id"], target["id"], kind):
                raise Rejection(ConflictError, "kind")
        edge_id = new_id(ns.next_edge_id, command.id)
        if edge_id in ns.edges:
            raise Rejection(ConflictError, "id")
        edge = {
            "namespace": ns.name,
            "id": edge_id,
            "version": 1,
            "source": source["id"],
            "target": target["id"],
            "kind": kind,
            "properties": check_properties(command.properties),
            "provenance": check_provenance(command.provenance),
            "created": stamp,
            "updated": stamp,
            "deleted": False,
        }
        append_version(ns.edges, edge)
        ns.next_edge_id = max(ns.next_edge_id, edge_id + 1)
        return edge

    def require_edge(self, ns: NamespaceModel, edge_id: int) -> Version:
        edge = live(ns.edges, check_id(edge_id, "id"))
        if edge is None:
            raise Rejection(NotFoundError, "id")
        return edge

    def update_edge(self, ns: NamespaceModel, stamp: Stamp, command: UpdateEdge) -> Version:
        edge = self.require_edge(ns, command.id)
        changes: dict[str, Any] = {}
        if command.properties is not None:
            changes["properties"] = check_properties(command.properties)
        if command.provenance is not None:
            changes["provenance"] = check_provenance(command.provenance)
        updated = next_version(edge, stamp, **changes)
        append_version(ns.edges, updated)
        return updated

    def delete_edge(self, ns: NamespaceModel, stamp: Stamp, command: DeleteEdge) -> Version:
        edge = self.require_edge(ns, command.id)
        tombstone = next_version(edge, stamp, deleted=True)
        append_version(ns.edges, tombstone)
        return tombstone

    def add_observation(self, ns: NamespaceModel, stamp: Stamp, command: AddObservation) -> Version:
        node = ns.require_node(command.node_id, "node_id")
        observation_id = new_id(ns.next_observation_id, command.id)
        if observation_id in ns.observations:
            raise Rejection(ConflictError, "id")
        if command.vector is not None:
            check_vector(command.vector, ns.dimension)
        observation = {
            "namespace": ns.name,
            "id": observation_id,
            "version": 1,
            "node_id": node["id"],
            "text": check_text(command.text, "text", constants.text_bytes_max),
            "vector": command.vector,
            "provenance": check_provenance(command.provenance),
            "created": stamp,
            "updated": stamp,
            "deleted": False,
        }
        append_version(ns.observations, observation)
        ns.next_observation_id = max(ns.next_observation_id, observation_id + 1)
        return observation

    def delete_observation(
        self, ns: NamespaceModel, stamp: Stamp, command: DeleteObservation
    ) -> Version:
        observation = live(ns.observations, check_id(command.id, "id"))
        if observation is None:
            raise Rejection(NotFoundError, "id")
        tombstone = next_version(observation, stamp, deleted=True)
        append_version(ns.observations, tombstone)
        return tombstone


HANDLER_NAMES: dict[type, str] = {
    InsertNode: "insert_node",
    UpdateNode: "update_node",
    SetVector: "set_vector",
    DeleteNode: "delete_node",
    InsertEdge: "insert_edge",
    UpdateEdge: "update_edge",
    DeleteEdge: "delete_edge",
    AddObservation: "add_observation",
    DeleteObservation: "delete_observation",
}


# -- Model queries --------------------------------------------------------------------------------


def model_related(
    ns: NamespaceModel,
    start: int,
    depth: int,
    kinds: frozenset[str] | None,
    direction: str,
    as_of: int | None,
) -> dict[int, int]:
    """node id -> hops in BFS order: frontier in order; for each node its outgoing edges by
    edge id, then its incoming edges by edge id."""
    edges = sorted(
        (e for e in ns.live_edges(as_of) if kinds is None or e["kind"] in kinds),
        key=lambda e: e["id"],
    )
    reached = {start: 0}
    frontier = [start]
    for hops in range(1, depth + 1):
        following = []
        for current in frontier:
            outgoing = [e["target"] for e in edges if e["source"] == current]
            incoming = [e["source"] for e in edges if e["target"] == current]
            neighbours = (outgoing if direction != "in" else []) + (
                incoming if direction != "out" else []
            )
            for other in neighbours:
                if other not in reached:
                    reached[other] = hops
                    following.append(other)
        frontier = following
    del reached[start]
    return reached


def model_distance(vector: bytes, query: np.ndarray, metric: str) -> float:
    """Distance as `memora.core.vectors.distances` defines it, computed in float64."""
    row = np.frombuffer(vector, dtype="<f4").astype(np.float64)
    query = query.astype(np.float64)
    if metric == "l2":
        return float(np.sum((row - query) ** 2))
    norms = float(np.linalg.norm(row)) * float(np.linalg.norm(query))
    # A zero vector normalizes to zero, whose cosine distance to anything is 1.
    return 1.0 if norms == 0.0 else 1.0 - float(row @ query) / norms


def model_distances(
    ns: NamespaceModel, nodes: Iterable[Version], query: np.ndarray
) -> dict[int, float]:
    return {
        node["id"]: model_distance(node["vector"], query, ns.metric)
        for node in nodes
        if node["vector"] is not None
    }


# =================================================================================================
# Comparisons.


def as_fields(record: Any) -> dict[str, Any]:
    fields: dict[str, Any] = attrs.asdict(record, recurse=False)
    return fields


def same_value(actual: Any, expected: Any) -> bool:
    if isinstance(actual, tuple):
        return len(actual) == len(expected) and all(
            same_value(a, e) for a, e in zip(actual, expected, strict=True)
        )
    return as_fields(actual) == expected


def check_ranked(hits: list[tuple[int, float]], expected: dict[int, float], top_k: int) -> None:
    """Hits are a true top-k of `expected` (id -> exact distance); tied ids may swap."""
    ranked = sorted(expected.values())
    assert len(hits) == min(top_k, len(expected)), (hits, expected)
    assert len({key for key, _ in hits}) == len(hits), hits
    for position, (key, distance) in enumerate(hits):
        assert key in expected, (key, expected)
        assert abs(distance - expected[key]) <= DISTANCE_TOLERANCE, (key, distance, expected)
        assert abs(distance - ranked[position]) <= DISTANCE_TOLERANCE, (hits, ranked)
    if hits:
        boundary = ranked[len(hits) - 1]
        assert all(expected[key] <= boundary + TIE_TOLERANCE for key, _ in hits), (hits, ranked)
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(hits)]
    assert all(gap >= -TIE_TOLERANCE for gap in gaps), hits


def expect_rejection(call: Callable[[], Any], kind: type[MemoraError], field: str) -> None:
    try:
        call()
    except MemoraError as error:
        assert type(error) is kind, (error, kind)
        assert error.field == field, (error, field)
    else:
        raise AssertionError(f"expected {kind.__name__} on {field}")


# =================================================================================================
# Command generation.

vectors = st.lists(st.sampled_from(COMPONENTS), min_size=DIMENSION, max_size=DIMENSION).map(
    vector_to_bytes
)
optional_vectors = st.none() | vectors
property_maps = st.dictionaries(
    st.sampled_from(("a", "b", "c")),
    st.integers(-5, 5) | st.text(max_size=3) | st.booleans() | st.floats(-2, 2) | st.none(),
    max_size=3,
)
provenances = st.builds(
    Provenance,
    st.none() | st.sampled_from(("chat", "import")),
    st.sampled_from((0.0, 0.5, 1.0)),
)
texts = st.none() | st.sampled_from(("", "hello", "ünïcode 🙂"))
names = st.none() | st.sampled_from(NAMES)
labels = st.sampled_from(LABELS)


class Draw:
    """Draws arguments that refer to what the model holds, so commands often succeed."""

    def __init__(self, data: st.DataObject, ns: NamespaceModel) -> None:
        self.data = data
        self.ns = ns

    def __call__(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def pick(self, table: Table, next_id: int, extra: int = 2) -> int:
        """An id of the table (live or deleted), a fresh one, or one that never existed."""
        known = list(table) + [next_id + offset for offset in range(extra)] + [UNKNOWN_ID]
        return int(self(st.sampled_from(known)))

    def node_id(self) -> int:
        live_ids = [node["id"] for node in self.ns.live_nodes()]
        if live_ids and self(st.integers(0, 4)) > 0:
            return int(self(st.sampled_from(live_ids)))
        return self.pick(self.ns.nodes, self.ns.next_node_id)

    def connected_node_id(self) -> int:
        """Mostly a node at an end of a live edge, so that graph queries find something."""
        ends = [end for edge in self.ns.live_edges() for end in (edge["source"], edge["target"])]
        if ends and self(st.integers(0, 3)) > 0:
            return int(self(st.sampled_from(ends)))
        return self.node_id()

    def edge_id(self) -> int:
        live_ids = [edge["id"] for edge in self.ns.live_edges()]
        if live_ids and self(st.integers(0, 4)) > 0:
            return int(self(st.sampled_from(live_ids)))
        return self.pick(self.ns.edges, self.ns.next_edge_id)

    def observation_id(self) -> int:
        return self.pick(self.ns.observations, self.ns.next_observation_id)

    def explicit_id(self, table: Table, next_id: int) -> int | None:
        """Mostly None (the next free id); sometimes a known, fresh or last possible id."""
        choice = self(st.integers(0, 15))
        if choice == 0:
            return constants.record_id_max  # After it, no automatic id is left.
        if choice > 4:
            return None
        return self.pick(table, next_id, extra=4)


def insert_node(draw: Draw) -> InsertNode:
    return InsertNode(
        label=draw(labels),
        id=draw.explicit_id(draw.ns.nodes, draw.ns.next_node_id),
        name=draw(names),
        properties=draw(property_maps),
        text=draw(texts),
        vector=draw(optional_vectors),
        provenance=draw(provenances),
    )


def update_node(draw: Draw) -> UpdateNode:
    fields = draw(st.sets(st.sampled_from(("name", "text", "vector"))))
    clear = draw(
        st.sets(st.sampled_from(("name", "text", "vector")).filter(lambda f: f not in fields))
    )
    return UpdateNode(
        id=draw.node_id(),
        label=draw(st.none() | labels),
        name=draw(st.sampled_from(NAMES)) if "name" in fields else None,
        properties=draw(st.none() | property_maps),
        text=draw(st.sampled_from(("", "changed"))) if "text" in fields else None,
        vector=draw(vectors) if "vector" in fields else None,
        provenance=draw(st.none() | provenances),
        clear=tuple(sorted(clear)),
    )


def set_vector(draw: Draw) -> SetVector:
    return SetVector(draw.node_id(), draw(vectors))


def delete_node(draw: Draw) -> DeleteNode:
    return DeleteNode(draw.node_id())


def insert_edge(draw: Draw) -> InsertEdge:
    return InsertEdge(
        source=draw.node_id(),
        target=draw.node_id(),
        kind=draw(st.sampled_from(KINDS)),
        id=draw.explicit_id(draw.ns.edges, draw.ns.next_edge_id),
        properties=draw(property_maps),
        provenance=draw(provenances),
    )


def update_edge(draw: Draw) -> UpdateEdge:
    return UpdateEdge(
        draw.edge_id(), draw(st.none() | property_maps), draw(st.none() | provenances)
    )


def delete_edge(draw: Draw) -> DeleteEdge:
    return DeleteEdge(draw.edge_id())


def add_observation(draw: Draw) -> AddObservation:
    return AddObservation(
        node_id=draw.node_id(),
        text=draw(st.sampled_from(("saw it", "heard it", "ünïcode"))),
        vector=draw(optional_vectors),
        id=draw.explicit_id(draw.ns.observations, draw.ns.next_observation_id),
        provenance=draw(provenances),
    )


def delete_observation(draw: Draw) -> DeleteObservation:
    return DeleteObservation(draw.observation_id())


def invalid(draw: Draw) -> SimpleCommand:
    """A command with one fault in it (which may not be the only reason it fails)."""
    node_id = draw.node_id()
    bad_vector = draw(st.sampled_from([vector for vector, _ in BAD_VECTORS]))
    choices: list[SimpleCommand] = [
        InsertNode(draw(st.sampled_from(BAD_LABELS))),
        InsertNode("Fact", text=BAD_TEXT),
        InsertNode("Fact", properties=draw(st.sampled_from(BAD_PROPERTIES))),
        InsertNode("Fact", vector=bad_vector),
        InsertNode("Fact", name=draw(st.sampled_from(("", "n" * (constants.name_bytes_max + 1))))),
        InsertNode("Fact", id=draw(st.sampled_from(BAD_IDS))),
        InsertNode("Fact", provenance=Provenance(confidence=1.5)),
        UpdateNode(node_id, label=draw(st.sampled_from(BAD_LABELS))),
        UpdateNode(node_id, text=BAD_TEXT),
        UpdateNode(node_id, properties=draw(st.sampled_from(BAD_PROPERTIES))),
        UpdateNode(node_id, vector=bad_vector),
        UpdateNode(node_id, clear=("label",)),
        UpdateNode(node_id, name="alice", clear=("name",)),
        UpdateNode(node_id, name=""),
        SetVector(node_id, bad_vector),
        InsertEdge(node_id, UNKNOWN_ID, "links"),
        InsertEdge(UNKNOWN_ID, node_id, "links"),
        InsertEdge(node_id, node_id, draw(st.sampled_from(("", "k" * 129)))),
        InsertEdge(node_id, node_id, "links", properties=draw(st.sampled_from(BAD_PROPERTIES))),
        UpdateEdge(draw.edge_id(), properties=draw(st.sampled_from(BAD_PROPERTIES))),
        DeleteEdge(draw(st.sampled_from(BAD_IDS))),
        AddObservation(node_id, ""),
        AddObservation(node_id, BAD_TEXT),
        AddObservation(node_id, "seen", vector=bad_vector),
        AddObservation(UNKNOWN_ID, "seen"),
        DeleteObservation(draw(st.sampled_from(BAD_IDS))),
        CreateNamespace(DIMENSION, "cosine"),
    ]
    return choices[draw(st.integers(0, len(choices) - 1))]


GENERATORS: tuple[Callable[[Draw], SimpleCommand], ...] = (
    insert_node,
    insert_node,
    insert_node,
    update_node,
    set_vector,
    delete_node,
    insert_edge,
    insert_edge,
    insert_edge,
    update_edge,
    delete_edge,
    add_observation,
    delete_observation,
    invalid,
)


def any_command(draw: Draw) -> SimpleCommand:
    return draw(st.sampled_from(GENERATORS))(draw)


kind_filters = st.none() | st.frozensets(st.sampled_from(KINDS), min_size=1, max_size=2)
directions = st.sampled_from(("out", "in", "both"))


# =================================================================================================
# The stateful test.


class StateMachineAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = StateMachine()
        self.model = Model()
        self.index = 0
        self.timestamp_ms = 1_700_000_000_000

    # -- Writing ----------------------------------------------------------------------------------

    def submit(
        self,
        data: st.DataObject,
        namespace: str,
        command: SimpleCommand | Batch,
        principal: str | None = None,
    ) -> None:
        self.index += 1
        self.timestamp_ms += data.draw(st.integers(0, 3))
        entry = Entry(
            index=self.index,
            term=1,
            timestamp_ms=self.timestamp_ms,
            principal=data.draw(st.sampled_from(PRINCIPALS)) if principal is None else principal,
            namespace=namespace,
            session=data.draw(st.sampled_from(SESSIONS)),
            command=command,
        )
        hash_before = self.machine.content_hash()
        result = self.machine.apply(entry)
        accepted, expected = self.model.apply(entry)
        assert result.index == entry.index
        outcome = "applied" if accepted else expected[0].__name__
        event(f"{type(command).__name__}: {outcome}")
        if accepted:
            assert isinstance(result, Applied), (command, result)
            assert same_value(result.value, expected), (result.value, expected)
        else:
            assert isinstance(result, Rejected), (command, result, expected)
            kind, field = expected
            assert type(result.error) is kind, (command, result.error, kind, field)
            assert result.error.field == field, (command, result.error, field)
            assert self.machine.content_hash() == hash_before, command

    def draw_for(self, data: st.DataObject) -> tuple[str, Draw]:
        namespace = data.draw(st.sampled_from(sorted(NAMESPACES)))
        return namespace, Draw(data, self.model.namespaces[namespace])

    @rule(data=st.data(), count=st.integers(1, 4))
    def commands(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            namespace, draw = self.draw_for(data)
            self.submit(data, namespace, any_command(draw))

    @initialize(data=st.data(), nodes=st.integers(0, 8), edges=st.integers(0, 10))
    def seed_graphs(self, data: st.DataObject, nodes: int, edges: int) -> None:
        for name, metric in NAMESPACES.items():
            self.submit(data, name, CreateNamespace(DIMENSION, metric))
        for namespace in sorted(NAMESPACES):
            self.grow_namespace(data, namespace, nodes, edges)

    @rule(data=st.data(), nodes=st.integers(1, 5), edges=st.integers(0, 6))
    def grow(self, data: st.DataObject, nodes: int, edges: int) -> None:
        namespace = data.draw(st.sampled_from(sorted(NAMESPACES)))
        self.grow_namespace(data, namespace, nodes, edges)

    def grow_namespace(self, data: st.DataObject, namespace: str, nodes: int, edges: int) -> None:
        """Mostly valid writes: nodes with vectors, then edges and observations between them."""
        draw = Draw(data, self.model.namespaces[namespace])
        for _ in range(nodes):
            command = attrs.evolve(insert_node(draw), id=None, vector=draw(optional_vectors))
            self.submit(data, namespace, command)
        live_ids = [node["id"] for node in draw.ns.live_nodes()]
        for _ in range(edges if live_ids else 0):
            source, target = draw(st.sampled_from(live_ids)), draw(st.sampled_from(live_ids))
            kind = draw(st.sampled_from(KINDS))
            self.submit(data, namespace, InsertEdge(source, target, kind))
        if live_ids:
            node_id = draw(st.sampled_from(live_ids))
            self.submit(data, namespace, AddObservation(node_id, "noted", draw(optional_vectors)))

    @rule(data=st.data())
    def insert_node_with_vector(self, data: st.DataObject) -> None:
        namespace, draw = self.draw_for(data)
        self.submit(data, namespace, attrs.evolve(insert_node(draw), vector=draw(vectors)))

    @rule(data=st.data())
    def invalid_command(self, data: st.DataObject) -> None:
        namespace, draw = self.draw_for(data)
        self.submit(data, namespace, invalid(draw))

    @rule(data=st.data(), size=st.integers(1, 5))
    def batch(self, data: st.DataObject, size: int) -> None:
        namespace, draw = self.draw_for(data)
        commands = [any_command(draw) for _ in range(size)]
        self.submit(data, namespace, Batch(commands))

    @rule(data=st.data(), size=st.integers(1, 4))
    def batch_failing_half_way(self, data: st.DataObject, size: int) -> None:
        namespace, draw = self.draw_for(data)
        commands: list[SimpleCommand] = [insert_node(draw) for _ in range(size)]
        if draw.ns.live_nodes():
            commands.append(set_vector(draw))
            commands.append(delete_node(draw))
        position = draw(st.integers(0, len(commands)))
        commands.insert(position, InsertEdge(draw.node_id(), UNKNOWN_ID, "links"))
        self.submit(data, namespace, Batch(commands))

    @rule(data=st.data())
    def batch_of_batch(self, data: st.DataObject) -> None:
        namespace, draw = self.draw_for(data)
        nested: Any = Batch([insert_node(draw)])
        self.submit(data, namespace, Batch([insert_node(draw), nested]))

    @rule(data=st.data())
    def unknown_namespace(self, data: st.DataObject) -> None:
        _, draw = self.draw_for(data)
        self.submit(data, "nowhere", any_command(draw))

    @rule(data=st.data())
    def bad_principal(self, data: st.DataObject) -> None:
        namespace, draw = self.draw_for(data)
        principal = data.draw(st.sampled_from(("", "p" * (constants.principal_bytes_max + 1))))
        self.submit(data, namespace, insert_node(draw), principal=principal)

    # -- Reading ----------------------------------------------------------------------------------

    def draw_as_of(self, data: st.DataObject) -> int | None:
        """None (the present) half the time, else any index, with a bias to recent ones."""
        recent = st.integers(max(0, self.index - 5), self.index)
        return data.draw(st.none() | st.integers(0, self.index) | recent)

    def reader(self, namespace: str, as_of: int | None) -> NamespaceState:
        return self.machine.reader(namespace, as_of)

    @rule(data=st.data())
    def get_node(self, data: st.DataObject) -> None:
        namespace, draw = self.draw_for(data)
        as_of = self.draw_as_of(data)
        ns = self.reader(namespace, as_of)
        for node_id in [*draw.ns.nodes, draw.ns.next_node_id]:
            actual = queries.get_node(ns, node_id, as_of)
            expected = at(draw.ns.nodes, node_id, as_of)
            assert (None if actual is None else as_fields(actual)) == expected, node_id
        for edge_id in draw.ns.edges:
            actual_edge = queries.get_edge(ns, edge_id, as_of)
            expected = at(draw.ns.edges, edge_id, as_of)
            assert (None if actual_edge is None else as_fields(actual_edge)) == expected

    @rule(data=st.data(), depth=st.integers(1, 3), kinds=kind_filters, direction=directions)
    def related(
        self, data: st.DataObject, depth: int, kinds: frozenset[str] | None, direction: Any
    ) -> None:
        namespace, draw = self.draw_for(data)
        as_of = self.draw_as_of(data)
        ns = self.reader(namespace, as_of)
        start = draw.connected_node_id()
        if at(draw.ns.nodes, start, as_of) is None:
            call = lambda: queries.related(ns, start, depth, kinds, direction, as_of)  # noqa: E731
            expect_rejection(call, NotFoundError, "node_id")
            return
        limit = draw(st.sampled_from((constants.related_nodes_max, 1, 2, 3)))
        found = queries.related(ns, start, depth, kinds, direction, as_of, limit)
        expected = model_related(draw.ns, start, depth, kinds, direction, as_of)
        expected = dict(list(expected.items())[:limit])
        event(f"related: {min(len(expected), 3)}+ found at depth {depth}")
        assert [(node.id, hops) for node, hops in found] == list(expected.items())
        for node, _ in found:
            assert as_fields(node) == at(draw.ns.nodes, node.id, as_of)

    @rule(data=st.data(), top_k=st.integers(1, 6), exact=st.booleans())
    def similar_to_vector(self, data: st.DataObject, top_k: int, exact: bool) -> None:
        namespace, draw = self.draw_for(data)
        as_of = self.draw_as_of(data)
        label = draw(st.none() | labels)
        ns = self.reader(namespace, as_of)
        query = queries.query_vector(ns, np.frombuffer(draw(vectors), dtype="<f4"))
        hits = queries.similar(ns, query, top_k, label=label, exact=exact, as_of=as_of)
        candidates = [
            node for node in draw.ns.live_nodes(as_of) if label is None or node["label"] == label
        ]
        expected = model_distances(draw.ns, candidates, query)
        event(f"similar: {min(len(expected), 3)}+ candidates")
        check_ranked([(node.id, distance) for node, distance in hits], expected, top_k)
        for node, _ in hits:
            assert as_fields(node) == at(draw.ns.nodes, node.id, as_of)

    @rule(data=st.data(), top_k=st.integers(1, 6))
    def similar_to_node(self, data: st.DataObject, top_k: int) -> None:
        namespace, draw = self.draw_for(data)
        as_of = self.draw_as_of(data)
        label = draw(st.none() | labels)
        ns = self.reader(namespace, as_of)
        node_id = draw.node_id()
        centre = at(draw.ns.nodes, node_id, as_of)
        if centre is None:
            expect_rejection(
                lambda: queries.require_node(ns, node_id, as_of, "node_id"),
                NotFoundError,
                "node_id",
            )
            return
        node = queries.require_node(ns, node_id, as_of, "node_id")
        if centre["vector"] is None:
            expect_rejection(lambda: queries.own_vector(node), ValidationError, "vector")
            return
        query = queries.own_vector(node)
        hits = queries.similar(
            ns, query, top_k, label=label, exact=True, as_of=as_of, exclude=node_id
        )
        candidates = [
            other
            for other in draw.ns.live_nodes(as_of)
            if other["id"] != node_id and (label is None or other["label"] == label)
        ]
        expected = model_distances(draw.ns, candidates, query)
        check_ranked([(node.id, distance) for node, distance in hits], expected, top_k)

    @rule(
        data=st.data(),
        depth=st.integers(1, 3),
        top_k=st.integers(1, 5),
        kinds=kind_filters,
        direction=directions,
        own=st.booleans(),
    )
    def hybrid_around_node(
        self,
        data: st.DataObject,
        depth: int,
        top_k: int,
        kinds: frozenset[str] | None,
        direction: Any,
        own: bool,
    ) -> None:
        namespace, draw = self.draw_for(data)
        as_of = self.draw_as_of(data)
        ns = self.reader(namespace, as_of)
        node_id = draw.connected_node_id()
        vector = None if own else queries.query_vector(ns, np.frombuffer(draw(vectors), "<f4"))

        def call() -> Any:
            return queries.hybrid_around_node(
                ns, node_id, depth, top_k, vector, kinds, direction, as_of
            )

        centre = at(draw.ns.nodes, node_id, as_of)
        if centre is None:
            expect_rejection(call, NotFoundError, "node_id")
            return
        if vector is None and centre["vector"] is None:
            expect_rejection(call, ValidationError, "vector")
            return
        reference = vector if vector is not None else np.frombuffer(centre["vector"], "<f4")
        reached = model_related(draw.ns, node_id, depth, kinds, direction, as_of)
        neighbours = [at(draw.ns.nodes, other, as_of) for other in reached]
        expected = model_distances(draw.ns, [n for n in neighbours if n], reference)
        check_ranked([(node.id, distance) for node, distance in call()], expected, top_k)

    @rule(
        data=st.data(),
        depth=st.integers(1, 2),
        top_k=st.integers(1, 4),
        kinds=kind_filters,
        direction=directions,
    )
    def hybrid_from_vector(
        self,
        data: st.DataObject,
        depth: int,
        top_k: int,
        kinds: frozenset[str] | None,
        direction: Any,
    ) -> None:
        namespace, draw = self.draw_for(data)
        as_of = self.draw_as_of(data)
        label = draw(st.none() | labels)
        ns = self.reader(namespace, as_of)
        query = queries.query_vector(ns, np.frombuffer(draw(vectors), "<f4"))
        found = queries.hybrid_from_vector(
            ns, query, top_k, depth, label, kinds, direction, exact=True, as_of=as_of
        )
        candidates = [n for n in draw.ns.live_nodes(as_of) if label is None or n["label"] == label]
        expected = model_distances(draw.ns, candidates, query)
        check_ranked([(item.node.id, item.distance) for item in found], expected, top_k)
        for item in found:
            reached = model_related(draw.ns, item.node.id, depth, kinds, direction, as_of)
            assert [(node.id, hops) for node, hops in item.neighbours] == list(reached.items())

    @rule(data=st.data(), kinds=kind_filters, direction=directions)
    def edges_of(self, data: st.DataObject, kinds: frozenset[str] | None, direction: Any) -> None:
        namespace, draw = self.draw_for(data)
        as_of = self.draw_as_of(data)
        ns = self.reader(namespace, as_of)
        node_id = draw.connected_node_id()
        if at(draw.ns.nodes, node_id, as_of) is None:
            call = lambda: queries.edges_of(ns, node_id, direction, kinds, as_of)  # noqa: E731
            expect_rejection(call, NotFoundError, "node_id")
            return
        expected = [
            edge
            for edge in draw.ns.live_edges(as_of)
            if (kinds is None or edge["kind"] in kinds)
            and (
                (direction != "in" and edge["source"] == node_id)
                or (direction != "out" and edge["target"] == node_id)
            )
        ]
        found = queries.edges_of(ns, node_id, direction, kinds, as_of)
        assert [as_fields(edge) for edge in found] == expected

    @rule(data=st.data())
    def observations_of(self, data: st.DataObject) -> None:
        namespace, draw = self.draw_for(data)
        as_of = self.draw_as_of(data)
        ns = self.reader(namespace, as_of)
        node_id = draw.node_id()
        if at(draw.ns.nodes, node_id, as_of) is None:
            call = lambda: queries.observations_of(ns, node_id, as_of)  # noqa: E731
            expect_rejection(call, NotFoundError, "node_id")
            return
        expected = [
            observation
            for observation_id in draw.ns.observations  # Creation order.
            if (observation := at(draw.ns.observations, observation_id, as_of)) is not None
            and observation["node_id"] == node_id
        ]
        found = queries.observations_of(ns, node_id, as_of)
        assert [as_fields(observation) for observation in found] == expected

    @rule(data=st.data(), limit=st.integers(1, 4))
    def list_nodes(self, data: st.DataObject, limit: int) -> None:
        namespace, draw = self.draw_for(data)
        as_of = self.draw_as_of(data)
        label = draw(st.none() | labels | st.just("Nothing"))
        ns = self.reader(namespace, as_of)
        expected = [n for n in draw.ns.live_nodes(as_of) if label is None or n["label"] == label]
        pages: list[list[dict[str, Any]]] = []
        after_id = 0
        while True:
            page = queries.list_nodes(ns, label, after_id, limit, as_of)
            assert len(page) <= limit
            if not page:
                break
            pages.append([as_fields(node) for node in page])
            after_id = page[-1].id
        assert [node for page in pages for node in page] == expected
        assert all(len(page) == limit for page in pages[:-1])

    @rule(data=st.data())
    def bad_queries(self, data: st.DataObject) -> None:
        namespace, draw = self.draw_for(data)
        ns = self.reader(namespace, None)
        expect_rejection(lambda: self.reader(namespace, self.index + 1), ValidationError, "as_of")
        expect_rejection(lambda: self.reader("absent", None), NotFoundError, "namespace")
        expect_rejection(lambda: queries.query_vector(ns, [1.0] * 3), DimensionError, "vector")
        nan = [math.nan] * DIMENSION
        expect_rejection(lambda: queries.query_vector(ns, nan), ValidationError, "vector")
        query = np.ones(DIMENSION, dtype=np.float32)
        expect_rejection(lambda: queries.similar(ns, query, 0), ValidationError, "top_k")
        too_many = constants.top_k_max + 1
        expect_rejection(lambda: queries.similar(ns, query, too_many), LimitError, "top_k")
        node_id = draw.node_id()
        if live(draw.ns.nodes, node_id) is not None:
            call = lambda: queries.related(ns, node_id, 0)  # noqa: E731
            expect_rejection(call, ValidationError, "depth")
            call = lambda: queries.related(ns, node_id, 1, direction="up")  # type: ignore[arg-type]  # noqa: E731
            expect_rejection(call, ValidationError, "direction")

    # -- Snapshots --------------------------------------------------------------------------------

    @rule(data=st.data())
    def snapshot_and_restore(self, data: st.DataObject) -> None:
        parts = snapshot.take(self.machine)
        restored = snapshot.restore(parts)
        assert restored.state_hash() == self.machine.state_hash()
        assert restored.applied_index == self.machine.applied_index
        assert restored.last_timestamp_ms == self.machine.last_timestamp_ms
        query = np.frombuffer(data.draw(vectors), dtype="<f4")
        for namespace in NAMESPACES:
            assert answers(restored, namespace, query) == answers(self.machine, namespace, query)
        self.machine = restored

    @invariant()
    def applied_index_follows(self) -> None:
        assert self.machine.applied_index == self.index


def answers(machine: StateMachine, namespace: str, query: np.ndarray) -> list[Any]:
    """Everything a reader could see of a namespace, in the order it would see it."""
    ns = machine.reader(namespace)
    nodes = queries.list_nodes(ns, limit=constants.list_limit_max)
    found: list[Any] = [
        [as_fields(node) for node in nodes],
        [[label, [n.id for n in queries.list_nodes(ns, label)]] for label in LABELS],
    ]
    for exact in (False, True):
        hits = queries.similar(ns, query, 5, exact=exact)
        found.append([(node.id, distance) for node, distance in hits])
    for node in nodes:
        found.append([(node.id, hops) for node, hops in queries.related(ns, node.id, 2)])
        found.append([as_fields(edge) for edge in queries.edges_of(ns, node.id)])
        found.append([as_fields(item) for item in queries.observations_of(ns, node.id)])
    return found


StateMachineAgainstModel.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestStateMachineAgainstModel = StateMachineAgainstModel.TestCase
