"""Raft storage: one contract run against MemoryStorage and FileStorage, then what only files have:
the hard state file and its damage, torn log tails, a crash between any two steps of a save, the
bootstrap, and a whole cluster on FileStorage restarted at once.

A crash is simulated by dropping a FileStorage without `close()` (what the process leaves on disk
is exactly what the saves made durable) and opening the directory again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from raft.raft_harness import Cluster

from memora.core import codec
from memora.core.raft import (
    Configuration,
    EntryKind,
    HardState,
    LogEntry,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
    Storage,
    encode_value,
)
from memora.core.raft.types import encode_configuration
from memora.net import files
from memora.net.log_store import LogStore
from memora.net.raft_storage import (
    FileStorage,
    StorageCorruptionError,
    StorageFailedError,
    StorageNotEmptyError,
)

CONFIGURATION = Configuration(voters=(1, 2, 3))
EMPTY_META = SnapshotMeta(0, 0, Configuration())


class AnyStorage(Storage, Protocol):
    """The Storage protocol plus the accessor the tests (and the harness) use."""

    def last_index(self) -> int: ...


def entries(terms: list[int], first_index: int = 1) -> list[LogEntry]:
    return [
        LogEntry(term, index, EntryKind.NORMAL, f"{index}@{term}".encode())
        for index, term in enumerate(terms, start=first_index)
    ]


def configuration_entry(term: int, index: int, configuration: Configuration) -> LogEntry:
    return LogEntry(term, index, EntryKind.CONFIGURATION, encode_configuration(configuration))


# -- The contract, for both implementations ---------------------------------------------------


class Kind:
    """How to make, and restart, one implementation. A restart of a FileStorage is a crash."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.opened: list[FileStorage] = []

    def empty(self) -> AnyStorage:
        if self.name == "memory":
            return MemoryStorage()
        return self._keep(FileStorage.open(str(self.directory)))

    def bootstrap(self, configuration: Configuration) -> AnyStorage:
        if self.name == "memory":
            return MemoryStorage.bootstrap(configuration)
        return self._keep(FileStorage.bootstrap(str(self.directory), configuration))

    def restart(self, storage: AnyStorage) -> AnyStorage:
        if self.name == "memory":
            return storage
        return self._keep(FileStorage.open(str(self.directory)))

    def assert_hard_state(self, found: HardState, saved: HardState, snapshot_index: int) -> None:
        """Term and vote exactly; FileStorage may report an older commit (persisted lazily),
        never below the snapshot and never beyond what was saved."""
        assert (found.term, found.vote) == (saved.term, saved.vote)
        if self.name == "memory":
            assert found == saved
        else:
            assert snapshot_index <= found.commit <= max(saved.commit, snapshot_index)

    def _keep(self, storage: FileStorage) -> FileStorage:
        self.opened.append(storage)
        return storage


