"""Raft's values: log entries, hard state, configurations, snapshots, messages, Ready, options,
typed errors, and the CBOR codec of the values that travel or rest.

Everything here is a frozen, slotted attrs class or an enum: plain values with no behaviour beyond
small pure helpers. Nothing here holds node state, reads a clock or does I/O; the state machine of a
node lives in `memora.core.raft.node`.

The codec tags each class with a number of its own (40100 and up, apart from the model's tags in
`memora.core.codec`) around the list of its field values in declaration order. Decoding checks the
shape of every field (type, range, enum member) and raises `CodecError` on anything else, so bytes
from a peer either become a well-formed value or a counted rejection, never an AssertionError.
Tag numbers are part of the wire and disk format: never renumber one, only add.
"""

from __future__ import annotations

import enum
import types as python_types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias

import attrs
import cbor2

from memora.core import constants
from memora.core.errors import CodecError, MemoraError, ValidationError
from memora.core.fields import fields_getter

# ---------------------------------------------------------------------------------------------
# Typed errors for callers (clients of the driver), never for programmer mistakes.


class NotLeaderError(MemoraError):
    """This node is not the leader. `leader_hint` is the leader it knows of, or None."""

    code = "not_leader"

    def __init__(self, leader_hint: int | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})", field=None)
        self.leader_hint = leader_hint


class ProposalDroppedError(MemoraError):
    """The leader cannot take this proposal now (transfer under way, too much uncommitted, ...)."""

    code = "proposal_dropped"


class ConfigurationChangeError(ValidationError):
    """A configuration change that makes no sense for the current configuration."""

    code = "invalid_configuration_change"


# ---------------------------------------------------------------------------------------------
# Log entries, hard state, configurations and snapshots.


class EntryKind(enum.IntEnum):
    NORMAL = 1  # Data for the state machine.
    NO_OP = 2  # Appended by every new leader, to commit entries of earlier terms (Figure 8).
    CONFIGURATION = 3  # Data is an encoded `Configuration`: the whole new membership.


@attrs.frozen
class LogEntry:
    term: int
    index: int
    kind: EntryKind
    data: bytes

    def size_bytes(self) -> int:
        """The size counted for batching and flow control."""
        return len(self.data) + constants.raft_entry_overhead_bytes


@attrs.frozen
class HardState:
    """What a node must persist before it sends any message that depends on it."""

    term: int
    vote: int | None
    commit: int


class ConfigurationChangeKind(enum.IntEnum):
    ADD_VOTER = 1
    ADD_LEARNER = 2
    PROMOTE_LEARNER = 3
    REMOVE_NODE = 4


@attrs.frozen
class ConfigurationChange:
    kind: ConfigurationChangeKind
    node_id: int


def _sorted_ids(ids: Any) -> tuple[int, ...]:
    return tuple(sorted(ids))


@attrs.frozen
class Configuration:
    """Voters (who elect and form quorums) and learners (who only receive the log).

    Both are sorted tuples, and disjoint. A configuration takes effect on a node as soon as its
    entry is in the node's log, committed or not (the single-server scheme of the Raft thesis).
    """

    voters: tuple[int, ...] = attrs.field(default=(), converter=_sorted_ids)
    learners: tuple[int, ...] = attrs.field(default=(), converter=_sorted_ids)

    def members(self) -> tuple[int, ...]:
        return tuple(sorted(self.voters + self.learners))

    def is_voter(self, node_id: int) -> bool:
        return node_id in self.voters

    def is_member(self, node_id: int) -> bool:
        return node_id in self.voters or node_id in self.learners

    def quorum(self) -> int:
        """The smallest majority of the voters."""
        return len(self.voters) // 2 + 1

    def changed(self, change: ConfigurationChange) -> Configuration:
        """The configuration after one single-server change, or ConfigurationChangeError."""
        node_id, kind = change.node_id, change.kind
        if kind is ConfigurationChangeKind.ADD_VOTER and not self.is_member(node_id):
            return Configuration((*self.voters, node_id), self.learners)
        if kind is ConfigurationChangeKind.ADD_LEARNER and not self.is_member(node_id):
            return Configuration(self.voters, (*self.learners, node_id))
        if kind is ConfigurationChangeKind.PROMOTE_LEARNER and node_id in self.learners:
            learners = tuple(learner for learner in self.learners if learner != node_id)
            return Configuration((*self.voters, node_id), learners)
        if kind is ConfigurationChangeKind.REMOVE_NODE and self.is_member(node_id):
            if self.voters == (node_id,):
                raise ConfigurationChangeError("cannot remove the last voter", field="node_id")
            voters = tuple(voter for voter in self.voters if voter != node_id)
            learners = tuple(learner for learner in self.learners if learner != node_id)
            return Configuration(voters, learners)
        raise ConfigurationChangeError(
            f"{kind.name.lower()} of node {node_id} does not fit {self}", field="node_id"
        )


