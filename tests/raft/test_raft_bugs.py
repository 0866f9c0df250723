"""The bugs the simulator can plant (`InjectedBug`), each shown by a deterministic scenario.

For every bug the same scenario runs twice: without the flag it stays safe, with it the bad
behaviour the simulator's checkers must catch happens (two leaders in one term, a committed entry
overwritten, a stale suffix, a stale read, a log not reset by a snapshot, a command applied twice).
Each assertion on the bad run would fail if the bug's branch did nothing. No run may trip an
assertion inside `RaftNode`: that would be the node catching its own bug, not the checkers.
"""

from __future__ import annotations

import pytest
from raft_harness import Cluster, entries_with_terms

from memora.core import codec, constants
from memora.core.prng import Prng
from memora.core.raft import (
    AppendRequest,
    AppendResponse,
    Configuration,
    EntryKind,
    HardState,
    InjectedBug,
    LogEntry,
    MemoryStorage,
    RaftNode,
    RaftOptions,
    ReadState,
    Ready,
    Role,
    SnapshotChunk,
    SnapshotMeta,
    VoteRequest,
    VoteResponse,
)
from memora.core.replica import Replica
from memora.core.types import Applied, CreateNamespace, InsertNode, Proposal, Result

ELECTION_TICKS = constants.election_timeout_ticks_max
VOTERS = (1, 2, 3)


def paper_options(*bugs: InjectedBug, **overrides: int) -> RaftOptions:
    """The paper's rules (no pre-vote, no check-quorum), with `bugs` planted."""
    return RaftOptions(
        pre_vote=False, check_quorum=False, injected_bugs=frozenset(bugs), **overrides
    )


def test_every_bug_has_a_cli_name_and_none_is_on_by_default() -> None:
    assert {bug.value for bug in InjectedBug} == {
        "vote-not-persisted",
        "commit-earlier-term",
        "no-truncate-conflict",
        "stale-leader-reads",
        "snapshot-keeps-log",
        "session-dedup-off",
    }
    assert InjectedBug("commit-earlier-term") is InjectedBug.COMMIT_EARLIER_TERM
    assert RaftOptions().injected_bugs == frozenset()
    assert Replica().injected_bugs == frozenset()


# -- vote-not-persisted ---------------------------------------------------------------------------


def _two_candidates_then_restart_the_voter(bugs: tuple[InjectedBug, ...]) -> Cluster:
    """Nodes 1 and 3 campaign in the same term; node 2 votes for 1 (which wins), crashes,
    restarts, and only then sees node 3's request."""
    cluster = Cluster(options=paper_options(*bugs))
    cluster.node(1).campaign()
    cluster.node(3).campaign()
    assert cluster.node(1).term == cluster.node(3).term == 2
    cluster.flush()
    cluster.deliver(lambda m: isinstance(m, VoteRequest) and (m.source, m.target) == (1, 2))
    cluster.flush()  # Node 2 persists its vote (or, with the bug, believes it did) and answers.
    cluster.deliver(lambda m: isinstance(m, VoteResponse) and m.target == 1)
    assert cluster.node(1).role is Role.LEADER
    assert cluster.node(2).vote == 1
    cluster.restart(2)
    cluster.deliver(lambda m: isinstance(m, VoteRequest) and (m.source, m.target) == (3, 2))
    cluster.flush()
    cluster.deliver(lambda m: isinstance(m, VoteResponse) and m.target == 3)
    return cluster


def test_vote_not_persisted_lets_a_restarted_voter_elect_a_second_leader_in_the_term() -> None:
    safe = _two_candidates_then_restart_the_voter(())
    assert safe.storages[2].hard_state().vote == 1
    assert safe.node(2).vote == 1
    assert safe.node(3).role is Role.CANDIDATE

    buggy = _two_candidates_then_restart_the_voter((InjectedBug.VOTE_NOT_PERSISTED,))
    assert buggy.storages[2].hard_state() == HardState(term=2, vote=None, commit=1)
    leaders = [n for n in buggy.nodes.values() if n.role is Role.LEADER]
    assert [(n.node_id, n.term) for n in leaders] == [(1, 2), (3, 2)]  # Election safety broken.