@pytest.fixture(params=["memory", "file"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kind]:
    kind = Kind(request.param, tmp_path / "node")
    yield kind
    if kind.opened:
        kind.opened[-1].close()


def test_contract_an_empty_storage_is_a_node_that_joins_later(kind: Kind) -> None:
    storage = kind.empty()
    assert storage.initial_state() == (HardState(0, None, 0), Configuration(), EMPTY_META, [])
    assert storage.latest_snapshot() is None
    assert storage.last_index() == 0


def test_contract_bootstrap_commits_the_configuration_as_entry_1(kind: Kind) -> None:
    storage = kind.restart(kind.bootstrap(CONFIGURATION))
    hard_state, configuration, meta, log = storage.initial_state()
    assert hard_state == HardState(term=1, vote=None, commit=1)
    assert (configuration, meta) == (CONFIGURATION, EMPTY_META)
    assert log == [configuration_entry(1, 1, CONFIGURATION)]


def test_contract_entries_and_hard_state_survive_a_restart(kind: Kind) -> None:
    storage = kind.bootstrap(CONFIGURATION)
    storage.save(HardState(2, 3, 1), entries([2, 2, 2], first_index=2), None)
    storage.save(HardState(2, 3, 3), entries([2], first_index=5), None)
    storage = kind.restart(storage)
    hard_state, configuration, _, log = storage.initial_state()
    kind.assert_hard_state(hard_state, HardState(2, 3, 3), 0)
    assert configuration == CONFIGURATION
    assert log == [configuration_entry(1, 1, CONFIGURATION), *entries([2, 2, 2, 2], 2)]
    assert storage.last_index() == 5


def test_contract_a_conflicting_suffix_is_replaced(kind: Kind) -> None:
    storage = kind.empty()
    storage.save(HardState(1, 1, 2), entries([1, 1, 1, 1, 1]), None)
    storage.save(HardState(2, None, 2), entries([2, 2], first_index=4), None)
    storage.save(HardState(3, 2, 2), entries([3], first_index=3), None)  # One replaces two.
    storage = kind.restart(storage)
    hard_state, _, _, log = storage.initial_state()
    assert log == entries([1, 1, 3])
    kind.assert_hard_state(hard_state, HardState(3, 2, 2), 0)


def test_contract_entries_must_continue_the_log(kind: Kind) -> None:
    storage = kind.empty()
    storage.save(None, entries([1, 1]), None)
    with pytest.raises(AssertionError):
        storage.save(None, entries([1], first_index=4), None)


def test_contract_commit_never_exceeds_the_last_entry(kind: Kind) -> None:
    storage = kind.empty()
    storage.save(HardState(1, None, 0), entries([1, 1]), None)
    with pytest.raises(AssertionError):
        storage.save(HardState(1, None, 3), [], None)


def test_contract_a_snapshot_replaces_the_whole_log(kind: Kind) -> None:
    storage = kind.bootstrap(CONFIGURATION)
    storage.save(HardState(1, None, 1), entries([1, 1, 1], first_index=2), None)
    changed = Configuration(voters=(1, 2, 3, 4))
    snapshot = Snapshot(SnapshotMeta(10, 3, changed), b"state at 10")
    storage.save(HardState(3, None, 10), entries([3, 3], first_index=11), snapshot)
    storage = kind.restart(storage)
    hard_state, configuration, meta, log = storage.initial_state()
    kind.assert_hard_state(hard_state, HardState(3, None, 10), 10)
    assert (configuration, meta) == (changed, snapshot.meta)
    assert log == entries([3, 3], first_index=11)
    assert storage.latest_snapshot() == (snapshot.meta, b"state at 10")
    assert storage.last_index() == 12


def test_contract_compact_keeps_the_entries_after_the_snapshot(kind: Kind) -> None:
    storage = kind.bootstrap(CONFIGURATION)
    storage.save(HardState(2, 1, 20), entries([1] * 9 + [2] * 10, first_index=2), None)
    storage.compact(Snapshot(SnapshotMeta(12, 2, CONFIGURATION), b"state at 12"))
    with pytest.raises(AssertionError):  # At or below the snapshot already taken.
        storage.compact(Snapshot(SnapshotMeta(12, 2, CONFIGURATION), b"again"))
    storage = kind.restart(storage)
    hard_state, configuration, meta, log = storage.initial_state()
    kind.assert_hard_state(hard_state, HardState(2, 1, 20), 12)
    assert (configuration, meta.index, meta.term) == (CONFIGURATION, 12, 2)
    assert log == entries([2] * 8, first_index=13)
    assert storage.latest_snapshot() == (meta, b"state at 12")


def test_contract_compact_checks_the_snapshot_term(kind: Kind) -> None:
    storage = kind.empty()
    storage.save(HardState(2, None, 3), entries([1, 2, 2]), None)
    with pytest.raises(AssertionError):
        storage.compact(Snapshot(SnapshotMeta(2, 1, CONFIGURATION), b""))


def test_contract_the_last_configuration_entry_wins(kind: Kind) -> None:
    storage = kind.bootstrap(CONFIGURATION)
    larger = Configuration(voters=(1, 2, 3), learners=(4,))
    storage.save(HardState(1, None, 1), [configuration_entry(1, 2, larger)], None)
    storage = kind.restart(storage)
    assert storage.initial_state()[1] == larger
    storage.save(HardState(2, None, 1), entries([2], first_index=2), None)  # Replaced.
    storage = kind.restart(storage)
    assert storage.initial_state()[1] == CONFIGURATION


# -- FileStorage: the hard state file and the cost of a save ----------------------------------


def open_storage(directory: Path) -> FileStorage:
    return FileStorage.open(str(directory))


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[FileStorage]:
    storage = FileStorage.bootstrap(str(tmp_path), CONFIGURATION)
    yield storage
    storage.close()


def test_layout_is_the_design_layout(tmp_path: Path, storage: FileStorage) -> None:
    storage.save(HardState(2, 1, 1), entries([2, 2], first_index=2), None)
    storage.compact(Snapshot(SnapshotMeta(2, 2, CONFIGURATION), b"state"))
    names = sorted(os.listdir(tmp_path / "raft"))
    assert names == ["hard_state", "log-000001.seg"]
    assert (tmp_path / "metadata" / "snapshot-000001.json").is_file()
    assert (tmp_path / "metadata" / "raft_meta-000001.cbor").is_file()
    assert (tmp_path / "metadata" / "state-000001.cbor").read_bytes() == b"state"


def test_a_save_that_only_moves_commit_costs_one_fsync(storage: FileStorage) -> None:
    """The common save (an entry and a new commit) fsyncs the log once and leaves the hard state
    file alone; a new term or vote is written at once; `close()` writes the commit."""
    writes, fsyncs = storage.hard_state_writes, storage.log_fsyncs
    storage.save(HardState(1, None, 1), entries([1], first_index=2), None)
    storage.save(HardState(1, None, 2), entries([1], first_index=3), None)
    assert (storage.hard_state_writes, storage.log_fsyncs) == (writes, fsyncs + 2)
    storage.save(HardState(2, 1, 3), entries([2], first_index=4), None)
    storage.save(HardState(2, 1, 4), entries([2], first_index=5), None)
    assert storage.hard_state_writes == writes + 1
    assert storage.hard_state() == HardState(2, 1, 4)
    storage.close()
    reopened = open_storage(Path(storage.data_dir))
    assert reopened.initial_state()[0] == HardState(2, 1, 4)
    reopened.close()


def test_commit_written_with_a_new_term_names_only_entries_already_durable(
    storage: FileStorage,
) -> None:
    """A Ready with a new term, new entries and a commit over them: the term goes first, so its
    commit may not name the entries that follow it to disk."""
    storage.save(HardState(2, None, 3), entries([2, 2], first_index=2), None)
    assert crash_and_reopen(storage).initial_state()[0] == HardState(2, None, 1)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "bad_crc"),
        (lambda data: data[:5], "short"),
        (lambda data: data + b"\x00", "bytes after the frame"),
        (lambda data: data[:8] + b"x" * (len(data) - 8), "bad_crc"),
    ],
)
def test_a_damaged_hard_state_is_an_error_naming_the_file(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    FileStorage.bootstrap(str(tmp_path), CONFIGURATION).close()
    path = tmp_path / "raft" / "hard_state"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StorageCorruptionError, match=reason) as caught:
        open_storage(tmp_path)
    assert caught.value.path == str(path)


