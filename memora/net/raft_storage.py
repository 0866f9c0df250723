"""`FileStorage`: the Raft `Storage` of `memora.core.raft.storage` on real files.

What lives here: where a node's Raft state rests under DATA_DIR, in the layout of DESIGN.md ("Disk
layout of one node"), the order in which one Ready becomes durable, and how start-up turns what a
crash left into a valid state. What must not: decide anything Raft decides, or interpret the
state machine's snapshot bytes.

    DATA_DIR/raft/hard_state     codec.frame(CBOR HardState): CRC-32'd, replaced atomically
    DATA_DIR/raft/log-*.seg      `LogStore`; record N holds the CBOR of LogEntry N
    DATA_DIR/metadata/...        `SnapshotStore`; parts "raft_meta" (CBOR SnapshotMeta) and
                                 "state" (the snapshot's opaque data)

The semantics are `MemoryStorage`'s, with one documented difference, the commit index (below).

One save, in this order, each step durable before the next:
1. term and vote, if they changed: `raft/hard_state` is replaced atomically (temp file, fsync,
   rename, fsync of the directory). First, so that no entry or snapshot of a term is ever on disk
   while the file names an older term (the core asserts that the last log term is at most the
   term). The commit written with them is capped by `_commit_to_write`, so that whichever later
   step a crash interrupts, every entry up to it is on disk and is the committed one.
2. the snapshot, if any: `SnapshotStore.write` (data files, then the manifest), then the log is
   emptied (`truncate_suffix(0)`): the log after a snapshot starts at meta.index + 1.
3. the entries: a conflicting suffix is cut (`truncate_suffix`), then they are appended and
   fsynced through LogStore's group commit.

The commit index is persisted lazily. A Ready carries a hard state whenever the commit moves, that
is on nearly every Ready, and replacing the file atomically costs two more fsyncs (the file and
the directory) than the log's one. Measured on the development VM (ext4), a save of one 200-byte
entry and a hard state that moved only in commit: p50 0.2 ms, p99 4-5 ms; the same save with the
file replaced: p50 0.8-0.9 ms, p99 16-20 ms (in a slow phase of that disk, 4 ms against 12.5 ms).
So the file is rewritten only when term or vote change (they must be durable before any vote or
acknowledgment is sent) and at `close()`. After a crash, `initial_state()` reports the commit last
written, raised to the snapshot's index. That is safe: commit is volatile state in the Raft paper
(Figure 2), a follower learns it again from the leader's next message, and a new leader commits
everything before its no-op. A stale commit never names a missing or a wrong entry: it named
committed entries on disk when it was written, and Raft never removes a committed entry. The cost
is that entries committed after the last write are applied again only once a leader is known,
rather than right at start-up. Since `initial_state()` answers what a restart would find, it
reports the durable commit, also while the storage is open; `hard_state()` is the last one saved.

Start-up (`FileStorage.open`): LogStore cuts a torn tail and reports it (`recovery.log`); a damaged
hard state file is a `StorageCorruptionError` naming it. A crash between the snapshot's manifest
and the log reset of step 2 leaves the old log beside the new snapshot: if that log holds the
snapshot's last entry with the snapshot's term, Log Matching says everything up to it agrees, and
the entries after it are kept (as after `compact`); otherwise they belong to another history and
are dropped now, which finishes the interrupted reset (`recovery.stale_entries_discarded`). A log
that does not reach back to the snapshot, a commit beyond the last entry, or a term below the last
entry's, is a `StorageCorruptionError`.

Threads: one driver thread calls a FileStorage; it is not safe to share.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Sequence
from typing import Final

import attrs

from memora.core import codec
from memora.core.errors import CodecError
from memora.core.raft.storage import bootstrap_state
from memora.core.raft.types import (
    Configuration,
    HardState,
    LogEntry,
    Snapshot,
    SnapshotMeta,
    decode_value,
    encode_value,
    latest_configuration,
)
from memora.net import files
from memora.net.log_store import LogStore, RecoveryReport
from memora.net.snapshot_store import SnapshotInfo, SnapshotStore

RAFT_DIRECTORY: Final = "raft"
HARD_STATE_FILE: Final = "hard_state"
SNAPSHOT_META_PART: Final = "raft_meta"
SNAPSHOT_DATA_PART: Final = "state"
# Where `bootstrap` assembles the founding state before renaming it to `raft/` in one step.
_BOOTSTRAP_DIRECTORY: Final = "raft.bootstrap"
_EMPTY_HARD_STATE: Final = HardState(term=0, vote=None, commit=0)
_EMPTY_META: Final = SnapshotMeta(index=0, term=0, configuration=Configuration())


class RaftStorageError(Exception):
    """Base of the errors about what FileStorage finds (or fails to write) on disk."""


class StorageCorruptionError(RaftStorageError):
    """The files do not add up to a valid Raft state; `path` names the file or directory."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"corrupt Raft storage at {path}: {reason}")
        self.path = path
        self.reason = reason


