"""The Raft codec round-trips every value, refuses garbage with CodecError, and a node rejects and
counts bad messages from peers instead of failing an assertion."""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raft_harness import Cluster, drain, entries_with_terms

from memora.core import constants
from memora.core.errors import CodecError
from memora.core.raft import (
    AppendRequest,
    AppendResponse,
    CommitNotice,
    Configuration,
    EntryKind,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    LogEntry,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Role,
    SnapshotChunk,
    SnapshotChunkResponse,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    decode_message,
    encode_value,
)
from memora.core.raft.types import (
    MESSAGE_CLASSES,
    TAG_BASE,
    ConfigurationChange,
    ConfigurationChangeKind,
    Snapshot,
    decode_value,
    encode_configuration,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=50)
node_ids = st.integers(min_value=1, max_value=5)
configurations = st.builds(
    lambda voters, learners: Configuration(tuple(voters), tuple(learners - voters)),
    st.frozensets(node_ids, min_size=1, max_size=3),
    st.frozensets(node_ids, max_size=2),
)
entries = st.builds(
    LogEntry, small, small, st.sampled_from(list(EntryKind)), st.binary(max_size=16)
)
metas = st.builds(SnapshotMeta, small, small, configurations)
STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    VoteRequest: st.builds(
        VoteRequest, node_ids, node_ids, small, st.booleans(), small, small, st.booleans()
    ),
    VoteResponse: st.builds(VoteResponse, node_ids, node_ids, small, st.booleans(), st.booleans()),
    AppendRequest: st.builds(
        AppendRequest,
        node_ids,
        node_ids,
        small,
        small,
        small,
        st.lists(entries, max_size=3).map(tuple),
        small,
    ),
    AppendResponse: st.builds(
        AppendResponse, node_ids, node_ids, small, small, st.booleans(), small, small
    ),
    HeartbeatRequest: st.builds(HeartbeatRequest, node_ids, node_ids, small, small, small),
    HeartbeatResponse: st.builds(HeartbeatResponse, node_ids, node_ids, small, small),
    CommitNotice: st.builds(CommitNotice, node_ids, node_ids, small, small),
    SnapshotChunk: st.builds(
        SnapshotChunk, node_ids, node_ids, small, metas, small, small, st.binary(max_size=32)
    ),
    SnapshotChunkResponse: st.builds(
        SnapshotChunkResponse, node_ids, node_ids, small, small, small, small
    ),
    TimeoutNow: st.builds(TimeoutNow, node_ids, node_ids, small),
    ReadIndexRequest: st.builds(ReadIndexRequest, node_ids, node_ids, small, u64, st.booleans()),
    ReadIndexResponse: st.builds(ReadIndexResponse, node_ids, node_ids, small, u64, small),
}
messages = st.one_of(*STRATEGIES.values())


def test_every_message_class_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(MESSAGE_CLASSES)


@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    assert decode_message(encode_value(message)) == message


@given(u64, st.one_of(st.none(), node_ids), u64)
def test_hard_state_round_trips(term: int, vote: int | None, commit: int) -> None:
    hard_state = HardState(term, vote, commit)
    assert decode_value(encode_value(hard_state), HardState) == hard_state


def test_other_values_round_trip() -> None:
    configuration = Configuration((3, 1), (2,))
    assert configuration.voters == (1, 3)
    snapshot = Snapshot(SnapshotMeta(4, 2, configuration), b"data")
    change = ConfigurationChange(ConfigurationChangeKind.PROMOTE_LEARNER, 2)
    for value in (configuration, snapshot, change):
        assert decode_value(encode_value(value), type(value)) == value


def _tagged(tag_offset: int, fields: list[Any]) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(TAG_BASE + tag_offset, fields))