def test_a_hard_state_frame_holding_something_else_is_an_error(tmp_path: Path) -> None:
    FileStorage.bootstrap(str(tmp_path), CONFIGURATION).close()
    path = tmp_path / "raft" / "hard_state"
    path.write_bytes(codec.frame(encode_value(EMPTY_META)))
    with pytest.raises(StorageCorruptionError, match="HardState"):
        open_storage(tmp_path)


def test_a_torn_log_tail_is_cut_and_reported(tmp_path: Path, storage: FileStorage) -> None:
    storage.save(HardState(1, None, 1), entries([1, 1, 1], first_index=2), None)
    segment = tmp_path / "raft" / "log-000001.seg"
    size = segment.stat().st_size
    os.truncate(segment, size - 3)  # The last record was being written when the power went.
    reopened = open_storage(tmp_path)
    report = reopened.recovery.log
    assert (report.truncated_path, report.last_index) == (str(segment), 3)
    assert reopened.entries()[-1].index == 3
    reopened.close()


def test_a_log_that_does_not_reach_the_snapshot_is_an_error(tmp_path: Path) -> None:
    storage = FileStorage.bootstrap(str(tmp_path), CONFIGURATION)
    snapshot = Snapshot(SnapshotMeta(10, 2, CONFIGURATION), b"state")
    storage.save(HardState(2, None, 10), entries([2], first_index=11), snapshot)
    storage.close()
    os.unlink(tmp_path / "metadata" / "snapshot-000001.json")
    with pytest.raises(StorageCorruptionError, match="starts at 11"):
        open_storage(tmp_path)