class StorageNotEmptyError(RaftStorageError):
    """`bootstrap` refuses a data directory that already holds Raft state or a snapshot."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"refusing to bootstrap: {path} {reason}")
        self.path = path


class StorageFailedError(RaftStorageError):
    """An earlier save or compaction failed midway: only a restart (`open`) can be trusted."""


@attrs.frozen
class StorageRecovery:
    """What `FileStorage.open` found and repaired, for the caller to log."""

    log: RecoveryReport
    snapshot_warnings: tuple[str, ...] = ()
    # Log records dropped because a crash interrupted the log reset after a received snapshot.
    stale_entries_discarded: int = 0


class FileStorage:
    """Open with `FileStorage.open` or `FileStorage.bootstrap`; see the module docstring."""

    def __init__(
        self,
        data_dir: str,
        log: LogStore,
        snapshots: SnapshotStore,
        hard_state: HardState,
        snapshot_meta: SnapshotMeta,
        recovery: StorageRecovery,
    ) -> None:
        self.data_dir = data_dir
        self.recovery = recovery
        self._raft_dir = os.path.join(data_dir, RAFT_DIRECTORY)
        self._log = log
        self._snapshots = snapshots
        self._durable_hard_state = hard_state  # What raft/hard_state holds.
        self._hard_state = hard_state  # The last saved: only its commit may be ahead of disk.
        self._meta = snapshot_meta
        self._failure: BaseException | None = None
        self._closed = False
        self.saves = 0
        self.hard_state_writes = 0
        self._check()

    # -- Opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str) -> FileStorage:
        """Open (creating if missing) the Raft state of `data_dir`, recovering it after a crash.

        An empty directory gives the state of a node that joins later: term 0, no entries.
        """
        raft_dir = os.path.join(data_dir, RAFT_DIRECTORY)
        log, log_report = LogStore.open(raft_dir)
        try:
            _remove_temporary_files(raft_dir)
            hard_state = _read_hard_state(raft_dir)
            snapshots = SnapshotStore(data_dir)
            meta = _read_snapshot_meta(snapshots)
            discarded = _reconcile_log(raft_dir, log, meta)
            _check_hard_state(raft_dir, hard_state, log, meta)
        except BaseException:
            log.close()
            raise
        recovery = StorageRecovery(log_report, tuple(snapshots.warnings), discarded)
        return cls(data_dir, log, snapshots, hard_state, meta, recovery)

    @classmethod
    def bootstrap(cls, data_dir: str, configuration: Configuration) -> FileStorage:
        """Write the start of a founding member (`bootstrap_state`) and open it.

        The state is assembled in `raft.bootstrap/` and renamed to `raft/`, so a crash leaves
        either no Raft state (and bootstrap can run again) or all of it.
        """
        _check_no_raft_state(data_dir)
        hard_state, _, entries = bootstrap_state(configuration)
        staging = os.path.join(data_dir, _BOOTSTRAP_DIRECTORY)
        if os.path.exists(staging):
            shutil.rmtree(staging)  # Left by a crash during an earlier bootstrap.
        log, _ = LogStore.open(staging)
        try:
            for entry in entries:
                log.append(entry.index, encode_value(entry))
            log.sync()
        finally:
            log.close()
        files.write_file_atomically(os.path.join(staging, HARD_STATE_FILE), _encode(hard_state))
        raft_dir = os.path.join(data_dir, RAFT_DIRECTORY)
        if os.path.isdir(raft_dir):
            os.rmdir(raft_dir)  # Empty: `_check_no_raft_state` said so.
        os.rename(staging, raft_dir)
        files.fsync_directory(data_dir)
        return cls.open(data_dir)

    # -- The Storage protocol -------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, Configuration, SnapshotMeta, list[LogEntry]]:
        """What a restart would find now: the durable hard state, commit raised to the snapshot."""
        meta = self._meta
        entries = self.entries()
        durable = self._durable_hard_state
        hard_state = attrs.evolve(durable, commit=max(durable.commit, meta.index))
        return hard_state, latest_configuration(meta, entries), meta, entries

    def save(
        self, hard_state: HardState | None, entries: Sequence[LogEntry], snapshot: Snapshot | None
    ) -> None:
        """Make one Ready durable: term and vote, snapshot, entries (see the module docstring)."""
        self._check_usable()
        # Read once: each read takes the log's lock, and a save is on every write's path.
        last_index = self.last_index()
        if hard_state is not None:
            last_index_after = _last_index_after(last_index, entries, snapshot)
            assert hard_state.commit <= last_index_after, (hard_state, last_index_after)
        try:
            if hard_state is not None:
                commit = self._commit_to_write(hard_state, entries, snapshot, last_index)
                self._save_term_and_vote(hard_state, commit)
            if snapshot is not None:
                self._install_snapshot(snapshot)
                last_index = self.last_index()
            if entries:
                self._append(entries, last_index)
        except BaseException as error:
            self._failure = error
            raise
        if hard_state is not None:
            self._hard_state = hard_state
        self.saves += 1
        self._check()

    def compact(self, snapshot: Snapshot) -> None:
        """Store a state machine snapshot as the latest, then drop the log segments it covers."""
        self._check_usable()
        index = snapshot.meta.index
        assert self._meta.index < index <= self.last_index(), (self._meta.index, index)
        assert self._entry_at(index).term == snapshot.meta.term, snapshot.meta
        try:
            self._write_snapshot(snapshot)
            self._log.truncate_prefix(index)
        except BaseException as error:
            self._failure = error
            raise
        self._check()

    def latest_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """The latest snapshot, read back from disk (and checked against its manifest)."""
        if self._meta.index == 0:
            return None
        latest = self._snapshots.latest()
        if latest is None:
            raise StorageCorruptionError(self.data_dir, f"snapshot at {self._meta.index} is gone")
        info, parts = latest
        meta = _decode_snapshot_meta(info, parts)
        if meta != self._meta:
            reason = f"the newest whole snapshot ends at {meta.index}, not {self._meta.index}"
            raise StorageCorruptionError(info.manifest_path, reason)
        return meta, parts[SNAPSHOT_DATA_PART]

    # -- Like MemoryStorage, for drivers and tests -------------------------------------------------

    def last_index(self) -> int:
        return max(self._meta.index, self._log.last_index or 0)

    def entries(self) -> list[LogEntry]:
        """Every entry after the snapshot, read back from the log."""
        first = self._meta.index + 1
        if self.last_index() < first:
            return []
        records = self._log.read(first)
        return [_decode_entry(self._raft_dir, index, payload) for index, payload in records]

    def hard_state(self) -> HardState:
        """The last hard state saved; its commit may be ahead of the file (module docstring)."""
        return self._hard_state

    def snapshot_meta(self) -> SnapshotMeta:
        return self._meta

    @property
    def log_fsyncs(self) -> int:
        return self._log.stats.fsyncs

    def close(self) -> None:
        """Persist the commit index if it moved, then close the log. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._failure is None and self._hard_state != self._durable_hard_state:
                self._write_hard_state(self._hard_state)
        finally:
            self._log.close()

    # -- Steps of a save ----------------------------------------------------------------------

    def _commit_to_write(
        self,
        hard_state: HardState,
        entries: Sequence[LogEntry],
        snapshot: Snapshot | None,
        last_index: int,
    ) -> int:
        """The highest commit the file may name while this save is under way: every entry up to
        it is durable now, and no later step of the save removes or replaces it."""
        if snapshot is not None:
            # The snapshot replaces the log, whose entries up to its index may differ from the
            # committed ones: only the last saved commit is known to name committed entries on
            # disk. `initial_state` raises the commit to the snapshot's index once that is durable.
            return min(hard_state.commit, self._hard_state.commit)
        kept = last_index
        if entries:
            kept = min(kept, entries[0].index - 1)  # Entries up to here match the leader's.
        return min(hard_state.commit, kept)

    def _save_term_and_vote(self, hard_state: HardState, commit: int) -> None:
        durable = self._durable_hard_state
        assert hard_state.term >= durable.term, (hard_state, durable)
        if (hard_state.term, hard_state.vote) == (durable.term, durable.vote):
            return  # Only the commit moved: persisted lazily (module docstring).
        self._write_hard_state(attrs.evolve(hard_state, commit=commit))

    def _write_hard_state(self, hard_state: HardState) -> None:
        assert hard_state.commit <= self.last_index(), (hard_state, self.last_index())
        path = os.path.join(self._raft_dir, HARD_STATE_FILE)
        files.write_file_atomically(path, _encode(hard_state))
        self._durable_hard_state = hard_state
        self.hard_state_writes += 1

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        assert snapshot.meta.index > self._meta.index, (snapshot.meta, self._meta)
        self._write_snapshot(snapshot)
        # The snapshot replaces the whole log; a crash before this line is repaired by `open`.
        self._log.truncate_suffix(0)

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        parts = {SNAPSHOT_META_PART: encode_value(meta), SNAPSHOT_DATA_PART: snapshot.data}
        self._snapshots.write(meta.index, meta.term, parts)
        self._meta = meta

    def _append(self, entries: Sequence[LogEntry], last_index: int) -> None:
        """Append and fsync `entries`; `last_index` is `self.last_index()` before them."""
        first = entries[0].index
        assert self._meta.index < first <= last_index + 1, (first, last_index)
        # Raft never replaces a committed entry; the file's commit must stay on disk.
        assert first > self._durable_hard_state.commit, (first, self._durable_hard_state)
        for previous, entry in itertools.pairwise(entries):
            assert entry.index == previous.index + 1, (previous.index, entry.index)
        # The log holds every entry after the snapshot, so its last index is `last_index` when
        # it is past the snapshot's (and an empty log only ever gets entries after it).
        if self._meta.index < first <= last_index:
            self._log.truncate_suffix(first - 1)
        for entry in entries:
            self._log.append(entry.index, encode_value(entry))
        self._log.sync_through(entries[-1].index)

    # -- Checks ---------------------------------------------------------------------------------

    def _entry_at(self, index: int) -> LogEntry:
        return _entry_at(self._raft_dir, self._log, index)

    def _check_usable(self) -> None:
        assert not self._closed, "the storage is closed"
        if self._failure is not None:
            raise StorageFailedError(f"an earlier save failed: {self._failure}") from self._failure

    def _check(self) -> None:
        durable, latest = self._durable_hard_state, self._hard_state
        assert (durable.term, durable.vote) == (latest.term, latest.vote), (durable, latest)
        last_index = self.last_index()
        assert durable.commit <= last_index, (durable, last_index)
        assert latest.commit <= last_index, (latest, last_index)
        first = self._log.first_index
        assert first is None or first <= self._meta.index + 1, (first, self._meta)


