"""Recovering mode: a node whose disk lost entries it had acknowledged neither votes nor campaigns
until its commit index is back to the last index it had made durable (`recovering_to`).

The cluster scenario shows why: without the mode, the node's vote elects a leader that lacks a
committed entry; with it, nobody is elected until a node holding the entry is back. The unit tests
pin each rule down on one node.
"""

from __future__ import annotations

import pytest
from raft_harness import Cluster, drain, entries_with_terms

from memora.core import constants
from memora.core.prng import Prng
from memora.core.raft import (
    AppendRequest,
    AppendResponse,
    Configuration,
    EntryKind,
    HardState,
    HeartbeatRequest,
    Message,
    RaftNode,
    RaftOptions,
    Role,
    SnapshotChunk,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from memora.core.raft.progress import Inflights, Progress

ELECTION_TICKS = constants.election_timeout_ticks_max
VOTERS = (1, 2, 3)


# -- The cluster scenario. ------------------------------------------------------------------------


def _b_loses_an_entry_it_acknowledged(*, recovering: bool) -> tuple[Cluster, int]:
    """A (1) leads and commits X with B (2) while C (3) is cut off; then A crashes and B's disk
    loses X. B restarts (in recovering mode if `recovering`), and C, which never got X, times
    out next to B. Returns the cluster and X's index."""
    cluster = Cluster(VOTERS)
    cluster.elect(1)
    cluster.isolate(3)
    x_index = cluster.propose(1, b"X")
    assert cluster.node(1).log.committed == x_index  # Committed by A and B's acknowledgment.
    assert cluster.node(2).log.entry(x_index).data == b"X"
    assert cluster.node(3).log.last_index() < x_index
    cluster.down = {1}
    recovering_to = cluster.lose_entries(2, x_index)
    assert recovering_to == x_index
    cluster.restart(2, recovering_to=recovering_to if recovering else None)
    assert cluster.node(2).log.last_index() == x_index - 1
    cluster.heal()
    cluster.tick(3 * ELECTION_TICKS, nodes=[3])
    return cluster, x_index


def test_without_recovering_mode_the_forgetful_vote_elects_a_leader_without_a_committed_entry() -> (
    None
):
    cluster, x_index = _b_loses_an_entry_it_acknowledged(recovering=False)
    assert cluster.leader() == 3  # Elected by B's vote, though C never had X.
    cluster.propose(3, b"Y")
    x_entry = cluster.node(1).log.entry(x_index)
    assert x_entry.data == b"X" and x_entry in cluster.committed_log[1]
    replaced = cluster.node(2).log.entry(x_index)
    assert replaced.kind is EntryKind.NO_OP and replaced in cluster.committed_log[2]
    assert cluster.states[1] == [b"X"] and cluster.states[2] == cluster.states[3] == [b"Y"]
    with pytest.raises(AssertionError):
        cluster.check_state_machine_safety()  # State machine safety is broken.


def test_in_recovering_mode_no_leader_without_x_is_elected_and_the_node_catches_up() -> None:
    cluster, x_index = _b_loses_an_entry_it_acknowledged(recovering=True)
    b, c = cluster.node(2), cluster.node(3)
    assert cluster.leader() is None and c.counters["pre_campaigns"] >= 2
    cluster.tick(3 * ELECTION_TICKS, nodes=[2, 3])  # B's own timer fires too.
    assert cluster.leader() is None
    assert b.recovering_to == x_index and b.role is Role.FOLLOWER
    assert b.counters["recovering_vote_refused"] > 0
    assert b.counters["recovering_campaign_skipped"] > 0
    assert not [m for m in cluster.sent if isinstance(m, VoteRequest) and m.source == 2]
    # A comes back from its crash: only a leader holding X can be elected, and B catches up.
    cluster.down = set()
    cluster.restart(1)
    cluster.tick(5 * ELECTION_TICKS)
    leader = cluster.leader()
    assert leader == 1
    assert cluster.node(leader).log.entry(x_index).data == b"X"
    assert b.recovering_to is None and b.counters["recovering_left"] == 1
    assert b.log.entry(x_index).data == b"X" and b.log.committed >= x_index
    cluster.propose(leader, b"Y")
    assert cluster.states[1] == cluster.states[2] == cluster.states[3] == [b"X", b"Y"]
    cluster.check_state_machine_safety()


# -- One node. ------------------------------------------------------------------------------------


def recovering_node(
    recovering_to: int | None, *, terms: tuple[int, ...] = (1, 1), commit: int = 1
) -> RaftNode:
    """Node 1 of three at term 1, whose log holds entries of `terms`: by default it had three
    entries durable and lost the third."""
    return RaftNode(
        1,
        configuration=Configuration(VOTERS),
        hard_state=HardState(term=1, vote=None, commit=commit),
        snapshot_meta=SnapshotMeta(0, 0, Configuration(VOTERS)),
        entries=entries_with_terms(list(terms)),
        prng=Prng(5),
        options=RaftOptions(),
        recovering_to=recovering_to,
    )


def sent(node: RaftNode) -> tuple[Message, ...]:
    return drain(node).messages


@pytest.mark.parametrize("pre_vote", [True, False])
def test_a_recovering_node_refuses_votes_and_pre_votes(pre_vote: bool) -> None:
    # The candidate's log (index 3, term 1) is as up to date as the node's was before the loss.
    request = VoteRequest(2, 1, 2, pre_vote, 3, 1, False)
    normal = recovering_node(None)
    normal.step(request)
    assert sent(normal) == (VoteResponse(1, 2, 2, pre_vote, True),)

    node = recovering_node(3)
    node.step(request)
    (response,) = sent(node)
    assert isinstance(response, VoteResponse) and not response.granted
    assert response.pre_vote == pre_vote
    assert node.vote is None and node.counters["recovering_vote_refused"] == 1
    assert node.term == (1 if pre_vote else 2)  # A real vote's term is still taken up.
    assert node.recovering_to == 3


def test_a_recovering_node_never_campaigns() -> None:
    node = recovering_node(3)
    for _ in range(3 * ELECTION_TICKS):
        node.tick()
    assert node.role is Role.FOLLOWER and node.term == 1
    timer_skips = node.counters["recovering_campaign_skipped"]
    assert timer_skips >= 3
    node.campaign()
    node.step(TimeoutNow(2, 1, 1))
    assert node.counters["recovering_campaign_skipped"] == timer_skips + 2
    assert node.role is Role.FOLLOWER and node.term == 1
    assert not [m for m in sent(node) if isinstance(m, VoteRequest)]
    assert node.counters["campaigns"] == node.counters["pre_campaigns"] == 0


def _to_commit(node: RaftNode, how: str, commit: int) -> None:
    """The leader (2, term 2) brings the node's commit index to `commit`."""
    if how == "append":
        last = node.log.last_index()
        node.step(AppendRequest(2, 1, 2, last, node.log.last_term(), (), commit))
    elif how == "heartbeat":
        node.step(HeartbeatRequest(2, 1, 2, commit, 1))
    else:
        meta = SnapshotMeta(commit, 2, Configuration(VOTERS))
        node.step(SnapshotChunk(2, 1, 2, meta, 4, 0, b"data"))


@pytest.mark.parametrize("how", ["append", "heartbeat", "snapshot"])
def test_a_recovering_node_acks_and_leaves_the_mode_exactly_when_commit_reaches_it(
    how: str,
) -> None:
    node = recovering_node(4)
    entries = tuple(entries_with_terms([2, 2, 2], first_index=3))
    node.step(AppendRequest(2, 1, 2, 2, 1, entries, 2))
    assert sent(node) == (AppendResponse(1, 2, 2, 5, False, 0, 0),)  # Acknowledged as usual.
    assert node.log.committed == 2 and node.recovering_to == 4
    if how != "snapshot":
        node.step(HeartbeatRequest(2, 1, 2, 3, 1))
        assert node.log.committed == 3 and node.recovering_to == 4
    _to_commit(node, how, 4 if how != "snapshot" else 6)
    assert node.log.committed >= 4 and node.recovering_to is None
    assert node.counters["recovering_left"] == 1
    drain(node)
    # Back to normal: it votes again (for a candidate with its own log, sent by a transfer so
    # that the leader's lease does not stand in the way) ...
    node.step(VoteRequest(3, 1, 3, False, node.log.last_index(), node.log.last_term(), True))
    votes = [m for m in sent(node) if isinstance(m, VoteResponse)]
    assert votes == [VoteResponse(1, 3, 3, False, True)] and node.vote == 3
    # ... and campaigns when its timer fires.
    for _ in range(2 * ELECTION_TICKS):
        node.tick()
    assert node.counters["pre_campaigns"] >= 1


def test_a_node_whose_commit_already_covers_recovering_to_is_not_recovering() -> None:
    assert recovering_node(1).recovering_to is None
    assert recovering_node(2, terms=(1, 1, 1), commit=2).recovering_to is None
    assert recovering_node(3, terms=(1, 1, 1), commit=2).recovering_to == 3
    assert recovering_node(None).recovering_to is None


# -- The leader's view of a peer that lost entries. -----------------------------------------------


def test_a_probe_rejected_at_the_peers_acknowledged_index_forgets_that_match() -> None:
    """A peer that acknowledged index 5 and then lost it (it restarted recovering) rejects the
    probe at 5. Keeping match 5 would hold `next` at 6 and probe 5 forever; the leader forgets
    the match and probes from the peer's hint."""
    progress = Progress(6, is_learner=False, inflights=Inflights(4, 1024))
    assert progress.maybe_update(5) and progress.match == 5
    progress.become_probe()
    assert progress.next == 6
    assert progress.maybe_decrement_to(rejected=5, match_hint=2)
    assert (progress.match, progress.next) == (0, 3)
    # A rejection of an older probe than the one in flight is stale and changes nothing.
    assert not progress.maybe_decrement_to(rejected=5, match_hint=1)
    assert (progress.match, progress.next) == (0, 3)