# -- FileStorage: crashes between the steps of a save --------------------------------------------


class Crash(Exception):
    """Raised where the test pulls the plug."""


def crash_and_reopen(storage: FileStorage) -> FileStorage:
    """Drop the storage without `close()` and open its directory again, checking the result."""
    reopened = open_storage(Path(storage.data_dir))
    assert_valid(reopened)
    return reopened


def assert_valid(storage: FileStorage) -> None:
    """What RaftNode needs of an initial state (it asserts these itself)."""
    hard_state, _, meta, log = storage.initial_state()
    assert [entry.index for entry in log] == list(range(meta.index + 1, meta.index + 1 + len(log)))
    assert meta.index <= hard_state.commit <= meta.index + len(log)
    assert max([meta.term, *(entry.term for entry in log)]) <= hard_state.term


def fail_when(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, when: Callable[..., bool]
) -> None:
    """Make `owner.name` raise Crash, instead of running, whenever `when(arguments)` holds."""
    original = getattr(owner, name)

    def failing(*arguments: Any) -> Any:
        if when(*arguments):
            raise Crash(name)
        return original(*arguments)

    monkeypatch.setattr(owner, name, failing)


def test_crash_while_writing_a_new_term_keeps_the_old_state(
    monkeypatch: pytest.MonkeyPatch, storage: FileStorage
) -> None:
    storage.save(HardState(1, None, 1), entries([1], first_index=2), None)
    fail_when(monkeypatch, files, "write_file_atomically", lambda path, data: True)
    with pytest.raises(Crash):
        storage.save(HardState(2, 2, 1), entries([2], first_index=3), None)
    with pytest.raises(StorageFailedError):
        storage.save(None, entries([2], first_index=3), None)
    monkeypatch.undo()
    reopened = crash_and_reopen(storage)
    hard_state, _, _, log = reopened.initial_state()
    assert (hard_state.term, hard_state.vote, len(log)) == (1, None, 2)


def test_crash_after_the_term_before_the_entries(
    monkeypatch: pytest.MonkeyPatch, storage: FileStorage
) -> None:
    fail_when(monkeypatch, LogStore, "sync_through", lambda log, index: True)
    with pytest.raises(Crash):
        storage.save(HardState(2, 2, 3), entries([2, 2], first_index=2), None)
    monkeypatch.undo()
    hard_state, _, _, log = crash_and_reopen(storage).initial_state()
    assert hard_state == HardState(2, 2, 1)
    assert [entry.index for entry in log] == [1]


def test_crash_before_a_conflicting_suffix_is_cut(
    monkeypatch: pytest.MonkeyPatch, storage: FileStorage
) -> None:
    """A new leader replaces entries 3.. and commits its own: the commit written with the new
    term must not name the old entries 3 and 4, which are still on disk if the cut never ran."""
    storage.save(HardState(1, None, 2), entries([1] * 4, first_index=2), None)
    fail_when(monkeypatch, LogStore, "truncate_suffix", lambda log, after: True)
    with pytest.raises(Crash):
        storage.save(HardState(2, None, 4), entries([2, 2], first_index=3), None)
    monkeypatch.undo()
    hard_state, _, _, log = crash_and_reopen(storage).initial_state()
    assert hard_state == HardState(2, None, 2)
    assert log[2:] == entries([1, 1, 1], first_index=3)


