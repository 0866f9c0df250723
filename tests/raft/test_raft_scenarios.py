"""Cluster scenarios: pre-vote, check-quorum, conflict repair, snapshots, membership, leadership
transfer, reads, and restarts, driven through the in-memory harness with the default options."""

from __future__ import annotations

import pytest
from raft_harness import Cluster, drain, entries_with_terms

from memora.core import constants
from memora.core.errors import ValidationError
from memora.core.raft import (
    AppendRequest,
    AppendResponse,
    CommitNotice,
    ConfigurationChange,
    ConfigurationChangeError,
    ConfigurationChangeKind,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    NotLeaderError,
    ProposalDroppedError,
    RaftOptions,
    ReadState,
    Ready,
    Role,
    SnapshotChunk,
    SnapshotChunkResponse,
    SnapshotMeta,
    VoteRequest,
    VoteResponse,
)

ADD_VOTER = ConfigurationChangeKind.ADD_VOTER
ADD_LEARNER = ConfigurationChangeKind.ADD_LEARNER
PROMOTE_LEARNER = ConfigurationChangeKind.PROMOTE_LEARNER
REMOVE_NODE = ConfigurationChangeKind.REMOVE_NODE
ELECTION_TICKS = constants.election_timeout_ticks_max


def settle(cluster: Cluster, ticks: int = 2 * ELECTION_TICKS) -> None:
    cluster.tick(ticks)


# -- Elections. -----------------------------------------------------------------------------------


def test_a_cluster_elects_one_leader_by_ticking_alone() -> None:
    cluster = Cluster((1, 2, 3, 4, 5), seed=3)
    settle(cluster)
    leaders = [n for n in cluster.nodes.values() if n.role is Role.LEADER]
    assert len(leaders) == 1
    assert all(n.leader_id == leaders[0].node_id for n in cluster.nodes.values())


def test_pre_vote_keeps_a_rejoining_node_from_disrupting_the_leader() -> None:
    cluster = Cluster()
    cluster.elect(1)
    term = cluster.node(1).term
    cluster.isolate(3)
    cluster.tick(5 * ELECTION_TICKS, nodes=[3])
    assert cluster.node(3).term == term  # Pre-votes that fail change no term.
    assert cluster.node(3).counters["pre_campaigns"] >= 3
    cluster.heal()
    cluster.tick(ELECTION_TICKS)
    assert cluster.leader() == 1 and cluster.node(1).term == term
    assert cluster.node(3).leader_id == 1


def test_without_pre_vote_the_same_rejoining_node_deposes_the_leader() -> None:
    cluster = Cluster(options=RaftOptions(pre_vote=False, check_quorum=False))
    cluster.elect(1)
    term = cluster.node(1).term
    cluster.isolate(3)
    cluster.tick(5 * ELECTION_TICKS, nodes=[3])
    assert cluster.node(3).term > term + 3
    cluster.heal()
    cluster.tick(ELECTION_TICKS)
    assert cluster.node(1).term > term + 3  # The whole cluster went through a needless election.


def test_check_quorum_makes_a_leader_cut_off_from_the_quorum_step_down() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.isolate(1)
    cluster.tick(2 * constants.election_timeout_ticks_min, nodes=[1])
    assert cluster.node(1).role is Role.FOLLOWER
    assert cluster.node(1).counters["check_quorum_step_downs"] == 1


def test_without_check_quorum_a_cut_off_leader_keeps_believing() -> None:
    cluster = Cluster(options=RaftOptions(check_quorum=False))
    cluster.elect(1)
    cluster.isolate(1)
    cluster.tick(4 * constants.election_timeout_ticks_min, nodes=[1])
    assert cluster.node(1).role is Role.LEADER


