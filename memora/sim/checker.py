"""The simulator's checkers, run at every step of every node.

Safety (Raft's five properties and then some):
- election safety: at most one leader per term;
- vote safety, which election safety rests on: a node grants its vote to at most one candidate
  per term, across restarts too (it must persist the vote before the grant leaves);
- log matching: an (index, term) pair always names the same data, after the same previous term,
  and at the end every two logs agree up to their common point;
- leader completeness: a new leader's log holds every entry committed before it;
- state machine safety: one canonical applied history, hash-chained; every replica applies
  exactly it, and has the reference model's `state_hash()` after each entry;
- a record recovered from disk is one the node wrote, bit for bit: the CRCs caught every
  corruption, so a corrupted record is never applied (nor voted on, nor sent);
- term never goes back, across restarts too (against what was durable); commit never goes back
  within a process life;
- the commit rule: a leader's commit index moves only onto an entry of its own term (Figure 8);
- a committed entry is durable on a quorum of voters when the leader counts it committed, and no
  voter lacking it could win an election: its log is not as up to date as a quorum's disks
  (catches an unsafe commit at once, before some later leader overwrites it);
- no phantom commits: every applied client entry was proposed by some leader;
- exactly-once sessions, and every reply: each replica's result for an entry equals the reference
  model's (a Replica without injected bugs fed the canonical log), and so does what the client
  was told. Reads are re-run on the reference at the index they were served at.

A violation raises `Violation`, which ends the run as a correctness failure.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memora.core.raft import (
    Configuration,
    EntryKind,
    HardState,
    LogEntry,
    Ready,
    Role,
    VoteResponse,
)
from memora.core.replica import Replica
from memora.core.types import Applied, Rejected, Result
from memora.sim.protocol import Query, run_query

if TYPE_CHECKING:
    from memora.sim.node import SimNode
    from memora.sim.workload import Operation


class Violation(Exception):
    """A correctness property failed. `kind` names the property."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def same_result(a: Result | None, b: Result | None) -> bool:
    """Results are equal when both applied with equal values, or both were rejected with the
    same error type, message and field (exceptions do not compare by value)."""
    if isinstance(a, Applied) and isinstance(b, Applied):
        return a.index == b.index and a.value == b.value
    if isinstance(a, Rejected) and isinstance(b, Rejected):
        return a.index == b.index and _error_key(a.error) == _error_key(b.error)
    return a is None and b is None


def _error_key(error: Exception) -> tuple[str, str, object]:
    return type(error).__name__, str(error), getattr(error, "field", None)


def _ids_only(answer: Any) -> Any:
    return [hit[0] for hit in answer] if isinstance(answer, list) else answer


