"""`NodeDriver` on trio with a real data directory: writes, reads, typed errors, group commit,
restart recovery, deadlines and shutdown.

Each test runs the node inside `running()`, which bounds the whole test in time. A slow disk is
`FileStorage.save` wrapped with a sleep in the worker thread that runs it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from memora.core import constants, queries
from memora.core.errors import ConflictError, LimitError, NotFoundError, ValidationError
from memora.core.raft import Configuration, EntryKind, HeartbeatRequest, LogEntry
from memora.core.replica import Replica
from memora.core.types import Applied, InsertNode, Node, Proposal
from memora.net.driver import (
    DataDirLockedError,
    DriverLimits,
    ForeignDataDirError,
    NodeDriver,
    Waiters,
    resolve_write,
)
from memora.net.node_api import Consistency, NodeApi, UnavailableError, WriteOutcome
from memora.net.raft_storage import FileStorage

TEST_TIMEOUT_S = 30.0


def insert(label: str = "Person", **fields: Any) -> Proposal:
    return Proposal(0, "tester", constants.namespace_default, None, InsertNode(label, **fields))


def node_in(replica: Replica, node_id: int) -> Node | None:
    return queries.get_node(replica.machine.reader(constants.namespace_default), node_id)


@contextlib.asynccontextmanager
async def running(driver: NodeDriver) -> AsyncIterator[NodeDriver]:
    """Run `driver` until the block ends, then stop it and wait for a clean shutdown."""
    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            yield driver
            driver.stop()


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Call with a delay: from then on every save that reaches the disk takes that much longer."""
    original = FileStorage.save

    def install(delay_s: float) -> None:
        def slow_save(storage: FileStorage, *arguments: Any) -> None:
            if threading.current_thread() is not threading.main_thread():
                time.sleep(delay_s)
            original(storage, *arguments)

        monkeypatch.setattr(FileStorage, "save", slow_save)

    return install


# -- Writes and reads ---------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_write_is_applied_and_readable_at_every_consistency(tmp_path: Path) -> None:
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        outcome = await driver.write(insert(id=7, name="ada"))
        assert isinstance(outcome, WriteOutcome)
        assert outcome.value.id == 7 and outcome.value.created.index == outcome.commit_index
        for consistency in Consistency:
            replica = await driver.read_barrier(consistency, min_commit_index=outcome.commit_index)
            assert replica.applied_index >= outcome.commit_index
            assert node_in(replica, 7) == outcome.value
        assert driver.metrics()["read_barriers_total"] == len(Consistency)


@pytest.mark.trio
async def test_the_default_namespace_is_created_on_first_start_only(tmp_path: Path) -> None:
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        replica = await driver.read_barrier(Consistency.LINEARIZABLE)
        assert list(replica.machine.namespaces) == [constants.namespace_default]
        namespace = replica.machine.namespaces[constants.namespace_default].info
        assert namespace.dimension == constants.dimension_default
        applied_first = replica.applied_index
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        replica = await driver.read_barrier(Consistency.LINEARIZABLE)
        # One entry more: the new leader's no-op, and no second CreateNamespace.
        assert replica.applied_index == applied_first + 1


@pytest.mark.trio
async def test_rejected_commands_raise_their_typed_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        await driver.write(insert(id=1))
        with pytest.raises(ConflictError) as conflict:
            await driver.write(insert(id=1))
        assert conflict.value.field == "id"
        missing = Proposal(0, "tester", "no-such-namespace", None, InsertNode("Person"))
        with pytest.raises(NotFoundError):
            await driver.write(missing)
        with pytest.raises(ValidationError) as unencodable:
            await driver.write(insert(properties={"when": object()}))
        assert unencodable.value.field == "command"
        monkeypatch.setattr(constants, "entry_bytes_max", 1024)
        with pytest.raises(LimitError):
            await driver.write(insert(text="x" * 2000))
        monkeypatch.undo()
        assert (await driver.write(insert(id=2))).value.id == 2
        metrics = driver.metrics()
        assert (metrics["writes_applied_total"], metrics["writes_rejected_total"]) == (2, 4)


@pytest.mark.trio
async def test_writes_are_stamped_by_a_clock_that_never_goes_backwards(tmp_path: Path) -> None:
    # The first reading stamps the creation of the default namespace.
    readings = iter([1_000, 5_000_000, 4_000_000, 6_000_000])
    driver = NodeDriver.open(str(tmp_path), wall_clock_ms=lambda: next(readings))
    async with running(driver):
        stamps = [(await driver.write(insert())).value.created.timestamp_ms for _ in range(2)]
        stamped_by_caller = attrs.evolve(insert(), timestamp_ms=1)
        stamps.append((await driver.write(stamped_by_caller)).value.created.timestamp_ms)
    # The caller's timestamp is ignored; the clock stepping back is not seen.
    assert stamps == [5_000_000, 5_000_000, 6_000_000]


# -- Group commit and recovery ------------------------------------------------------------------