def test_a_partitioned_minority_cannot_commit_and_the_majority_moves_on() -> None:
    cluster = Cluster((1, 2, 3, 4, 5))
    cluster.elect(1)
    cluster.partition([1, 2], [3, 4, 5])
    lost = cluster.propose(1, b"lost")
    assert cluster.node(1).log.committed < lost
    cluster.tick(3 * ELECTION_TICKS, nodes=[3, 4, 5])
    new_leader = cluster.leader()
    assert new_leader in (3, 4, 5)
    kept = cluster.propose(new_leader, b"kept")
    cluster.heal()
    settle(cluster)
    for node_id in cluster.nodes:
        assert cluster.states[node_id] == [b"kept"]
        assert cluster.node(node_id).log.committed >= kept
    cluster.check_state_machine_safety()


# -- Replication. ---------------------------------------------------------------------------------


def test_fast_back_off_repairs_a_long_divergent_follower_in_one_rejection() -> None:
    leader_log = entries_with_terms([1] + [3] * 40)
    divergent = entries_with_terms([1] + [2] * 60)
    cluster = Cluster(
        logs={
            1: (HardState(3, None, 1), leader_log),
            2: (HardState(3, None, 1), leader_log),
            3: (HardState(3, None, 1), divergent),
        }
    )
    cluster.elect(1)
    assert cluster.node(1).counters["append_rejections"] == 1
    appends_to_3 = [m for m in cluster.sent if isinstance(m, AppendRequest) and m.target == 3]
    assert len(appends_to_3) <= 3
    assert cluster.log_terms(3) == cluster.log_terms(1)
    cluster.check_state_machine_safety()


def test_batches_respect_the_byte_limit_and_the_pipeline_fills() -> None:
    options = RaftOptions(append_bytes_max=1024, inflight_messages_max=4)
    cluster = Cluster(options=options)
    cluster.elect(1)
    leader = cluster.node(1)
    for i in range(100):
        leader.propose(bytes(200) + bytes([i]))
    cluster.flush()
    appends = [m for m in cluster.queue if isinstance(m, AppendRequest) and m.target == 2]
    assert len(appends) == 4  # The inflight window is full.
    for message in appends:
        size = sum(entry.size_bytes() for entry in message.entries)
        assert size <= 1024 or len(message.entries) == 1
    cluster.stabilize()
    assert cluster.states[2] == cluster.states[1] and len(cluster.states[1]) == 100


def test_inflight_bytes_limit_holds_back_a_fast_pipeline() -> None:
    options = RaftOptions(append_bytes_max=1024, inflight_bytes_max=2048)
    cluster = Cluster(options=options)
    cluster.elect(1)
    for _ in range(50):
        cluster.node(1).propose(bytes(500))
    cluster.flush()
    appends = [m for m in cluster.queue if isinstance(m, AppendRequest) and m.target == 3]
    sent_bytes = sum(entry.size_bytes() for m in appends for entry in m.entries)
    assert sent_bytes < 2048 + 1024
    cluster.stabilize()
    assert len(cluster.states[3]) == 50


def test_a_follower_that_lost_messages_catches_up_after_heartbeats() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.drop = lambda m: isinstance(m, AppendRequest) and m.target == 3
    for i in range(10):
        cluster.propose(1, bytes([i]))
    assert cluster.states[3] == []
    cluster.heal()
    cluster.tick(2 * constants.heartbeat_interval_ticks)
    assert cluster.states[3] == cluster.states[1]


# -- Snapshots. -----------------------------------------------------------------------------------


def _far_behind_follower(options: RaftOptions) -> Cluster:
    cluster = Cluster(options=options)
    cluster.elect(1)
    cluster.isolate(3)
    for i in range(40):
        cluster.propose(1, f"entry {i:02d}".encode() * 2)
    for node_id in (1, 2):
        cluster.compact(node_id)
    assert cluster.node(1).log.first_index() > cluster.node(3).log.last_index() + 1
    return cluster