class DurableLog:
    """What one node's disk holds for sure: entry terms by index (contiguous, after the
    snapshot), and the snapshot's index and term."""

    def __init__(self) -> None:
        self.terms: dict[int, int] = {}
        self.snapshot_index = 0
        self.snapshot_term = 0
        self.last_index = 0
        self.hard_state = HardState(term=0, vote=None, commit=0)

    def holds(self, index: int, term: int) -> bool:
        return index <= self.snapshot_index or self.terms.get(index) == term

    def last(self) -> tuple[int, int]:
        """(last term, last index): what a vote request is judged by."""
        if self.last_index == self.snapshot_index:
            return self.snapshot_term, self.snapshot_index
        return self.terms[self.last_index], self.last_index

    def reset(self, snapshot_index: int, snapshot_term: int, terms: dict[int, int]) -> None:
        self.snapshot_index, self.snapshot_term = snapshot_index, snapshot_term
        self.terms = terms
        self.last_index = max(terms, default=snapshot_index)

    def save(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.reset(ready.snapshot.meta.index, ready.snapshot.meta.term, {})
        if ready.entries:
            for index in range(ready.entries[0].index, self.last_index + 1):
                self.terms.pop(index, None)
            for entry in ready.entries:
                self.terms[entry.index] = entry.term
            self.last_index = ready.entries[-1].index
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state


class Checker:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.reference = Replica()
        # By index: (term, kind, data). Kept whole rather than as digests: comparing bytes is a
        # memcmp, hashing them is not, and every replica's every apply is compared.
        self._canonical: list[tuple[int, EntryKind | None, bytes]] = [(0, None, b"")]
        self._reference_results: dict[int, Result | None] = {}
        self._reference_hashes: dict[int, str] = {0: self.reference.state_hash()}
        self.chain_hash = b"\0" * 16
        self._leaders: dict[int, int] = {}
        self._votes: dict[tuple[int, int], int] = {}  # (voter, term) -> the candidate granted.
        # (index, term) -> (data, previous term). Data, like the maps below, is kept as the bytes
        # object itself: equal bytes mean equal digests, and no digest is computed per check.
        self._pairs: dict[tuple[int, int], tuple[bytes, int]] = {}
        self._saved: dict[tuple[int, int], bytes] = {}  # (index, term) -> data, as written.
        self._live_nodes: dict[int, SimNode] = {}
        self._leader_configuration: dict[int, Configuration] = {}  # At the leader's last Ready.
        self._proposed: set[bytes] = set()
        self._durable: dict[int, DurableLog] = {}
        self._max_durable_term: dict[int, int] = {}
        self._seen: dict[int, tuple[int, int, Role]] = {}  # node -> (term, commit, role).
        self._ann_answers: dict[tuple[int, Query], Any] = {}

    @property
    def canonical_index(self) -> int:
        return len(self._canonical) - 1

    def term_at(self, index: int) -> int:
        return self._canonical[index][0]

    # -- Node life. ------------------------------------------------------------------------------

    def on_start(self, node: SimNode) -> None:
        self._live_nodes[node.node_id] = node
        durable = self._durable.setdefault(node.node_id, DurableLog())
        raft = node.raft
        floor = self._max_durable_term.get(node.node_id, 0)
        if raft.term < floor:
            raise Violation(
                "term_monotonic",
                f"node {node.node_id} restarted at term {raft.term}, below durable {floor}",
            )
        self._check_recovered_entries(node)
        durable.reset(
            raft.log.snapshot_index,
            raft.log.snapshot_term,
            {
                index: raft.log.term_at(index) or 0
                for index in range(raft.log.snapshot_index + 1, raft.log.last_index() + 1)
            },
        )
        self._seen[node.node_id] = (raft.term, raft.log.committed, raft.role)
        if node.replica.applied_index:
            self.on_restore(node)

    def _check_recovered_entries(self, node: SimNode) -> None:
        log = node.raft.log
        for index in range(log.snapshot_index + 1, log.last_index() + 1):
            entry = log.entry(index)
            if self._saved.get((index, entry.term)) != entry.data:
                raise Violation(
                    "corrupt_record",
                    f"node {node.node_id} recovered entry {(index, entry.term)} from disk, "
                    "and no node ever wrote those bytes there",
                )

    def on_save(self, entries: Sequence[LogEntry]) -> None:
        """Entries were handed to a disk (they may or may not become durable)."""
        for entry in entries:
            self._saved[(entry.index, entry.term)] = entry.data

    def on_crash(self, node: SimNode) -> None:
        self._seen.pop(node.node_id, None)

    def on_vote_granted(self, node: SimNode, response: VoteResponse) -> None:
        """A node sends a granted (real, not pre-) vote: the first candidate it granted in that
        term must be this one (Raft section 5.2: at most one vote per term)."""
        assert response.granted and not response.pre_vote, response
        key = (node.node_id, response.term)
        granted = self._votes.setdefault(key, response.target)
        if granted != response.target:
            raise Violation(
                "vote_safety",
                f"node {node.node_id} granted its vote in term {response.term} to node "
                f"{granted} and then to node {response.target}",
            )

    def on_propose(self, data: bytes) -> None:
        self._proposed.add(data)

    def on_durable(self, node: SimNode, ready: Ready) -> None:
        """A Ready's save completed its sync: check log matching on what became durable."""
        durable = self._durable[node.node_id]
        previous_term = None
        for entry in ready.entries:
            if previous_term is None:
                previous_term = (
                    ready.snapshot.meta.term
                    if ready.snapshot is not None and entry.index == ready.snapshot.meta.index + 1
                    else durable.terms.get(entry.index - 1)
                )
            self._check_pair(node, entry, previous_term)
            previous_term = entry.term
        durable.save(ready)
        if ready.hard_state is not None:
            term = ready.hard_state.term
            self._max_durable_term[node.node_id] = max(
                term, self._max_durable_term.get(node.node_id, 0)
            )

    def _check_pair(self, node: SimNode, entry: LogEntry, previous_term: int | None) -> None:
        key = (entry.index, entry.term)
        facts = (entry.data, previous_term if previous_term is not None else -1)
        known = self._pairs.setdefault(key, facts)
        if known[0] != facts[0]:
            raise Violation(
                "log_matching", f"node {node.node_id}: entry {key} holds different data elsewhere"
            )
        if known[1] != -1 and facts[1] != -1 and known[1] != facts[1]:
            raise Violation(
                "log_matching",
                f"node {node.node_id}: entry {key} follows term {facts[1]}, elsewhere {known[1]}",
            )

    # -- Applying. -----------------------------------------------------------------------------

    def on_apply(self, node: SimNode, entry: LogEntry, result: Result | None) -> None:
        self._canonicalize(node, entry)
        if entry.kind is EntryKind.NORMAL and entry.data not in self._proposed:
            raise Violation("phantom_commit", f"entry {entry.index} was never proposed")
        expected = self._reference_results[entry.index]
        if not same_result(result, expected):
            raise Violation(
                "reply_mismatch",
                f"node {node.node_id} applied entry {entry.index} with result {result!r}; "
                f"the reference model says {expected!r}",
            )
        self._check_state_hash(node)
        self.counters["entries_applied"] += 1

    def on_restore(self, node: SimNode) -> None:
        self._check_state_hash(node)
        self.counters["snapshots_restored"] += 1

    def _check_state_hash(self, node: SimNode) -> None:
        index = node.replica.applied_index
        expected = self._reference_hashes.get(index)
        if expected is None:
            raise Violation("state_machine_safety", f"node {node.node_id} is at unknown {index}")
        if node.replica.state_hash() != expected:
            raise Violation(
                "state_hash",
                f"node {node.node_id} at applied index {index} differs from the reference",
            )

    def _canonicalize(self, node: SimNode, entry: LogEntry) -> None:
        if entry.index <= self.canonical_index:
            if self._canonical[entry.index] != (entry.term, entry.kind, entry.data):
                raise Violation(
                    "state_machine_safety",
                    f"node {node.node_id} applied a different entry at index {entry.index} "
                    f"(term {entry.term}, canonical term {self.term_at(entry.index)})",
                )
            return
        if entry.index != self.canonical_index + 1:
            raise Violation(
                "state_machine_safety",
                f"node {node.node_id} applied index {entry.index} after {self.canonical_index}",
            )
        self._canonical.append((entry.term, entry.kind, entry.data))
        digest = _digest(bytes([entry.kind]) + entry.data)
        self.chain_hash = hashlib.blake2b(self.chain_hash + digest, digest_size=16).digest()
        self._reference_results[entry.index] = self.reference.apply(entry)
        self._reference_hashes[entry.index] = self.reference.state_hash()

    # -- After every Ready. ------------------------------------------------------------------

    def after_ready(self, node: SimNode) -> None:
        raft = node.raft
        term, commit, role = raft.term, raft.log.committed, raft.role
        before = self._seen.get(node.node_id)
        if before is not None:
            if term < before[0]:
                raise Violation("term_monotonic", f"node {node.node_id}: {before[0]} -> {term}")
            if commit < before[1]:
                raise Violation("commit_monotonic", f"node {node.node_id}: {before[1]} -> {commit}")
        self._seen[node.node_id] = (term, commit, role)
        if role is Role.LEADER:
            leader = self._leaders.setdefault(term, node.node_id)
            if leader != node.node_id:
                raise Violation(
                    "election_safety", f"nodes {leader} and {node.node_id} both lead term {term}"
                )
            if before is None or before[2] is not Role.LEADER or before[0] != term:
                self._check_leader_completeness(node)
            was_leader = before is not None and before[2] is Role.LEADER
            previous_commit = before[1] if before is not None and was_leader else commit
            if was_leader and before is not None and before[0] == term:
                self._check_commit_rule(node, previous_commit)
            configurations = [raft.configuration]
            previous_configuration = self._leader_configuration.get(node.node_id)
            if was_leader and previous_configuration is not None:
                configurations.append(previous_configuration)
            self._check_durable_quorum(node, previous_commit, commit, configurations)
            self._leader_configuration[node.node_id] = raft.configuration

    def _check_commit_rule(self, node: SimNode, previous_commit: int) -> None:
        """A leader moves its commit index only onto an entry of its own term (Figure 8): an
        earlier term's entry on a majority can still be overwritten, so counting its replicas
        commits nothing. Checked directly, because the overwrite that follows is rare."""
        log = node.raft.log
        commit = log.committed
        if commit > previous_commit and log.term_at(commit) != node.raft.term:
            raise Violation(
                "commit_rule",
                f"node {node.node_id}, leader of term {node.raft.term}, committed up to entry "
                f"{commit} of term {log.term_at(commit)} by counting replicas",
            )

    def _check_leader_completeness(self, node: SimNode) -> None:
        log = node.raft.log
        for index in range(log.snapshot_index + 1, self.canonical_index + 1):
            if log.term_at(index) != self.term_at(index):
                raise Violation(
                    "leader_completeness",
                    f"node {node.node_id} leads term {node.raft.term} without committed entry "
                    f"{index} (term {self.term_at(index)})",
                )
        self.counters["leaders_checked"] += 1

    def _check_durable_quorum(
        self, node: SimNode, low: int, high: int, configurations: list[Configuration]
    ) -> None:
        """Each newly committed entry is durable on a quorum of one of `configurations`: the
        leader's now and at its last Ready (a configuration entry appended since may have
        replaced the one it counted the commit in)."""
        for index in range(max(low, node.raft.log.snapshot_index) + 1, high + 1):
            term = node.raft.log.term_at(index)
            assert term is not None
            holders = [
                self._holders(configuration, index, term) for configuration in configurations
            ]
            if all(
                count < configuration.quorum()
                for count, configuration in zip(holders, configurations, strict=True)
            ):
                raise Violation(
                    "durable_quorum",
                    f"entry {index} committed by node {node.node_id} is durable on only "
                    f"{holders[0]} voters",
                )
        if high > low:
            self._check_commit_safe(node, high)

    def _holders(self, configuration: Configuration, index: int, term: int) -> int:
        return sum(
            1
            for voter in configuration.voters
            if voter in self._durable and self._durable[voter].holds(index, term)
        )

    def _check_commit_safe(self, leader: SimNode, index: int) -> None:
        """No voter lacking entry `index` could gather a quorum of votes by log comparison
        against what the voters' disks hold. A voter may campaign with its log in memory or, after
        a crash, with its log on disk: each that lacks the entry is tried. The electors' logs are
        taken at their least up to date (on disk). Raft's safety argument guarantees this for
        every entry committed by the rules; it is checked at the newest committed index only, as
        a log lacking an entry lacks every later one."""
        term = leader.raft.log.term_at(index)
        assert term is not None
        voters = [v for v in leader.raft.configuration.voters if v in self._durable]
        quorum = leader.raft.configuration.quorum()
        for candidate in voters:
            for last in self._logs_lacking(candidate, index, term):
                electors = sum(1 for voter in voters if self._durable[voter].last() <= last)
                if electors < quorum:
                    continue
                raise Violation(
                    "commit_safety",
                    f"node {leader.node_id} committed entry {index} (term {term}) in term "
                    f"{leader.raft.term}, yet node {candidate}, lacking it, could still be "
                    f"elected with log (last term, last index) {last}",
                )

    def _logs_lacking(self, node_id: int, index: int, term: int) -> list[tuple[int, int]]:
        """(last term, last index) of each log `node_id` may campaign with that lacks the entry."""
        durable = self._durable[node_id]
        logs = [] if durable.holds(index, term) else [durable.last()]
        live = self._live_nodes.get(node_id)
        if live is not None and live.up:
            log = live.raft.log
            if index > log.snapshot_index and log.term_at(index) != term:
                logs.append((log.last_term(), log.last_index()))
        return logs

    # -- Clients. --------------------------------------------------------------------------------

    def on_read(
        self, node: SimNode, query: Query, applied: int, as_of: int | None, value: Any
    ) -> None:
        """A read served at `applied` (or `as_of`): equal to the reference's, except approximate
        vector search at the live index, which must agree across replicas instead."""
        self.counters["reads_served"] += 1
        if query.kind == "similar" and as_of is None:
            known = self._ann_answers.setdefault((applied, query), value)
            if known != value:
                raise Violation("read_mismatch", f"node {node.node_id}: ANN answer differs")
            return
        expected = run_query(self.reference, query, applied if as_of is None else as_of)
        if query.kind == "similar_exact" and as_of is None:
            # Brute force now and ranking as of an index compute distances in different float32
            # steps: compare the nodes found, not the last digits.
            expected, value = _ids_only(expected), _ids_only(value)
        if expected != value:
            raise Violation(
                "read_mismatch",
                f"node {node.node_id} answered {query} at {applied} (as_of {as_of}) with "
                f"{value!r}; the reference says {expected!r}",
            )

    def on_reply(self, operation: Operation) -> None:
        """What the client was told about a write equals the reference's result for it."""
        if operation.kind != "write":
            return
        expected = self._reference_results.get(operation.index)
        value = operation.value
        told = value if isinstance(value, Rejected) else Applied(operation.index, value)
        if not same_result(told, expected):
            raise Violation(
                "reply_mismatch",
                f"client {operation.client} was told {told!r} for entry {operation.index}; "
                f"the reference says {expected!r}",
            )
        self.counters["writes_acknowledged"] += 1