# -- commit-earlier-term (Figure 8) ---------------------------------------------------------------


def _win(cluster: Cluster, node_id: int, attempts: int = 3) -> None:
    for _ in range(attempts):
        if cluster.node(node_id).role is not Role.LEADER:
            cluster.node(node_id).campaign()
        cluster.stabilize()
    assert cluster.node(node_id).role is Role.LEADER


def _figure_8(bugs: tuple[InjectedBug, ...]) -> Cluster:
    """The paper's Figure 8, as in test_raft_paper: S1 (term 4) holds its term-2 entry 2 on a
    majority but not its term-4 no-op; then S5 wins term 5 and overwrites entry 2."""
    voters = (1, 2, 3, 4, 5)
    logs = {n: (HardState(1, None, 0), entries_with_terms([1])) for n in voters}
    cluster = Cluster(voters, options=paper_options(*bugs, append_bytes_max=40), logs=logs)
    cluster.node(1).campaign()  # (a) S1 leads term 2, entry 2 reaches S2 only.
    for _ in range(2):
        cluster.flush()
        cluster.deliver()
    cluster.partition([1, 2], [3, 4, 5])
    cluster.stabilize()
    cluster.down = {1}  # (b) S5 leads term 3; its entry 2 reaches nobody.
    cluster.heal()
    cluster.node(5).campaign()
    for _ in range(2):
        cluster.flush()
        cluster.deliver()
    cluster.flush()
    cluster.queue = []
    cluster.down = {5}  # (c) S1 leads term 4 and copies entry 2 to S3, not its no-op.
    cluster.restart(1)
    cluster.drop = lambda m: (
        isinstance(m, AppendRequest)
        and any(entry.term > 2 for entry in m.entries)
        and cluster.node(m.target).log.matches(m.previous_index, m.previous_term)
    )
    _win(cluster, 1)
    assert cluster.node(1).term == 4
    assert [cluster.log_terms(n) for n in (1, 2, 3)] == [[1, 2, 4], [1, 2], [1, 2]]
    cluster.heal()  # (d) S5 wins term 5 and overwrites entry 2 everywhere it can.
    cluster.down = {1}
    cluster.restart(5)
    _win(cluster, 5)
    assert cluster.node(5).term == 5
    return cluster


def test_commit_earlier_term_commits_an_entry_that_is_then_overwritten() -> None:
    safe = _figure_8(())
    assert safe.node(1).log.committed == 0
    safe.check_state_machine_safety()

    buggy = _figure_8((InjectedBug.COMMIT_EARLIER_TERM,))
    assert buggy.node(1).log.committed == 2  # Counted on S1, S2 and S3, though of term 2.
    applied_by_s1 = {entry.index: entry for entry in buggy.committed_log[1]}
    applied_by_s5 = {entry.index: entry for entry in buggy.committed_log[5]}
    assert applied_by_s1[2].term == 2 and applied_by_s5[2].term == 3
    with pytest.raises(AssertionError):
        buggy.check_state_machine_safety()


# -- no-truncate-conflict -------------------------------------------------------------------------


def _stale_suffix(bugs: tuple[InjectedBug, ...]) -> Cluster:
    """Node 3 holds node 1's uncommitted term-2 entries 2..4. Node 2 (term 4) overwrites 2..3 on
    node 3 only, then dies; node 1 (still holding 2..4 of term 2) asks node 3 for its vote."""
    logs = {
        1: (HardState(2, None, 1), entries_with_terms([1, 2, 2, 2])),
        2: (HardState(3, None, 1), entries_with_terms([1, 3])),
        3: (HardState(2, None, 1), entries_with_terms([1, 2, 2, 2])),
    }
    cluster = Cluster(options=paper_options(*bugs), logs=logs)
    cluster.down = {1}
    # Node 2's successful appends are never acknowledged, so it commits nothing of its term.
    cluster.drop = lambda m: isinstance(m, AppendResponse) and not m.rejected
    cluster.elect(2)
    assert cluster.node(2).log.committed == 1
    cluster.heal()
    cluster.down = {2}
    for _ in range(3):
        if cluster.node(1).role is not Role.LEADER:
            cluster.node(1).campaign()
        cluster.stabilize()
    return cluster