def test_a_far_behind_follower_catches_up_by_a_chunked_snapshot() -> None:
    cluster = _far_behind_follower(RaftOptions(snapshot_chunk_bytes=64))
    cluster.heal()
    cluster.tick(2 * constants.heartbeat_interval_ticks)
    chunks = [m for m in cluster.sent if isinstance(m, SnapshotChunk)]
    assert len(chunks) >= 10 and all(len(m.data) <= 64 for m in chunks)
    assert [m.offset for m in chunks] == sorted(m.offset for m in chunks)
    assert cluster.node(3).counters["snapshots_installed"] == 1
    assert cluster.states[3] == cluster.states[1]
    assert cluster.storages[3].latest_snapshot() == cluster.storages[1].latest_snapshot()
    cluster.propose(1, b"after the snapshot")
    assert cluster.states[3] == cluster.states[1]
    cluster.check_state_machine_safety()


def test_a_lost_snapshot_chunk_is_sent_again_after_heartbeats() -> None:
    cluster = _far_behind_follower(RaftOptions(snapshot_chunk_bytes=64))
    cluster.heal()
    lost: list[int] = []

    def lose_third_chunk_once(message: object) -> bool:
        if isinstance(message, SnapshotChunk) and message.offset == 128 and not lost:
            lost.append(message.offset)
            return True
        return False

    cluster.drop = lose_third_chunk_once
    cluster.tick(6 * constants.heartbeat_interval_ticks)
    assert lost == [128]
    assert cluster.states[3] == cluster.states[1]


def test_a_follower_restarted_mid_snapshot_starts_the_transfer_over() -> None:
    cluster = _far_behind_follower(RaftOptions(snapshot_chunk_bytes=64))
    cluster.heal()
    cluster.tick(constants.heartbeat_interval_ticks)
    for _ in range(4):  # A few chunks arrive, then node 3 crashes.
        cluster.flush()
        cluster.deliver()
    cluster.restart(3)
    cluster.tick(8 * constants.heartbeat_interval_ticks)
    assert cluster.states[3] == cluster.states[1]


def test_a_compacted_log_still_replicates_to_followers_that_kept_up() -> None:
    cluster = Cluster()
    cluster.elect(1)
    for i in range(5):
        cluster.propose(1, bytes([i]))
    cluster.compact(1)
    cluster.propose(1, b"next")
    assert cluster.node(1).counters["snapshots_sent"] == 0
    assert cluster.states[2] == cluster.states[3] == cluster.states[1]


# -- Membership. ----------------------------------------------------------------------------------


def _change(cluster: Cluster, leader: int, kind: ConfigurationChangeKind, node_id: int) -> int:
    index = cluster.node(leader).propose_configuration_change(ConfigurationChange(kind, node_id))
    cluster.stabilize()
    return index


def test_add_a_voter_that_joins_empty_and_then_counts_in_the_quorum() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.propose(1, b"before")
    cluster.add_node(4)
    _change(cluster, 1, ADD_VOTER, 4)
    assert cluster.states[4] == [b"before"]
    for node in cluster.nodes.values():
        assert node.configuration.voters == (1, 2, 3, 4)
    cluster.down = {2, 3}
    index = cluster.propose(1, b"two of four")
    assert cluster.node(1).log.committed < index  # Quorum of four is three.
    cluster.down = {3}
    cluster.tick(constants.heartbeat_interval_ticks)
    assert cluster.node(1).log.committed >= index


def test_a_learner_receives_the_log_but_never_votes_or_counts() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.add_node(4)
    _change(cluster, 1, ADD_LEARNER, 4)
    cluster.propose(1, b"x")
    assert cluster.states[4] == [b"x"]
    assert cluster.node(1).configuration.learners == (4,)
    cluster.down = {2, 3}
    index = cluster.propose(1, b"y")
    assert cluster.node(4).log.last_index() >= index
    assert cluster.node(1).log.committed < index
    cluster.down = {1, 2, 3}
    cluster.tick(3 * ELECTION_TICKS, nodes=[4])
    assert cluster.node(4).role is Role.FOLLOWER
    assert cluster.node(4).counters["pre_campaigns"] == 0