def _last_index_after(
    last_index: int, entries: Sequence[LogEntry], snapshot: Snapshot | None
) -> int:
    """The last index of the log once a save of `entries` and `snapshot` is done."""
    if entries:
        return entries[-1].index
    if snapshot is not None:
        return snapshot.meta.index
    return last_index


# -- Reading what is on disk ----------------------------------------------------------------------


def _encode(hard_state: HardState) -> bytes:
    return codec.frame(encode_value(hard_state))


def _read_hard_state(raft_dir: str) -> HardState:
    """The hard state file, or term 0 if there is none yet; damage is a StorageCorruptionError."""
    path = os.path.join(raft_dir, HARD_STATE_FILE)
    if not os.path.exists(path):
        return _EMPTY_HARD_STATE
    data = files.read_file(path)
    read = codec.read_frame(data, 0)
    if read.status is not codec.FrameStatus.OK:
        raise StorageCorruptionError(path, f"unreadable frame ({read.status.value})")
    if read.end != len(data):
        raise StorageCorruptionError(path, f"{len(data) - read.end} bytes after the frame")
    try:
        hard_state: HardState = decode_value(read.body, HardState)
    except CodecError as error:
        raise StorageCorruptionError(path, str(error)) from error
    return hard_state


def _remove_temporary_files(raft_dir: str) -> None:
    """Temporary hard state files a crash left behind (the rename never happened)."""
    prefix = HARD_STATE_FILE + "."
    for name in os.listdir(raft_dir):
        if name.startswith(prefix) and name.endswith(".tmp"):
            os.unlink(os.path.join(raft_dir, name))


