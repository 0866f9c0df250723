"""The embedded store as a user drives it: writes, reads, reopen, snapshots, crashes, threads."""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import memora
from memora import (
    ConflictError,
    DimensionError,
    InsertEdge,
    InsertNode,
    Memora,
    NotFoundError,
    ReadOnlyError,
    ValidationError,
)
from memora.core import constants
from memora.core.replica import Replica
from memora.service.local_node import NodeFailedError


def unit(seed: int, dimension: int = 8) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(dimension)
    return list(vector / np.linalg.norm(vector))


def populate(store: Memora, count: int = 30) -> None:
    for number in range(1, count + 1):
        store.insert_node("Item", id=number, name=f"item-{number}", vector=unit(number))
    for number in range(2, count + 1):
        store.insert_edge(number - 1, number, "links")


def test_the_seed_api_round_trip(tmp_path: Path) -> None:
    with Memora.open(tmp_path, dimension=8) as store:
        store.insert_node("UserPreference", id=100)
        store.insert_node("Person", id=1, name="alice", text="likes tea", vector=unit(1))
        store.insert_edge(1, 100, "owns")
        store.insert_vector(100, unit(100))
        assert store.get_node(100) is not None
        assert store.query_related(1, 2) == {100: 1}
        assert [(node.id, hops) for node, hops in store.query_related_nodes(1, 2)] == [(100, 1)]
        hits = store.query_similar(unit(100), top_k=1)
        node, distance = hits[0]
        assert node.id == 100 and distance == pytest.approx(0.0, abs=1e-6)
        assert [node.id for node, _ in store.query_hybrid(1, depth=1, top_k=5)] == [100]
        by_vector = store.query_hybrid_by_vector(unit(1), top_k=1, depth=1)
        assert by_vector[0].node.id == 1 and by_vector[0].neighbours[0][0].id == 100


def test_everything_acknowledged_survives_reopen(tmp_path: Path) -> None:
    with Memora.open(tmp_path, dimension=8) as store:
        before_node_5 = store.applied_index + 4  # Nodes 1 to 4 come first.
        populate(store)
        store.delete_node(5)
        expected_content = store.content_hash()
        expected_related = store.query_related(10, 3)
        assert list(expected_related) == [11, 9, 12, 8, 13, 7]  # Out edges first, then in.
    with Memora.open(tmp_path, dimension=8) as reopened:
        # The reopened node is a new Raft leader: its no-op advanced the applied index only.
        assert reopened.content_hash() == expected_content
        assert reopened.query_related(10, 3) == expected_related
        assert reopened.get_node(5) is None
        assert reopened.get_node(5, as_of=before_node_5) is None
        assert reopened.get_node(5, as_of=before_node_5 + 1) is not None


def test_snapshot_then_more_writes_then_reopen(tmp_path: Path) -> None:
    with Memora.open(tmp_path, dimension=8) as store:
        populate(store, 20)
        assert store.snapshot() == store.applied_index
        assert list((tmp_path / "metadata").glob("snapshot-*.json"))
        store.insert_node("Item", id=99, vector=unit(99))
        store.insert_edge(20, 99, "links")
        expected = store.content_hash()
        expected_hits = [(node.id, distance) for node, distance in store.query_similar(unit(3), 5)]
    with Memora.open(tmp_path, dimension=8) as reopened:
        assert reopened.content_hash() == expected
        assert [
            (node.id, distance) for node, distance in reopened.query_similar(unit(3), 5)
        ] == expected_hits


def test_a_torn_tail_is_cut_and_reported(tmp_path: Path) -> None:
    with Memora.open(tmp_path, dimension=8) as store:
        populate(store, 5)
        durable = store.content_hash()
    segment = sorted((tmp_path / "raft").glob("log-*.seg"))[-1]
    with open(segment, "ab") as file:
        file.write(b"\x40\x00\x00\x00garbage")  # A frame header promising more than is there.
    with Memora.open(tmp_path, dimension=8) as reopened:
        assert reopened.recovery_report.truncated_path is not None
        assert reopened.content_hash() == durable
        reopened.insert_node("Item", id=50)
    with Memora.open(tmp_path, dimension=8) as again:
        assert again.get_node(50) is not None