def test_promote_a_learner_to_voter() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.add_node(4)
    _change(cluster, 1, ADD_LEARNER, 4)
    _change(cluster, 1, PROMOTE_LEARNER, 4)
    assert cluster.node(4).configuration.voters == (1, 2, 3, 4)
    cluster.down = {1}
    cluster.tick(3 * ELECTION_TICKS)
    assert cluster.leader() in (2, 3, 4)


def test_remove_a_follower() -> None:
    cluster = Cluster()
    cluster.elect(1)
    _change(cluster, 1, REMOVE_NODE, 3)
    assert cluster.node(1).progress(3) is None
    assert cluster.node(3).configuration.voters == (1, 2)
    cluster.down = {3}
    cluster.propose(1, b"two voters")
    assert cluster.states[2] == [b"two voters"]
    cluster.down = set()
    cluster.tick(3 * ELECTION_TICKS, nodes=[3])  # A removed node never campaigns.
    assert cluster.node(3).counters["pre_campaigns"] == 0


def test_remove_the_leader_which_steps_down_once_the_change_commits() -> None:
    cluster = Cluster()
    cluster.elect(1)
    _change(cluster, 1, REMOVE_NODE, 1)
    assert cluster.node(1).role is Role.FOLLOWER
    assert cluster.node(1).counters["removed_leader_step_downs"] == 1
    new_leader = cluster.leader()
    assert new_leader in (2, 3)
    cluster.propose(new_leader, b"after")
    assert cluster.states[2] == cluster.states[3] == [b"after"]
    cluster.tick(3 * ELECTION_TICKS)
    assert cluster.node(1).role is Role.FOLLOWER and cluster.leader() == new_leader


def test_a_removed_leader_keeps_replicating_until_its_removal_commits() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.node(1).propose_configuration_change(ConfigurationChange(REMOVE_NODE, 1))
    leader = cluster.node(1)
    assert leader.role is Role.LEADER and not leader.configuration.is_voter(1)
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"from a removed leader")
    cluster.stabilize()
    assert leader.soft_state().role is Role.FOLLOWER


def test_one_configuration_change_at_a_time_and_only_after_a_commit_in_the_term() -> None:
    cluster = Cluster()
    leader = cluster.win_without_commit(1)
    with pytest.raises(ProposalDroppedError):  # Its no-op is not committed yet.
        leader.propose_configuration_change(ConfigurationChange(ADD_LEARNER, 4))
    cluster.stabilize()
    leader.propose_configuration_change(ConfigurationChange(ADD_LEARNER, 4))
    with pytest.raises(ProposalDroppedError):
        leader.propose_configuration_change(ConfigurationChange(ADD_LEARNER, 5))
    cluster.stabilize()
    with pytest.raises(ConfigurationChangeError):
        leader.propose_configuration_change(ConfigurationChange(ADD_VOTER, 2))
    with pytest.raises(ConfigurationChangeError):
        leader.propose_configuration_change(ConfigurationChange(PROMOTE_LEARNER, 3))
    with pytest.raises(ConfigurationChangeError):
        leader.propose_configuration_change(ConfigurationChange(REMOVE_NODE, 9))
    with pytest.raises(NotLeaderError):
        cluster.node(2).propose_configuration_change(ConfigurationChange(REMOVE_NODE, 3))


def test_a_configuration_takes_effect_when_appended_and_reverts_when_truncated() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.node(1).propose_configuration_change(ConfigurationChange(ADD_LEARNER, 4))
    cluster.flush()
    cluster.deliver(lambda m: m.target == 2)
    follower = cluster.node(2)
    assert follower.configuration.learners == (4,)  # In the log, not yet committed.
    assert follower.log.committed < follower.log.last_index()
    # A new leader of a later term without that entry overwrites it: the change is undone.
    entry = follower.log.entry(follower.log.last_index())
    replacement = entries_with_terms([follower.term + 1], entry.index)
    follower.step(
        AppendRequest(
            3,
            2,
            follower.term + 1,
            entry.index - 1,
            follower.log.term_at(entry.index - 1) or 0,
            tuple(replacement),
            0,
        )
    )
    assert not follower.configuration.learners
    assert follower.counters["log_truncations"] == 1