def test_no_truncate_conflict_leaves_a_stale_suffix_that_later_matches_a_wrong_log() -> None:
    safe = _stale_suffix(())
    assert safe.log_terms(3) == [1, 3, 4]
    assert safe.node(1).role is not Role.LEADER  # Node 3's log is newer: no vote for node 1.
    safe.check_state_machine_safety()

    buggy = _stale_suffix((InjectedBug.NO_TRUNCATE_CONFLICT,))
    assert buggy.storages[3].entries()[3] == entries_with_terms([1, 2, 2, 2])[3]
    assert buggy.log_terms(3)[:4] == [1, 3, 4, 2]  # Entry 4 of term 2 outlived the conflict.
    assert buggy.node(1).role is Role.LEADER  # Node 3's stale last entry earned node 1 a vote,
    # and its append then "matched" at index 4, so both committed different entries 2 and 3.
    applied_by_1 = {entry.index: entry for entry in buggy.committed_log[1]}
    applied_by_3 = {entry.index: entry for entry in buggy.committed_log[3]}
    assert applied_by_1[2].term == 2 and applied_by_3[2].term == 3
    with pytest.raises(AssertionError):
        buggy.check_state_machine_safety()


# -- stale-leader-reads ---------------------------------------------------------------------------


def _read_from_a_deposed_leader(bugs: tuple[InjectedBug, ...]) -> tuple[Cluster, int, int]:
    cluster = Cluster(options=RaftOptions(injected_bugs=frozenset(bugs)))
    cluster.elect(1)
    old = cluster.propose(1, b"old")
    cluster.isolate(1)
    cluster.tick(3 * ELECTION_TICKS, nodes=[2, 3])
    new_leader = cluster.leader()
    assert new_leader in (2, 3)
    new = cluster.propose(new_leader, b"new")
    assert cluster.node(1).role is Role.LEADER  # It has not ticked, so it has not noticed.
    cluster.node(1).read_index(9)  # Issued after "new" committed: it must see "new".
    cluster.stabilize()
    return cluster, old, new


def test_stale_leader_reads_serves_a_read_that_misses_a_committed_write() -> None:
    safe, _, _ = _read_from_a_deposed_leader(())
    assert safe.reads[1] == []

    buggy, old, new = _read_from_a_deposed_leader((InjectedBug.STALE_LEADER_READS,))
    assert buggy.reads[1] == [ReadState(9, old)]
    assert old < new and b"new" not in buggy.states[1]  # The answer misses a committed write.


# -- snapshot-keeps-log ---------------------------------------------------------------------------


def _snapshot_over_a_divergent_log(bugs: tuple[InjectedBug, ...]) -> Cluster:
    """Node 3 holds node 4's uncommitted term-2 entries 2..6; nodes 1, 2 and 4 go on in term 3,
    compact past index 2, and node 1 sends node 3 a snapshot."""
    voters = (1, 2, 3, 4, 5)
    divergent = entries_with_terms([1, 2, 2, 2, 2, 2])
    logs = {
        1: (HardState(2, None, 1), entries_with_terms([1])),
        2: (HardState(2, None, 1), entries_with_terms([1])),
        3: (HardState(2, None, 1), divergent),
        4: (HardState(2, None, 1), divergent),
        5: (HardState(2, None, 1), entries_with_terms([1])),
    }
    cluster = Cluster(voters, options=paper_options(*bugs), logs=logs)
    cluster.isolate(3)
    cluster.down = {4}
    cluster.elect(1)
    cluster.propose(1, b"x")
    assert cluster.log_terms(1) == [1, 3, 3]
    for node_id in (1, 2, 5):
        cluster.compact(node_id)
    cluster.heal()
    cluster.tick(constants.heartbeat_interval_ticks, nodes=[1])
    assert cluster.node(3).counters["snapshots_installed"] == 1
    return cluster


