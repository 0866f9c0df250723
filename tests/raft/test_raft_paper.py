"""One test per rule of the Raft paper's Figure 2 and the safety arguments of section 5, in the
spirit of etcd's raft_paper_test.go. Pre-vote and check-quorum are off here: these are the paper's
rules, without the thesis' extensions.
"""

from __future__ import annotations

import pytest
from raft_harness import PAPER_OPTIONS, Cluster, drain, entries_with_terms

from memora.core import constants
from memora.core.prng import Prng
from memora.core.raft import (
    AppendRequest,
    AppendResponse,
    Configuration,
    EntryKind,
    HardState,
    HeartbeatRequest,
    LogEntry,
    RaftNode,
    RaftOptions,
    Role,
    SnapshotMeta,
    VoteRequest,
    VoteResponse,
)


def lone_node(
    terms: list[int] | None = None,
    *,
    term: int = 0,
    vote: int | None = None,
    commit: int = 0,
    voters: tuple[int, ...] = (1, 2, 3),
    seed: int = 7,
    options: RaftOptions = PAPER_OPTIONS,
) -> RaftNode:
    """Node 1 of a cluster of `voters`, whose log has entries of `terms` (from index 1)."""
    entries = entries_with_terms(terms or [])
    return RaftNode(
        1,
        configuration=Configuration(voters),
        hard_state=HardState(term=term, vote=vote, commit=commit),
        snapshot_meta=SnapshotMeta(0, 0, Configuration(voters)),
        entries=entries,
        prng=Prng(seed),
        options=options,
    )


def become_leader(node: RaftNode) -> None:
    node.campaign()
    for voter in node.configuration.voters:
        if voter != node.node_id and node.role is not Role.LEADER:
            node.step(VoteResponse(voter, node.node_id, node.term, False, True))
    assert node.role is Role.LEADER
    drain(node)


# -- 5.1: terms. ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
def test_any_server_updates_its_term_from_a_higher_term_message_and_becomes_follower(
    role: Role,
) -> None:
    node = lone_node(term=1)
    if role is Role.CANDIDATE:
        node.campaign()
    if role is Role.LEADER:
        become_leader(node)
    assert node.role is role
    term = node.term
    node.step(HeartbeatRequest(2, 1, term + 1, 0, 0))
    assert (node.term, node.role, node.leader_id, node.vote) == (term + 1, Role.FOLLOWER, 2, None)


def test_leader_steps_down_when_a_response_carries_a_higher_term() -> None:
    node = lone_node(term=1)
    become_leader(node)
    node.step(AppendResponse(3, 1, node.term + 1, 0, False, 0, 0))
    assert node.role is Role.FOLLOWER
    assert node.leader_id is None


def test_a_stale_term_message_is_rejected_and_counted() -> None:
    node = lone_node(term=3)
    node.step(AppendRequest(2, 1, 2, 0, 0, tuple(entries_with_terms([2])), 1))
    assert node.counters["rejected_stale_term"] == 1
    assert node.log.last_index() == 0 and node.term == 3
    assert drain(node).messages == ()


def test_servers_start_as_followers() -> None:
    assert lone_node().role is Role.FOLLOWER
    assert Cluster().node(2).role is Role.FOLLOWER


# -- 5.2: leader election. ------------------------------------------------------------------------


def test_leader_sends_heartbeats_every_heartbeat_interval() -> None:
    node = lone_node(term=1)
    become_leader(node)
    for _ in range(constants.heartbeat_interval_ticks - 1):
        node.tick()
    assert not any(isinstance(m, HeartbeatRequest) for m in drain(node).messages)
    node.tick()
    heartbeats = [m for m in drain(node).messages if isinstance(m, HeartbeatRequest)]
    assert sorted(m.target for m in heartbeats) == [2, 3]
    assert all(m.term == node.term and m.commit == 0 for m in heartbeats)


