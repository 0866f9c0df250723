"""`RaftNode`: one server's Raft state machine, sans I/O, in the style of etcd-io/raft.

What lives here: elections (pre-vote, check-quorum, leader lease for votes), log replication
(pipelining, batching, flow control, fast back-off), commitment (current-term entries only),
InstallSnapshot in chunks, single-server membership changes, leadership transfer and reads
(ReadIndex and lease reads). What must not: clocks, sockets, files, threads, global randomness.
Time arrives as `tick()`, messages as `step()`, requests as method calls, and every output leaves
through one `Ready` value (see its docstring for the order the driver must follow).

Each role has its own step and tick functions, swapped by `_become_follower`,
`_become_pre_candidate`, `_become_candidate` and `_become_leader`. Every public entry point ends
with `invariants()`. Bad input from a peer is rejected and counted in `counters`, never asserted;
bad input from a local caller raises a typed error (`NotLeaderError`, `ProposalDroppedError`,
`ConfigurationChangeError`, `LimitError`).

`RaftOptions.injected_bugs` plants known bugs for the simulator (see `InjectedBug`); only the
simulator sets it. Each bug is a small branch marked `if InjectedBug.X in ...injected_bugs:`.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from memora.core import constants
from memora.core.errors import CodecError, LimitError, ValidationError
from memora.core.prng import Prng
from memora.core.raft.log import RaftLog
from memora.core.raft.progress import Inflights, Progress, ProgressState, SnapshotTransfer
from memora.core.raft.storage import SnapshotSource
from memora.core.raft.types import (
    MESSAGE_CLASSES,
    AppendRequest,
    AppendResponse,
    CommitNotice,
    Configuration,
    ConfigurationChange,
    EntryKind,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    InjectedBug,
    LogEntry,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftOptions,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Ready,
    Role,
    ShapeError,
    Snapshot,
    SnapshotChunk,
    SnapshotChunkResponse,
    SnapshotMeta,
    SoftState,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    check_fields,
    configuration_of,
    decode_configuration,
    encode_configuration,
)

# Messages only a leader sends: they make their receiver a follower of their source.
_FROM_LEADER: Final = (AppendRequest, HeartbeatRequest, CommitNotice, SnapshotChunk)


@attrs.frozen
class _PendingRead:
    """A read the leader holds until a quorum confirms its leadership in heartbeat `round`."""

    requester: int
    request_id: int
    lease: bool
    index: int = 0
    round: int = 0


class _SnapshotAssembly:
    """A follower's partial snapshot, chunk by chunk, from the leader of the current term."""

    __slots__ = ("buffer", "meta", "total_bytes")

    def __init__(self, meta: SnapshotMeta, total_bytes: int) -> None:
        self.meta = meta
        self.total_bytes = total_bytes
        self.buffer = bytearray()


# ---------------------------------------------------------------------------------------------
# Checks of messages from peers. Each returns the reason for rejecting, or None.


def _shape_rejection(message: object) -> str | None:
    if type(message) not in MESSAGE_CLASSES:
        return "bad_shape"
    try:
        check_fields(message)
    except ShapeError:
        return "bad_shape"
    return None


def _entries_rejection(message: AppendRequest) -> str | None:
    entries = message.entries
    if message.previous_term > message.term:
        return "bad_term"
    if len(entries) > constants.raft_append_entries_max:
        return "too_many_entries"
    if message.previous_index + len(entries) > constants.raft_index_max:
        return "index_out_of_range"
    previous_term = message.previous_term
    for offset, entry in enumerate(entries):
        if entry.index != message.previous_index + 1 + offset:
            return "entries_not_contiguous"
        if not previous_term <= entry.term <= message.term:
            return "bad_entry_term"
        if len(entry.data) > constants.entry_bytes_max:
            return "entry_too_large"
        if entry.kind is EntryKind.CONFIGURATION and not _is_configuration(entry.data):
            return "bad_configuration"
        previous_term = entry.term
    return None


def _is_configuration(data: bytes) -> bool:
    try:
        decode_configuration(data)
    except CodecError:
        return False
    return True


def _chunk_rejection(message: SnapshotChunk) -> str | None:
    if not 0 < message.meta.term <= message.term or message.meta.index == 0:
        return "bad_snapshot_meta"
    if len(message.data) > constants.raft_snapshot_chunk_bytes:
        return "chunk_too_large"
    if message.total_bytes > constants.raft_snapshot_bytes_max:
        return "snapshot_too_large"
    if message.offset + len(message.data) > message.total_bytes:
        return "chunk_out_of_range"
    if not message.meta.configuration.voters:
        return "bad_snapshot_meta"
    return None


def message_rejection(message: Message, node_id: int) -> str | None:
    """Why a message from a peer cannot be stepped at all, whatever this node's state, or None."""
    reason = _shape_rejection(message)
    if reason is not None:
        return reason
    if message.target != node_id:
        return "wrong_target"
    if message.source == node_id or not constants.raft_node_id_min <= message.source:
        return "bad_source"
    if message.source > constants.raft_node_id_max:
        return "bad_source"
    if message.term >= constants.raft_term_max:
        return "term_out_of_range"  # Every term must leave room for a successor.
    if isinstance(message, AppendRequest):
        return _entries_rejection(message)
    if isinstance(message, SnapshotChunk):
        return _chunk_rejection(message)
    if (
        isinstance(message, AppendResponse)
        and message.rejected
        and (message.hint_index > message.index or message.hint_term > message.term)
    ):
        return "bad_hint"
    if isinstance(message, VoteRequest) and message.last_term > message.term:
        return "bad_term"
    return None


def _configurations_in(entries: Sequence[LogEntry]) -> list[tuple[int, Configuration]]:
    """(index, configuration) of every configuration entry among `entries`, in order."""
    return [
        (entry.index, configuration_of(entry))
        for entry in entries
        if entry.kind is EntryKind.CONFIGURATION
    ]


# ---------------------------------------------------------------------------------------------


# Injected bugs that leave entries of a lower term after a higher one in a log, on purpose.
_BUGS_BREAKING_TERM_ORDER = frozenset(
    {InjectedBug.NO_TRUNCATE_CONFLICT, InjectedBug.SNAPSHOT_KEEPS_LOG}
)