def test_crash_after_the_entries_keeps_every_durable_entry(storage: FileStorage) -> None:
    """Entries are durable when save returns; a commit that only moved is re-learned later."""
    storage.save(HardState(1, None, 1), entries([1, 1, 1], first_index=2), None)
    storage.save(HardState(1, None, 4), entries([1], first_index=5), None)
    hard_state, _, _, log = crash_and_reopen(storage).initial_state()
    assert [entry.index for entry in log] == [1, 2, 3, 4, 5]
    assert hard_state == HardState(1, None, 1)


def test_crash_before_the_snapshot_manifest_keeps_the_old_snapshot(
    monkeypatch: pytest.MonkeyPatch, storage: FileStorage
) -> None:
    storage.save(HardState(1, None, 4), entries([1, 1, 1], first_index=2), None)
    storage.compact(Snapshot(SnapshotMeta(2, 1, CONFIGURATION), b"state at 2"))
    fail_when(monkeypatch, files, "write_file_atomically", lambda path, data: path.endswith("json"))
    snapshot = Snapshot(SnapshotMeta(8, 2, CONFIGURATION), b"state at 8")
    with pytest.raises(Crash):
        storage.save(HardState(2, None, 8), entries([2], first_index=9), snapshot)
    monkeypatch.undo()
    reopened = crash_and_reopen(storage)
    hard_state, _, meta, log = reopened.initial_state()
    assert (meta.index, [entry.index for entry in log]) == (2, [3, 4])
    assert hard_state == HardState(2, None, 4)  # The commit saved before, on disk.
    assert reopened.latest_snapshot() == (meta, b"state at 2")
    reopened.save(None, entries([2], first_index=9), snapshot)  # The retry succeeds.
    assert reopened.latest_snapshot() == (snapshot.meta, b"state at 8")
    reopened.close()


@pytest.mark.parametrize("snapshot_term", [1, 2])
def test_crash_between_the_snapshot_and_the_log_reset(
    monkeypatch: pytest.MonkeyPatch, storage: FileStorage, snapshot_term: int
) -> None:
    """The old log is kept after the snapshot if it holds the snapshot's last entry (same
    term), and dropped if it does not (another history)."""
    storage.save(HardState(1, None, 3), entries([1] * 9, first_index=2), None)
    fail_when(monkeypatch, LogStore, "truncate_suffix", lambda log, after: True)
    snapshot = Snapshot(SnapshotMeta(8, snapshot_term, CONFIGURATION), b"state at 8")
    with pytest.raises(Crash):
        storage.save(HardState(2, None, 8), [], snapshot)
    monkeypatch.undo()
    reopened = crash_and_reopen(storage)
    hard_state, _, meta, log = reopened.initial_state()
    assert (hard_state, meta) == (HardState(2, None, 8), snapshot.meta)
    if snapshot_term == 1:
        assert log == entries([1, 1], first_index=9)
        assert reopened.recovery.stale_entries_discarded == 0
    else:
        assert log == []
        assert reopened.recovery.stale_entries_discarded == 10
    reopened.close()


def test_crash_after_the_log_reset_before_the_entries(
    monkeypatch: pytest.MonkeyPatch, storage: FileStorage
) -> None:
    storage.save(HardState(1, None, 2), entries([1, 1, 1], first_index=2), None)
    fail_when(monkeypatch, LogStore, "sync_through", lambda log, index: True)
    snapshot = Snapshot(SnapshotMeta(7, 2, CONFIGURATION), b"state at 7")
    with pytest.raises(Crash):
        storage.save(HardState(2, None, 8), entries([2], first_index=8), snapshot)
    monkeypatch.undo()
    hard_state, _, meta, log = crash_and_reopen(storage).initial_state()
    assert (hard_state, meta, log) == (HardState(2, None, 7), snapshot.meta, [])