def test_typed_errors_leave_the_store_usable(tmp_path: Path) -> None:
    with Memora.open(tmp_path, dimension=8) as store:
        store.insert_node("Person", id=1, name="alice")
        before = store.content_hash()
        first_index = store.applied_index
        with pytest.raises(NotFoundError) as missing:
            store.insert_edge(1, 2, "knows")
        assert missing.value.field == "target"
        with pytest.raises(DimensionError):
            store.insert_node("Person", vector=[1.0, 2.0])
        with pytest.raises(ValidationError):
            store.insert_node("Person", vector=[float("nan")] * 8)
        with pytest.raises(ConflictError):
            store.insert_node("Person", name="alice")
        with pytest.raises(NotFoundError):
            store.insert_node("Person", namespace="nowhere")
        with pytest.raises(ConflictError):
            store.batch([InsertNode("Person", id=7), InsertNode("Person", id=7)])
        assert store.get_node(7) is None
        # Rejected entries still advance the applied index, but never the logical records.
        assert store.applied_index == first_index + 6
        assert store.get_node(1) is not None
        assert before == store.content_hash()


def test_returned_records_cannot_change_what_the_store_holds(tmp_path: Path) -> None:
    given = {"tags": ["a", {"deep": 1}], "score": 2}
    with Memora.open(tmp_path, dimension=8) as store:
        inserted = store.insert_node("Item", id=1, properties=given)
        given["tags"][0] = "changed by the caller"  # The caller's own map stays the caller's.
        read = store.get_node(1)
        assert read is not None
        edge = store.insert_edge(1, 1, "links", properties={"weight": [1]})
        for properties in (inserted.properties, read.properties, edge.properties):
            with pytest.raises(ReadOnlyError):
                properties["score"] = 3
            with pytest.raises(ReadOnlyError):
                properties.update(score=3)
        with pytest.raises(ReadOnlyError):
            read.properties["tags"].append("x")
        with pytest.raises(ReadOnlyError):
            read.properties["tags"][1]["deep"] = 2
        with pytest.raises(ReadOnlyError):
            edge.properties["weight"] += [2]
        hash_before = store.state_hash()
        changeable = copy.deepcopy(read.properties)
        changeable["tags"].append("x")
        changeable["tags"][1]["deep"] = 2
        assert store.get_node(1) == read
        assert read.properties == {"tags": ["a", {"deep": 1}], "score": 2}
        assert store.state_hash() == hash_before
        updated = store.update_node(1, properties=changeable)
        assert updated.properties == {"tags": ["a", {"deep": 2}, "x"], "score": 2}
    with Memora.open(tmp_path, dimension=8) as store:
        node = store.get_node(1)
        assert node is not None and node.properties == updated.properties
        with pytest.raises(ReadOnlyError):
            node.properties["tags"].append("y")


def test_batches_are_atomic_and_can_reference_their_own_nodes(tmp_path: Path) -> None:
    with Memora.open(tmp_path, dimension=8) as store:
        nodes = store.batch(
            [
                InsertNode("A", id=1, vector=np.ones(8)),
                InsertNode("B", id=2, vector=unit(2)),
                InsertEdge(1, 2, "owns"),
            ]
        )
        assert [record.id for record in nodes] == [1, 2, 1]
        assert store.stats()["vectors"] == 2


def test_concurrent_writers_share_fsyncs_and_all_land(tmp_path: Path) -> None:
    store = Memora.open(tmp_path, dimension=8)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for number in range(25):
                store.insert_node("Item", id=worker * 1000 + number + 1)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.stats()["nodes"] == 200
    expected = store.content_hash()
    store.close()
    with Memora.open(tmp_path, dimension=8) as reopened:
        assert reopened.content_hash() == expected


def test_a_failed_fsync_is_raised_and_the_store_refuses_work_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry was applied while its fsync ran, so after the fsync fails no read may see it
    (and no later write be acknowledged); a reopen recovers what is on disk."""
    store = Memora.open(tmp_path, dimension=8)
    store.insert_node("Item", id=1)

    def failing_fdatasync(descriptor: int) -> None:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(OSError, match="injected"):
        store.insert_node("Item", id=2)
    with pytest.raises(NodeFailedError):
        store.get_node(1)
    with pytest.raises(NodeFailedError):
        store.insert_node("Item", id=3)
    store.close()
    monkeypatch.undo()
    with Memora.open(tmp_path, dimension=8) as reopened:
        assert reopened.get_node(1) is not None
        assert reopened.get_node(3) is None


def small_vector_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphs from the 8th vector of a segment on, and a new segment every 64 vectors."""
    monkeypatch.setattr(constants, "vector_segment_brute_force_max", 8)
    monkeypatch.setattr(constants, "vector_segment_vectors_max", 64)


def similar_answers(store: Memora) -> list[list[tuple[int, float]]]:
    return [
        [(node.id, distance) for node, distance in store.query_similar(unit(seed), top_k=5)]
        for seed in range(1000, 1020)
    ]


