"""The storage a Raft driver persists through, as a Protocol, and `MemoryStorage` for tests.

What lives here: the calls a driver makes (`initial_state` at start-up, `save` for each Ready,
`compact` after a state machine snapshot, `latest_snapshot` for the leader's InstallSnapshot), their
semantics, and an in-memory implementation that follows them exactly. What must not: files,
fsync, clocks. The file-backed implementation belongs to `memora.net`; the simulator's to
`memora.sim`. `RaftNode` never calls a Storage: the driver does, so the core stays pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from memora.core.raft.types import (
    Configuration,
    EntryKind,
    HardState,
    LogEntry,
    Snapshot,
    SnapshotMeta,
    encode_configuration,
    latest_configuration,
)


class SnapshotSource(Protocol):
    """Where a leader reads the snapshot it streams to a follower that fell too far behind."""

    def latest_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest durable snapshot (its meta and data), or None if there is none."""
        ...


class Storage(SnapshotSource, Protocol):
    def initial_state(self) -> tuple[HardState, Configuration, SnapshotMeta, list[LogEntry]]:
        """What `RaftNode(...)` is built from after a start or a crash.

        Returns the hard state, the configuration in effect at the end of the log, the meta of
        the latest snapshot (`SnapshotMeta(0, 0, configuration)` if the log was never compacted)
        and every entry after the snapshot, in order.
        """
        ...

    def save(
        self, hard_state: HardState | None, entries: Sequence[LogEntry], snapshot: Snapshot | None
    ) -> None:
        """Make one Ready durable, in this order, before returning.

        1. `snapshot`: it becomes the latest snapshot and replaces the whole log.
        2. `entries`: entries at or after entries[0].index are discarded (a conflicting suffix),
           then `entries` are appended; entries[0].index is at most the last index + 1.
        3. `hard_state`, last: its commit index never exceeds the last durable entry.
        """
        ...

    def compact(self, snapshot: Snapshot) -> None:
        """Store a state machine snapshot (from `RaftNode.compact`'s meta and the state
        machine's data) as the latest, then discard the entries it covers."""
        ...


def bootstrap_state(configuration: Configuration) -> tuple[HardState, SnapshotMeta, list[LogEntry]]:
    """The identical start of every founding member: entry 1 holds the configuration, committed.

    A node that joins later starts empty (term 0, no entries, an empty configuration) and learns
    everything, this entry included, from the leader.
    """
    assert configuration.voters, configuration
    entry = LogEntry(1, 1, EntryKind.CONFIGURATION, encode_configuration(configuration))
    empty = SnapshotMeta(index=0, term=0, configuration=Configuration())
    return HardState(term=1, vote=None, commit=1), empty, [entry]


class MemoryStorage:
    """A Storage that keeps everything in memory and survives exactly what the test says."""

    def __init__(
        self,
        hard_state: HardState | None = None,
        snapshot_meta: SnapshotMeta | None = None,
        entries: Sequence[LogEntry] = (),
    ) -> None:
        self._hard_state = hard_state or HardState(term=0, vote=None, commit=0)
        meta = snapshot_meta or SnapshotMeta(index=0, term=0, configuration=Configuration())
        self._snapshot = Snapshot(meta, b"")
        self._entries: list[LogEntry] = list(entries)
        self.saves = 0
        self._check()

    @classmethod
    def bootstrap(cls, configuration: Configuration) -> MemoryStorage:
        hard_state, meta, entries = bootstrap_state(configuration)
        return cls(hard_state, meta, entries)

    def initial_state(self) -> tuple[HardState, Configuration, SnapshotMeta, list[LogEntry]]:
        meta = self._snapshot.meta
        configuration = latest_configuration(meta, self._entries)
        return self._hard_state, configuration, meta, list(self._entries)

    def save(
        self, hard_state: HardState | None, entries: Sequence[LogEntry], snapshot: Snapshot | None
    ) -> None:
        if snapshot is not None:
            assert snapshot.meta.index > self._snapshot.meta.index, snapshot.meta
            self._snapshot = snapshot
            self._entries = []
        if entries:
            first = entries[0].index
            assert self._snapshot.meta.index < first <= self.last_index() + 1, first
            del self._entries[first - self._snapshot.meta.index - 1 :]
            self._entries.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state
        self.saves += 1
        self._check()

    def compact(self, snapshot: Snapshot) -> None:
        meta = self._snapshot.meta
        index = snapshot.meta.index
        assert meta.index < index <= self.last_index(), (meta.index, index)
        assert self._entries[index - meta.index - 1].term == snapshot.meta.term
        del self._entries[: index - meta.index]
        self._snapshot = snapshot

    def latest_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        if self._snapshot.meta.index == 0:
            return None
        return self._snapshot.meta, self._snapshot.data

    def last_index(self) -> int:
        return self._snapshot.meta.index + len(self._entries)

    def entries(self) -> list[LogEntry]:
        return list(self._entries)

    def hard_state(self) -> HardState:
        return self._hard_state

    def _check(self) -> None:
        first = self._snapshot.meta.index + 1
        if self._entries:
            assert self._entries[0].index == first, (self._entries[0].index, first)
            assert self._entries[-1].index == first + len(self._entries) - 1
        assert self._hard_state.commit <= self.last_index(), self._hard_state