def test_crash_in_compact_before_the_prefix_is_dropped(
    monkeypatch: pytest.MonkeyPatch, storage: FileStorage
) -> None:
    storage.save(HardState(1, None, 6), entries([1] * 5, first_index=2), None)
    fail_when(monkeypatch, LogStore, "truncate_prefix", lambda log, through: True)
    with pytest.raises(Crash):
        storage.compact(Snapshot(SnapshotMeta(4, 1, CONFIGURATION), b"state at 4"))
    monkeypatch.undo()
    hard_state, _, meta, log = crash_and_reopen(storage).initial_state()
    assert (meta.index, hard_state.commit) == (4, 4)
    assert log == entries([1, 1], first_index=5)


# -- FileStorage: bootstrap ---------------------------------------------------------------------


def test_bootstrap_refuses_a_directory_with_raft_state(tmp_path: Path) -> None:
    FileStorage.bootstrap(str(tmp_path / "a"), CONFIGURATION).close()
    with pytest.raises(StorageNotEmptyError):
        FileStorage.bootstrap(str(tmp_path / "a"), CONFIGURATION)
    joined = FileStorage.open(str(tmp_path / "b"))  # A node that joined: term 1 from a leader.
    joined.save(HardState(1, None, 0), [], None)
    joined.close()
    with pytest.raises(StorageNotEmptyError):
        FileStorage.bootstrap(str(tmp_path / "b"), CONFIGURATION)


def test_bootstrap_after_a_crash_during_bootstrap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fail_when(monkeypatch, files, "write_file_atomically", lambda path, data: True)
    with pytest.raises(Crash):
        FileStorage.bootstrap(str(tmp_path), CONFIGURATION)
    monkeypatch.undo()
    assert FileStorage.open(str(tmp_path)).initial_state()[0] == HardState(0, None, 0)
    storage = FileStorage.bootstrap(str(tmp_path), CONFIGURATION)
    assert storage.initial_state()[0] == HardState(1, None, 1)
    assert not (tmp_path / "raft.bootstrap").exists()
    storage.close()


# -- A whole cluster on FileStorage --------------------------------------------------------------


def test_a_whole_cluster_restarted_at_once_keeps_every_committed_entry(tmp_path: Path) -> None:
    """The PySyncObj bug: term and vote must be durable, or a simultaneous restart can elect a
    leader that lacks committed entries. Every node crashes at once (nothing is closed, so
    only what each save made durable survives) and is rebuilt from `initial_state()`."""
    cluster = Cluster(seed=3)
    directories = {node_id: str(tmp_path / f"node-{node_id}") for node_id in cluster.nodes}

    def install(storages: dict[int, FileStorage]) -> None:
        cluster.storages = storages  # type: ignore[assignment]  # Duck-typed like MemoryStorage.
        cluster.restart_all()

    install(
        {n: FileStorage.bootstrap(path, cluster.configuration) for n, path in directories.items()}
    )
    cluster.elect(1)
    for number in range(8):
        cluster.propose(1, f"first {number}".encode())
    cluster.compact(2)  # One node restarts from a snapshot and a log after it.
    for number in range(4):
        cluster.propose(1, f"second {number}".encode())
    committed = list(cluster.states[1])
    terms = {node_id: node.term for node_id, node in cluster.nodes.items()}
    assert len(committed) == 12 and all(state == committed for state in cluster.states.values())

    install({n: FileStorage.open(path) for n, path in directories.items()})
    assert {node_id: node.term for node_id, node in cluster.nodes.items()} == terms
    cluster.elect(3)
    cluster.propose(3, b"after the restart")
    for node_id in cluster.nodes:
        assert cluster.states[node_id] == [*committed, b"after the restart"], node_id
    cluster.check_state_machine_safety()
    for storage in cluster.storages.values():
        assert isinstance(storage, FileStorage)
        storage.close()