def _read_snapshot_meta(snapshots: SnapshotStore) -> SnapshotMeta:
    latest = snapshots.latest()
    if latest is None:
        return _EMPTY_META
    return _decode_snapshot_meta(*latest)


def _decode_snapshot_meta(info: SnapshotInfo, parts: dict[str, bytes]) -> SnapshotMeta:
    if SNAPSHOT_META_PART not in parts or SNAPSHOT_DATA_PART not in parts:
        reason = f"not a Raft snapshot: its parts are {sorted(parts)}"
        raise StorageCorruptionError(info.manifest_path, reason)
    try:
        meta: SnapshotMeta = decode_value(parts[SNAPSHOT_META_PART], SnapshotMeta)
    except CodecError as error:
        raise StorageCorruptionError(info.manifest_path, f"part raft_meta: {error}") from error
    if (meta.index, meta.term) != (info.index, info.term):
        reason = f"raft_meta says {meta.index}@{meta.term}, the manifest {info.index}@{info.term}"
        raise StorageCorruptionError(info.manifest_path, reason)
    return meta


def _decode_entry(raft_dir: str, index: int, payload: bytes) -> LogEntry:
    try:
        entry: LogEntry = decode_value(payload, LogEntry)
    except CodecError as error:
        raise StorageCorruptionError(raft_dir, f"log record {index}: {error}") from error
    if entry.index != index:
        raise StorageCorruptionError(raft_dir, f"log record {index} holds entry {entry.index}")
    return entry