@pytest.mark.parametrize("start_as", [Role.FOLLOWER, Role.CANDIDATE])
def test_a_server_that_hears_nothing_starts_an_election(start_as: Role) -> None:
    node = lone_node([1, 1], term=1)
    if start_as is Role.CANDIDATE:
        node.campaign()
        drain(node)
    term = node.term
    for _ in range(constants.election_timeout_ticks_max):
        node.tick()
    assert node.role is Role.CANDIDATE
    assert node.term == term + 1 and node.vote == 1
    requests = [m for m in drain(node).messages if isinstance(m, VoteRequest)]
    assert sorted(m.target for m in requests) == [2, 3]
    assert all((m.term, m.last_index, m.last_term) == (term + 1, 2, 1) for m in requests)
    assert not any(m.pre_vote for m in requests)


@pytest.mark.parametrize(
    ("voters", "granted", "refused", "expected"),
    [
        ((1,), (), (), Role.LEADER),
        ((1, 2, 3), (2, 3), (), Role.LEADER),
        ((1, 2, 3), (2,), (), Role.LEADER),
        ((1, 2, 3, 4, 5), (2, 3, 4, 5), (), Role.LEADER),
        ((1, 2, 3, 4, 5), (2, 3), (), Role.LEADER),
        ((1, 2, 3, 4, 5), (2,), (), Role.CANDIDATE),
        ((1, 2, 3, 4, 5), (2,), (3,), Role.CANDIDATE),
        ((1, 2, 3), (), (2, 3), Role.FOLLOWER),
        ((1, 2, 3, 4, 5), (2,), (3, 4, 5), Role.FOLLOWER),
        ((1, 2, 3, 4, 5), (), (2, 3, 4), Role.FOLLOWER),
    ],
)
def test_a_candidate_wins_with_a_majority_and_loses_to_a_majority_of_refusals(
    voters: tuple[int, ...], granted: tuple[int, ...], refused: tuple[int, ...], expected: Role
) -> None:
    node = lone_node(voters=voters)
    node.campaign()
    for voter in granted:
        node.step(VoteResponse(voter, 1, node.term, False, True))
    for voter in refused:
        node.step(VoteResponse(voter, 1, node.term, False, False))
    assert node.role is expected
    assert node.term == 1


@pytest.mark.parametrize(
    ("vote", "candidate", "granted"),
    [(None, 2, True), (None, 3, True), (2, 2, True), (3, 3, True), (2, 3, False), (3, 2, False)],
)
def test_a_server_votes_at_most_once_per_term_first_come_first_served(
    vote: int | None, candidate: int, granted: bool
) -> None:
    node = lone_node(term=1, vote=vote)
    node.step(VoteRequest(candidate, 1, 1, False, 0, 0, False))
    (response,) = drain(node).messages
    assert isinstance(response, VoteResponse)
    assert (response.target, response.granted) == (candidate, granted)
    assert node.vote == (candidate if granted else vote)


def test_the_vote_is_persisted_before_the_response_is_sent() -> None:
    node = lone_node(term=1)
    node.step(VoteRequest(2, 1, 2, False, 0, 0, False))
    ready = drain(node)
    assert ready.hard_state == HardState(term=2, vote=2, commit=0)
    assert [type(m) for m in ready.messages] == [VoteResponse]


@pytest.mark.parametrize("term_offset", [0, 1])
def test_a_candidate_falls_back_to_follower_on_an_append_from_a_current_leader(
    term_offset: int,
) -> None:
    node = lone_node(term=1)
    node.campaign()
    term = node.term + term_offset
    node.step(AppendRequest(2, 1, term, 0, 0, (), 0))
    assert (node.role, node.term, node.leader_id) == (Role.FOLLOWER, term, 2)


def test_election_timeouts_are_randomized_within_bounds() -> None:
    timeouts = set()
    for seed in range(40):
        node = lone_node(term=1, seed=seed)
        ticks = 0
        while node.role is Role.FOLLOWER:
            node.tick()
            ticks += 1
        timeouts.add(ticks)
    low, high = constants.election_timeout_ticks_min, constants.election_timeout_ticks_max
    assert all(low <= ticks <= high for ticks in timeouts)
    assert len(timeouts) > (high - low) // 2


def test_election_timeouts_rarely_coincide() -> None:
    collisions = 0
    rounds = 200
    for seed in range(rounds):
        first, second = lone_node(seed=2 * seed), lone_node(seed=2 * seed + 1)
        for _ in range(constants.election_timeout_ticks_max):
            first.tick()
            second.tick()
            if first.role is Role.CANDIDATE or second.role is Role.CANDIDATE:
                break
        collisions += first.role is Role.CANDIDATE and second.role is Role.CANDIDATE
    assert collisions / rounds < 0.15