# -- Leadership transfer. -------------------------------------------------------------------------


def test_leadership_transfer_to_an_up_to_date_follower() -> None:
    cluster = Cluster()
    cluster.elect(1)
    term = cluster.node(1).term
    cluster.node(1).transfer_leadership(2)
    cluster.stabilize()
    assert cluster.leader() == 2 and cluster.node(2).term == term + 1
    assert cluster.node(1).role is Role.FOLLOWER and cluster.node(1).leader_id == 2
    assert cluster.node(2).counters["pre_campaigns"] == 0


def test_leadership_transfer_catches_a_lagging_target_up_first() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.isolate(3)
    for i in range(5):
        cluster.propose(1, bytes([i]))
    cluster.heal()
    cluster.node(1).transfer_leadership(3)
    with pytest.raises(ProposalDroppedError):
        cluster.node(1).propose(b"during the transfer")
    cluster.stabilize()
    assert cluster.leader() == 3
    assert cluster.states[3] == [bytes([i]) for i in range(5)]


def test_a_leadership_transfer_to_an_unreachable_target_is_abandoned() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.isolate(2)
    cluster.propose(1, b"2 misses this")
    cluster.node(1).transfer_leadership(2)
    assert cluster.node(1).transferee() == 2
    cluster.tick(constants.election_timeout_ticks_min, nodes=[1, 3])
    assert cluster.node(1).transferee() is None
    assert cluster.node(1).counters["transfers_abandoned"] == 1
    cluster.propose(1, b"accepted again")
    assert cluster.leader() == 1


def test_transfer_needs_a_leader_and_a_voter_target() -> None:
    cluster = Cluster()
    cluster.elect(1)
    with pytest.raises(NotLeaderError):
        cluster.node(2).transfer_leadership(3)
    with pytest.raises(ValidationError, match="not a voter"):
        cluster.node(1).transfer_leadership(7)


# -- Reads. ---------------------------------------------------------------------------------------


def test_read_index_on_the_leader_waits_for_a_heartbeat_round() -> None:
    cluster = Cluster()
    cluster.elect(1)
    index = cluster.propose(1, b"x")
    cluster.node(1).read_index(7)
    ready = drain_ready(cluster, 1)
    assert ready.reads == ()
    assert {m.target for m in ready.messages if isinstance(m, HeartbeatRequest)} == {2, 3}
    cluster.stabilize()
    assert cluster.reads[1] == [ReadState(7, index)]


def drain_ready(cluster: Cluster, node_id: int) -> Ready:
    """Process one Ready through the harness and return it."""
    node = cluster.node(node_id)
    ready = node.ready()
    cluster.storages[node_id].save(ready.hard_state, ready.entries, ready.snapshot)
    cluster.queue.extend(ready.messages)
    cluster.sent.extend(ready.messages)
    for entry in ready.committed:
        cluster.applied[node_id] = entry.index
        cluster.committed_log[node_id].append(entry)
        if entry.kind.name == "NORMAL":
            cluster.states[node_id].append(entry.data)
    cluster.reads[node_id].extend(ready.reads)
    node.advance(ready)
    return ready


def test_many_reads_share_one_heartbeat_round() -> None:
    cluster = Cluster()
    cluster.elect(1)
    for request_id in range(10):
        cluster.node(1).read_index(request_id)
    ready = drain_ready(cluster, 1)
    assert len([m for m in ready.messages if isinstance(m, HeartbeatRequest)]) == 2
    cluster.stabilize()
    assert [read.request_id for read in cluster.reads[1]] == list(range(10))


def test_read_index_on_a_single_voter_is_immediate() -> None:
    cluster = Cluster((1,))
    cluster.elect(1)
    index = cluster.propose(1, b"x")
    cluster.node(1).read_index(3)
    ready = drain_ready(cluster, 1)
    assert ready.reads == (ReadState(3, index),)