def _vote_of_node_3_for_node_4(cluster: Cluster) -> bool:
    """Would node 3 vote for node 4 (which lacks the committed entries 2 and 3)?"""
    node = cluster.node(3)
    node.step(VoteRequest(4, 3, node.term + 1, True, 6, 2, False))
    (response,) = [m for m in node.ready().messages if isinstance(m, VoteResponse)]
    return response.granted


def test_snapshot_keeps_log_keeps_a_conflicting_suffix_after_the_snapshot() -> None:
    safe = _snapshot_over_a_divergent_log(())
    assert safe.node(3).log.snapshot_index == 3 and safe.node(3).log.last_index() == 3
    assert safe.storages[3].entries() == []
    assert safe.states[3] == safe.states[1]
    assert not _vote_of_node_3_for_node_4(safe)

    buggy = _snapshot_over_a_divergent_log((InjectedBug.SNAPSHOT_KEEPS_LOG,))
    log = buggy.node(3).log
    assert (log.snapshot_index, log.snapshot_term) == (3, 3)
    # Entries 4..6 of term 2 still follow a snapshot of term 3, on disk too, and still build on
    # node 4's entries 2 and 3: two logs hold (4, term 2) on different prefixes.
    kept = [log.entry(index) for index in range(4, 7)]
    assert kept == entries_with_terms([2, 2, 2], first_index=4)
    assert buggy.storages[3].entries() == kept
    assert buggy.node(4).log.entry(4) == kept[0]
    assert buggy.node(4).log.term_at(3) == 2 != log.term_at(3)
    # Its log now looks older than it is, so it votes for a node without committed entries.
    assert _vote_of_node_3_for_node_4(buggy)
    # A restart reads the same divergent log back without tripping the node's invariants.
    assert buggy.restart(3).log.last_index() == 6


# -- session-dedup-off ----------------------------------------------------------------------------


def _replica_after_a_retry(bugs: frozenset[InjectedBug]) -> tuple[Replica, list[Result | None]]:
    """A client's command is committed twice (it retried after a timeout); a replica applies
    what Raft committed."""
    cluster = Cluster()
    cluster.elect(1)
    namespace = Proposal(10, "tester", "main", None, CreateNamespace(4))
    insert = Proposal(11, "tester", "main", None, InsertNode("Person"), "client-1", 1)
    for proposal in (namespace, insert, insert):
        cluster.propose(1, codec.encode(proposal))
    replica = Replica(injected_bugs=bugs)
    replies = [replica.apply(entry) for entry in cluster.committed_log[2]]
    assert [entry.kind for entry in cluster.committed_log[2]][-3:] == [EntryKind.NORMAL] * 3
    return replica, replies


def test_session_dedup_off_applies_a_retried_command_twice() -> None:
    safe, replies = _replica_after_a_retry(frozenset())
    assert replies[-1] == replies[-2]  # The retry gets the first reply back.
    assert len(safe.machine.namespace("main").nodes) == 1

    buggy, replies = _replica_after_a_retry(frozenset({InjectedBug.SESSION_DEDUP_OFF}))
    assert isinstance(replies[-1], Applied) and isinstance(replies[-2], Applied)
    assert replies[-1] != replies[-2]
    assert len(buggy.machine.namespace("main").nodes) == 2  # Applied twice.
    assert buggy.state_hash() != safe.state_hash()

    restored = Replica.from_snapshot_data(
        buggy.snapshot_data(), injected_bugs=frozenset({InjectedBug.SESSION_DEDUP_OFF})
    )
    assert restored.injected_bugs == {InjectedBug.SESSION_DEDUP_OFF}
    assert Replica.from_snapshot_data(buggy.snapshot_data()).injected_bugs == frozenset()