def test_the_election_timer_replays_exactly_from_its_seed() -> None:
    def campaign_tick(seed: int) -> int:
        node = lone_node(seed=seed)
        for tick in range(1, 100):
            node.tick()
            if node.role is not Role.FOLLOWER:
                return tick
        raise AssertionError("no election")

    assert [campaign_tick(seed) for seed in range(10)] == [
        campaign_tick(seed) for seed in range(10)
    ]


# -- 5.3: log replication. ------------------------------------------------------------------------


def test_leader_appends_a_proposal_and_sends_it_with_the_previous_entry() -> None:
    node = lone_node([1], term=1, commit=1)
    become_leader(node)
    for follower in (2, 3):  # They take the no-op: the leader now pipelines to them.
        node.step(AppendResponse(follower, 1, node.term, 2, False, 0, 0))
    drain(node)
    index = node.propose(b"x")
    assert index == 3  # 1 = old entry, 2 = the leader's no-op, 3 = the proposal.
    ready = drain(node)
    assert [entry.index for entry in ready.entries] == [3]
    appends = [m for m in ready.messages if isinstance(m, AppendRequest)]
    assert sorted(m.target for m in appends) == [2, 3]
    for message in appends:
        assert message.entries[-1] == LogEntry(node.term, 3, EntryKind.NORMAL, b"x")
        previous = message.entries[0].index - 1
        assert message.previous_index == previous
        assert message.previous_term == node.log.term_at(previous)


def test_leader_commits_an_entry_once_a_majority_stored_it_and_followers_learn_it() -> None:
    cluster = Cluster(options=PAPER_OPTIONS)
    cluster.elect(1)
    index = cluster.propose(1, b"x")
    for node_id in (1, 2, 3):
        assert cluster.node(node_id).log.committed == index
        assert cluster.states[node_id] == [b"x"]


@pytest.mark.parametrize(
    ("voters", "acks", "committed"),
    [
        ((1,), (), True),
        ((1, 2, 3), (), False),
        ((1, 2, 3), (2,), True),
        ((1, 2, 3), (2, 3), True),
        ((1, 2, 3, 4, 5), (), False),
        ((1, 2, 3, 4, 5), (2,), False),
        ((1, 2, 3, 4, 5), (2, 3), True),
        ((1, 2, 3, 4, 5), (2, 3, 4, 5), True),
    ],
)
def test_leader_commits_only_what_a_majority_acknowledged(
    voters: tuple[int, ...], acks: tuple[int, ...], committed: bool
) -> None:
    node = lone_node(voters=voters)
    become_leader(node)
    for voter in voters[1:]:  # Everyone takes the no-op, so the leader is in replicate mode.
        node.step(AppendResponse(voter, 1, node.term, 1, False, 0, 0))
    drain(node)
    index = node.propose(b"x")
    for voter in acks:
        node.step(AppendResponse(voter, 1, node.term, index, False, 0, 0))
    assert (node.log.committed == index) is committed


def test_committing_an_entry_commits_every_preceding_entry_of_earlier_terms() -> None:
    node = lone_node([1, 2], term=2)
    become_leader(node)
    noop = node.log.last_index()
    assert node.log.entry(noop).kind is EntryKind.NO_OP
    node.step(AppendResponse(2, 1, node.term, noop, False, 0, 0))
    assert node.log.committed == noop
    assert [entry.index for entry in drain(node).committed] == [1, 2, 3]


def test_follower_applies_entries_up_to_the_leaders_commit_index() -> None:
    node = lone_node(term=1)
    entries = tuple(entries_with_terms([1, 1, 1]))
    node.step(AppendRequest(2, 1, 1, 0, 0, entries, 2))
    ready = drain(node)
    assert node.log.committed == 2
    assert [entry.index for entry in ready.committed] == [1, 2]
    assert ready.entries == entries


