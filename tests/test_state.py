"""Focused tests of the state machine: determinism, atomic batches, history, stamps and errors.

The model test (`test_state_model.py`) checks answers against a reference; these check the
properties a reference cannot: that replicas agree bit for bit (also with one restored from a
snapshot, through sealed segments and HNSW graphs), that a failed batch leaves every derived index
as it was, that `apply` refuses a log that skips or goes back in time, and that every rejection
names its field.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
import pytest

from memora.core import codec, constants, queries, snapshot
from memora.core.errors import (
    CodecError,
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
    Command,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    DeleteObservation,
    Entry,
    InsertEdge,
    InsertNode,
    Provenance,
    Rejected,
    Result,
    SetVector,
    SimpleCommand,
    Stamp,
    UpdateEdge,
    UpdateNode,
    vector_to_bytes,
)

DIMENSION = 8
# The replica tests use a larger dimension and ef = top_k, where HNSW really is approximate: a graph
# built even slightly differently then gives different answers, so equal answers mean equal graphs.
REPLICA_DIMENSION = 32
LABELS = ("Person", "Fact", "Decision")
KINDS = ("owns", "links", "related")


class Log:
    """Builds entries with increasing indexes and non-decreasing timestamps."""

    def __init__(self, start_ms: int = 1_000) -> None:
        self.entries: list[Entry] = []
        self.timestamp_ms = start_ms

    def add(
        self,
        command: Command,
        namespace: str = "main",
        principal: str = "agent",
        session: str | None = "s1",
        step_ms: int = 1,
    ) -> Entry:
        self.timestamp_ms += step_ms
        entry = Entry(
            index=len(self.entries) + 1,
            term=1,
            timestamp_ms=self.timestamp_ms,
            principal=principal,
            namespace=namespace,
            session=session,
            command=command,
        )
        self.entries.append(entry)
        return entry


class Store:
    """A state machine with a log of its own, for tests that write and read as they go."""

    def __init__(self, metric: str = "cosine", dimension: int = DIMENSION) -> None:
        self.machine = StateMachine()
        self.log = Log()
        self.apply(CreateNamespace(dimension, metric))  # type: ignore[arg-type]

    def apply(self, command: Command, **fields: Any) -> Result:
        return self.machine.apply(self.log.add(command, **fields))

    def ok(self, command: Command, **fields: Any) -> Any:
        result = self.apply(command, **fields)
        assert isinstance(result, Applied), result
        return result.value

    def refused(self, command: Command, **fields: Any) -> MemoraError:
        result = self.apply(command, **fields)
        assert isinstance(result, Rejected), result
        assert isinstance(result.error, MemoraError)
        return result.error

    @property
    def ns(self) -> NamespaceState:
        return self.machine.namespace("main")


def vector(*values: float) -> bytes:
    padded = list(values) + [0.0] * (DIMENSION - len(values))
    return vector_to_bytes(padded)


# =================================================================================================
# Determinism: replicas, and a replica restored from a snapshot half way.


def workload(count: int, seed: int) -> list[Entry]:
    """A deterministic log of `count` entries over two namespaces, most of them vector writes.

    Inserts use explicit ids so the generator knows which nodes probably live; some commands are
    refused on purpose (wrong dimension, duplicates, failing batches), since replicas must agree on
    rejections too.
    """
    rng = random.Random(seed)
    vectors = np.random.default_rng(seed)
    log = Log()
    log.add(CreateNamespace(REPLICA_DIMENSION, "cosine"), namespace="main")
    log.add(CreateNamespace(REPLICA_DIMENSION, "l2"), namespace="other")
    next_ids = {"main": 1, "other": 1}
    live: dict[str, list[int]] = {"main": [], "other": []}

    def new_vector() -> bytes:
        return vector_to_bytes(vectors.standard_normal(REPLICA_DIMENSION).astype(np.float32))

    def insert(namespace: str) -> InsertNode:
        node_id = next_ids[namespace]
        next_ids[namespace] += 1
        live[namespace].append(node_id)
        name = f"n{node_id}" if rng.random() < 0.3 else None
        return InsertNode(rng.choice(LABELS), id=node_id, name=name, vector=new_vector())

    while len(log.entries) < count:
        namespace = "main" if rng.random() < 0.8 else "other"
        ids = live[namespace]
        roll = rng.random()
        command: Command
        if roll < 0.5 or len(ids) < 4:
            command = insert(namespace)
        elif roll < 0.6:
            command = InsertEdge(rng.choice(ids), rng.choice(ids), rng.choice(KINDS))
        elif roll < 0.68:
            command = SetVector(rng.choice(ids), new_vector())
        elif roll < 0.72:
            command = UpdateNode(rng.choice(ids), properties={"n": rng.randint(0, 9)})
        elif roll < 0.75:
            command = UpdateNode(rng.choice(ids), clear=("vector",))
        elif roll < 0.79:
            command = DeleteNode(ids.pop(rng.randrange(len(ids))))
        elif roll < 0.85:
            command = AddObservation(rng.choice(ids), "seen", vector=new_vector())
        elif roll < 0.87:
            command = DeleteEdge(rng.randint(1, 400))
        elif roll < 0.95:
            inserts: list[SimpleCommand] = [insert(namespace) for _ in range(rng.randint(2, 6))]
            if rng.random() < 0.4:  # Fails at the end: none of it happens.
                for command_ in inserts:
                    assert isinstance(command_, InsertNode) and command_.id is not None
                    ids.remove(command_.id)
                inserts.append(InsertEdge(1, 10**9, "links"))
            command = Batch(inserts)
        else:
            command = InsertNode("Fact", vector=vector_to_bytes([1.0] * (REPLICA_DIMENSION + 1)))
        log.add(command, namespace=namespace, step_ms=rng.randint(0, 2))
    return log.entries


def feed(machine: StateMachine, entries: list[Entry]) -> list[Result]:
    return [machine.apply(entry) for entry in entries]


def ann_answers(machine: StateMachine, seed: int) -> list[Any]:
    """Approximate (and exact) answers for fixed queries, as plain values."""
    rng = np.random.default_rng(seed)
    found: list[Any] = []
    for namespace in ("main", "other"):
        ns = machine.reader(namespace)
        for position in range(20):
            query = rng.standard_normal(ns.info.dimension).astype(np.float32)
            label = LABELS[position % 3] if position % 2 else None
            ef = (10, None, 200)[position % 3]
            for exact in (False, True):
                hits = queries.similar(ns, query, 10, label=label, exact=exact, ef=ef)
                found.append([(node.id, distance) for node, distance in hits])
            hybrid = queries.hybrid_from_vector(ns, query, 3, 2)
            found.append(
                [[item.node.id, [node.id for node, _ in item.neighbours]] for item in hybrid]
            )
    return found


def approximate_somewhere(machine: StateMachine) -> bool:
    """Whether some approximate answer differs from the exact one (so comparing them tells)."""
    ns = machine.reader("main")
    rng = np.random.default_rng(3)
    for _ in range(20):
        query = rng.standard_normal(ns.info.dimension).astype(np.float32)
        approximate = queries.similar(ns, query, 10, ef=10)
        exact = queries.similar(ns, query, 10, exact=True)
        if [node.id for node, _ in approximate] != [node.id for node, _ in exact]:
            return True
    return False


def active_graph(machine: StateMachine) -> bool:
    segments = machine.namespace("main").node_vectors._segments
    return bool(segments) and not segments[-1].sealed and segments[-1].graph is not None


def graph_segments(ns: NamespaceState) -> int:
    return sum(segment.graph is not None for segment in ns.node_vectors._segments)


def check_replicas_agree(entries: list[Entry]) -> tuple[StateMachine, StateMachine]:
    first, second = StateMachine(), StateMachine()
    results = feed(first, entries)
    assert feed(second, entries) == results
    assert first.state_hash() == second.state_hash()
    # Snapshot half way, or a little later: the active segment must have a graph by then, which
    # restore has to rebuild exactly as the other replicas grew theirs.
    third = StateMachine()
    cut = len(entries) // 2
    feed(third, entries[:cut])
    while not active_graph(third) and cut < len(entries):
        third.apply(entries[cut])
        cut += 1
    assert active_graph(third) and cut < len(entries) * 3 // 4, cut
    restored = snapshot.restore(snapshot.take(third))
    assert restored.state_hash() == third.state_hash()
    assert feed(restored, entries[cut:]) == results[cut:]
    assert restored.state_hash() == first.state_hash()
    assert ann_answers(restored, 7) == ann_answers(first, 7) == ann_answers(second, 7)
    assert snapshot.take(restored) == snapshot.take(first) == snapshot.take(second)
    assert any(isinstance(result, Rejected) for result in results)
    assert approximate_somewhere(first)
    return first, restored


def test_replicas_and_a_restored_replica_agree_past_the_brute_force_limit() -> None:
    entries = workload(5_000, seed=11)
    first, restored = check_replicas_agree(entries)
    ns = first.namespace("main")
    assert len(ns.node_vectors) > constants.vector_segment_brute_force_max
    assert graph_segments(ns) == 1 and graph_segments(restored.namespace("main")) == 1


def test_replicas_agree_across_sealed_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "vector_segment_brute_force_max", 48)
    monkeypatch.setattr(constants, "vector_segment_vectors_max", 160)
    entries = workload(1_500, seed=5)
    first, restored = check_replicas_agree(entries)
    for machine in (first, restored):
        ns = machine.namespace("main")
        assert ns.node_vectors.segment_count() >= 4
        assert graph_segments(ns) >= 4


def test_snapshot_at_every_point_of_a_short_log_restores_the_same_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(constants, "vector_segment_brute_force_max", 8)
    monkeypatch.setattr(constants, "vector_segment_vectors_max", 20)
    entries = workload(120, seed=3)
    reference = StateMachine()
    feed(reference, entries)
    expected = ann_answers(reference, 1)
    for cut in range(0, len(entries), 7):
        machine = StateMachine()
        feed(machine, entries[:cut])
        restored = snapshot.restore(snapshot.take(machine))
        feed(restored, entries[cut:])
        assert restored.state_hash() == reference.state_hash(), cut
        assert ann_answers(restored, 1) == expected, cut


# =================================================================================================
# Atomic batches.


def derived_indexes(machine: StateMachine) -> dict[str, Any]:
    """Everything a command can change, as order-insensitive plain values."""
    found: dict[str, Any] = {"hash": machine.content_hash()}
    for name, ns in machine.namespaces.items():
        found[name] = {
            "nodes": {key: list(versions) for key, versions in ns.nodes.items()},
            "edges": {key: list(versions) for key, versions in ns.edges.items()},
            "observations": {key: list(v) for key, v in ns.observations.items()},
            "names": dict(ns.names),
            "labels": {label: list(ids) for label, ids in ns.labels.items() if ids},
            "edge_keys": dict(ns.edge_keys),
            "out": {key: dict(edges) for key, edges in ns.out_live.items() if edges},
            "in": {key: dict(edges) for key, edges in ns.in_live.items() if edges},
            "observations_live": {k: set(v) for k, v in ns.observations_live.items() if v},
            "edges_ever": {key: list(ids) for key, ids in ns.edges_ever.items() if ids},
            "observations_ever": {k: list(v) for k, v in ns.observations_ever.items() if v},
            "counters": (ns.next_node_id, ns.next_edge_id, ns.next_observation_id),
            "node_vectors": vector_contents(ns, "node_vectors"),
            "observation_vectors": vector_contents(ns, "observation_vectors"),
        }
    return found


def vector_contents(ns: NamespaceState, which: str) -> dict[int, bytes]:
    index = getattr(ns, which)
    keys = range(1, 100)
    return {key: index.vector_of(key).tobytes() for key in keys if key in index}


def graph_with_everything() -> Store:
    store = Store()
    store.ok(InsertNode("Person", id=1, name="alice", vector=vector(1, 0)))
    store.ok(InsertNode("Person", id=2, name="bob", vector=vector(0, 1)))
    store.ok(InsertNode("Fact", id=3, text="sky is blue"))
    store.ok(InsertEdge(1, 2, "links"))
    store.ok(InsertEdge(2, 3, "owns"))
    store.ok(InsertEdge(3, 1, "related"))
    store.ok(InsertEdge(1, 1, "links"))  # A self-loop.
    store.ok(AddObservation(1, "alice likes tea", vector=vector(1, 1)))
    store.ok(AddObservation(2, "bob likes coffee"))
    return store


FAILING_TAILS: list[SimpleCommand] = [
    InsertEdge(1, 10**9, "links"),
    InsertNode("Fact", vector=vector_to_bytes([1.0] * 3)),
    InsertNode("Fact", name="carol"),  # Taken by the first command of the batch.
    UpdateNode(1, label="L" * (constants.label_bytes_max + 1)),
    DeleteObservation(10**9),
]


@pytest.mark.parametrize("tail", FAILING_TAILS, ids=lambda command: type(command).__name__)
def test_a_failed_batch_changes_nothing(tail: SimpleCommand) -> None:
    store = graph_with_everything()
    before = derived_indexes(store.machine)
    answers_before = ann_answers_main(store)
    batch = Batch(
        [
            InsertNode("Person", id=40, name="carol", vector=vector(0, 0, 1)),
            UpdateNode(2, name="robert", label="Human", vector=vector(0, 2)),
            SetVector(1, vector(3, 3)),
            InsertEdge(40, 2, "links"),
            AddObservation(40, "carol is new", id=70, vector=vector(1, 2, 3)),
            DeleteNode(1),  # Cascades: edges and observation of alice, her vectors.
            InsertNode("Fact", id=50, name="alice"),  # Reuses the freed name.
            UpdateNode(3, clear=("text",), properties={"k": 1}),
            UpdateEdge(2, properties={"w": 2}),
            DeleteEdge(2),
            tail,
        ]
    )
    error = store.refused(batch)
    assert error.field is not None and error.field.startswith("commands[10]")
    assert derived_indexes(store.machine) == before
    assert ann_answers_main(store) == answers_before
    # The machine still works, and the same batch without its tail now succeeds.
    values = store.ok(Batch(batch.commands[:-1]))
    assert [value.id for value in values][:2] == [40, 2]
    assert store.ns.next_node_id == 51


def ann_answers_main(store: Store) -> list[Any]:
    ns = store.ns
    query = np.ones(DIMENSION, dtype=np.float32)
    hits = queries.similar(ns, query, 10)
    related = [queries.related(ns, node, 2) for node in sorted(ns.nodes) if ns.live_node(node)]
    return [
        [(node.id, distance) for node, distance in hits],
        [[(node.id, hops) for node, hops in found] for found in related],
        queries.observations_of(ns, 1) if ns.live_node(1) else None,
    ]


def test_rollback_of_a_cascade_does_not_change_read_order_against_a_restored_replica() -> None:
    store = Store()
    store.ok(Batch([InsertNode("Hub", id=1)] + [InsertNode("Leaf", id=i) for i in range(2, 9)]))
    for leaf in range(2, 9):
        store.ok(InsertEdge(1, leaf, "links") if leaf % 2 else InsertEdge(leaf, 1, "links"))
    # Deleting the hub unlinks every edge; the failure puts them back, in another order.
    store.refused(Batch([DeleteNode(1), InsertEdge(2, 10**9, "links")]))
    restored = snapshot.restore(snapshot.take(store.machine))
    for machine in (store.machine, restored):
        ns = machine.namespace("main")
        # Outgoing edges by id (to 3, 5, 7), then incoming ones by id (from 2, 4, 6, 8).
        expected = [3, 5, 7, 2, 4, 6, 8]
        assert [node.id for node, _ in queries.related(ns, 1)] == expected
        assert [node.id for node, _ in queries.related(ns, 1, limit=3)] == expected[:3]
        as_of = queries.related(ns, 1, as_of=machine.applied_index)
        assert [node.id for node, _ in as_of] == expected


# =================================================================================================
# History: tombstones and as_of.


def test_versions_tombstones_and_reads_as_of() -> None:
    store = Store()
    inserted = store.ok(InsertNode("Person", id=1, name="alice", vector=vector(1, 0)))
    store.ok(InsertNode("Person", id=2, vector=vector(0, 1)))
    edge = store.ok(InsertEdge(1, 2, "links"))
    observation = store.ok(AddObservation(1, "first note"))
    updated = store.ok(UpdateNode(1, properties={"age": 30}, text="hi"))
    index_before_delete = store.machine.applied_index
    tombstone = store.ok(DeleteNode(1))
    ns = store.ns

    assert [v.version for v in ns.nodes[1]] == [1, 2, 3]
    assert tombstone.deleted and tombstone.version == 3 and tombstone.properties == {"age": 30}
    assert queries.get_node(ns, 1) is None
    assert queries.get_node(ns, 1, as_of=1) is None  # Before it existed.
    assert queries.get_node(ns, 1, as_of=inserted.created.index) == inserted
    assert queries.get_node(ns, 1, as_of=index_before_delete) == updated
    # The cascade wrote tombstones at the same index, and history still shows them before it.
    assert ns.edges[edge.id][-1].deleted and ns.observations[observation.id][-1].deleted
    assert ns.edges[edge.id][-1].updated.index == tombstone.updated.index
    assert queries.edges_of(ns, 2) == []
    assert queries.edges_of(ns, 2, as_of=index_before_delete) == [edge]
    assert queries.observations_of(ns, 1, as_of=index_before_delete) == [observation]
    related = queries.related(ns, 2, as_of=index_before_delete)
    assert [(node, hops) for node, hops in related] == [(updated, 1)]
    past = queries.similar(ns, np.ones(DIMENSION, np.float32), 5, as_of=index_before_delete)
    assert [node.id for node, _ in past] == [1, 2] or [node.id for node, _ in past] == [2, 1]
    assert [node.id for node, _ in queries.similar(ns, np.ones(DIMENSION, np.float32), 5)] == [2]
    assert [node.id for node in queries.list_nodes(ns, as_of=index_before_delete)] == [1, 2]
    assert [node.id for node in queries.list_nodes(ns)] == [2]
    # A deleted node's name is free again, and its id may be used again: history goes on.
    store.ok(InsertNode("Person", id=3, name="alice"))
    revived = store.ok(InsertNode("Robot", id=1))
    assert revived.version == 4 and revived.created.index == store.machine.applied_index
    assert queries.get_node(ns, 1, as_of=index_before_delete) == updated
    assert store.refused(DeleteEdge(edge.id)) == NotFoundError(
        f"edge {edge.id} does not exist", "id"
    )
    assert isinstance(store.refused(InsertEdge(1, 2, "links", id=edge.id)), ConflictError)


def test_as_of_sees_the_last_version_written_at_an_index() -> None:
    store = Store()
    values = store.ok(
        Batch([InsertNode("A", id=1), UpdateNode(1, label="B"), UpdateNode(1, label="C")])
    )
    index = store.machine.applied_index
    assert [value.version for value in values] == [1, 2, 3]
    assert queries.get_node(store.ns, 1, as_of=index) == values[-1]
    assert queries.get_node(store.ns, 1, as_of=index - 1) is None
    assert [n.id for n in queries.list_nodes(store.ns, label="C", as_of=index)] == [1]
    assert queries.list_nodes(store.ns, label="A", as_of=index) == []


def test_reads_refuse_an_as_of_in_the_future() -> None:
    store = Store()
    with pytest.raises(ValidationError) as raised:
        store.machine.reader("main", store.machine.applied_index + 1)
    assert raised.value.field == "as_of"
    with pytest.raises(ValidationError):
        store.machine.reader("main", -1)
    assert store.machine.reader("main", 0) is store.ns


# =================================================================================================
# The log: apply asserts its order, and stamps what it writes.


def test_apply_asserts_that_indexes_follow_without_gaps() -> None:
    machine = StateMachine()
    log = Log()
    first = log.add(CreateNamespace(DIMENSION))
    second = log.add(InsertNode("A"))
    with pytest.raises(AssertionError):
        machine.apply(second)
    machine.apply(first)
    with pytest.raises(AssertionError):
        machine.apply(first)
    with pytest.raises(AssertionError):
        machine.apply(attrs.evolve(second, index=3))
    assert isinstance(machine.apply(second), Applied)


def test_apply_asserts_that_timestamps_never_go_back() -> None:
    machine = StateMachine()
    log = Log(start_ms=5_000)
    machine.apply(log.add(CreateNamespace(DIMENSION)))
    same_time = log.add(InsertNode("A"), step_ms=0)
    assert isinstance(machine.apply(same_time), Applied)
    earlier = attrs.evolve(log.add(InsertNode("B")), timestamp_ms=same_time.timestamp_ms - 1)
    with pytest.raises(AssertionError):
        machine.apply(earlier)
    assert machine.applied_index == 2 and machine.last_timestamp_ms == same_time.timestamp_ms


def test_a_rejected_entry_advances_the_index_but_not_the_content() -> None:
    store = Store()
    content, state = store.machine.content_hash(), store.machine.state_hash()
    store.refused(InsertNode(""))
    assert store.machine.applied_index == 2
    assert store.machine.last_timestamp_ms == store.log.timestamp_ms
    assert store.machine.content_hash() == content
    assert store.machine.state_hash() != state


def test_records_carry_the_stamp_of_the_entry_that_wrote_them() -> None:
    store = Store()
    info = store.machine.namespace("main").info
    assert info.created == Stamp(1, store.log.entries[0].timestamp_ms, "agent", "s1")
    node = store.ok(
        InsertNode("A", id=1, provenance=Provenance("chat", 0.5, 10, 20)),
        principal="alice",
        session=None,
        step_ms=10,
    )
    stamp = Stamp(2, store.log.timestamp_ms, "alice", None)
    assert node.created == node.updated == stamp
    assert node.provenance == Provenance("chat", 0.5, 10, 20)
    updated = store.ok(UpdateNode(1, text="t"), principal="bob", session="s9", step_ms=5)
    assert updated.created == stamp
    assert updated.updated == Stamp(3, store.log.timestamp_ms, "bob", "s9")
    values = store.ok(
        Batch([InsertNode("B", id=2), InsertEdge(1, 2, "links"), AddObservation(2, "o")]),
        principal="carol",
    )
    batch_stamp = Stamp(4, store.log.timestamp_ms, "carol", "s1")
    assert all(value.created == value.updated == batch_stamp for value in values)
    tombstone = store.ok(DeleteNode(2), principal="dave", step_ms=0)
    cascade_stamp = Stamp(5, store.log.timestamp_ms, "dave", "s1")
    assert tombstone.updated == cascade_stamp and tombstone.created == batch_stamp
    ns = store.ns
    assert ns.edges[values[1].id][-1].updated == cascade_stamp
    assert ns.observations[values[2].id][-1].updated == cascade_stamp


# =================================================================================================
# Typed errors name their field.

LONG_LABEL = "L" * (constants.label_bytes_max + 1)
REFUSED: list[tuple[SimpleCommand, type[MemoraError], str]] = [
    (InsertNode(""), ValidationError, "label"),
    (InsertNode(LONG_LABEL), LimitError, "label"),
    (InsertNode("bad\ud800"), ValidationError, "label"),
    (InsertNode("A", id=0), ValidationError, "id"),
    (InsertNode("A", id=1), ConflictError, "id"),
    (InsertNode("A", name=""), ValidationError, "name"),
    (InsertNode("A", name="alice"), ConflictError, "name"),
    (InsertNode("A", text="t" * (constants.text_bytes_max + 1)), LimitError, "text"),
    (InsertNode("A", vector=vector_to_bytes([1.0] * 3)), DimensionError, "vector"),
    (InsertNode("A", vector=vector(float("nan"))), ValidationError, "vector"),
    (InsertNode("A", vector=vector(float("-inf"))), ValidationError, "vector"),
    (InsertNode("A", vector=b"\x00"), ValidationError, "vector"),
    (InsertNode("A", properties={"x": float("nan")}), ValidationError, "properties.x"),
    (InsertNode("A", properties={"x": {"y": 2**64}}), ValidationError, "properties.x.y"),
    (InsertNode("A", properties={"x": "\udc00"}), ValidationError, "properties.x"),
    (InsertNode("A", properties={"x": (1, 2)}), ValidationError, "properties.x"),
    (InsertNode("A", properties={"": 1}), ValidationError, "properties key"),
    (InsertNode("A", properties={"x": "y" * 70_000}), LimitError, "properties"),
    (InsertNode("A", properties={str(i): i for i in range(300)}), LimitError, "properties"),
    (InsertNode("A", properties={"x": [[[[[[[[[1]]]]]]]]]}), LimitError, "properties.x"),
    (InsertNode("A", provenance=Provenance(confidence=1.5)), ValidationError, "confidence"),
    (InsertNode("A", provenance=Provenance(source="\x00")), ValidationError, "source"),
    (InsertNode("A", provenance=Provenance(None, 1.0, 5, 1)), ValidationError, "valid_to_ms"),
    (InsertNode("A", provenance=Provenance(None, 1.0, 2**64)), ValidationError, "valid_from_ms"),
    (InsertNode("A", provenance=Provenance(None, 1.0, 1, "x")), ValidationError, "valid_to_ms"),  # type: ignore[arg-type]
    (InsertNode("A", provenance=Provenance(None, float("nan"))), ValidationError, "confidence"),
    (UpdateNode(9), NotFoundError, "id"),
    (UpdateNode(1, clear=("label",)), ValidationError, "clear"),
    (UpdateNode(1, name="bob", clear=("name",)), ValidationError, "clear"),
    (UpdateNode(1, name=""), ValidationError, "name"),
    (UpdateNode(2, name="alice"), ConflictError, "name"),
    (UpdateNode(1, vector=vector_to_bytes([1.0])), DimensionError, "vector"),
    (SetVector(9, vector(1)), NotFoundError, "node_id"),
    (SetVector(1, vector(float("inf"))), ValidationError, "vector"),
    (DeleteNode(9), NotFoundError, "id"),
    (InsertEdge(1, 9, "links"), NotFoundError, "target"),
    (InsertEdge(9, 1, "links"), NotFoundError, "source"),
    (InsertEdge(1, 2, ""), ValidationError, "kind"),
    (InsertEdge(1, 2, "links"), ConflictError, "kind"),
    (InsertEdge(2, 1, "links", id=1), ConflictError, "id"),
    (InsertEdge(2, 1, "links", properties={"x": float("inf")}), ValidationError, "properties.x"),
    (UpdateEdge(9), NotFoundError, "id"),
    (DeleteEdge(-1), ValidationError, "id"),
    (AddObservation(1, ""), ValidationError, "text"),
    (AddObservation(9, "o"), NotFoundError, "node_id"),
    (AddObservation(1, "o", id=1), ConflictError, "id"),
    (AddObservation(1, "o", vector=vector_to_bytes([1.0])), DimensionError, "vector"),
    (DeleteObservation(9), NotFoundError, "id"),
    (CreateNamespace(DIMENSION), ConflictError, "namespace"),
]


def error_store() -> Store:
    store = Store()
    store.ok(InsertNode("A", id=1, name="alice"))
    store.ok(InsertNode("A", id=2, name="bob"))
    store.ok(InsertEdge(1, 2, "links"))
    store.ok(AddObservation(1, "o"))
    return store


@pytest.mark.parametrize(("command", "kind", "field"), REFUSED, ids=lambda value: repr(value)[:40])
def test_every_rejection_is_typed_and_names_its_field(
    command: SimpleCommand, kind: type[MemoraError], field: str
) -> None:
    store = error_store()
    content = store.machine.content_hash()
    error = store.refused(command)
    assert (type(error), error.field) == (kind, field), error
    assert error.message
    nested = store.refused(Batch([InsertNode("A", id=30), command]))
    assert (type(nested), nested.field) == (kind, f"commands[1].{field}"), nested
    assert store.machine.content_hash() == content


def test_properties_are_measured_exactly_at_the_size_limit() -> None:
    """The walk only bounds the encoded size; a map near the limit is measured exactly."""
    store = error_store()
    # One key, one string: map head 1 + key 2 + string head 3 + the string's bytes.
    fits = "y" * (constants.properties_bytes_max - 6)
    assert len(codec.encode({"x": fits})) == constants.properties_bytes_max
    store.ok(InsertNode("A", properties={"x": fits}))
    error = store.refused(InsertNode("A", properties={"x": fits + "y"}))
    assert (type(error), error.field) == (LimitError, "properties")
    wide = "é" * ((constants.properties_bytes_max - 6) // 2)  # Two UTF-8 bytes each.
    store.ok(InsertNode("A", properties={"x": wide}))
    error = store.refused(InsertNode("A", properties={"x": wide + "é"}))
    assert (type(error), error.field) == (LimitError, "properties")


def test_entry_level_rejections_name_their_field() -> None:
    store = error_store()
    refusals = [
        (store.refused(InsertNode("A"), namespace="absent"), NotFoundError, "namespace"),
        (store.refused(InsertNode("A"), namespace="bad name!"), ValidationError, "namespace"),
        (store.refused(InsertNode("A"), principal=""), ValidationError, "principal"),
        (store.refused(InsertNode("A"), principal="p" * 257), LimitError, "principal"),
        (store.refused(InsertNode("A"), session="s" * 257), LimitError, "session"),
        (store.refused(CreateNamespace(0), namespace="x"), ValidationError, "dimension"),
        (store.refused(CreateNamespace(4, "dot"), namespace="x"), ValidationError, "metric"),  # type: ignore[arg-type]
        (store.refused(Batch([Batch([])])), ValidationError, "commands[0]"),  # type: ignore[list-item]
        (store.refused(Batch([InsertNode("A")] * 10_001)), LimitError, "commands"),
    ]
    for error, kind, field in refusals:
        assert (type(error), error.field) == (kind, field), error
    assert "x" not in store.machine.namespaces


def test_query_errors_name_their_field() -> None:
    store = error_store()
    ns = store.ns
    query = np.ones(DIMENSION, dtype=np.float32)
    checks: list[tuple[Any, type[MemoraError], str]] = [
        (lambda: queries.query_vector(ns, [1.0, 2.0]), DimensionError, "vector"),
        (lambda: queries.query_vector(ns, ["a"] * DIMENSION), ValidationError, "vector"),
        (lambda: queries.query_vector(ns, [float("nan")] * DIMENSION), ValidationError, "vector"),
        (lambda: queries.similar(ns, query, 0), ValidationError, "top_k"),
        (lambda: queries.similar(ns, query, 5, ef=0), ValidationError, "ef"),
        (lambda: queries.similar(ns, query, 10**6), LimitError, "top_k"),
        (lambda: queries.related(ns, 9), NotFoundError, "node_id"),
        (lambda: queries.related(ns, 1, depth=99), LimitError, "depth"),
        (lambda: queries.related(ns, 1, direction="sideways"), ValidationError, "direction"),
        (lambda: queries.related(ns, 1, limit=0), ValidationError, "limit"),
        (lambda: queries.list_nodes(ns, limit=10**6), LimitError, "limit"),
        (lambda: queries.list_nodes(ns, after_id=-1), ValidationError, "after_id"),
        (lambda: queries.list_nodes(ns, after_id="x"), ValidationError, "after_id"),
        (lambda: queries.edges_of(ns, 9), NotFoundError, "node_id"),
        (lambda: queries.observations_of(ns, 9), NotFoundError, "node_id"),
        (lambda: queries.hybrid_around_node(ns, 1, 1, 5), ValidationError, "vector"),
        (lambda: store.machine.namespace("absent"), NotFoundError, "namespace"),
    ]
    for call, kind, field in checks:
        with pytest.raises(kind) as raised:
            call()
        assert type(raised.value) is kind and raised.value.field == field, raised.value


def iter_errors() -> Iterator[type[MemoraError]]:
    yield from (ValidationError, LimitError, NotFoundError, ConflictError, DimensionError)


def test_error_codes_are_distinct() -> None:
    codes = [kind.code for kind in iter_errors()]
    assert len(set(codes)) == len(codes)


# =================================================================================================
# Ids running out, and damaged snapshots: bad input, never an assertion.


def test_ids_that_run_out_are_refused_with_a_typed_error() -> None:
    store = Store()
    last = constants.record_id_max
    store.ok(InsertNode("A", id=last, vector=vector(1)))
    store.ok(InsertEdge(last, last, "links", id=last))
    store.ok(AddObservation(last, "o", id=last, vector=vector(1)))
    content = store.machine.content_hash()
    for command in (
        InsertNode("A", vector=vector(1)),
        InsertEdge(last, last, "owns"),
        AddObservation(last, "o", vector=vector(1)),
    ):
        error = store.refused(command)
        assert (type(error), error.field) == (LimitError, "id"), error
    assert store.machine.content_hash() == content
    assert store.ok(InsertNode("A", id=5, vector=vector(2))).id == 5  # Explicit ids still work.


def test_damaged_snapshots_are_refused_with_codec_errors() -> None:
    store = graph_with_everything()
    store.ok(DeleteNode(2))
    parts = snapshot.take(store.machine)
    expected = store.machine.state_hash()
    rng = random.Random(4)
    refused = 0
    for _ in range(300):
        name = rng.choice(sorted(parts))
        data = bytearray(parts[name])
        if rng.random() < 0.5:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            del data[rng.randrange(len(data)) :]
        try:
            restored = snapshot.restore({**parts, name: bytes(data)})
        except CodecError:
            refused += 1
        else:  # Only a change that touches nothing checked may pass, and then nothing changed.
            assert restored.state_hash() == expected
    assert refused >= 270


def test_snapshots_with_parts_that_disagree_are_refused() -> None:
    first, second = graph_with_everything(), Store(metric="l2")
    second.ok(InsertNode("A", vector=vector(1)))
    parts, other = snapshot.take(first.machine), snapshot.take(second.machine)
    for name in ("nodes", "edges", "observations", "vectors"):
        with pytest.raises(CodecError):
            snapshot.restore({**parts, name: other[name]})
    with pytest.raises(CodecError):
        snapshot.restore({name: data for name, data in parts.items() if name != "edges"})
    assert snapshot.restore(parts).state_hash() == first.machine.state_hash()


def test_a_format_1_snapshot_restores_though_its_hash_was_computed_the_old_way() -> None:
    store = graph_with_everything()
    parts = snapshot.take(store.machine)
    state = codec.decode(parts["state"])
    old = {**state, "format": 1, "state_hash": "a hash the old digests gave"}
    restored = snapshot.restore({**parts, "state": codec.encode(old)})
    assert restored.state_hash() == store.machine.state_hash()
    with pytest.raises(CodecError, match="state hash"):  # The current format is checked.
        wrong = {**state, "state_hash": "a hash the old digests gave"}
        snapshot.restore({**parts, "state": codec.encode(wrong)})
    with pytest.raises(CodecError, match="unknown format"):
        snapshot.restore({**parts, "state": codec.encode({**state, "format": 3})})


def test_many_vector_changes_to_one_key_in_one_batch_leave_the_last() -> None:
    store = Store()
    store.ok(
        Batch(
            [
                InsertNode("A", id=1, vector=vector(1)),
                SetVector(1, vector(0, 1)),
                UpdateNode(1, vector=vector(0, 0, 1)),
                InsertNode("A", id=2, vector=vector(1)),
                DeleteNode(2),
                InsertNode("B", id=2, vector=vector(0, 0, 0, 1)),
                UpdateNode(2, clear=("vector",)),
                SetVector(2, vector(0, 0, 0, 0, 1)),
                AddObservation(1, "o", id=1, vector=vector(1)),
                DeleteObservation(1),
            ]
        )
    )
    index = store.ns.node_vectors
    assert len(index) == 2 and len(store.ns.observation_vectors) == 0
    assert index.vector_of(1).tobytes() == vector(0, 0, 1)  # type: ignore[union-attr]
    assert index.vector_of(2).tobytes() == vector(0, 0, 0, 0, 1)  # type: ignore[union-attr]
    query = np.frombuffer(vector(0, 0, 1), dtype=np.float32)
    hits = queries.similar(store.ns, query, 5)
    assert [(node.id, round(distance, 6)) for node, distance in hits] == [(1, 0.0), (2, 1.0)]
    restored = snapshot.restore(snapshot.take(store.machine))
    assert restored.state_hash() == store.machine.state_hash()
    again = queries.similar(restored.namespace("main"), query, 5)
    assert [(node.id, distance) for node, distance in again] == [
        (node.id, distance) for node, distance in hits
    ]