# -- The disk keeps up with the bugs ----------------------------------------------------------


def _follower(bugs: frozenset[InjectedBug], terms: list[int]) -> tuple[RaftNode, MemoryStorage]:
    """Node 1 of three at term 2 whose durable log holds entries of `terms`, index 1 committed."""
    configuration = Configuration(VOTERS)
    meta = SnapshotMeta(0, 0, configuration)
    storage = MemoryStorage(HardState(2, None, 1), meta, entries_with_terms(terms))
    node = RaftNode(
        1,
        configuration=configuration,
        hard_state=storage.hard_state(),
        snapshot_meta=meta,
        entries=storage.entries(),
        prng=Prng(3),
        options=paper_options(*bugs),
        snapshot_source=storage,
    )
    return node, storage


def _persist(node: RaftNode, storage: MemoryStorage, ready: Ready | None = None) -> None:
    ready = ready or node.ready()
    storage.save(ready.hard_state, ready.entries, ready.snapshot)
    node.advance(ready)


def _disk_matches_memory(node: RaftNode, storage: MemoryStorage) -> bool:
    log = node.log
    held = [log.entry(index) for index in range(log.first_index(), log.last_index() + 1)]
    snapshot = storage.latest_snapshot()
    snapshot_index = 0 if snapshot is None else snapshot[0].index
    return snapshot_index == log.snapshot_index and storage.entries() == held


@pytest.mark.parametrize("bug", [None, InjectedBug.NO_TRUNCATE_CONFLICT])
def test_an_overwrite_between_ready_and_advance_is_persisted_again(bug: InjectedBug | None) -> None:
    node, storage = _follower(frozenset({bug} if bug else ()), [1])
    node.step(AppendRequest(2, 1, 2, 1, 1, tuple(entries_with_terms([2, 2, 2], 2)), 1))
    ready = node.ready()
    storage.save(ready.hard_state, ready.entries, ready.snapshot)
    # Before the driver advances, a leader of term 3 overwrites entry 2 (only entry 2).
    node.step(AppendRequest(3, 1, 3, 1, 1, tuple(entries_with_terms([3], 2)), 1))
    node.advance(ready)
    _persist(node, storage)
    assert _disk_matches_memory(node, storage)
    assert node.log.last_index() == (4 if bug else 2)


@pytest.mark.parametrize("bug", [None, InjectedBug.SNAPSHOT_KEEPS_LOG])
def test_entries_kept_after_a_snapshot_follow_it_to_disk(bug: InjectedBug | None) -> None:
    node, storage = _follower(frozenset({bug} if bug else ()), [1, 2, 2, 2])
    node.step(AppendRequest(2, 1, 2, 4, 2, tuple(entries_with_terms([2, 2], 5)), 1))
    ready = node.ready()
    storage.save(ready.hard_state, ready.entries, ready.snapshot)
    # Before the driver advances, a leader of term 3 installs a snapshot at 4 (of term 3).
    node.step(SnapshotChunk(3, 1, 3, SnapshotMeta(4, 3, Configuration(VOTERS)), 2, 0, b"[]"))
    node.advance(ready)
    _persist(node, storage)
    assert _disk_matches_memory(node, storage)
    assert node.log.last_index() == (6 if bug else 4)
    # The next append lands after the kept entries, on disk as in memory.
    last = node.log.last_index()
    following = LogEntry(3, last + 1, EntryKind.NORMAL, b"next")
    node.step(AppendRequest(3, 1, 3, last, node.log.last_term(), (following,), 4))
    _persist(node, storage)
    assert _disk_matches_memory(node, storage) and storage.last_index() == last + 1