def test_a_follower_forwards_a_read_and_gets_the_leaders_commit_index() -> None:
    cluster = Cluster()
    cluster.elect(1)
    index = cluster.propose(1, b"x")
    cluster.node(2).read_index(11)
    cluster.stabilize()
    assert cluster.reads[2] == [ReadState(11, index)]


def test_a_read_on_a_new_leader_waits_until_its_term_has_a_commit() -> None:
    cluster = Cluster()
    leader = cluster.win_without_commit(1)
    assert leader.log.committed < leader.log.last_index()
    leader.read_index(5)
    cluster.stabilize()
    assert cluster.reads[1] == [ReadState(5, leader.log.last_index())]


def test_a_read_without_a_leader_is_refused() -> None:
    cluster = Cluster()
    with pytest.raises(NotLeaderError):
        cluster.node(2).read_index(1)


@pytest.mark.parametrize("check_quorum", [True, False])
def test_read_index_under_partition_an_old_leader_cannot_serve_a_read(check_quorum: bool) -> None:
    cluster = Cluster(options=RaftOptions(check_quorum=check_quorum))
    cluster.elect(1)
    cluster.propose(1, b"old")
    cluster.isolate(1)
    cluster.node(1).read_index(1)  # Must never be answered: 1 cannot confirm its leadership.
    cluster.tick(3 * ELECTION_TICKS, nodes=[2, 3])
    new_leader = cluster.leader()
    assert new_leader in (2, 3)
    index = cluster.propose(new_leader, b"new")
    cluster.tick(3 * ELECTION_TICKS, nodes=[1])
    assert cluster.reads[1] == []
    cluster.node(new_leader).read_index(2)
    cluster.stabilize()
    assert cluster.reads[new_leader] == [ReadState(2, index)]
    cluster.heal()
    settle(cluster)
    assert cluster.reads[1] == []


def test_a_lease_read_is_answered_at_once_while_the_lease_holds() -> None:
    cluster = Cluster()
    cluster.elect(1)
    index = cluster.propose(1, b"x")
    cluster.tick(constants.heartbeat_interval_ticks)  # A quorum acknowledges a heartbeat round.
    cluster.node(1).read_index(4, lease=True)
    ready = drain_ready(cluster, 1)
    assert ready.reads == (ReadState(4, index),)
    assert not [m for m in ready.messages if isinstance(m, HeartbeatRequest)]


def test_a_lease_read_falls_back_to_read_index_once_the_lease_expired() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.tick(constants.heartbeat_interval_ticks)
    cluster.isolate(1)
    lease_ticks = constants.election_timeout_ticks_min - constants.lease_drift_ticks
    cluster.tick(lease_ticks, nodes=[1])
    assert cluster.node(1).role is Role.LEADER
    cluster.node(1).read_index(4, lease=True)
    cluster.tick(1, nodes=[1])
    assert cluster.reads[1] == []


def test_a_lease_read_after_a_transfer_began_waits_for_a_heartbeat_round() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.tick(constants.heartbeat_interval_ticks)
    cluster.node(1).transfer_leadership(2)
    cluster.flush()
    cluster.queue = []  # TimeoutNow is lost; the lease is still gone for this term.
    cluster.node(1).read_index(4, lease=True)
    ready = drain_ready(cluster, 1)
    assert ready.reads == ()


# -- Restarts. ------------------------------------------------------------------------------------