def test_graph_inserts_run_after_the_reply_and_change_no_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single vector's graph insert is left to a worker once its writer has the reply; reads
    wait for it. Reopening replays the log with every insert made by the next apply instead, and
    must build the same graphs: the same answers, at every distance."""
    small_vector_segments(monkeypatch)
    settled_on: list[str] = []
    settle_graphs = Replica.settle_graphs

    def recording_settle_graphs(replica: Replica) -> None:
        settled_on.append(threading.current_thread().name)
        settle_graphs(replica)

    monkeypatch.setattr(Replica, "settle_graphs", recording_settle_graphs)
    with Memora.open(tmp_path, dimension=8) as store:
        for number in range(1, 151):
            store.insert_node("Item", id=number, vector=unit(number))
            if number == 8:
                assert settled_on == [], "brute force leaves nothing to settle"
            if number % 10 == 0:
                store.insert_vector(number - 5, unit(number + 500))  # A replaced vector.
        answers = similar_answers(store)
        expected_hash = store.content_hash()
    # Every single add past a segment's 8th vector, but the sealing ones, waits for the worker.
    assert len(settled_on) >= 100 and set(settled_on) == {"memora-settle"}
    settled_on.clear()
    with Memora.open(tmp_path, dimension=8) as reopened:
        assert reopened.content_hash() == expected_hash
        assert similar_answers(reopened) == answers
    assert settled_on == [], "a replay settles each graph insert in the next apply, or a search"


def test_readers_and_writers_share_the_settling_graphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_vector_segments(monkeypatch)
    store = Memora.open(tmp_path, dimension=8)
    errors: list[BaseException] = []
    writing = threading.Event()
    writing.set()

    def write(worker: int) -> None:
        try:
            for number in range(40):
                store.insert_node("Item", vector=unit(worker * 100 + number))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def read() -> None:
        try:
            while writing.is_set():
                for node, _ in store.query_similar(unit(7), top_k=3):
                    assert node.vector is not None
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    writers = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join()
    writing.clear()
    for thread in readers:
        thread.join()
    assert not errors
    assert store.stats()["nodes"] == 160
    answers, expected_hash = similar_answers(store), store.content_hash()
    store.close()
    with Memora.open(tmp_path, dimension=8) as reopened:
        assert reopened.content_hash() == expected_hash
        assert similar_answers(reopened) == answers


def test_a_failed_graph_insert_stops_the_store_until_it_is_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_vector_segments(monkeypatch)
    with Memora.open(tmp_path, dimension=8) as store:
        for number in range(1, 9):
            store.insert_node("Item", id=number, vector=unit(number))

        def failing_settle_graphs(replica: Replica) -> None:
            raise MemoryError("injected")

        monkeypatch.setattr(Replica, "settle_graphs", failing_settle_graphs)
        store.insert_node("Item", id=9, vector=unit(9))  # Durable: its reply came first.
        with pytest.raises(NodeFailedError, match="graph failed: injected"):
            store.get_node(9)
        with pytest.raises(NodeFailedError):
            store.insert_node("Item", id=10)
        monkeypatch.undo()
        small_vector_segments(monkeypatch)
    with Memora.open(tmp_path, dimension=8) as reopened:
        assert reopened.get_node(9) is not None and reopened.get_node(10) is None
        assert [node.id for node, _ in reopened.query_similar(unit(9), top_k=1)] == [9]


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = Memora.open(tmp_path, dimension=8)
    store.close()
    with pytest.raises(memora.MemoraError):
        store.insert_node("Person")
    with pytest.raises(memora.MemoraError):
        store.get_node(1)


def test_demo_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from memora.cli import main

    assert main(["demo", "--data-dir", os.fspath(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "related to alice within 2 hops" in printed
    assert "demo finished" in printed


def test_query_vectors_are_checked_at_the_bound(tmp_path: Path) -> None:
    # The query check is one squared norm; near the component bound it must agree with the
    # component-wise rule.
    bound = memora.core.constants.vector_component_abs_max
    with Memora.open(tmp_path, dimension=8) as store:
        populate(store, 5)
        assert len(store.query_similar([0.9 * bound] * 8, top_k=2)) == 2
        assert len(store.query_similar([bound, 0, 0, 0, 0, 0, 0, 0], top_k=2)) == 2
        for bad in ([2 * bound] + [0.0] * 7, [float("nan")] * 8, [float("inf")] + [0.0] * 7):
            with pytest.raises(ValidationError) as caught:
                store.query_similar(bad, top_k=2)
            assert caught.value.field == "vector"
        with pytest.raises(DimensionError):
            store.query_similar([1.0] * 7, top_k=2)