@pytest.mark.trio
async def test_concurrent_writers_share_fsyncs(tmp_path: Path) -> None:
    writers, writes_each = 50, 10
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        fsyncs_before = driver.metrics()["log_fsyncs_total"]

        async def writer() -> None:
            for _ in range(writes_each):
                await driver.write(insert())

        async with trio.open_nursery() as nursery:
            for _ in range(writers):
                nursery.start_soon(writer)
        fsyncs = driver.metrics()["log_fsyncs_total"] - fsyncs_before
    writes = writers * writes_each
    print(f"group commit: {writes} writes from {writers} writers in {fsyncs} log fsyncs")
    assert 0 < fsyncs <= writes // 5, fsyncs


@pytest.mark.trio
async def test_a_restart_recovers_every_acknowledged_write(tmp_path: Path) -> None:
    acknowledged: list[WriteOutcome] = []
    async with running(NodeDriver.open(str(tmp_path))) as driver:

        async def writer(count: int) -> None:
            for _ in range(count):
                acknowledged.append(await driver.write(insert(properties={"n": len(acknowledged)})))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(writer, 10)
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        replica = await driver.read_barrier(Consistency.LINEARIZABLE)
        assert len(acknowledged) == 200
        for outcome in acknowledged:
            assert node_in(replica, outcome.value.id) == outcome.value


@pytest.mark.trio
async def test_a_snapshot_compacts_the_log_and_a_restart_restores_it(tmp_path: Path) -> None:
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        first = await driver.write(insert(id=1))
        index = await driver.snapshot()
        assert index == first.commit_index == driver.health()["snapshot_index"]
        assert await driver.snapshot() == index  # Nothing new applied: the same snapshot.
        second = await driver.write(insert(id=2))
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        assert driver.health()["snapshot_index"] == index
        replica = await driver.read_barrier(Consistency.LINEARIZABLE)
        assert node_in(replica, 1) == first.value and node_in(replica, 2) == second.value
        assert driver.metrics()["snapshots_total"] == 0


@pytest.mark.trio
async def test_the_node_snapshots_by_itself_as_the_log_grows(tmp_path: Path) -> None:
    limits = DriverLimits(snapshot_every_entries=10)
    async with running(NodeDriver.open(str(tmp_path), limits=limits)) as driver:
        outcomes = [await driver.write(insert()) for _ in range(25)]
        while driver.health()["snapshot_index"] < outcomes[-1].commit_index - 10:
            await trio.sleep(0.01)
        assert driver.metrics()["snapshots_total"] >= 2
    async with running(NodeDriver.open(str(tmp_path), limits=limits)) as driver:
        replica = await driver.read_barrier(Consistency.LINEARIZABLE)
        assert all(node_in(replica, outcome.value.id) == outcome.value for outcome in outcomes)


# -- Deadlines --------------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_write_past_its_deadline_is_unavailable_and_a_retry_applies_it_once(
    tmp_path: Path, slow_disk: Callable[[float], None]
) -> None:
    limits = DriverLimits(write_timeout_s=0.1)
    async with running(NodeDriver.open(str(tmp_path), limits=limits)) as driver:
        slow_disk(0.5)
        proposal = attrs.evolve(insert(), client_id="client-a", sequence=1)
        started = trio.current_time()
        with pytest.raises(UnavailableError, match=r"log index \d+ did not complete within 0\.1 s"):
            await driver.write(proposal)
        assert trio.current_time() - started < 0.4
        slow_disk(0.0)
        # The outcome was unknown: the entry does commit, and a retry gets the same reply.
        replica = await driver.read_barrier(Consistency.FOLLOWER, driver.health()["last_index"])
        retried = await driver.write(proposal)
        assert retried.commit_index < driver.health()["last_index"]
        assert [node.id for node in queries.list_nodes(replica.machine.reader("default"))] == [
            retried.value.id
        ]
        assert driver.metrics()["writes_unavailable_total"] == 1


@pytest.mark.trio
async def test_a_read_waits_for_min_commit_index_until_its_deadline(tmp_path: Path) -> None:
    limits = DriverLimits(read_timeout_s=0.2)
    async with running(NodeDriver.open(str(tmp_path), limits=limits)) as driver:
        outcome = await driver.write(insert())
        future_index = outcome.commit_index + 1

        async def write_soon() -> None:
            await trio.sleep(0.05)
            await driver.write(insert())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_soon)
            replica = await driver.read_barrier(Consistency.FOLLOWER, future_index)
            assert replica.applied_index >= future_index
        started = trio.current_time()
        with pytest.raises(UnavailableError, match=r"the read did not complete within 0\.2 s"):
            await driver.read_barrier(Consistency.FOLLOWER, future_index + 100)
        assert 0.2 <= trio.current_time() - started < 1.0
        with pytest.raises(ValidationError):
            await driver.read_barrier(Consistency.FOLLOWER, -1)


# -- Shutdown ---------------------------------------------------------------------------------