class RaftNode:
    """One Raft server. See the module docstring; the driver contract is on `Ready`.

    Recovering mode (`recovering_to`). A node whose disk lost log entries it had made durable,
    and so may have acknowledged (detected by the driver, by CRC, as corruption rather than a
    torn unsynced tail), starts with `recovering_to` set to the last index it had made durable
    before the loss. Until its commit index reaches `recovering_to` it never grants a vote or a
    pre-vote (it answers with a refusal, counted in `recovering_vote_refused`) and never
    campaigns (election timeout, `campaign()`, TimeoutNow: counted in
    `recovering_campaign_skipped`). It still takes appends, heartbeats and snapshots from a
    leader and acknowledges them as usual. A leader that counted the lost entries as matched
    learns otherwise when the node rejects a probe at that match, and forgets the match
    (`Progress.maybe_decrement_to`), so it catches the node up like any other.

    Why this is safe: a committed entry it acknowledged may now live on less than a quorum, so
    a vote from it could elect a leader that lacks that entry; abstaining from a vote is always
    safe (it is what a crashed node does). Its acknowledgments stay truthful, because it only
    acknowledges entries it holds again after the loss. Once its commit index reaches
    `recovering_to`, its log is a prefix of a leader's log covering every index it ever
    acknowledged, so whatever of that was committed is back in its log: it may vote again.
    The cost is liveness: it needs a leader elected by the others, so with it a cluster of
    2f + 1 tolerates one fewer other failure until it has caught up.

    Nothing about the mode is persisted. If the node crashes again while recovering, its driver
    finds the same loss on disk (its superblock still names the last durable index) and
    passes `recovering_to` again.
    """

    def __init__(
        self,
        node_id: int,
        *,
        configuration: Configuration,
        hard_state: HardState,
        snapshot_meta: SnapshotMeta,
        entries: Sequence[LogEntry],
        prng: Prng,
        options: RaftOptions | None = None,
        snapshot_source: SnapshotSource | None = None,
        recovering_to: int | None = None,
    ) -> None:
        assert constants.raft_node_id_min <= node_id <= constants.raft_node_id_max, node_id
        assert recovering_to is None or 0 <= recovering_to <= constants.raft_index_max
        self.node_id = node_id
        self.options = options if options is not None else RaftOptions()
        self._prng = prng
        self._snapshot_source = snapshot_source
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.log = RaftLog(
            snapshot_meta,
            entries,
            hard_state.commit,
            check_term_order=not self.options.injected_bugs & _BUGS_BREAKING_TERM_ORDER,
        )
        self._configurations: list[tuple[int, Configuration]] = [
            (snapshot_meta.index, snapshot_meta.configuration)
        ]
        for entry in entries:
            if entry.kind is EntryKind.CONFIGURATION:
                self._configurations.append((entry.index, configuration_of(entry)))
        assert self.configuration == configuration, (self.configuration, configuration)
        self.counters: Counter[str] = Counter()
        self._saved_hard_state = hard_state
        self._outbox: list[Message] = []
        self._reads: list[ReadState] = []
        self._ready_outstanding: Ready | None = None
        self._ticks = 0
        self._recovering_to = recovering_to
        self._init_volatile_state()
        self._become_follower(self.term, None)
        self._maybe_leave_recovering()
        self.invariants()

    def _init_volatile_state(self) -> None:
        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = self.options.election_timeout_ticks_max
        self._votes: dict[int, bool] = {}
        self._progress: dict[int, Progress] = {}
        self._broadcast_pending = False
        self._commit_notices_deferred = False
        self._uncommitted_bytes = 0
        self._transferee: int | None = None
        self._transfer_elapsed = 0
        self._timeout_now_sent = False
        self._lease_revoked = False
        self._round = 0
        self._round_sent_ticks: dict[int, int] = {}
        self._round_unsent = False
        self._pending_reads: deque[_PendingRead] = deque()
        self._reads_awaiting_commit: list[_PendingRead] = []
        self._assembly: _SnapshotAssembly | None = None

    # -- Public facts. ------------------------------------------------------------------------

    @property
    def configuration(self) -> Configuration:
        """The configuration in effect: the last one in the log, committed or not."""
        return self._configurations[-1][1]

    def configuration_pending(self) -> bool:
        """Whether the configuration in effect is not committed yet."""
        return self._configurations[-1][0] > self.log.committed

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(role=self.role, leader_id=self.leader_id, term=self.term)

    def transferee(self) -> int | None:
        return self._transferee

    @property
    def recovering_to(self) -> int | None:
        """While recovering from lost entries, the last index the node had made durable before
        the loss; None otherwise. See the class docstring."""
        return self._recovering_to

    def messages_rejected_by_reason(self) -> dict[str, int]:
        """How many messages from peers were dropped, by reason (malformed, stale, unknown...)."""
        prefix = "rejected_"
        return {
            name.removeprefix(prefix): count
            for name, count in sorted(self.counters.items())
            if name.startswith(prefix)
        }

    def progress(self, node_id: int) -> Progress | None:
        """The leader's view of a peer (None on followers), for tests and metrics."""
        return self._progress.get(node_id)

    # -- Driver interface. --------------------------------------------------------------------

    def tick(self) -> None:
        """One unit of time has passed (`constants.raft_tick_ms` in a real driver)."""
        self._ticks += 1
        self._tick_role()
        self.invariants()

    def step(self, message: Message) -> None:
        """Take one message from a peer. Bad or stale messages are counted and dropped."""
        reason = message_rejection(message, self.node_id)
        if reason is not None:
            self._reject(reason)
        elif self._accept_term(message):
            if isinstance(message, VoteRequest):
                self._on_vote_request(message)
            else:
                self._step_role(message)
        self._maybe_leave_recovering()
        self.invariants()

    def has_ready(self) -> bool:
        """Whether `ready()` would return something to do (False while a Ready is outstanding)."""
        if self._ready_outstanding is not None:
            return False
        log = self.log
        saved = self._saved_hard_state  # Compared field by field: has_ready runs on every tick.
        return (
            (self.term, self.vote, log.committed) != (saved.term, saved.vote, saved.commit)
            or log.pending_snapshot is not None
            or log.stable_index < log.last_index()
            or max(log.applied, log.snapshot_index) < log.committed
            or bool(self._outbox or self._reads or self._broadcast_pending)
        )

    def ready(self) -> Ready:
        """Everything to persist, send and apply now, as one value. See `Ready` for the order."""
        assert self._ready_outstanding is None, "advance() the previous Ready first"
        applies_new_commits = self.log.committed > self.log.applied
        self._flush_broadcast(may_defer=applies_new_commits and not self._commit_notices_deferred)
        hard_state = persisted = self.hard_state()
        if InjectedBug.VOTE_NOT_PERSISTED in self.options.injected_bugs:
            # The vote stays in memory but never reaches the disk: a restart forgets it.
            persisted = attrs.evolve(hard_state, vote=None)
        saved = self._saved_hard_state
        appends_may_precede_persist = (
            self.role is Role.LEADER
            and (hard_state.term, hard_state.vote) == (saved.term, saved.vote)
            # Nothing committed is still only being written here (always so, unless a peer
            # acknowledged entries it was never sent): see `Ready`.
            and self.log.committed <= self.log.stable_index
        )
        ready = Ready(
            hard_state=None if hard_state == self._saved_hard_state else persisted,
            snapshot=self.log.pending_snapshot,
            entries=self.log.unstable_entries(),
            messages=tuple(self._outbox),
            committed=self.log.committed_entries_to_apply(constants.raft_ready_committed_bytes_max),
            reads=tuple(self._reads),
            soft_state=self.soft_state(),
            appends_may_precede_persist=appends_may_precede_persist,
        )
        self._saved_hard_state = hard_state
        self._outbox = []
        self._reads = []
        self._round_unsent = False
        self._ready_outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver persisted, sent and applied `ready`, in the order `Ready` states."""
        assert ready is self._ready_outstanding, "advance() takes the last Ready, once"
        self._ready_outstanding = None
        if ready.snapshot is not None:
            self.log.snapshot_persisted(ready.snapshot)
        self._mark_stable(ready.entries)
        if ready.committed:
            self.log.applied_to(max(self.log.applied, ready.committed[-1].index))
        self.invariants()

    def _mark_stable(self, entries: Sequence[LogEntry]) -> None:
        """The driver persisted `entries`. Those replaced since ready() are not stable: the next
        Ready persists the log again from the first of them."""
        bugs = self.options.injected_bugs
        if InjectedBug.SNAPSHOT_KEEPS_LOG in bugs and self.log.pending_snapshot is not None:
            # Entries kept after a snapshot that is still to be persisted must be written again
            # after it (persisting the snapshot replaces the whole log on disk).
            return
        if InjectedBug.NO_TRUNCATE_CONFLICT in bugs:
            # An overwrite keeps the old suffix, so a matching last entry no longer vouches for
            # the ones before it: only the prefix that still matches is stable.
            entries = list(
                itertools.takewhile(lambda e: self.log.matches(e.index, e.term), entries)
            )
        for entry in reversed(entries):
            if self.log.matches(entry.index, entry.term):
                self.log.stable_to(entry.index, entry.term)
                break

    def compact(self, index: int) -> SnapshotMeta:
        """The driver snapshotted the state machine at `index`: forget the log up to there.

        Returns the meta to store with the snapshot data (the term of `index`, and the
        configuration in effect there).
        """
        assert self.log.snapshot_index < index <= self.log.applied, index
        term = self.log.term_at(index)
        assert term is not None
        configurations = [pair for pair in self._configurations if pair[0] <= index]
        meta = SnapshotMeta(index=index, term=term, configuration=configurations[-1][1])
        self.log.compact(index, term)
        later = [pair for pair in self._configurations if pair[0] > index]
        self._configurations = [(index, meta.configuration), *later]
        self.invariants()
        return meta

    # -- Client interface. --------------------------------------------------------------------

    def propose(self, data: bytes) -> int:
        """Append `data` to the log as a leader; returns its index. Commitment is not promised."""
        self._check_can_propose()
        if len(data) > constants.entry_bytes_max:
            raise LimitError(f"an entry holds at most {constants.entry_bytes_max} bytes", "data")
        size = len(data) + constants.raft_entry_overhead_bytes
        if self._uncommitted_bytes > 0 and (
            self._uncommitted_bytes + size > constants.raft_uncommitted_bytes_max
        ):
            raise ProposalDroppedError("too many uncommitted bytes; retry later")
        entry = LogEntry(self.term, self.log.last_index() + 1, EntryKind.NORMAL, data)
        self._append_own(entry)
        self.invariants()
        return entry.index

    def propose_configuration_change(self, change: ConfigurationChange) -> int:
        """Append a single-server configuration change; returns its index.

        A leader takes one only after an entry of its own term is committed, and only while no
        other change is uncommitted (the fix to single-server changes from the Raft mailing list).
        """
        self._check_can_propose()
        if not self._committed_in_current_term():
            raise ProposalDroppedError("no entry of this leader's term is committed yet")
        if self.configuration_pending():
            raise ProposalDroppedError("another configuration change is not committed yet")
        configuration = self.configuration.changed(change)
        data = encode_configuration(configuration)
        entry = LogEntry(self.term, self.log.last_index() + 1, EntryKind.CONFIGURATION, data)
        self._append_own(entry)
        self.invariants()
        return entry.index

    def campaign(self) -> None:
        """Start an election now (with pre-vote when enabled), as if the election timer fired."""
        if self._recovering_to is not None:
            self.counters["recovering_campaign_skipped"] += 1
        elif self.role is Role.LEADER or not self._promotable():
            self.counters["campaign_ignored"] += 1
        else:
            self._start_campaign(pre_vote=self.options.pre_vote, transfer=False)
        self.invariants()

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to `target`: stop taking proposals, catch it up, send TimeoutNow.

        The transfer is abandoned after an election timeout (`election_timeout_ticks_min`).
        """
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if not self.configuration.is_voter(target):
            raise ValidationError(f"node {target} is not a voter", field="target")
        if target != self.node_id and target != self._transferee:
            self._transferee = target
            self._transfer_elapsed = 0
            self._timeout_now_sent = False
            if not self._maybe_send_timeout_now():
                self._send_appends(target, allow_empty=True)
        self.invariants()

    def read_index(self, request_id: int, lease: bool = False) -> None:
        """Ask for a linearizable read; `Ready.reads` later holds (request_id, index).

        The answer is safe once the state machine has applied `index`. A leader takes the read
        only after an entry of its term is committed (so its commit index is the cluster's),
        records that commit index, and releases the read once a quorum has answered a
        heartbeat round sent after the read arrived. A follower forwards the read to its
        leader and gets the index back; a read lost with a leader change is never answered,
        so callers time out and retry. With a single voter the answer is immediate.

        With `lease=True` a leader answers at once, without a heartbeat round, while its lease
        holds: a quorum acknowledged heartbeat round r, sent at leader tick s, and now - s <
        `election_timeout_ticks_min - lease_drift_ticks`. Each of those voters got round r
        after s and then, under check-quorum, refuses votes (and does not campaign) for
        `election_timeout_ticks_min` of its own ticks, so no other leader can exist yet.
        Clock-drift bound: this holds while no voter's ticks run faster than the leader's by
        more than a factor (min - 1) / (min - drift), one tick going to tick granularity; with
        the defaults (15, 3) that is 14/12, about 16%. It further assumes that check-quorum is
        on in every node, that the driver ticks by elapsed monotonic time (catching up after a
        pause before it asks for a lease read), and that no voter restarted within the window
        (a restarted node forgets it heard from a leader, as in etcd). The lease is off during
        and after a leadership transfer in this term (TimeoutNow overrides the voters' lease);
        without a valid lease the read falls back to ReadIndex.
        """
        assert 0 <= request_id <= constants.raft_index_max, request_id
        if self.role is Role.LEADER:
            if len(self._pending_reads) + len(self._reads_awaiting_commit) >= (
                constants.raft_pending_reads_max
            ):
                raise ProposalDroppedError("too many reads pending")
            self._leader_read(_PendingRead(self.node_id, request_id, lease))
        elif self.leader_id is not None:
            self._send(ReadIndexRequest(self.node_id, self.leader_id, self.term, request_id, lease))
        else:
            raise NotLeaderError(None)
        self.invariants()

    # -- Roles. -------------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            assert term > self.term, (term, self.term)
            self.term = term
            self.vote = None
            self._lease_revoked = False
            self._assembly = None
        self.leader_id = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = self._prng.randint(
            self.options.election_timeout_ticks_min, self.options.election_timeout_ticks_max
        )
        self._votes = {}
        self._progress = {}
        self._broadcast_pending = False
        self._commit_notices_deferred = False
        self._transferee = None
        self._drop_pending_reads()

    def _become_follower(self, term: int, leader_id: int | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self._step_role = self._step_follower
        self._tick_role = self._tick_election

    def _become_pre_candidate(self) -> None:
        # A pre-vote changes neither term nor vote: nothing durable happens until it wins.
        assert self.role is not Role.LEADER
        self.role = Role.PRE_CANDIDATE
        self.leader_id = None
        self._votes = {}
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_candidate(self) -> None:
        assert self.role is not Role.LEADER
        self._reset(self.term + 1)
        self.vote = self.node_id
        self.role = Role.CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE, self.role
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.node_id
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        self._round = 0
        self._round_sent_ticks = {}
        self._round_unsent = False  # Heartbeats of an earlier leadership confirm nothing now.
        self._uncommitted_bytes = 0
        self._sync_progress()
        # A no-op of the new term: committing it commits every earlier entry (Figure 8).
        self._append_own(LogEntry(self.term, self.log.last_index() + 1, EntryKind.NO_OP, b""))

    def _promotable(self) -> bool:
        return self.configuration.is_voter(self.node_id) and self.log.pending_snapshot is None

    # -- Ticks. -------------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_election_timeout and self._promotable():
            self._election_elapsed = 0
            if self._recovering_to is not None:
                self.counters["recovering_campaign_skipped"] += 1
                return
            self._start_campaign(pre_vote=self.options.pre_vote, transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.options.election_timeout_ticks_min:
                self.counters["transfers_abandoned"] += 1
                self._transferee = None
        if self._election_elapsed >= self.options.election_timeout_ticks_min:
            self._election_elapsed = 0
            if self.options.check_quorum and not self._quorum_recently_active():
                self.counters["check_quorum_step_downs"] += 1
                self._become_follower(self.term, None)
                return
        if self._heartbeat_elapsed >= self.options.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_recently_active(self) -> bool:
        """Whether a quorum was heard from since the last check; then forget who was heard."""
        voters = self.configuration.voters
        active = sum(
            1
            for voter in voters
            if voter == self.node_id
            or (voter in self._progress and self._progress[voter].recent_active)
        )
        for node_id, progress in self._progress.items():
            progress.recent_active = node_id == self.node_id
        return active >= self.configuration.quorum()

    # -- Terms and votes. ---------------------------------------------------------------------

    def _accept_term(self, message: Message) -> bool:
        """Handle the message's term; returns whether the message should be stepped further."""
        if message.term > self.term:
            return self._on_higher_term(message)
        if message.term < self.term:
            self._on_lower_term(message)
            return False
        return True

    def _in_leader_lease(self) -> bool:
        return (
            self.options.check_quorum
            and self.leader_id is not None
            and self._election_elapsed < self.options.election_timeout_ticks_min
        )

    def _on_higher_term(self, message: Message) -> bool:
        if isinstance(message, VoteRequest):
            if not message.transfer and self._in_leader_lease():
                # Heard from a leader within the minimum election timeout: do not let a
                # disruptive node (or a lease read's assumptions) be overturned.
                self.counters["votes_ignored_in_lease"] += 1
                return False
            if message.pre_vote:
                return True  # A pre-vote never changes our term.
        elif isinstance(message, VoteResponse) and message.pre_vote and message.granted:
            return True  # Granted pre-votes carry the term we would campaign at.
        from_leader = isinstance(message, _FROM_LEADER)
        self._become_follower(message.term, message.source if from_leader else None)
        return True

    def _on_lower_term(self, message: Message) -> None:
        self._reject("stale_term")
        if isinstance(message, AppendRequest | HeartbeatRequest | CommitNotice) and (
            self.options.check_quorum or self.options.pre_vote
        ):
            # A stale leader that cannot learn our term otherwise (we ignore its votes under
            # check-quorum): tell it, so it steps down.
            self._send(AppendResponse(self.node_id, message.source, self.term, 0, False, 0, 0))
        elif isinstance(message, VoteRequest) and message.pre_vote:
            self._send(VoteResponse(self.node_id, message.source, self.term, True, False))

    def _on_vote_request(self, message: VoteRequest) -> None:
        if self._recovering_to is not None:
            # Committed entries this node acknowledged may be gone: its vote could elect a
            # leader without them. Refusing (at our term, as any refusal) is always safe.
            self.counters["recovering_vote_refused"] += 1
            self._send(
                VoteResponse(self.node_id, message.source, self.term, message.pre_vote, False)
            )
            return
        can_vote = (
            self.vote == message.source
            or (self.vote is None and self.leader_id is None)
            or (message.pre_vote and message.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(message.last_index, message.last_term):
            # Answer at the request's term: a pre-vote's term is ahead of ours.
            self._send(
                VoteResponse(self.node_id, message.source, message.term, message.pre_vote, True)
            )
            if not message.pre_vote:
                self.vote = message.source
                self._election_elapsed = 0
        else:
            self._send(
                VoteResponse(self.node_id, message.source, self.term, message.pre_vote, False)
            )

    def _start_campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        assert self._promotable()
        assert not (pre_vote and transfer)
        if pre_vote:
            self._become_pre_candidate()
        else:
            self._become_candidate()
        self.counters["pre_campaigns" if pre_vote else "campaigns"] += 1
        term = self.term + 1 if pre_vote else self.term
        self._votes[self.node_id] = True
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for voter in self.configuration.voters:
            if voter != self.node_id:
                request = VoteRequest(
                    self.node_id, voter, term, pre_vote, last_index, last_term, transfer
                )
                self._send(request)
        self._count_votes()

    def _count_votes(self) -> None:
        voters = self.configuration.voters
        granted = sum(1 for voter in voters if self._votes.get(voter) is True)
        refused = sum(1 for voter in voters if self._votes.get(voter) is False)
        quorum = self.configuration.quorum()
        if granted >= quorum:
            if self.role is Role.PRE_CANDIDATE:
                self._start_campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
        elif refused > len(voters) - quorum:
            self._become_follower(self.term, None)

    # -- Follower. ----------------------------------------------------------------------------

    def _step_follower(self, message: Message) -> None:
        if isinstance(message, _FROM_LEADER):
            if self.leader_id not in (None, message.source):
                self._reject("second_leader")
                return
            self.leader_id = message.source
            self._election_elapsed = 0
            if isinstance(message, AppendRequest):
                self._on_append_request(message)
            elif isinstance(message, HeartbeatRequest):
                self._on_heartbeat_request(message)
            elif isinstance(message, CommitNotice):
                self._on_commit_notice(message)
            else:
                self._on_snapshot_chunk(message)
        elif isinstance(message, TimeoutNow):
            self._on_timeout_now()
        elif isinstance(message, ReadIndexResponse) and message.source == self.leader_id:
            self._reads.append(ReadState(message.request_id, message.index))
        else:
            self._ignore("unexpected_for_follower")

    def _respond_append(self, leader: int, index: int) -> None:
        self._send(AppendResponse(self.node_id, leader, self.term, index, False, 0, 0))

    def _on_append_request(self, message: AppendRequest) -> None:
        log = self.log
        if message.previous_index < log.committed:
            self._respond_append(message.source, log.committed)
            return
        if not log.matches(message.previous_index, message.previous_term):
            probe = min(message.previous_index, log.last_index())
            hint_index, hint_term = log.find_conflict_by_term(probe, message.previous_term)
            response = AppendResponse(
                self.node_id,
                message.source,
                self.term,
                message.previous_index,
                True,
                hint_index,
                hint_term,
            )
            self._send(response)
            return
        conflict = log.find_conflict(message.entries)
        if conflict:
            self._replace_log_suffix(message.entries[conflict - message.previous_index - 1 :])
        last_new = message.previous_index + len(message.entries)
        log.commit_to(min(message.commit, last_new))
        self._respond_append(message.source, last_new)

    def _replace_log_suffix(self, entries: Sequence[LogEntry]) -> None:
        """Truncate from entries[0] on (uncommitted only) and append; configurations follow."""
        first = entries[0].index
        assert first > self.log.committed, (first, self.log.committed)
        if InjectedBug.NO_TRUNCATE_CONFLICT in self.options.injected_bugs:
            # Overwrite the conflicting entries, but leave the old suffix beyond them in place.
            self.counters["log_truncations"] += int(first <= self.log.last_index())
            self.log.overwrite(entries)
            kept = [pair for pair in self._configurations if pair[0] < first]
            self._configurations = kept + _configurations_in(self.log.entries_after(first - 1))
            return
        if first <= self.log.last_index():
            self.counters["log_truncations"] += 1
            while self._configurations[-1][0] >= first:
                self._configurations.pop()
        self.log.truncate_and_append(entries)
        for entry in entries:
            if entry.kind is EntryKind.CONFIGURATION:
                self._configuration_appended(entry)

    def _on_heartbeat_request(self, message: HeartbeatRequest) -> None:
        self._on_commit_notice(message)
        self._send(HeartbeatResponse(self.node_id, message.source, self.term, message.round))

    def _on_commit_notice(self, message: HeartbeatRequest | CommitNotice) -> None:
        # The leader sends min(commit, our match), so this never commits a divergent entry.
        self.log.commit_to(min(message.commit, self.log.last_index()))

    def _on_timeout_now(self) -> None:
        if self._recovering_to is not None:
            self.counters["recovering_campaign_skipped"] += 1
        elif self._promotable():
            self.counters["transfers_received"] += 1
            self._start_campaign(pre_vote=False, transfer=True)
        else:
            self._reject("timeout_now_not_promotable")

    def _on_snapshot_chunk(self, message: SnapshotChunk) -> None:
        meta = message.meta
        if meta.index <= self.log.committed:
            self._assembly = None
            self._respond_append(message.source, self.log.committed)
            return
        assembly = self._assembly
        if assembly is None or assembly.meta != meta or assembly.total_bytes != message.total_bytes:
            assembly = self._assembly = _SnapshotAssembly(meta, message.total_bytes)
        if message.offset == len(assembly.buffer):
            assembly.buffer += message.data
        if len(assembly.buffer) < assembly.total_bytes:
            response = SnapshotChunkResponse(
                self.node_id, message.source, self.term, meta.index, meta.term, len(assembly.buffer)
            )
            self._send(response)
            return
        self._assembly = None
        self._install_snapshot(Snapshot(meta, bytes(assembly.buffer)), message.source)

    def _install_snapshot(self, snapshot: Snapshot, leader: int) -> None:
        meta = snapshot.meta
        if meta.index <= self.log.committed:
            # The log caught up while the chunks arrived: the snapshot brings nothing new.
            self._respond_append(leader, self.log.committed)
        elif self.log.matches(meta.index, meta.term):
            # The snapshot's last entry is in our log: keep the entries after it (Figure 13).
            self.log.commit_to(meta.index)
            self._respond_append(leader, meta.index)
        else:
            self.counters["snapshots_installed"] += 1
            kept: list[LogEntry] = []
            if InjectedBug.SNAPSHOT_KEEPS_LOG in self.options.injected_bugs:
                # Keep our entries after the snapshot, conflicting or not. They follow the
                # snapshot in the next Ready, so the disk holds the same log as memory.
                kept = self.log.entries_after(min(meta.index, self.log.last_index()))
            self.log.restore(snapshot)
            self.log.append(kept)
            self._configurations = [(meta.index, meta.configuration), *_configurations_in(kept)]
            self._respond_append(leader, meta.index)

    # -- Candidates. --------------------------------------------------------------------------

    def _step_candidate(self, message: Message) -> None:
        if isinstance(message, _FROM_LEADER):
            # A leader of our term exists (our election, if any, is lost).
            self._become_follower(self.term, message.source)
            self._step_follower(message)
        elif isinstance(message, VoteResponse):
            self._on_vote_response(message)
        else:
            self._ignore("unexpected_for_candidate")

    def _on_vote_response(self, message: VoteResponse) -> None:
        pre_vote = self.role is Role.PRE_CANDIDATE
        expected_term = self.term + 1 if pre_vote and message.granted else self.term
        if message.pre_vote != pre_vote or message.term != expected_term:
            self._ignore("stale_vote")
            return
        if not self.configuration.is_voter(message.source):
            self._reject("unknown_sender")
            return
        self._votes.setdefault(message.source, message.granted)
        self._count_votes()

    # -- Leader. ------------------------------------------------------------------------------

    def _step_leader(self, message: Message) -> None:
        if isinstance(message, _FROM_LEADER):
            self._reject("second_leader")
            return
        if isinstance(message, VoteResponse | TimeoutNow | ReadIndexResponse):
            self._ignore("unexpected_for_leader")
            return
        progress = self._progress.get(message.source)
        if progress is None:
            self._reject("unknown_sender")
            return
        if isinstance(message, AppendResponse):
            self._on_append_response(message, progress)
        elif isinstance(message, HeartbeatResponse):
            self._on_heartbeat_response(message, progress)
        elif isinstance(message, SnapshotChunkResponse):
            self._on_snapshot_chunk_response(message, progress)
        else:
            assert isinstance(message, ReadIndexRequest), message
            self._on_read_index_request(message)

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self._transferee is not None:
            raise ProposalDroppedError(f"leadership is moving to node {self._transferee}")
        if not self.configuration.is_member(self.node_id):
            raise ProposalDroppedError("this leader was removed from the configuration")

    def _committed_in_current_term(self) -> bool:
        return self.log.term_at(self.log.committed) == self.term

    def _append_own(self, entry: LogEntry) -> None:
        assert self.role is Role.LEADER
        self.log.append([entry])
        if entry.term == self.term:
            self._uncommitted_bytes += entry.size_bytes()
        if entry.kind is EntryKind.CONFIGURATION:
            self._configuration_appended(entry)
        own = self._progress.get(self.node_id)
        if own is not None:
            own.maybe_update(entry.index)
        self._broadcast_pending = True
        self._maybe_commit()

    def _configuration_appended(self, entry: LogEntry) -> None:
        """A configuration takes effect as soon as it is in the log."""
        self._configurations.append((entry.index, configuration_of(entry)))
        if self.role is Role.LEADER:
            self._sync_progress()

    def _sync_progress(self) -> None:
        """Make the leader's progress table match the configuration.

        A removed node keeps its progress, as a non-voter, until its removal commits: it must
        receive the entry that removes it, or it would go on campaigning.
        """
        configuration = self.configuration
        for node_id in configuration.members():
            progress = self._progress.get(node_id)
            if progress is None:
                progress = self._new_progress(node_id)
                self._progress[node_id] = progress
            progress.is_learner = not configuration.is_voter(node_id)
        for node_id, progress in self._progress.items():
            progress.is_learner = progress.is_learner or not configuration.is_member(node_id)
        if self._transferee is not None and not configuration.is_voter(self._transferee):
            self._transferee = None

    def _forget_removed_nodes(self) -> None:
        if self._configurations[-1][0] <= self.log.committed:
            for node_id in [n for n in self._progress if not self.configuration.is_member(n)]:
                del self._progress[node_id]

    def _new_progress(self, node_id: int) -> Progress:
        last = self.log.last_index()
        inflights = Inflights(self.options.inflight_messages_max, self.options.inflight_bytes_max)
        if node_id == self.node_id:
            progress = Progress(last + 1, is_learner=False, inflights=inflights)
            progress.maybe_update(last)
            progress.become_replicate()
            progress.recent_active = True
            return progress
        # Probe just past the last entry: a peer that is caught up answers in one round trip.
        return Progress(last + 1, is_learner=False, inflights=inflights)

    def _maybe_commit(self) -> None:
        voters = self.configuration.voters
        matches = sorted((self._progress[voter].match for voter in voters), reverse=True)
        candidate = matches[self.configuration.quorum() - 1]
        # Only an entry of the current term is committed by counting replicas (Figure 8).
        countable = self.log.term_at(candidate) == self.term
        if InjectedBug.COMMIT_EARLIER_TERM in self.options.injected_bugs:
            countable = True  # Any term will do: Figure 8's overwritten "committed" entry.
        if candidate > self.log.committed and countable:
            previous = self.log.committed
            self.log.commit_to(candidate)
            self._on_commit_advanced(previous)

    def _on_commit_advanced(self, previous: int) -> None:
        for index in range(previous + 1, self.log.committed + 1):
            entry = self.log.entry(index)
            if entry.term == self.term:
                self._uncommitted_bytes -= entry.size_bytes()
        assert self._uncommitted_bytes >= 0, self._uncommitted_bytes
        self._broadcast_pending = True
        if self._reads_awaiting_commit and self._committed_in_current_term():
            awaiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for read in awaiting:
                self._serve_read(read)
        self._forget_removed_nodes()
        removed = not self.configuration.is_voter(self.node_id)
        if removed and self._configurations[-1][0] <= self.log.committed:
            self._step_down_removed()

    def _step_down_removed(self) -> None:
        """This leader's removal is committed: hand over to the most caught-up voter, step down."""
        self._flush_broadcast(may_defer=False)
        caught_up = [
            voter
            for voter in self.configuration.voters
            if self._progress[voter].match == self.log.last_index()
        ]
        if caught_up:
            self._send(TimeoutNow(self.node_id, caught_up[0], self.term))
        self.counters["removed_leader_step_downs"] += 1
        self._become_follower(self.term, None)

    def _flush_broadcast(self, *, may_defer: bool) -> None:
        """Tell each peer of new entries and of the commit index, in one message if it can.

        A commit index with no entries to carry it waits for the next Ready when this one applies
        newly committed entries: the writers answered by that apply often propose again at once,
        and the appends of their entries carry the commit index, which saves each follower a
        message (and, on a real network, a wakeup) per write. The next Ready sends what is
        still owed, so a notice waits at most one Ready."""
        if self._broadcast_pending and self.role is Role.LEADER:
            deferred = False
            for node_id, progress in self._progress.items():
                if node_id == self.node_id:
                    continue
                if progress.state is not ProgressState.REPLICATE:
                    self._send_appends(node_id, allow_empty=True)  # A probe needs its answer.
                elif self._send_appends(node_id, allow_empty=False):
                    continue
                elif may_defer and self._commit_for(progress) > progress.commit_sent:
                    deferred = True
                else:
                    self._notify_commit(node_id, progress)
            self._commit_notices_deferred = self._broadcast_pending = deferred
        else:
            self._commit_notices_deferred = self._broadcast_pending = False

    def _commit_for(self, progress: Progress) -> int:
        """The commit index a peer may learn: no further than it is known to match."""
        return min(progress.match, self.log.committed)

    def _notify_commit(self, node_id: int, progress: Progress) -> None:
        """Send the commit index to a replicating peer that had no entries to be sent, in a
        CommitNotice (never answered), unless an append or heartbeat already carried it."""
        commit = self._commit_for(progress)
        if commit > progress.commit_sent:
            self._send(CommitNotice(self.node_id, node_id, self.term, commit))
            progress.commit_sent = commit

    def _send_appends(self, node_id: int, *, allow_empty: bool) -> bool:
        """Send what the peer's state allows: one probe, or a pipeline of batches. Whether any
        entries went out."""
        for count in range(self.options.inflight_messages_max + 1):
            if not self._send_append(node_id, allow_empty=allow_empty and count == 0):
                return count > 0
        return True

    def _send_append(self, node_id: int, *, allow_empty: bool) -> bool:
        progress = self._progress[node_id]
        if progress.is_paused():
            return False
        previous_index = progress.next - 1
        previous_term = self.log.term_at(previous_index)
        if previous_term is None:
            self._start_snapshot(node_id, progress)
            return False
        last = self.log.last_index()
        entries: list[LogEntry] = []
        if progress.next <= last:
            entries = self.log.slice(
                progress.next,
                last + 1,
                self.options.append_bytes_max,
                constants.raft_append_entries_max,
            )
        if not entries and not allow_empty:
            return False
        commit = self.log.committed
        request = AppendRequest(
            self.node_id, node_id, self.term, previous_index, previous_term, tuple(entries), commit
        )
        self._send(request)
        # What the peer may commit from it: entries past what it holds are not yet known to match.
        reach = min(commit, previous_index + len(entries))
        progress.commit_sent = max(progress.commit_sent, reach)
        size = sum(entry.size_bytes() for entry in entries)
        progress.sent_entries(previous_index + len(entries), size, len(entries))
        return bool(entries)

    def _on_append_response(self, message: AppendResponse, progress: Progress) -> None:
        if message.index > self.log.last_index():
            self._reject("index_out_of_range")
            return
        progress.recent_active = True
        if message.rejected:
            self._on_append_rejected(message, progress)
            return
        updated = progress.maybe_update(message.index)
        if progress.state is ProgressState.SNAPSHOT:
            self._maybe_end_snapshot(progress)
        elif updated and progress.state is ProgressState.PROBE:
            progress.become_replicate()
        if updated:
            self._maybe_commit()
            if self.role is not Role.LEADER:
                return
            if message.source == self._transferee:
                self._maybe_send_timeout_now()
        self._send_appends(message.source, allow_empty=False)

    def _maybe_end_snapshot(self, progress: Progress) -> None:
        """Leave the snapshot state once the log can take over, or the snapshot is in.

        A follower that installed a snapshot the leader has since compacted past needs a newer
        one: probing finds that out.
        """
        can_replicate = progress.match + 1 >= self.log.first_index()
        if can_replicate or progress.match >= progress.pending_snapshot_index:
            progress.become_probe()
            if can_replicate:
                progress.become_replicate()

    def _on_append_rejected(self, message: AppendResponse, progress: Progress) -> None:
        next_probe = message.hint_index
        if message.hint_term > 0:
            # Skip every entry of the leader whose term the follower cannot have at that index.
            probe = min(message.hint_index, self.log.last_index())
            next_probe, _ = self.log.find_conflict_by_term(probe, message.hint_term)
        if progress.maybe_decrement_to(message.index, next_probe):
            self.counters["append_rejections"] += 1
            if progress.state is ProgressState.REPLICATE:
                progress.become_probe()
            self._send_appends(message.source, allow_empty=True)

    def _on_heartbeat_response(self, message: HeartbeatResponse, progress: Progress) -> None:
        if message.round > self._round:
            self._reject("round_out_of_range")
            return
        progress.recent_active = True
        progress.acked_round = max(progress.acked_round, message.round)
        progress.probe_sent = False
        transfer = progress.snapshot_transfer
        if transfer is not None:
            transfer.heartbeats_waiting += 1
            if transfer.heartbeats_waiting >= constants.raft_snapshot_retry_heartbeats:
                self._send_snapshot_chunk(message.source, transfer)
        elif progress.state is ProgressState.REPLICATE and progress.inflights.full():
            self._probe_pipeline_end(message.source, progress)
        elif progress.match < self.log.last_index():
            self._send_appends(message.source, allow_empty=True)
        self._release_confirmed_reads()

    def _probe_pipeline_end(self, node_id: int, progress: Progress) -> None:
        """A full window may be full of lost messages: ask, past the window, where the peer is.

        An acknowledgment frees the window; a rejection sends the peer back to probing.
        """
        previous_index = progress.next - 1
        previous_term = self.log.term_at(previous_index)
        if previous_term is None:
            progress.become_probe()
            self._send_appends(node_id, allow_empty=True)
            return
        commit = self.log.committed
        request = AppendRequest(
            self.node_id, node_id, self.term, previous_index, previous_term, (), commit
        )
        self._send(request)

    def _broadcast_heartbeat(self) -> int:
        """Start heartbeat round `_round + 1`; returns its number."""
        self._round += 1
        self._round_sent_ticks[self._round] = self._ticks
        self._round_unsent = True
        # Rounds older than an election timeout can grant no lease: forget them.
        horizon = self._ticks - self.options.election_timeout_ticks_min
        for old_round in [r for r, sent in self._round_sent_ticks.items() if sent < horizon]:
            del self._round_sent_ticks[old_round]
        for node_id, progress in self._progress.items():
            if node_id != self.node_id:
                commit = self._commit_for(progress)
                self._send(HeartbeatRequest(self.node_id, node_id, self.term, commit, self._round))
                progress.commit_sent = max(progress.commit_sent, commit)
        return self._round

    # -- Snapshots (leader side). -------------------------------------------------------------

    def _start_snapshot(self, node_id: int, progress: Progress) -> None:
        latest = self._snapshot_source.latest_snapshot() if self._snapshot_source else None
        if latest is None or latest[0].index < self.log.snapshot_index:
            self.counters["snapshot_unavailable"] += 1
            progress.become_probe()
            progress.probe_sent = True  # Retry at the next heartbeat response.
            return
        meta, data = latest
        assert meta.index <= self.log.committed, (meta.index, self.log.committed)
        assert self.log.term_at(meta.index) in (meta.term, None), meta
        self.counters["snapshots_sent"] += 1
        transfer = SnapshotTransfer(meta, data)
        progress.become_snapshot(transfer)
        self._send_snapshot_chunk(node_id, transfer)

    def _send_snapshot_chunk(self, node_id: int, transfer: SnapshotTransfer) -> None:
        end = transfer.offset + self.options.snapshot_chunk_bytes
        chunk = transfer.data[transfer.offset : end]
        message = SnapshotChunk(
            self.node_id,
            node_id,
            self.term,
            transfer.meta,
            len(transfer.data),
            transfer.offset,
            chunk,
        )
        self._send(message)
        transfer.awaiting = True
        transfer.heartbeats_waiting = 0

    def _on_snapshot_chunk_response(
        self, message: SnapshotChunkResponse, progress: Progress
    ) -> None:
        progress.recent_active = True
        transfer = progress.snapshot_transfer
        if transfer is None or (message.snapshot_index, message.snapshot_term) != (
            transfer.meta.index,
            transfer.meta.term,
        ):
            self._ignore("stale_snapshot_response")
            return
        if message.next_offset > len(transfer.data):
            self._reject("offset_out_of_range")
            return
        if transfer.awaiting and message.next_offset == transfer.offset:
            return  # An answer to a duplicate; a lost chunk is resent after heartbeats.
        transfer.offset = message.next_offset
        transfer.awaiting = False
        if transfer.offset < len(transfer.data):
            self._send_snapshot_chunk(message.source, transfer)

    # -- Leadership transfer. -----------------------------------------------------------------

    def _maybe_send_timeout_now(self) -> bool:
        target = self._transferee
        if target is None or self._timeout_now_sent:
            return False
        if self._progress[target].match != self.log.last_index():
            return False
        self._send(TimeoutNow(self.node_id, target, self.term))
        self._timeout_now_sent = True
        # The target will win votes that ignore our lease: lease reads are over for this term.
        self._lease_revoked = True
        return True

    # -- Reads. -------------------------------------------------------------------------------

    def _on_read_index_request(self, message: ReadIndexRequest) -> None:
        if len(self._pending_reads) + len(self._reads_awaiting_commit) >= (
            constants.raft_pending_reads_max
        ):
            self._reject("too_many_reads")
            return
        self._leader_read(_PendingRead(message.source, message.request_id, message.lease))

    def _leader_read(self, read: _PendingRead) -> None:
        if not self._committed_in_current_term():
            # Our commit index may be behind the last leader's until our no-op commits.
            self._reads_awaiting_commit.append(read)
        else:
            self._serve_read(read)

    def _serve_read(self, read: _PendingRead) -> None:
        read = attrs.evolve(read, index=self.log.committed)
        if InjectedBug.STALE_LEADER_READS in self.options.injected_bugs:
            # No heartbeat round: a leader deposed without knowing it answers from old state.
            self._release_read(read)
            return
        if self.configuration.voters == (self.node_id,) or (read.lease and self._lease_valid()):
            self._release_read(read)
            return
        # Heartbeats still waiting in the outbox are sent after this read arrived: share them.
        round_number = self._round if self._round_unsent else self._broadcast_heartbeat()
        self._pending_reads.append(attrs.evolve(read, round=round_number))

    def _quorum_acked_round(self) -> int:
        rounds = sorted(
            (
                self._round if voter == self.node_id else self._progress[voter].acked_round
                for voter in self.configuration.voters
            ),
            reverse=True,
        )
        return rounds[self.configuration.quorum() - 1]

    def _lease_valid(self) -> bool:
        if not self.options.check_quorum or self._lease_revoked or self._transferee is not None:
            return False
        sent = self._round_sent_ticks.get(self._quorum_acked_round())
        lease_ticks = self.options.election_timeout_ticks_min - self.options.lease_drift_ticks
        return sent is not None and self._ticks - sent < lease_ticks

    def _release_confirmed_reads(self) -> None:
        acked = self._quorum_acked_round()
        while self._pending_reads and self._pending_reads[0].round <= acked:
            self._release_read(self._pending_reads.popleft())
        for old_round in [number for number in self._round_sent_ticks if number < acked]:
            del self._round_sent_ticks[old_round]

    def _release_read(self, read: _PendingRead) -> None:
        self.counters["reads_released"] += 1
        if read.requester == self.node_id:
            self._reads.append(ReadState(read.request_id, read.index))
        else:
            response = ReadIndexResponse(
                self.node_id, read.requester, self.term, read.request_id, read.index
            )
            self._send(response)

    def _drop_pending_reads(self) -> None:
        dropped = len(self._pending_reads) + len(self._reads_awaiting_commit)
        if dropped:
            self.counters["reads_dropped"] += dropped
        self._pending_reads = deque()
        self._reads_awaiting_commit = []

    # -- Recovering mode. ---------------------------------------------------------------------

    def _maybe_leave_recovering(self) -> None:
        """Leave recovering mode once the commit index covers every index it had made durable."""
        if self._recovering_to is not None and self.log.committed >= self._recovering_to:
            self.counters["recovering_left"] += 1
            self._recovering_to = None

    # -- Output and checks. -------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        assert message.source == self.node_id and message.target != self.node_id, message
        self._outbox.append(message)

    def _reject(self, reason: str) -> None:
        """Count a message dropped because it is malformed, out of range or stale."""
        self.counters[f"rejected_{reason}"] += 1

    def _ignore(self, reason: str) -> None:
        """Count a well-formed message that has nothing to do in this role (late, duplicate)."""
        self.counters[f"ignored_{reason}"] += 1

    def invariants(self) -> None:
        """Facts that hold between any two calls. A failure is a bug in this module."""
        self.log.invariants()
        assert self.log.last_term() <= self.term, (self.log.last_term(), self.term)
        assert self._configurations[0][0] == self.log.snapshot_index
        assert self._configurations[-1][0] <= self.log.last_index()
        assert self._saved_hard_state.term <= self.term
        if self.role is Role.LEADER:
            self._leader_invariants()
        else:
            assert not self._progress and self._transferee is None
            assert not self._pending_reads and not self._reads_awaiting_commit
        if self.role is Role.CANDIDATE:
            assert self.vote == self.node_id and self.leader_id is None
        if self.role is Role.PRE_CANDIDATE:
            assert self.leader_id is None
        if self._recovering_to is not None:
            assert self.role is Role.FOLLOWER, self.role
            assert self.log.committed < self._recovering_to, (self.log.committed,)

    def _leader_invariants(self) -> None:
        assert self.leader_id == self.node_id and self.vote == self.node_id
        members = set(self.configuration.members())
        assert members <= set(self._progress)
        if self._configurations[-1][0] <= self.log.committed:
            assert set(self._progress) == members
        for progress in self._progress.values():
            progress.invariants()
            assert progress.match <= self.log.last_index()
        own = self._progress.get(self.node_id)
        assert own is None or own.match == self.log.last_index()
        assert self._uncommitted_bytes >= 0
        assert len(self._pending_reads) <= constants.raft_pending_reads_max
        assert self._transferee is None or self.configuration.is_voter(self._transferee)