@attrs.frozen
class SnapshotMeta:
    """The last entry a snapshot covers, and the configuration in effect at that entry.

    A node that never compacted its log has `SnapshotMeta(0, 0, base configuration)`.
    """

    index: int
    term: int
    configuration: Configuration


@attrs.frozen
class Snapshot:
    meta: SnapshotMeta
    data: bytes


# ---------------------------------------------------------------------------------------------
# Messages. Every message names its source, its target and the sender's term.


@attrs.frozen
class VoteRequest:
    """RequestVote. With `pre_vote` it asks whether a vote would be granted, changing no term."""

    source: int
    target: int
    term: int
    pre_vote: bool
    last_index: int
    last_term: int
    transfer: bool  # Sent on a leader's TimeoutNow: voters ignore their leader lease.


@attrs.frozen
class VoteResponse:
    source: int
    target: int
    term: int
    pre_vote: bool
    granted: bool


@attrs.frozen
class AppendRequest:
    source: int
    target: int
    term: int
    previous_index: int
    previous_term: int
    entries: tuple[LogEntry, ...]
    commit: int


@attrs.frozen
class AppendResponse:
    """Success: the follower's log matches the leader's up to `index`.

    Rejection: the entry at `index` (the request's previous index) did not match. The hint is the
    last entry of the follower at or below that index whose term is at most the request's previous
    term (the Raft thesis' fast back-off), so the leader can skip a whole term per round trip.
    """

    source: int
    target: int
    term: int
    index: int
    rejected: bool
    hint_index: int
    hint_term: int


@attrs.frozen
class HeartbeatRequest:
    """Keeps followers from campaigning; `round` numbers the leader's heartbeats for ReadIndex."""

    source: int
    target: int
    term: int
    commit: int
    round: int


@attrs.frozen
class CommitNotice:
    """The leader's commit index, up to what the follower is known to hold; never answered.

    Sent when the commit index moves and a follower has no entries waiting to be sent (those
    would carry it). Unlike an empty append or a heartbeat it asks nothing of the follower, so
    a replicated write costs each follower one message received and one sent, not two and two.
    """

    source: int
    target: int
    term: int
    commit: int


@attrs.frozen
class HeartbeatResponse:
    source: int
    target: int
    term: int
    round: int


@attrs.frozen
class SnapshotChunk:
    """One piece of InstallSnapshot: bytes [offset, offset + len(data)) of `total_bytes`."""

    source: int
    target: int
    term: int
    meta: SnapshotMeta
    total_bytes: int
    offset: int
    data: bytes


@attrs.frozen
class SnapshotChunkResponse:
    """The follower holds the first `next_offset` bytes of the snapshot named by index and term."""

    source: int
    target: int
    term: int
    snapshot_index: int
    snapshot_term: int
    next_offset: int


@attrs.frozen
class TimeoutNow:
    """Leadership transfer: campaign now, without pre-vote."""

    source: int
    target: int
    term: int


@attrs.frozen
class ReadIndexRequest:
    """A follower asks the leader for a linearizable read index on behalf of its client."""

    source: int
    target: int
    term: int
    request_id: int
    lease: bool


@attrs.frozen
class ReadIndexResponse:
    source: int
    target: int
    term: int
    request_id: int
    index: int


Message: TypeAlias = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | HeartbeatRequest
    | HeartbeatResponse
    | CommitNotice
    | SnapshotChunk
    | SnapshotChunkResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)
MESSAGE_CLASSES: Final[tuple[type, ...]] = typing.get_args(Message)


# ---------------------------------------------------------------------------------------------
# What a node hands its driver.


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@attrs.frozen
class SoftState:
    """Volatile facts, for the driver's information: never persisted."""

    role: Role
    leader_id: int | None
    term: int


@attrs.frozen
class ReadState:
    """A read that became safe: answer it once the state machine has applied `index`."""

    request_id: int
    index: int