@pytest.mark.trio
async def test_shutdown_drains_the_writes_in_flight_and_refuses_new_ones(
    tmp_path: Path, slow_disk: Callable[[float], None]
) -> None:
    outcomes: list[WriteOutcome] = []
    driver = NodeDriver.open(str(tmp_path))
    with pytest.raises(UnavailableError, match="starting"):
        await driver.write(insert())
    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            slow_disk(0.2)

            async def writer() -> None:
                outcomes.append(await driver.write(insert()))

            for _ in range(20):
                nursery.start_soon(writer)
            while driver.metrics()["requests_in_flight"] < 20:
                await trio.sleep(0.01)
            driver.stop()
            with pytest.raises(UnavailableError, match="stopping"):
                await driver.write(insert())
    assert len(outcomes) == 20
    with pytest.raises(UnavailableError, match="stopped"):
        await driver.read_barrier(Consistency.FOLLOWER)
    async with running(NodeDriver.open(str(tmp_path))) as reopened:
        replica = await reopened.read_barrier(Consistency.LINEARIZABLE)
        assert all(node_in(replica, outcome.value.id) == outcome.value for outcome in outcomes)


@pytest.mark.trio
async def test_shutdown_fails_what_does_not_drain_in_time(
    tmp_path: Path, slow_disk: Callable[[float], None]
) -> None:
    limits = DriverLimits(drain_timeout_s=0.1)
    driver = NodeDriver.open(str(tmp_path), limits=limits)
    outcomes: dict[str, WriteOutcome | UnavailableError] = {}

    async def writer(name: str) -> None:
        try:
            outcomes[name] = await driver.write(insert(name=name))
        except UnavailableError as error:
            outcomes[name] = error

    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            slow_disk(1.0)
            nursery.start_soon(writer, "in-the-save")
            await trio.sleep(0.1)  # Its save is under way in the worker thread.
            nursery.start_soon(writer, "waiting-for-the-next-save")
            while driver.metrics()["requests_in_flight"] < 2:
                await trio.sleep(0.01)
            started = trio.current_time()
            driver.stop()
    # The save under way finishes (a worker thread is never abandoned) and is applied; the
    # write that waited for the next save is failed, not waited for.
    assert trio.current_time() - started < 1.5
    assert isinstance(outcomes["in-the-save"], WriteOutcome)
    assert str(outcomes["waiting-for-the-next-save"]) == "the node stopped"
    slow_disk(0.0)
    async with running(NodeDriver.open(str(tmp_path))) as reopened:
        replica = await reopened.read_barrier(Consistency.LINEARIZABLE)
        names = [node.name for node in queries.list_nodes(replica.machine.reader("default"))]
        assert names == ["in-the-save"]


# -- Health, peers and the rules of the waiters -------------------------------------------------


@pytest.mark.trio
async def test_health_and_metrics_describe_a_lone_leader(tmp_path: Path) -> None:
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        api: NodeApi = driver  # mypy checks that the driver implements the protocol.
        outcome = await api.write(insert())
        health = api.health()
        assert health["role"] == "leader" and health["leader_id"] == driver.node_id == 1
        assert health["state"] == "serving" and health["peers"] == []
        assert health["commit_index"] == health["applied_index"] == outcome.commit_index
        assert health["data_dir"] == str(tmp_path)
        metrics = driver.metrics()
        assert metrics["is_leader"] == 1 and metrics["applied_index"] == outcome.commit_index
        assert metrics["disk_saves_total"] >= 2 and metrics["log_fsyncs_total"] >= 2
        assert all(isinstance(value, int | float) for value in metrics.values())


@pytest.mark.trio
async def test_a_misaddressed_peer_message_is_dropped_and_counted(tmp_path: Path) -> None:
    async with running(NodeDriver.open(str(tmp_path))) as driver:
        driver.receive(HeartbeatRequest(source=2, target=9, term=99, commit=0, round=1))
        assert driver.metrics()["raft_messages_rejected_total"] == 1
        assert driver.health()["term"] < 99
        await driver.write(insert())


@pytest.mark.trio
async def test_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    async with running(NodeDriver.open(str(tmp_path))):
        with pytest.raises(DataDirLockedError, match="in use by another process"):
            NodeDriver.open(str(tmp_path))
    async with running(NodeDriver.open(str(tmp_path))) as reopened:
        assert reopened.health()["role"] == "leader"


def test_a_cluster_data_dir_is_refused_without_peers(tmp_path: Path) -> None:
    FileStorage.bootstrap(str(tmp_path), Configuration(voters=(1, 2, 3))).close()
    with pytest.raises(ForeignDataDirError, match=r"voters \[1, 2, 3\]"):
        NodeDriver.open(str(tmp_path))


def test_a_write_whose_entry_another_term_replaced_fails_as_unavailable() -> None:
    writes = Waiters()
    replaced = writes.add(5, term=2)
    kept = writes.add(6, term=2)
    reply = Applied(6, "value")
    resolve_write(writes, LogEntry(3, 5, EntryKind.NO_OP, b""), None)
    resolve_write(writes, LogEntry(2, 6, EntryKind.NORMAL, b"data"), reply)
    with pytest.raises(UnavailableError, match="replaced by a leader of term 3"):
        replaced.outcome()
    assert kept.outcome() == reply and len(writes) == 0