GARBAGE = [
    b"",
    b"\xff\xff\xff",
    cbor2.dumps([1, 2, 3]),
    cbor2.dumps({"term": 1}),
    _tagged(28, [1, 2]),  # TimeoutNow with a field missing.
    _tagged(28, [1, 2, "3"]),  # A string term.
    _tagged(28, [1, 2, -3]),  # A negative term.
    _tagged(28, [1, 2, True]),  # A bool is not an integer here.
    _tagged(28, [1, 2, 2**64]),  # Beyond 64 bits.
    _tagged(28, [1, 2, 1.5]),
    _tagged(21, [1, 2, 3, 1, True]),  # VoteResponse with an integer for a bool.
    _tagged(22, [1, 2, 3, 0, 0, [1, 2], 0]),  # Entries that are not entries.
    _tagged(22, [1, 2, 3, 0, 0, "entries", 0]),
    _tagged(1, [1, 1, 9, b""]),  # An unknown entry kind.
    _tagged(1, [1, 1, 1, "text"]),  # Entry data must be bytes.
    _tagged(3, [[1, 1], []]),  # A voter listed twice.
    _tagged(3, [[1], [1]]),  # Both voter and learner.
    _tagged(3, [[0], []]),  # Node id 0.
    _tagged(99, [1, 2, 3]),  # An unknown tag in our range is just a tag.
    cbor2.dumps(cbor2.CBORTag(TAG_BASE + 2, [1, None, 0])),  # A hard state is not a message.
    b"\x9f" * 100_000,  # Deep nesting.
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_bytes_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_message(data)


@given(st.binary(max_size=64))
@settings(max_examples=300)
def test_random_bytes_never_raise_anything_but_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_message(data)


def test_a_configuration_entry_with_garbage_data_is_refused_by_codec() -> None:
    good = encode_configuration(Configuration((1, 2)))
    assert decode_value(good, Configuration) == Configuration((1, 2))
    with pytest.raises(CodecError):
        decode_value(b"\x01", Configuration)


# -- Bad messages stepped into nodes. ------------------------------------------------------------


def leader_cluster() -> Cluster:
    cluster = Cluster()
    cluster.elect(1)
    cluster.propose(1, b"x")
    return cluster


def _config_entry(index: int, term: int, data: bytes) -> LogEntry:
    return LogEntry(term, index, EntryKind.CONFIGURATION, data)


def bad_messages_for_follower(term: int, last: int) -> list[tuple[object, str]]:
    """(message to node 2 from leader 1, the reason it is rejected)."""
    entry = entries_with_terms([term], last + 1)
    return [
        (attrs.evolve(HeartbeatRequest(1, 2, term, 0, 0), term="x"), "bad_shape"),  # type: ignore[arg-type]
        (attrs.evolve(HeartbeatRequest(1, 2, term, 0, 0), commit=-1), "bad_shape"),
        (attrs.evolve(AppendRequest(1, 2, term, last, term, (), 0), entries=("x",)), "bad_shape"),  # type: ignore[arg-type]
        ("not a message", "bad_shape"),
        (None, "bad_shape"),
        (HeartbeatRequest(1, 3, term, 0, 0), "wrong_target"),
        (HeartbeatRequest(2, 2, term, 0, 0), "bad_source"),
        (HeartbeatRequest(0, 2, term, 0, 0), "bad_source"),
        (HeartbeatRequest(1, 2, term - 1, 0, 0), "stale_term"),
        (AppendRequest(1, 2, term, last, term + 1, (), 0), "bad_term"),
        (AppendRequest(1, 2, term, last + 1, term, tuple(entry), 0), "entries_not_contiguous"),
        (
            AppendRequest(
                1, 2, term, last, term, tuple(entries_with_terms([term + 1], last + 1)), 0
            ),
            "bad_entry_term",
        ),
        (
            AppendRequest(1, 2, term, last, term, (_config_entry(last + 1, term, b"junk"),), 0),
            "bad_configuration",
        ),
        (
            AppendRequest(
                1,
                2,
                term,
                last,
                term,
                tuple(
                    entries_with_terms([term] * (constants.raft_append_entries_max + 1), last + 1)
                ),
                0,
            ),
            "too_many_entries",
        ),
        (
            AppendRequest(
                1,
                2,
                term,
                last,
                term,
                (LogEntry(term, last + 1, EntryKind.NORMAL, bytes(constants.entry_bytes_max + 1)),),
                0,
            ),
            "entry_too_large",
        ),
        (
            SnapshotChunk(
                1, 2, term, SnapshotMeta(9, term, Configuration((1, 2, 3))), 10, 8, b"abc"
            ),
            "chunk_out_of_range",
        ),
        (
            SnapshotChunk(
                1, 2, term, SnapshotMeta(9, term + 1, Configuration((1, 2, 3))), 10, 0, b""
            ),
            "bad_snapshot_meta",
        ),
        (
            SnapshotChunk(
                1, 2, term, SnapshotMeta(9, term, Configuration((1, 2, 3))), 2**40, 0, b""
            ),
            "snapshot_too_large",
        ),
        (HeartbeatRequest(3, 2, term, 0, 0), "second_leader"),
    ]


def test_bad_messages_to_a_follower_are_counted_and_change_nothing() -> None:
    cluster = leader_cluster()
    follower = cluster.node(2)
    term, last = follower.term, follower.log.last_index()
    before = (follower.term, follower.vote, follower.log.committed, follower.log.last_index())
    for message, reason in bad_messages_for_follower(term, last):
        count = follower.counters[f"rejected_{reason}"]
        follower.step(message)  # type: ignore[arg-type]
        assert follower.counters[f"rejected_{reason}"] == count + 1, (reason, message)
    assert (
        follower.term,
        follower.vote,
        follower.log.committed,
        follower.log.last_index(),
    ) == before
    reasons = follower.messages_rejected_by_reason()
    assert reasons["bad_shape"] == 5 and reasons["wrong_target"] == 1
    assert follower.role is Role.FOLLOWER and follower.leader_id == 1
    cluster.stabilize()
    cluster.propose(1, b"still works")
    assert cluster.states[2] == [b"x", b"still works"]


def test_bad_responses_to_a_leader_are_counted() -> None:
    cluster = leader_cluster()
    leader = cluster.node(1)
    term, last = leader.term, leader.log.last_index()
    cases: list[tuple[Message, str]] = [
        (AppendResponse(2, 1, term, last + 5, False, 0, 0), "index_out_of_range"),
        (AppendResponse(2, 1, term, 3, True, 4, 0), "bad_hint"),
        (AppendResponse(9, 1, term, 1, False, 0, 0), "unknown_sender"),
        (HeartbeatResponse(2, 1, term, 10_000), "round_out_of_range"),
        (HeartbeatResponse(9, 1, term, 0), "unknown_sender"),
        (ReadIndexRequest(9, 1, term, 1, False), "unknown_sender"),
        (AppendRequest(3, 1, term, 0, 0, (), 0), "second_leader"),
        (VoteRequest(2, 1, term, False, 0, term + 1, False), "bad_term"),
    ]
    for message, reason in cases:
        count = leader.counters[f"rejected_{reason}"]
        leader.step(message)
        assert leader.counters[f"rejected_{reason}"] == count + 1, (reason, message)
    assert leader.role is Role.LEADER and leader.log.last_index() == last
    cluster.propose(1, b"still works")
    assert cluster.states[3] == [b"x", b"still works"]


@given(st.lists(messages, max_size=30))
@settings(max_examples=150, deadline=None)
def test_random_messages_never_fail_an_assertion(batch: list[Message]) -> None:
    """Well-shaped nonsense, even in the leader's name (Raft does not defend against lies, but a
    lying or confused peer must not crash a node)."""
    cluster = leader_cluster()
    for message in batch:
        for node_id in (1, 2):
            node = cluster.node(node_id)
            node.step(attrs.evolve(message, target=node_id))
            node.tick()
            drain(node)
            node.invariants()