@pytest.mark.parametrize(
    ("previous_index", "previous_term", "accepted", "hint"),
    [
        (0, 0, True, None),
        (1, 1, True, None),
        (2, 2, True, None),
        (2, 1, False, (1, 1)),
        (3, 3, False, (2, 2)),
        (2, 3, False, (2, 2)),
    ],
)
def test_follower_checks_the_previous_entry_before_appending(
    previous_index: int, previous_term: int, accepted: bool, hint: tuple[int, int] | None
) -> None:
    node = lone_node([1, 2], term=2)
    node.step(AppendRequest(2, 1, 3, previous_index, previous_term, (), 0))
    (response,) = drain(node).messages
    assert isinstance(response, AppendResponse)
    assert response.rejected is not accepted
    if hint is not None:
        assert (response.index, response.hint_index, response.hint_term) == (
            previous_index,
            *hint,
        )


@pytest.mark.parametrize(
    ("previous_index", "previous_term", "terms", "expected"),
    [
        (2, 2, [3], [1, 2, 3]),
        (1, 1, [3, 4], [1, 3, 4]),
        (0, 0, [1], [1, 2]),
        (0, 0, [3], [3]),
    ],
)
def test_follower_deletes_a_conflicting_suffix_and_appends_new_entries(
    previous_index: int, previous_term: int, terms: list[int], expected: list[int]
) -> None:
    node = lone_node([1, 2], term=2)
    entries = tuple(entries_with_terms(terms, previous_index + 1))
    node.step(AppendRequest(2, 1, 4, previous_index, previous_term, entries, 0))
    log = node.log
    assert [log.entry(i).term for i in range(1, log.last_index() + 1)] == expected
    ready = drain(node)
    # The driver is told to persist from the first new entry on (truncating what follows).
    if terms != [1]:
        assert ready.entries[0].index == previous_index + 1


FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIGURE_7_FOLLOWERS))
def test_leader_brings_every_figure_7_follower_log_into_agreement(case: str) -> None:
    leader_state = (HardState(7, None, 0), entries_with_terms(FIGURE_7_LEADER))
    follower_state = (HardState(7, None, 0), entries_with_terms(FIGURE_7_FOLLOWERS[case]))
    cluster = Cluster(
        logs={1: leader_state, 2: follower_state, 3: leader_state}, options=PAPER_OPTIONS
    )
    cluster.elect(1)
    before = [cluster.node(1).log.entry(i) for i in range(1, 11)]
    cluster.propose(1, b"after")
    assert cluster.log_terms(2) == cluster.log_terms(1) == [*FIGURE_7_LEADER, 8, 8]
    # The leader only appended (5.3: Leader Append-Only).
    assert [cluster.node(1).log.entry(i) for i in range(1, 11)] == before
    assert cluster.node(2).log.committed == cluster.node(1).log.last_index()


def test_leader_never_overwrites_its_log_when_followers_disagree() -> None:
    node = lone_node([1, 1, 2], term=2)
    become_leader(node)
    before = [node.log.entry(i) for i in range(1, node.log.last_index() + 1)]
    node.step(AppendResponse(2, 1, node.term, 3, True, 1, 1))
    node.step(AppendResponse(3, 1, node.term, 3, True, 0, 0))
    after = [node.log.entry(i) for i in range(1, node.log.last_index() + 1)]
    assert after[: len(before)] == before


# -- 5.4: safety. ---------------------------------------------------------------------------------


def test_candidate_sends_its_last_index_and_term_in_vote_requests() -> None:
    node = lone_node([1, 2, 2], term=2)
    node.campaign()
    requests = [m for m in drain(node).messages if isinstance(m, VoteRequest)]
    assert {(m.last_index, m.last_term, m.term) for m in requests} == {(3, 2, 3)}


@pytest.mark.parametrize(
    ("terms", "last_term", "last_index", "granted"),
    [
        ([1], 1, 1, True),
        ([1], 1, 2, True),
        ([1, 1], 1, 1, False),
        ([1, 1], 1, 2, True),
        ([1, 1], 1, 3, True),
        ([1], 2, 1, True),
        ([1, 1], 2, 1, True),
        ([2], 1, 1, False),
        ([2], 1, 2, False),
        ([2, 2], 1, 1, False),
        ([2, 2], 1, 3, False),
    ],
)
def test_a_vote_is_denied_to_a_candidate_whose_log_is_less_up_to_date(
    terms: list[int], last_term: int, last_index: int, granted: bool
) -> None:
    node = lone_node(terms, term=2)
    node.step(VoteRequest(2, 1, 3, False, last_index, last_term, False))
    (response,) = drain(node).messages
    assert isinstance(response, VoteResponse) and response.granted is granted