@attrs.frozen
class Ready:
    """Everything a node asks of its driver, as one value. The driver must, in this order:

    1. persist `snapshot` (if any), then `hard_state` (if not None) and `entries`, in one durable
       step (fsync) through `Storage.save`: entries may start at or below the last persisted index,
       in which case the conflicting suffix is truncated first;
    2. send `messages` (only now: a vote or an acknowledgment must never outrun the disk);
    3. restore the state machine from `snapshot` (if any), then apply `committed`, in order;
       answer each of `reads` once the state machine has applied its index;
    4. call `advance(ready)` with this very value.

    `ready()` may not be called again until then. `soft_state` is informational. Steps 2 and
    3 may also be taken the other way round: no message depends on the state machine, and
    after step 1 every entry in `committed` is durable here as well as on a quorum.

    One exception to the order, which a driver may take: `messages_before_persist()` (a leader's
    append requests, when its term and vote are already durable) may be sent before or during
    step 1, so that the leader writes its log in parallel with its followers (Raft thesis
    10.2.1); `messages_after_persist()` are the rest, for step 2. This is safe because an append
    request claims nothing about the leader's own disk, and because the commit index of a leader
    with peers only covers entries it sent in earlier Readies, all durable on it before this one
    was made (`RaftNode.ready` checks it): whatever a follower's answer commits next becomes
    visible (applied, answered, or sent as a commit index) only in a later Ready, after this
    one's step 1.
    """

    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: tuple[LogEntry, ...]
    messages: tuple[Message, ...]
    committed: tuple[LogEntry, ...]
    reads: tuple[ReadState, ...]
    soft_state: SoftState
    # Whether the append requests in `messages` may precede step 1 (see above).
    appends_may_precede_persist: bool = False

    def messages_before_persist(self) -> tuple[Message, ...]:
        if not self.appends_may_precede_persist:
            return ()
        return tuple(m for m in self.messages if isinstance(m, AppendRequest))

    def messages_after_persist(self) -> tuple[Message, ...]:
        if not self.appends_may_precede_persist:
            return self.messages
        return tuple(m for m in self.messages if not isinstance(m, AppendRequest))

    def is_empty(self) -> bool:
        return (
            self.hard_state is None
            and self.snapshot is None
            and not self.entries
            and not self.messages
            and not self.committed
            and not self.reads
        )


class InjectedBug(enum.Enum):
    """A known Raft (or session) bug that the simulator can plant, to prove its checkers find it.

    Only the simulator sets these (`--inject-bug NAME`, the values are the names); every other
    driver runs with none. Each bug lives in one small branch marked
    `if InjectedBug.X in ...injected_bugs:`, and the invariants a bug breaks on purpose are
    skipped while it is on, so that the simulator's checkers, not an AssertionError inside the
    node, are what catches it.
    """

    # The vote is not persisted: Ready carries vote=None, so a restarted node votes again.
    VOTE_NOT_PERSISTED = "vote-not-persisted"
    # A leader commits an entry of an earlier term by counting replicas (no Figure 8 rule).
    COMMIT_EARLIER_TERM = "commit-earlier-term"
    # A follower overwrites conflicting entries but keeps the old suffix beyond the new ones.
    NO_TRUNCATE_CONFLICT = "no-truncate-conflict"
    # A leader answers read_index at once, without a heartbeat round confirming its leadership.
    STALE_LEADER_READS = "stale-leader-reads"
    # Installing a leader's snapshot keeps the follower's (conflicting) entries after it.
    SNAPSHOT_KEEPS_LOG = "snapshot-keeps-log"
    # The replica does not deduplicate client sessions: a retried command applies again.
    SESSION_DEDUP_OFF = "session-dedup-off"


@attrs.frozen
class RaftOptions:
    """Per-node settings. Every node of a cluster must run with the same ones.

    `injected_bugs` is for the simulator alone; it is empty everywhere else.
    """

    pre_vote: bool = True
    check_quorum: bool = True
    election_timeout_ticks_min: int = constants.election_timeout_ticks_min
    election_timeout_ticks_max: int = constants.election_timeout_ticks_max
    heartbeat_interval_ticks: int = constants.heartbeat_interval_ticks
    lease_drift_ticks: int = constants.lease_drift_ticks
    append_bytes_max: int = constants.raft_append_bytes_max
    inflight_messages_max: int = constants.raft_inflight_messages_max
    inflight_bytes_max: int = constants.raft_inflight_bytes_max
    snapshot_chunk_bytes: int = constants.raft_snapshot_chunk_bytes
    injected_bugs: frozenset[InjectedBug] = frozenset()

    def __attrs_post_init__(self) -> None:
        assert 0 < self.heartbeat_interval_ticks < self.election_timeout_ticks_min
        assert self.election_timeout_ticks_min <= self.election_timeout_ticks_max
        assert 0 <= self.lease_drift_ticks < self.election_timeout_ticks_min
        assert 0 < self.append_bytes_max <= constants.raft_append_bytes_max
        assert 0 < self.inflight_messages_max <= constants.raft_inflight_messages_max
        assert 0 < self.inflight_bytes_max <= constants.raft_inflight_bytes_max
        assert 0 < self.snapshot_chunk_bytes <= constants.raft_snapshot_chunk_bytes
        assert type(self.injected_bugs) is frozenset, type(self.injected_bugs)
        assert all(isinstance(bug, InjectedBug) for bug in self.injected_bugs)