def test_a_simultaneous_restart_of_the_whole_cluster_keeps_every_committed_entry() -> None:
    cluster = Cluster((1, 2, 3, 4, 5))
    cluster.elect(1)
    committed = [cluster.propose(1, f"entry {i}".encode()) for i in range(20)]
    cluster.compact(2)
    last_commit = cluster.node(1).log.committed
    before = {index: cluster.node(1).log.entry(index) for index in committed}
    cluster.restart_all()
    for node_id, node in cluster.nodes.items():
        assert node.term == cluster.storages[node_id].hard_state().term
        assert node.log.committed >= committed[0]
    settle(cluster)
    leader = cluster.leader()
    assert leader is not None
    leader_log = cluster.node(leader).log
    for index, entry in before.items():
        assert index <= leader_log.snapshot_index or leader_log.entry(index) == entry
    cluster.propose(leader, b"after the restart")
    for node_id in cluster.nodes:
        assert cluster.states[node_id][:20] == [f"entry {i}".encode() for i in range(20)]
        assert cluster.node(node_id).log.committed > last_commit
    cluster.check_state_machine_safety()


def test_a_vote_survives_a_restart() -> None:
    cluster = Cluster(options=RaftOptions(pre_vote=False))
    node = cluster.node(1)
    node.step(VoteRequest(2, 1, 5, False, 1, 1, False))
    cluster.process_ready(1)
    cluster.queue = []
    node = cluster.restart(1)
    assert (node.term, node.vote) == (5, 2)
    node.step(VoteRequest(3, 1, 5, False, 1, 1, False))
    (response,) = drain(node).messages
    assert not response.granted  # type: ignore[union-attr]


def test_a_restart_between_ready_and_advance_loses_nothing_committed() -> None:
    cluster = Cluster()
    cluster.elect(1)
    for i in range(3):
        cluster.propose(1, bytes([i]))
    cluster.node(1).propose(b"in flight")
    cluster.flush()
    cluster.deliver()
    ready = cluster.node(2).ready()  # Node 2 crashes before persisting this Ready.
    assert ready.entries
    cluster.restart(2)
    settle(cluster)
    assert cluster.states[2] == cluster.states[1] == [b"\x00", b"\x01", b"\x02", b"in flight"]


def test_a_snapshot_completed_after_the_log_caught_up_is_ignored() -> None:
    cluster = Cluster()
    cluster.elect(1)
    follower = cluster.node(2)
    term = follower.term
    meta = SnapshotMeta(follower.log.last_index() + 1, term, cluster.configuration)
    follower.step(SnapshotChunk(1, 2, term, meta, 4, 0, b"ab"))
    assert [type(m) for m in drain(follower).messages] == [SnapshotChunkResponse]
    entries = tuple(entries_with_terms([term, term], follower.log.last_index() + 1))
    previous = follower.log.last_index()
    follower.step(AppendRequest(1, 2, term, previous, follower.log.last_term(), entries, 4))
    assert follower.log.committed >= meta.index
    follower.step(SnapshotChunk(1, 2, term, meta, 4, 2, b"cd"))
    assert follower.counters["snapshots_installed"] == 0
    assert follower.log.pending_snapshot is None


def test_a_read_in_a_new_leadership_never_rides_on_an_earlier_heartbeat_round() -> None:
    cluster = Cluster(options=RaftOptions(pre_vote=False))
    leader = cluster.elect(1)
    leader.read_index(1)  # Round 1 is queued, not sent yet.
    leader.step(HeartbeatRequest(2, 1, leader.term + 1, 0, 0))  # Deposed before any Ready.
    leader.campaign()
    for voter in (2, 3):
        leader.step(VoteResponse(voter, 1, leader.term, False, True))
    assert leader.role is Role.LEADER
    leader.step(AppendResponse(2, 1, leader.term, leader.log.last_index(), False, 0, 0))
    leader.read_index(2)
    leader.step(HeartbeatResponse(2, 1, leader.term, 0))  # An answer to no round of this term.
    assert drain(leader).reads == ()


def test_a_message_at_the_largest_term_is_refused() -> None:
    cluster = Cluster()
    node = cluster.node(2)
    node.step(HeartbeatRequest(1, 2, constants.raft_term_max, 0, 0))
    assert node.counters["rejected_term_out_of_range"] == 1
    assert node.term == 1


