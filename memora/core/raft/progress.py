"""What a leader knows of each peer: how much of the log matches, what to send next, and how much
is in flight.

A peer's `Progress` is in one of three states (as in etcd's tracker):
- PROBE: the leader does not know where the logs match. It sends one AppendRequest and waits for
  the answer (or the next heartbeat response) before sending another.
- REPLICATE: the logs match up to `match`. The leader pipelines AppendRequests optimistically,
  moving `next` past what it sent, limited by the `Inflights` window (messages and bytes).
- SNAPSHOT: the peer needs entries the leader compacted away. The leader streams a snapshot to it,
  one chunk at a time (`SnapshotTransfer`), and waits for the peer to acknowledge the whole.

Nothing here sends messages or reads the log; the node decides and this module keeps the books.

Invariants: 0 <= match < next; in REPLICATE, every inflight index is in [match + 1, next - 1].
"""

from __future__ import annotations

import enum
from collections import deque

from memora.core.raft.types import SnapshotMeta


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """AppendRequests sent to one peer and not yet acknowledged, by last index and size."""

    __slots__ = ("_bytes", "_messages", "bytes_max", "messages_max")

    def __init__(self, messages_max: int, bytes_max: int) -> None:
        assert messages_max > 0 and bytes_max > 0
        self.messages_max = messages_max
        self.bytes_max = bytes_max
        self._messages: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._messages)

    def bytes_inflight(self) -> int:
        return self._bytes

    def full(self) -> bool:
        # A single message may overshoot the byte limit, so that an entry larger than the
        # window still goes out when nothing else is in flight.
        return len(self._messages) >= self.messages_max or self._bytes >= self.bytes_max

    def add(self, last_index: int, size_bytes: int) -> None:
        assert not self.full()
        assert not self._messages or self._messages[-1][0] < last_index, last_index
        self._messages.append((last_index, size_bytes))
        self._bytes += size_bytes

    def free_to(self, index: int) -> None:
        """Forget every message whose last entry is at or below `index` (acknowledged)."""
        while self._messages and self._messages[0][0] <= index:
            _, size_bytes = self._messages.popleft()
            self._bytes -= size_bytes
        assert self._bytes >= 0

    def reset(self) -> None:
        self._messages.clear()
        self._bytes = 0

    def last_index(self) -> int | None:
        return self._messages[-1][0] if self._messages else None


class SnapshotTransfer:
    """A snapshot on its way to one peer: the peer has acknowledged `offset` bytes of it."""

    __slots__ = ("awaiting", "data", "heartbeats_waiting", "meta", "offset")

    def __init__(self, meta: SnapshotMeta, data: bytes) -> None:
        self.meta = meta
        self.data = data
        self.offset = 0
        self.awaiting = False  # A chunk at `offset` is in flight.
        self.heartbeats_waiting = 0  # Heartbeat responses seen while it was in flight.


class Progress:
    __slots__ = (
        "acked_round",
        "commit_sent",
        "inflights",
        "is_learner",
        "last_heard_tick",
        "match",
        "next",
        "pending_snapshot_index",
        "probe_sent",
        "recent_active",
        "snapshot_transfer",
        "state",
    )

    def __init__(self, next_index: int, *, is_learner: bool, inflights: Inflights) -> None:
        assert next_index >= 1
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot_index = 0
        self.recent_active = False
        self.is_learner = is_learner
        self.inflights = inflights
        self.acked_round = 0
        self.commit_sent = 0  # The highest commit index the peer was sent and can apply.
        self.last_heard_tick = 0
        self.snapshot_transfer: SnapshotTransfer | None = None

    def become_probe(self) -> None:
        """Probe from just past what is known to match (or past the snapshot being sent)."""
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match, self.pending_snapshot_index) + 1
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, transfer: SnapshotTransfer) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot_index = transfer.meta.index
        self.snapshot_transfer = transfer

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot_index = 0
        self.snapshot_transfer = None
        self.inflights.reset()

    def is_paused(self) -> bool:
        """Whether the leader must hold back AppendRequests to this peer for now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_index: int, size_bytes: int, entry_count: int) -> None:
        """Record an AppendRequest whose entries end at `last_index` (or carry none)."""
        if self.state is ProgressState.REPLICATE:
            if entry_count > 0:
                self.next = last_index + 1
                self.inflights.add(last_index, size_bytes)
        else:
            assert self.state is ProgressState.PROBE
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The peer's log matches up to `index`. Returns whether that was news."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        self.inflights.free_to(index)
        return updated

    def maybe_decrement_to(self, rejected: int, match_hint: int) -> bool:
        """The peer rejected an AppendRequest whose previous index was `rejected`.

        Returns False when the rejection is stale (the leader has since learned more).
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.state is ProgressState.SNAPSHOT or self.next - 1 != rejected:
            return False
        if rejected == self.match:
            # The peer acknowledged `rejected` and now lacks it: its disk lost entries it had
            # made durable (it restarted in recovering mode), or this is a duplicate of a
            # rejection older than its acknowledgment. Forget the match either way, as it can
            # no longer be trusted: probing from the hint finds the true one (or the old one
            # again, for the price of a round trip). Keeping it would probe `rejected` forever.
            self.match = 0
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def invariants(self) -> None:
        assert 0 <= self.match < self.next, (self.match, self.next)
        assert (self.state is ProgressState.SNAPSHOT) == (self.snapshot_transfer is not None)
        if self.state is not ProgressState.REPLICATE:
            assert len(self.inflights) == 0
        last_inflight = self.inflights.last_index()
        assert last_inflight is None or self.match < last_inflight < self.next
