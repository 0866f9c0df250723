"""An in-memory Raft cluster for tests: nodes, MemoryStorage, and a message queue delivered by hand.

`Cluster.process_ready(node_id)` follows the Ready contract exactly: persist (snapshot, hard state,
entries), then queue the messages, then restore and apply, then advance. The "state machine" of a
node is the list of NORMAL entry payloads it applied, and its snapshot is that list encoded. Links
can be cut (`partition`, `isolate`) and messages filtered (`drop`), and any node can be restarted
from its storage (`restart`), which is how a crash looks to Raft. `lose_entries` plays a disk that
lost entries it had acknowledged, for Raft's recovering mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import cbor2

from memora.core.prng import Prng
from memora.core.raft import (
    Configuration,
    EntryKind,
    HardState,
    LogEntry,
    MemoryStorage,
    Message,
    RaftNode,
    RaftOptions,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    VoteRequest,
    VoteResponse,
)

PAPER_OPTIONS = RaftOptions(pre_vote=False, check_quorum=False)


def entries_with_terms(terms: Sequence[int], first_index: int = 1) -> list[LogEntry]:
    """NORMAL entries at consecutive indexes with the given terms; data names index and term."""
    return [
        LogEntry(
            term, first_index + offset, EntryKind.NORMAL, f"{first_index + offset}@{term}".encode()
        )
        for offset, term in enumerate(terms)
    ]


class Cluster:
    def __init__(
        self,
        voters: Iterable[int] = (1, 2, 3),
        learners: Iterable[int] = (),
        *,
        options: RaftOptions | None = None,
        seed: int = 1,
        logs: dict[int, tuple[HardState, list[LogEntry]]] | None = None,
    ) -> None:
        """Start a cluster. Without `logs`, every member is bootstrapped (entry 1 = config).

        With `logs`, each listed node starts from that hard state and log, with the configuration
        given in its snapshot meta at index 0 (the paper's figures start that way).
        """
        self.configuration = Configuration(tuple(voters), tuple(learners))
        self.options = options or RaftOptions()
        self.prng = Prng(seed)
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RaftNode] = {}
        self.states: dict[int, list[bytes]] = {}
        self.applied: dict[int, int] = {}
        self.committed_log: dict[int, list[LogEntry]] = {}
        self.reads: dict[int, list[ReadState]] = {}
        self.queue: list[Message] = []
        self.sent: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        self.drop: Callable[[Message], bool] | None = None
        for node_id in self.configuration.members():
            if logs is not None and node_id in logs:
                hard_state, entries = logs[node_id]
                meta = SnapshotMeta(0, 0, self.configuration)
                self.storages[node_id] = MemoryStorage(hard_state, meta, entries)
            elif logs is not None:
                meta = SnapshotMeta(0, 0, self.configuration)
                self.storages[node_id] = MemoryStorage(None, meta, [])
            else:
                self.storages[node_id] = MemoryStorage.bootstrap(self.configuration)
            self._start(node_id)

    # -- Nodes. -------------------------------------------------------------------------------

    def _start(self, node_id: int, recovering_to: int | None = None) -> None:
        storage = self.storages[node_id]
        hard_state, configuration, meta, entries = storage.initial_state()
        self.nodes[node_id] = RaftNode(
            node_id,
            configuration=configuration,
            hard_state=hard_state,
            snapshot_meta=meta,
            entries=entries,
            prng=self.prng.fork(),
            options=self.options,
            snapshot_source=storage,
            recovering_to=recovering_to,
        )
        latest = storage.latest_snapshot()
        self.states[node_id] = [] if latest is None else list(cbor2.loads(latest[1]))
        self.applied[node_id] = meta.index
        self.committed_log.setdefault(node_id, [])
        self.reads.setdefault(node_id, [])

    def add_node(self, node_id: int) -> RaftNode:
        """A node that joins later: empty storage, empty configuration."""
        assert node_id not in self.nodes
        self.storages[node_id] = MemoryStorage()
        self._start(node_id)
        return self.nodes[node_id]

    def restart(self, node_id: int, *, recovering_to: int | None = None) -> RaftNode:
        """Crash and restart: everything not in storage is lost (messages to it stay queued)."""
        self._start(node_id, recovering_to)
        return self.nodes[node_id]

    def lose_entries(self, node_id: int, first_index: int) -> int:
        """The node's disk loses its entries from `first_index` on, though they were durable.

        Its commit index is cut back to what is left, as a driver would after such a loss.
        Returns the last index it had made durable before (its `recovering_to`). The node must
        be restarted afterwards.
        """
        storage = self.storages[node_id]
        assert storage.latest_snapshot() is None, "only a log that was never compacted"
        hard_state, _, meta, entries = storage.initial_state()
        last_durable = storage.last_index()
        assert meta.index < first_index <= last_durable, (meta.index, first_index)
        kept = [entry for entry in entries if entry.index < first_index]
        commit = min(hard_state.commit, first_index - 1)
        lost = MemoryStorage(HardState(hard_state.term, hard_state.vote, commit), meta, kept)
        self.storages[node_id] = lost
        return last_durable

    def restart_all(self) -> None:
        self.queue = []
        for node_id in list(self.nodes):
            self._start(node_id)

    def node(self, node_id: int) -> RaftNode:
        return self.nodes[node_id]

    def leader(self) -> int | None:
        """The live leader of the highest term, if any."""
        leaders = [
            node
            for node_id, node in self.nodes.items()
            if node.role is Role.LEADER and node_id not in self.down
        ]
        if not leaders:
            return None
        return max(leaders, key=lambda node: node.term).node_id

    # -- The Ready contract. ------------------------------------------------------------------

    def process_ready(self, node_id: int) -> bool:
        node = self.nodes[node_id]
        if node_id in self.down or not node.has_ready():
            return False
        self.finish_ready(node_id, self.begin_ready(node_id))
        return True

    def begin_ready(self, node_id: int) -> Ready:
        """Steps 1 and 2 of the contract: persist, then send."""
        ready = self.nodes[node_id].ready()
        self.storages[node_id].save(ready.hard_state, ready.entries, ready.snapshot)
        for message in ready.messages:
            self.sent.append(message)
            self.queue.append(message)
        return ready

    def finish_ready(self, node_id: int, ready: Ready) -> None:
        """Steps 3 and 4: restore and apply, then advance."""
        if ready.snapshot is not None:
            self.states[node_id] = list(cbor2.loads(ready.snapshot.data))
            self.applied[node_id] = ready.snapshot.meta.index
        for entry in ready.committed:
            assert entry.index == self.applied[node_id] + 1, (node_id, entry, self.applied)
            # Only durable entries are applied: the Ready persisted them first.
            assert entry.index <= self.storages[node_id].last_index(), (node_id, entry)
            self.applied[node_id] = entry.index
            self.committed_log[node_id].append(entry)
            if entry.kind is EntryKind.NORMAL:
                self.states[node_id].append(entry.data)
        self.reads[node_id].extend(ready.reads)
        self.nodes[node_id].advance(ready)

    def deliver(self, predicate: Callable[[Message], bool] | None = None) -> int:
        """Step every queued message (matching `predicate`) into its target, in order."""
        selected = [m for m in self.queue if predicate is None or predicate(m)]
        self.queue = [m for m in self.queue if not (predicate is None or predicate(m))]
        delivered = 0
        for message in selected:
            if self._blocked(message):
                continue
            self.nodes[message.target].step(message)
            delivered += 1
        return delivered

    def _blocked(self, message: Message) -> bool:
        if message.target not in self.nodes or message.target in self.down:
            return True
        if message.source in self.down or (message.source, message.target) in self.cut:
            return True
        return self.drop is not None and self.drop(message)

    def flush(self) -> bool:
        """Process every node's Ready once; returns whether anything happened."""
        return any([self.process_ready(node_id) for node_id in sorted(self.nodes)])

    def stabilize(self, rounds_max: int = 1_000) -> None:
        """Process Readys and deliver messages until nothing is left to do."""
        for _ in range(rounds_max):
            progressed = self.flush()
            if self.deliver() == 0 and not progressed and not self.queue:
                return
        raise AssertionError("the cluster did not stabilize")

    # -- Time and faults. ---------------------------------------------------------------------

    def tick(self, ticks: int = 1, nodes: Iterable[int] | None = None) -> None:
        """Tick the given (default: all live) nodes, stabilizing after each tick."""
        chosen = list(nodes) if nodes is not None else list(self.nodes)
        for _ in range(ticks):
            for node_id in chosen:
                if node_id not in self.down:
                    self.nodes[node_id].tick()
            self.stabilize()

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between nodes of different groups (nodes in no group keep theirs)."""
        sets = [set(group) for group in groups]
        for first in sets:
            for second in sets:
                if first is not second:
                    self.cut |= {(a, b) for a in first for b in second}

    def isolate(self, node_id: int) -> None:
        others = [other for other in self.nodes if other != node_id]
        self.partition([node_id], others)

    def heal(self) -> None:
        self.cut = set()
        self.drop = None

    # -- Conveniences. ------------------------------------------------------------------------

    def elect(self, node_id: int) -> RaftNode:
        self.nodes[node_id].campaign()
        self.stabilize()
        node = self.nodes[node_id]
        assert node.role is Role.LEADER, (node_id, node.role, node.term)
        return node

    def win_without_commit(self, node_id: int) -> RaftNode:
        """Campaign and deliver only votes: the new leader's no-op is not committed yet."""
        node = self.nodes[node_id]
        node.campaign()
        for _ in range(10):
            if node.role is Role.LEADER:
                return node
            self.flush()
            self.deliver(lambda m: isinstance(m, VoteRequest | VoteResponse))
        raise AssertionError(f"node {node_id} did not win")

    def propose(self, node_id: int, data: bytes, *, stabilize: bool = True) -> int:
        index = self.nodes[node_id].propose(data)
        if stabilize:
            self.stabilize()
        return index

    def compact(self, node_id: int) -> SnapshotMeta:
        """Snapshot the node's state machine at its applied index and compact its log."""
        node = self.nodes[node_id]
        meta = node.compact(self.applied[node_id])
        data = cbor2.dumps(self.states[node_id])
        self.storages[node_id].compact(Snapshot(meta, data))
        return meta

    def check_state_machine_safety(self) -> None:
        """Every pair of nodes applied the same entries at the same indexes."""
        logs = list(self.committed_log.items())
        for node_id, log in logs:
            for other_id, other in logs:
                by_index = {entry.index: entry for entry in other}
                for entry in log:
                    other_entry = by_index.get(entry.index)
                    assert other_entry is None or other_entry == entry, (node_id, other_id, entry)
        states = sorted(self.states.values(), key=len)
        for shorter, longer in itertools.pairwise(states):
            assert longer[: len(shorter)] == shorter

    def log_terms(self, node_id: int) -> list[int]:
        node = self.nodes[node_id]
        log = node.log
        return [log.entry(index).term for index in range(log.first_index(), log.last_index() + 1)]


def drain(node: RaftNode) -> Ready:
    """Take a node's Ready and advance it without a driver (unit tests of one node)."""
    ready = node.ready()
    node.advance(ready)
    return ready
