"""The in-memory view of one node's Raft log: the entries since the last compaction.

`RaftLog` keeps every entry after the snapshot point in a list, with three marks on it:
`stable_index` (entries at or below it are durable, or were handed to the driver to persist),
`committed` and `applied`. A snapshot received from a leader waits in `pending_snapshot` until the
driver has persisted it. Log matching rules (find a conflict, truncate, back off by term) live here;
who may truncate what, and when, is decided by the node. Nothing here does I/O or knows of messages.

Invariants (checked by `invariants()`):
    snapshot_index <= committed <= last_index, applied <= committed,
    snapshot_index <= stable_index <= last_index,
    entry i of the list has index snapshot_index + 1 + i,
    the first entry's term is at least the snapshot's (unless `check_term_order` is off: only
    for the injected bugs that leave stale, lower-term entries behind on purpose).
"""

from __future__ import annotations

from collections.abc import Sequence

from memora.core.raft.types import LogEntry, Snapshot, SnapshotMeta


class RaftLog:
    __slots__ = (
        "_entries",
        "applied",
        "check_term_order",
        "committed",
        "pending_snapshot",
        "snapshot_index",
        "snapshot_term",
        "stable_index",
    )

    def __init__(
        self,
        snapshot_meta: SnapshotMeta,
        entries: Sequence[LogEntry],
        commit: int,
        *,
        check_term_order: bool = True,
    ) -> None:
        self.check_term_order = check_term_order
        self.snapshot_index = snapshot_meta.index
        self.snapshot_term = snapshot_meta.term
        self._entries = list(entries)
        self.stable_index = self.last_index()
        # Everything committed is durable; what was applied before a restart is applied again.
        self.committed = max(commit, self.snapshot_index)
        self.applied = self.snapshot_index
        self.pending_snapshot: Snapshot | None = None
        self._check_contiguous(self._entries, self.snapshot_index + 1)
        assert self.committed <= self.last_index(), (commit, self.last_index())
        self.invariants()

    # -- Reading. -----------------------------------------------------------------------------

    def first_index(self) -> int:
        return self.snapshot_index + 1

    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if not self.snapshot_index < index <= self.last_index():
            return None
        return self._entries[index - self.snapshot_index - 1].term

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def entry(self, index: int) -> LogEntry:
        assert self.snapshot_index < index <= self.last_index(), index
        return self._entries[index - self.snapshot_index - 1]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (last_index, last_term) is at least as up to date as this one."""
        return (last_term, last_index) >= (self.last_term(), self.last_index())

    def slice(self, low: int, high: int, bytes_max: int, entries_max: int) -> list[LogEntry]:
        """Entries [low, high), cut at `bytes_max` and `entries_max`, never empty if low < high."""
        assert self.snapshot_index < low <= high <= self.last_index() + 1, (low, high)
        offset = self.snapshot_index + 1
        result: list[LogEntry] = []
        size = 0
        for entry in self._entries[low - offset : min(high, low + entries_max) - offset]:
            size += entry.size_bytes()
            if result and size > bytes_max:
                break
            result.append(entry)
        return result

    def entries_after(self, index: int) -> list[LogEntry]:
        assert self.snapshot_index <= index <= self.last_index(), index
        return self._entries[index - self.snapshot_index :]

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last entry at or below `index` whose term is at most `term`, as (index, term).

        It stops at the snapshot point, whose term is known, even if that term is larger.
        """
        assert index <= self.last_index(), index
        while index > self.snapshot_index:
            entry_term = self.entry(index).term
            if entry_term <= term:
                return index, entry_term
            index -= 1
        return self.snapshot_index, self.snapshot_term

    def unstable_entries(self) -> tuple[LogEntry, ...]:
        return tuple(self.entries_after(self.stable_index))

    def committed_entries_to_apply(self, bytes_max: int) -> tuple[LogEntry, ...]:
        """Committed entries the driver has not applied, up to `bytes_max` (at least one)."""
        low = max(self.applied, self.snapshot_index) + 1
        if low > self.committed:
            return ()
        return tuple(self.slice(low, self.committed + 1, bytes_max, self.committed + 1 - low))

    # -- Changing. ----------------------------------------------------------------------------

    def append(self, entries: Sequence[LogEntry]) -> None:
        """Append entries that follow the last one (a leader's own proposals)."""
        self._check_contiguous(entries, self.last_index() + 1)
        self._entries.extend(entries)

    def find_conflict(self, entries: Sequence[LogEntry]) -> int:
        """The index of the first of `entries` that differs from the log or is past it, or 0."""
        for entry in entries:
            if not self.matches(entry.index, entry.term):
                return entry.index
        return 0

    def truncate_and_append(self, entries: Sequence[LogEntry]) -> None:
        """Replace the suffix from entries[0].index on. The caller checked it is not committed."""
        if not entries:
            return
        first = entries[0].index
        assert self.committed < first <= self.last_index() + 1, (self.committed, first)
        del self._entries[first - self.snapshot_index - 1 :]
        self.stable_index = min(self.stable_index, first - 1)
        self.append(entries)

    def overwrite(self, entries: Sequence[LogEntry]) -> None:
        """Write `entries` over the log from entries[0].index on, keeping what lies beyond them.

        Only for `InjectedBug.NO_TRUNCATE_CONFLICT`: a correct follower truncates that suffix.
        Everything from entries[0] on becomes unstable, the kept suffix included, so the driver
        persists the log exactly as it is held here.
        """
        if not entries:
            return
        first = entries[0].index
        assert self.committed < first <= self.last_index() + 1, (self.committed, first)
        offset = first - self.snapshot_index - 1
        self._entries[offset : offset + len(entries)] = entries
        self.stable_index = min(self.stable_index, first - 1)
        self._check_contiguous(self._entries, self.snapshot_index + 1)

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lower it). Returns whether it moved."""
        if index <= self.committed:
            return False
        assert index <= self.last_index(), (index, self.last_index())
        self.committed = index
        return True

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to (index, term), unless they were replaced since."""
        if index > self.stable_index and self.matches(index, term):
            self.stable_index = index

    def applied_to(self, index: int) -> None:
        assert self.applied <= index <= self.committed, (self.applied, index, self.committed)
        self.applied = index

    def snapshot_persisted(self, snapshot: Snapshot) -> None:
        """The driver persisted and restored `snapshot`: it is applied."""
        if self.pending_snapshot is snapshot:
            self.pending_snapshot = None
        self.applied = max(self.applied, snapshot.meta.index)

    def compact(self, index: int, term: int) -> None:
        """Forget entries up to `index`: the driver holds a state machine snapshot there."""
        assert self.snapshot_index < index <= min(self.applied, self.stable_index), index
        assert self.matches(index, term), (index, term)
        del self._entries[: index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a leader's snapshot; it waits for the driver to persist it."""
        assert snapshot.meta.index > self.committed, (snapshot.meta.index, self.committed)
        self._entries = []
        self.snapshot_index, self.snapshot_term = snapshot.meta.index, snapshot.meta.term
        self.stable_index = self.committed = snapshot.meta.index
        self.pending_snapshot = snapshot

    # -- Checking. ----------------------------------------------------------------------------

    @staticmethod
    def _check_contiguous(entries: Sequence[LogEntry], first: int) -> None:
        if entries:
            assert entries[0].index == first, (entries[0].index, first)
            assert entries[-1].index == first + len(entries) - 1, (entries[-1].index, first)

    def invariants(self) -> None:
        assert self.snapshot_index <= self.committed <= self.last_index()
        assert self.applied <= self.committed, (self.applied, self.committed)
        assert self.snapshot_index <= self.stable_index <= self.last_index()
        assert self.pending_snapshot is None or self.pending_snapshot.meta.index <= self.committed
        if self._entries:
            assert self._entries[0].index == self.snapshot_index + 1
            if self.check_term_order:
                assert self._entries[0].term >= self.snapshot_term
