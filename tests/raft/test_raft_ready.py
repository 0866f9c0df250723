"""The Ready contract: one outstanding Ready at a time, advanced once, and steps between `ready()`
and `advance()` are safe (entries replaced meanwhile are persisted again). Also the PRNG."""

from __future__ import annotations

import pytest
from raft_harness import Cluster, drain, entries_with_terms

from memora.core.prng import Prng
from memora.core.raft import AppendRequest, HardState, Ready


def test_ready_cannot_be_taken_twice_before_advance() -> None:
    cluster = Cluster()
    node = cluster.node(1)
    node.campaign()
    node.ready()
    assert not node.has_ready()
    with pytest.raises(AssertionError):
        node.ready()


def test_advance_takes_the_last_ready_exactly_once() -> None:
    cluster = Cluster()
    node = cluster.node(1)
    node.campaign()
    ready = node.ready()
    with pytest.raises(AssertionError):
        node.advance(Ready(None, None, (), (), (), (), ready.soft_state))
    node.advance(ready)
    with pytest.raises(AssertionError):
        node.advance(ready)


def test_an_unchanged_hard_state_is_not_persisted_again() -> None:
    cluster = Cluster()
    node = cluster.node(1)
    node.campaign()
    first = drain(node)
    assert first.hard_state is None  # A pre-vote changes nothing durable.
    assert not node.has_ready()
    node.step(AppendRequest(2, 1, 5, 1, 1, (), 1))
    assert drain(node).hard_state == HardState(term=5, vote=None, commit=1)
    node.tick()
    assert drain(node).hard_state is None


def test_entries_replaced_between_ready_and_advance_are_persisted_again() -> None:
    cluster = Cluster()
    node = cluster.node(2)
    storage = cluster.storages[2]
    node.step(AppendRequest(1, 2, 2, 1, 1, tuple(entries_with_terms([2, 2, 2], 2)), 1))
    ready = cluster.begin_ready(2)
    assert [entry.index for entry in ready.entries] == [2, 3, 4]
    # Before the driver advances, a new leader replaces entries 3 and 4.
    node.step(AppendRequest(3, 2, 3, 2, 2, tuple(entries_with_terms([3], 3)), 1))
    cluster.finish_ready(2, ready)
    again = cluster.begin_ready(2)
    assert [(entry.index, entry.term) for entry in again.entries] == [(3, 3)]
    cluster.finish_ready(2, again)
    assert [(entry.index, entry.term) for entry in storage.entries()] == [(1, 1), (2, 2), (3, 3)]
    assert node.log.stable_index == 3


def test_prng_is_deterministic_and_stays_in_bounds() -> None:
    first, second = Prng(42), Prng(42)
    assert [first.next_u64() for _ in range(5)] == [second.next_u64() for _ in range(5)]
    prng = Prng(7)
    values = [prng.randint(15, 30) for _ in range(2_000)]
    assert min(values) == 15 and max(values) == 30
    counts = [values.count(value) for value in range(15, 31)]
    assert min(counts) > 2_000 / 16 / 2  # Roughly uniform.
    assert prng.randint(5, 5) == 5
    assert Prng(1).fork().next_u64() != Prng(2).fork().next_u64()


def test_prng_matches_the_splitmix64_reference() -> None:
    # The first outputs of SplitMix64 seeded with 0 (from the reference implementation).
    prng = Prng(0)
    assert prng.next_u64() == 0xE220A8397B1DCDAF
    assert prng.next_u64() == 0x6E789E6AA1B965F4


def test_a_leaders_appends_may_go_out_before_its_own_entries_are_durable() -> None:
    cluster = Cluster()
    leader = cluster.elect(1)
    leader.propose(b"x")
    ready = leader.ready()
    assert ready.appends_may_precede_persist
    early = ready.messages_before_persist()
    assert {m.target for m in early} == {2, 3}
    assert all(isinstance(m, AppendRequest) and m.entries for m in early)
    assert set(ready.messages_after_persist()).isdisjoint(early)
    # Both followers write and acknowledge while the leader's own write is still under way.
    cluster.queue.extend(early)
    cluster.deliver()
    for follower in (2, 3):
        cluster.process_ready(follower)
    cluster.deliver()
    index = ready.entries[-1].index
    assert leader.log.committed == index  # Counted: the followers' copies are a quorum.
    assert ready.committed == ()  # But applied, answered and announced only after this Ready.
    cluster.storages[1].save(ready.hard_state, ready.entries, ready.snapshot)
    cluster.finish_ready(1, ready)
    assert [entry.index for entry in drain(leader).committed] == [index]


def test_acknowledgments_votes_and_a_new_terms_messages_wait_for_the_disk() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.node(1).propose(b"x")
    cluster.process_ready(1)
    cluster.deliver()  # The appends reach the followers; their Readies hold the acknowledgments.
    follower = cluster.node(2)
    follower_ready = follower.ready()
    assert follower_ready.entries and follower_ready.messages
    assert not follower_ready.appends_may_precede_persist
    assert follower_ready.messages_before_persist() == ()
    assert follower_ready.messages_after_persist() == follower_ready.messages
    cluster.storages[2].save(follower_ready.hard_state, follower_ready.entries, None)
    cluster.finish_ready(2, follower_ready)
    candidate = cluster.node(3)
    candidate.campaign()
    campaign = candidate.ready()
    assert campaign.messages and not campaign.appends_may_precede_persist
    assert campaign.messages_before_persist() == ()