def _entry_at(raft_dir: str, log: LogStore, index: int) -> LogEntry:
    record_index, payload = next(iter(log.read(index)))
    return _decode_entry(raft_dir, record_index, payload)


def _reconcile_log(raft_dir: str, log: LogStore, meta: SnapshotMeta) -> int:
    """Make the log continue the snapshot (module docstring); returns the records dropped."""
    first, last = log.first_index, log.last_index
    if first is None or last is None or first == meta.index + 1:
        return 0
    if first > meta.index + 1:
        reason = f"the log starts at {first} but the snapshot ends at {meta.index}"
        raise StorageCorruptionError(raft_dir, reason)
    if last >= meta.index and _entry_at(raft_dir, log, meta.index).term == meta.term:
        return 0
    log.truncate_suffix(0)
    return last - first + 1


def _check_hard_state(
    raft_dir: str, hard_state: HardState, log: LogStore, meta: SnapshotMeta
) -> None:
    """The hard state must name no entry beyond the log and no term below the log's last."""
    path = os.path.join(raft_dir, HARD_STATE_FILE)
    last_index = max(meta.index, log.last_index or 0)
    if hard_state.commit > last_index:
        reason = f"commit {hard_state.commit} is beyond the last entry {last_index}"
        raise StorageCorruptionError(path, reason)
    last_term = meta.term if last_index == meta.index else _entry_at(raft_dir, log, last_index).term
    if hard_state.term < last_term:
        reason = f"term {hard_state.term} is below the last entry's term {last_term}"
        raise StorageCorruptionError(path, reason)


def _check_no_raft_state(data_dir: str) -> None:
    raft_dir = os.path.join(data_dir, RAFT_DIRECTORY)
    if os.path.isdir(raft_dir) and os.listdir(raft_dir):
        raise StorageNotEmptyError(raft_dir, "is not empty")
    snapshots = SnapshotStore(data_dir)
    if snapshots.latest() is not None or snapshots.warnings:
        raise StorageNotEmptyError(data_dir, "holds a snapshot")