# ---------------------------------------------------------------------------------------------
# Codec.

TAG_BASE: Final = 40_100
_TAGGED_CLASSES: Final[dict[int, type]] = {
    TAG_BASE + 1: LogEntry,
    TAG_BASE + 2: HardState,
    TAG_BASE + 3: Configuration,
    TAG_BASE + 4: ConfigurationChange,
    TAG_BASE + 5: SnapshotMeta,
    TAG_BASE + 6: Snapshot,
    TAG_BASE + 20: VoteRequest,
    TAG_BASE + 21: VoteResponse,
    TAG_BASE + 22: AppendRequest,
    TAG_BASE + 23: AppendResponse,
    TAG_BASE + 24: HeartbeatRequest,
    TAG_BASE + 25: HeartbeatResponse,
    TAG_BASE + 26: SnapshotChunk,
    TAG_BASE + 27: SnapshotChunkResponse,
    TAG_BASE + 28: TimeoutNow,
    TAG_BASE + 29: ReadIndexRequest,
    TAG_BASE + 30: ReadIndexResponse,
    TAG_BASE + 31: CommitNotice,
}
_TAG_OF_CLASS: Final[dict[type, int]] = {cls: tag for tag, cls in _TAGGED_CLASSES.items()}
_FIELD_NAMES: Final[dict[type, tuple[str, ...]]] = {
    cls: tuple(field.name for field in attrs.fields(cls)) for cls in _TAGGED_CLASSES.values()
}


class ShapeError(Exception):
    """A field of a decoded (or stepped) value has the wrong type or range."""


Checker: TypeAlias = Callable[[Any, bool], Any]


def _check_int(value: Any, deep: bool) -> int:
    if type(value) is not int or not 0 <= value <= constants.raft_index_max:
        raise ShapeError(f"expected an unsigned 64-bit integer, found {value!r:.40}")
    return value


def _check_bool(value: Any, deep: bool) -> bool:
    if type(value) is not bool:
        raise ShapeError(f"expected a bool, found {type(value).__name__}")
    return value


def _check_bytes(value: Any, deep: bool) -> bytes:
    if type(value) is not bytes:
        raise ShapeError(f"expected bytes, found {type(value).__name__}")
    return value


def _enum_checker(cls: type[enum.IntEnum]) -> Checker:
    # A dict lookup: calling the enum class is the slow part of decoding every message.
    member_of_value = {int(member): member for member in cls}

    def check(value: Any, deep: bool) -> Any:
        if type(value) is cls:
            return value
        if type(value) is not int:
            raise ShapeError(f"expected a {cls.__name__}, found {type(value).__name__}")
        member = member_of_value.get(value)
        if member is None:
            raise ShapeError(f"{value} is not a valid {cls.__name__}")
        return member

    return check


def _instance_checker(cls: type) -> Checker:
    def check(value: Any, deep: bool) -> Any:
        if type(value) is not cls:
            raise ShapeError(f"expected a {cls.__name__}, found {type(value).__name__}")
        if deep:
            check_fields(value)
        return value

    return check


def _optional_checker(inner: Checker) -> Checker:
    def check(value: Any, deep: bool) -> Any:
        return None if value is None else inner(value, deep)

    return check


def _tuple_checker(inner: Checker) -> Checker:
    def check(value: Any, deep: bool) -> Any:
        if type(value) not in (list, tuple):
            raise ShapeError(f"expected a sequence, found {type(value).__name__}")
        return tuple(inner(item, deep) for item in value)

    return check


def _checker(hint: Any) -> Checker:
    simple: dict[Any, Checker] = {int: _check_int, bool: _check_bool, bytes: _check_bytes}
    if hint in simple:
        return simple[hint]
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        return _enum_checker(hint)
    if isinstance(hint, type) and hint in _TAG_OF_CLASS:
        return _instance_checker(hint)
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (python_types.UnionType, typing.Union) and type(None) in arguments:
        (inner,) = (argument for argument in arguments if argument is not type(None))
        return _optional_checker(_checker(inner))
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        return _tuple_checker(_checker(arguments[0]))
    raise AssertionError(f"no shape checker for {hint!r}")