@pytest.mark.parametrize("lost", [AppendRequest, AppendResponse])
def test_a_window_full_of_lost_messages_recovers_at_the_next_heartbeat(lost: type) -> None:
    cluster = Cluster(options=RaftOptions(append_bytes_max=64, inflight_messages_max=2))
    cluster.elect(1)
    cluster.drop = lambda m: isinstance(m, lost) and 3 in (m.source, m.target)
    for i in range(6):
        cluster.propose(1, bytes([i]) * 20)
    progress = cluster.node(1).progress(3)
    assert progress is not None and progress.inflights.full()
    cluster.heal()
    cluster.tick(2 * constants.heartbeat_interval_ticks)
    assert cluster.states[3] == cluster.states[1] and len(cluster.states[3]) == 6


def test_a_commit_reaches_the_followers_in_notices_they_do_not_answer() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.sent.clear()
    cluster.propose(1, b"x")
    kinds = [(type(m).__name__, m.source, m.target) for m in cluster.sent]
    assert kinds == [
        ("AppendRequest", 1, 2),
        ("AppendRequest", 1, 3),
        ("AppendResponse", 2, 1),
        ("AppendResponse", 3, 1),
        ("CommitNotice", 1, 2),
        ("CommitNotice", 1, 3),
    ]
    assert all(m.commit == 3 for m in cluster.sent if isinstance(m, CommitNotice))
    assert cluster.states == {1: [b"x"], 2: [b"x"], 3: [b"x"]}


def test_a_commit_rides_the_next_append_when_a_writer_proposes_at_once() -> None:
    """The Ready that applies a commit holds its notices back for one Ready; a proposal made
    meanwhile (by a writer that apply answered) carries the commit in its appends instead."""
    cluster = Cluster()
    leader = cluster.elect(1)
    cluster.propose(1, b"x", stabilize=False)
    cluster.process_ready(1)
    cluster.deliver()  # The appends.
    cluster.flush()  # The followers save and answer.
    cluster.deliver()  # The answers: "x" is committed.
    cluster.sent.clear()
    applying = leader.ready()
    assert [entry.data for entry in applying.committed] == [b"x"]
    assert not applying.messages  # No notices yet.
    cluster.finish_ready(1, applying)
    second = cluster.propose(1, b"y", stabilize=False)
    assert leader.has_ready()
    cluster.process_ready(1)
    appends = [m for m in cluster.sent if m.source == 1]
    assert [(type(m), m.target) for m in appends] == [(AppendRequest, 2), (AppendRequest, 3)]
    assert all(m.commit == second - 1 for m in appends if isinstance(m, AppendRequest))
    cluster.stabilize()
    assert cluster.states == {node: [b"x", b"y"] for node in (1, 2, 3)}


def test_held_back_notices_go_in_the_next_ready_when_nothing_else_is_sent() -> None:
    cluster = Cluster()
    leader = cluster.elect(1)
    cluster.propose(1, b"x", stabilize=False)
    cluster.process_ready(1)
    cluster.deliver()
    cluster.flush()
    cluster.deliver()
    cluster.sent.clear()
    cluster.finish_ready(1, leader.ready())
    assert leader.has_ready()
    notices = leader.ready().messages
    assert [(type(m), m.target) for m in notices] == [(CommitNotice, 2), (CommitNotice, 3)]


def test_a_notice_commits_no_further_than_the_follower_holds() -> None:
    cluster = Cluster()
    cluster.elect(1)
    follower = cluster.node(2)
    last = follower.log.last_index()
    follower.step(CommitNotice(1, 2, follower.term, last + 5))
    ready = drain(follower)
    assert follower.log.committed == last and not ready.messages


def test_a_stale_leaders_notice_is_answered_with_the_newer_term() -> None:
    cluster = Cluster(options=RaftOptions(check_quorum=True))
    cluster.elect(1)
    follower = cluster.node(2)
    follower.step(CommitNotice(3, 2, follower.term - 1, 1))
    (answer,) = drain(follower).messages
    assert isinstance(answer, AppendResponse) and answer.term == follower.term
    assert follower.counters["rejected_stale_term"] == 1