@pytest.mark.parametrize(("ack_index", "committed"), [(1, 0), (2, 0), (3, 3)])
def test_only_entries_of_the_current_term_are_committed_by_counting_replicas(
    ack_index: int, committed: int
) -> None:
    node = lone_node([1, 2], term=2)
    become_leader(node)
    assert node.term == 3 and node.log.last_index() == 3
    node.step(AppendResponse(2, 1, node.term, ack_index, False, 0, 0))
    assert node.log.committed == committed


def _win(cluster: Cluster, node_id: int, attempts: int = 3) -> None:
    for _ in range(attempts):
        if cluster.node(node_id).role is not Role.LEADER:
            cluster.node(node_id).campaign()
        cluster.stabilize()
    assert cluster.node(node_id).role is Role.LEADER


def test_figure_8_an_old_term_entry_on_a_majority_is_not_committed_and_may_be_overwritten() -> None:
    """(a) S1 leads term 2 and gets entry 2 onto S2; (b) S5 leads term 3 with a different entry
    2; (c) S1 leads term 4 and copies its entry 2 to S3, so a majority holds it, but not its
    term-4 no-op: entry 2 is not committed; (d) S5 wins term 5 and overwrites entry 2."""
    voters = (1, 2, 3, 4, 5)
    logs = {n: (HardState(1, None, 0), entries_with_terms([1])) for n in voters}
    one_entry_per_append = RaftOptions(pre_vote=False, check_quorum=False, append_bytes_max=40)
    cluster = Cluster(voters, options=one_entry_per_append, logs=logs)
    # (a)
    cluster.node(1).campaign()
    for _ in range(2):
        cluster.flush()
        cluster.deliver()
    assert cluster.node(1).role is Role.LEADER and cluster.node(1).term == 2
    cluster.partition([1, 2], [3, 4, 5])
    cluster.stabilize()
    assert [cluster.log_terms(n) for n in (1, 2, 3)] == [[1, 2], [1, 2], [1]]
    # (b)
    cluster.down = {1}
    cluster.heal()
    cluster.node(5).campaign()
    for _ in range(2):
        cluster.flush()
        cluster.deliver()
    assert cluster.node(5).role is Role.LEADER and cluster.node(5).term == 3
    cluster.flush()
    cluster.queue = []  # S5's appends are lost.
    assert cluster.log_terms(5) == [1, 3]
    # (c)
    cluster.down = {5}
    cluster.restart(1)
    cluster.drop = lambda m: (
        isinstance(m, AppendRequest)
        and any(entry.term > 2 for entry in m.entries)
        and cluster.node(m.target).log.matches(m.previous_index, m.previous_term)
    )
    _win(cluster, 1)
    assert cluster.node(1).term == 4
    assert [cluster.log_terms(n) for n in (1, 2, 3)] == [[1, 2, 4], [1, 2], [1, 2]]
    progress = cluster.node(1).progress(3)
    assert progress is not None and progress.match == 2
    assert cluster.node(1).log.committed == 0
    # (d)
    cluster.heal()
    cluster.down = {1}
    cluster.restart(5)
    _win(cluster, 5)
    assert cluster.node(5).term == 5
    for node_id in (2, 3, 4, 5):
        assert cluster.log_terms(node_id) == [1, 3, 5]
    cluster.check_state_machine_safety()


def test_a_new_leader_holds_every_committed_entry() -> None:
    cluster = Cluster((1, 2, 3, 4, 5), options=PAPER_OPTIONS)
    cluster.elect(1)
    committed = [cluster.propose(1, f"{i}".encode()) for i in range(5)]
    cluster.down = {1}
    cluster.elect(4)
    for index in committed:
        assert cluster.node(4).log.entry(index) == cluster.node(1).log.entry(index)
    cluster.check_state_machine_safety()