def _field_checkers(cls: type) -> tuple[Checker, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(_checker(hints[name]) for name in _FIELD_NAMES[cls])


_CHECKERS: Final[dict[type, tuple[Checker, ...]]] = {
    cls: _field_checkers(cls) for cls in _TAGGED_CLASSES.values()
}


def check_fields(value: Any) -> None:
    """Raise ShapeError unless every field of a tagged value (deeply) has its declared shape."""
    cls = type(value)
    assert cls in _CHECKERS, cls
    for name, checker in zip(_FIELD_NAMES[cls], _CHECKERS[cls], strict=True):
        checker(getattr(value, name), True)
    if cls is Configuration:
        _check_configuration(value)


def _check_configuration(configuration: Configuration) -> None:
    members = configuration.voters + configuration.learners
    if len(set(members)) != len(members):
        raise ShapeError("a node is listed twice in a configuration")
    if len(members) > constants.raft_members_max:
        raise ShapeError(f"more than {constants.raft_members_max} members")
    for node_id in members:
        if not constants.raft_node_id_min <= node_id <= constants.raft_node_id_max:
            raise ShapeError(f"node id {node_id} out of range")


# Per class, its tag and its fields getter (an IntEnum field encodes as its integer): every
# message sent and every entry saved is encoded.
_ENCODERS: Final[dict[type, tuple[int, Callable[[Any], tuple[Any, ...]]]]] = {
    cls: (tag, fields_getter(_FIELD_NAMES[cls])) for tag, cls in _TAGGED_CLASSES.items()
}


def _encode_default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    found = _ENCODERS.get(type(value))
    if found is None:
        raise CodecError(f"cannot encode a value of type {type(value).__name__}")
    tag, fields = found
    encoder.encode(cbor2.CBORTag(tag, fields(value)))


def _tag_decoder(cls: type) -> Any:
    names, checkers = _FIELD_NAMES[cls], _CHECKERS[cls]

    def decode_fields(value: Any, immutable: bool = False) -> Any:
        if not isinstance(value, list) or len(value) != len(names):
            raise CodecError(f"malformed {cls.__name__}: expected {len(names)} fields")
        try:
            fields = [check(item, False) for check, item in zip(checkers, value, strict=True)]
            decoded = cls(*fields)
            if cls is Configuration:
                _check_configuration(decoded)
        except (ShapeError, TypeError, ValueError) as error:
            raise CodecError(f"malformed {cls.__name__}: {error}") from error
        return decoded

    return decode_fields


_SEMANTIC_DECODERS: Final = {tag: _tag_decoder(cls) for tag, cls in _TAGGED_CLASSES.items()}


def encode_value(value: Any) -> bytes:
    """Encode a Raft value (a message, an entry, a configuration, a hard state) to bytes."""
    return cbor2.dumps(value, default=_encode_default)


def decode_value(data: bytes, expected: type | tuple[type, ...]) -> Any:
    """Decode bytes made by `encode_value` into an instance of `expected`, or raise CodecError."""
    try:
        value = cbor2.loads(
            data, semantic_decoders=_SEMANTIC_DECODERS, max_depth=constants.raft_message_depth_max
        )
    except CodecError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as error:
        raise CodecError(f"undecodable CBOR: {error}") from error
    if not isinstance(value, expected):
        raise CodecError(f"expected {expected}, found {type(value).__name__}")
    return value


def decode_message(data: bytes) -> Message:
    """Decode one message from a peer, or raise CodecError. Its fields are checked for shape."""
    message: Message = decode_value(data, MESSAGE_CLASSES)
    return message


def encode_configuration(configuration: Configuration) -> bytes:
    return encode_value(configuration)


def decode_configuration(data: bytes) -> Configuration:
    """The configuration carried by a CONFIGURATION entry, or CodecError."""
    configuration: Configuration = decode_value(data, Configuration)
    return configuration


def configuration_of(entry: LogEntry) -> Configuration:
    """The configuration a CONFIGURATION entry carries (its shape was checked on arrival)."""
    assert entry.kind is EntryKind.CONFIGURATION, entry.kind
    return decode_configuration(entry.data)


def latest_configuration(snapshot_meta: SnapshotMeta, entries: Sequence[LogEntry]) -> Configuration:
    """The configuration in effect at the end of a log: its last configuration entry wins."""
    for entry in reversed(entries):
        if entry.kind is EntryKind.CONFIGURATION:
            return configuration_of(entry)
    return snapshot_meta.configuration
