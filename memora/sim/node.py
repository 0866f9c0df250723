"""One simulated server: a RaftNode, its Replica and its SimStorage, driven like the real thing.

The driver keeps `Ready`'s contract: persist (the save is issued, and its sync completes after a
drawn disk latency), then send, then apply, then advance. It also plays the server's part for
clients: writes are proposed with the client's session (client id + sequence), replies come from
the replica, and reads wait for ReadIndex (or a lease) and for the apply that makes them safe.

A crash drops everything volatile. The disk loses what was not synced (torn writes included), and
the node restarts from whatever SimStorage recovers. If the disk lost entries the node had
acknowledged, the node restarts in Raft's recovering mode (no votes, no campaigns) until its
commit index is past them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from memora.core.codec import encode
from memora.core.raft import (
    Configuration,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftNode,
    Ready,
    Role,
    Snapshot,
    VoteResponse,
)
from memora.core.replica import Replica
from memora.core.types import Applied, Proposal, Rejected, Result
from memora.sim.clock import NodeClock
from memora.sim.disk import SimDisk, SimStorage
from memora.sim.protocol import NAMESPACE, ReadRequest, Reply, WriteRequest, run_query
from memora.sim.rng import SimRandom

if TYPE_CHECKING:
    from memora.sim.world import World

PRINCIPAL = "sim"


class SimNode:
    """A server in the simulation. `up` is False while it is crashed (or removed for good)."""

    def __init__(
        self, world: World, node_id: int, disk: SimDisk, clock: NodeClock, random: SimRandom
    ) -> None:
        self.world = world
        self.node_id = node_id
        self.disk = disk
        self.clock = clock
        self.random = random
        self.up = False
        self.retired = False  # Removed from the cluster for good (wiped and replaced).
        self.paused = False
        self.incarnation = 0
        # Numbers this life's chain of tick events: a pause ends the chain and a resume starts the
        # next, so a tick event left over from before a pause cannot run a second chain beside it.
        self._tick_chain = 0
        self.restarts = 0
        self._deferred: list[Callable[[], None]] = []
        self.raft: RaftNode
        self.replica: Replica
        self.storage: SimStorage

    # -- Life cycle. ----------------------------------------------------------------------------

    def bootstrap(self, configuration: Configuration | None) -> None:
        """First start: a founding member (with `configuration`) or an empty joiner (None)."""
        if configuration is None:
            self.storage = SimStorage.empty(self.disk)
        else:
            self.storage = SimStorage.bootstrap(self.disk, configuration)
            self.world.checker.on_save(self.storage.entries())
        self.disk.complete_sync()
        self._start(recovering_to=None)

    def restart(self) -> None:
        self.storage = SimStorage.open(self.disk)
        self.restarts += 1
        self._start(recovering_to=self.storage.report.lost_acknowledged)

    def _start(self, recovering_to: int | None) -> None:
        hard_state, configuration, meta, entries = self.storage.initial_state()
        bugs = self.world.params.bugs
        latest = self.storage.latest_snapshot()
        if latest is None:
            self.replica = Replica(injected_bugs=bugs)
        else:
            self.replica = Replica.from_snapshot_data(latest[1], injected_bugs=bugs)
        self.raft = RaftNode(
            self.node_id,
            configuration=configuration,
            hard_state=hard_state,
            snapshot_meta=meta,
            entries=entries,
            prng=self.random.prng.fork(),
            options=self.world.raft_options,
            snapshot_source=self.storage,
            recovering_to=recovering_to,
        )
        self.incarnation += 1
        self.up = True
        self.paused = False
        self._deferred = []
        self.saving = False
        self._pending_writes: dict[int, tuple[int, int, bytes]] = {}
        self._pending_reads: dict[int, tuple[int, ReadRequest]] = {}
        self._safe_reads: dict[int, int] = {}  # Read id -> the index its answer awaits.
        self._next_read_id = 1
        self._led_term = 0  # The last term this life has been seen to lead (0: none).
        self.world.checker.on_start(self)
        self._schedule_tick()
        self.pump()

    def crash(self) -> None:
        """The process dies: volatile state is gone, unsynced writes are lost or torn."""
        assert self.up
        self.up = False
        self.incarnation += 1
        self.disk.crash()
        self.world.checker.on_crash(self)

    def pause(self) -> None:
        self.paused = True
        self._tick_chain += 1

    def resume(self, paused_us: int) -> None:
        """SIGCONT: the driver catches up the ticks its clock counted, then handles what queued."""
        if not self.up or not self.paused:
            return
        self.paused = False
        for _ in range(self.clock.ticks_in(paused_us)):
            self.raft.tick()
        deferred, self._deferred = self._deferred, []
        for action in deferred:
            action()
        self.pump()
        self._schedule_tick()

    def jump_clock(self, jump_us: int) -> None:
        """The monotonic clock leaps forward: the driver ticks for all the time it thinks passed."""
        if self.up and not self.paused:
            for _ in range(self.clock.ticks_in(jump_us)):
                self.raft.tick()
            self.pump()

    # -- Inputs. ----------------------------------------------------------------------------

    def _live(self, incarnation: int) -> bool:
        return self.up and incarnation == self.incarnation

    def _schedule_tick(self) -> None:
        incarnation, chain = self.incarnation, self._tick_chain
        delay = self.clock.next_tick_delay_us(self.random)
        self.world.loop.after(delay, lambda: self._on_tick(incarnation, chain))

    def _on_tick(self, incarnation: int, chain: int) -> None:
        if not self._live(incarnation) or chain != self._tick_chain:
            return  # Paused since (its ticks restart on resume), or restarted.
        assert not self.paused
        self.raft.tick()
        self.pump()
        self._schedule_tick()

    def receive(self, source: int, payload: object) -> None:
        if not self.up:
            return
        if self.paused:
            self._deferred.append(lambda: self._handle(source, payload))
            return
        self._handle(source, payload)
        self.pump()

    def _handle(self, source: int, payload: object) -> None:
        if isinstance(payload, WriteRequest):
            self._on_write(source, payload)
        elif isinstance(payload, ReadRequest):
            self._on_read(source, payload)
        else:
            self.raft.step(payload)  # type: ignore[arg-type]

    def _on_write(self, client: int, request: WriteRequest) -> None:
        raft = self.raft
        if raft.role is not Role.LEADER:
            self._reply(client, Reply(request.request_id, "not_leader", leader_hint=raft.leader_id))
            return
        now_ms = self.clock.wall_ms(self.world.loop.now_us)
        proposal = Proposal(
            now_ms,
            PRINCIPAL,
            NAMESPACE,
            None,
            request.command,
            client_id=request.client_id,
            sequence=request.sequence,
        )
        data = encode(proposal)
        try:
            index = raft.propose(data)
        except (NotLeaderError, ProposalDroppedError):
            self._reply(client, Reply(request.request_id, "retry", leader_hint=raft.leader_id))
            return
        self._pending_writes[index] = (client, request.request_id, data)
        self.world.checker.on_propose(data)

    def _on_read(self, client: int, request: ReadRequest) -> None:
        read_id = self._next_read_id
        self._next_read_id += 1
        try:
            self.raft.read_index(read_id, lease=request.consistency == "lease")
        except (NotLeaderError, ProposalDroppedError):
            hint = self.raft.leader_id
            self._reply(client, Reply(request.request_id, "not_leader", leader_hint=hint))
            return
        self._pending_reads[read_id] = (client, request)

    # -- The Ready loop. ---------------------------------------------------------------------

    def pump(self) -> None:
        """Hand every Ready to the disk, the network and the replica, in the contract's order."""
        while self.up and not self.paused and not self.saving and self.raft.has_ready():
            ready = self.raft.ready()
            # A leader's appends go out first: its followers write while it writes (see Ready).
            self._send(ready.messages_before_persist())
            if ready.hard_state is None and not ready.entries and ready.snapshot is None:
                self._finish(ready)
                continue
            self.storage.save(ready.hard_state, ready.entries, ready.snapshot)
            self.world.checker.on_save(ready.entries)
            self.saving = True
            self._await_sync(ready, self._first_as_leader(ready) and self.world.on_elected(self))
            return

    def _first_as_leader(self, ready: Ready) -> bool:
        """Whether `ready` is this life's first as leader of its term (it holds the no-op)."""
        soft_state = ready.soft_state
        if soft_state.role is not Role.LEADER or soft_state.term == self._led_term:
            return False
        self._led_term = soft_state.term
        return True

    def _await_sync(self, ready: Ready, die_before_sending: bool) -> None:
        incarnation = self.incarnation
        delay = self.world.disk_latency_us()
        self.world.loop.after(
            delay, lambda: self._on_synced(incarnation, ready, die_before_sending)
        )

    def _on_synced(self, incarnation: int, ready: Ready, die_before_sending: bool) -> None:
        """The save of `ready` is durable. The process may die right here, killed between its
        fsync and its sends (`die_before_sending`): what it persisted then exists on its disk
        alone."""
        if not self._live(incarnation):
            return
        if self.paused:
            self._deferred.append(lambda: self._on_synced(incarnation, ready, die_before_sending))
            return
        self.disk.complete_sync()
        self.saving = False
        self.world.checker.on_durable(self, ready)
        if die_before_sending and self.world.crash_before_sending(self):
            return
        self._finish(ready)
        self.pump()

    def _finish(self, ready: Ready) -> None:
        """Send the rest of `ready`'s messages, apply and advance, once its save is durable."""
        self._send(ready.messages_after_persist())
        if ready.snapshot is not None:
            bugs = self.world.params.bugs
            self.replica = Replica.from_snapshot_data(ready.snapshot.data, injected_bugs=bugs)
            self.world.checker.on_restore(self)
        for entry in ready.committed:
            result = self.replica.apply(entry)
            self.world.checker.on_apply(self, entry, result)
            self._answer_write(entry.index, entry.data, result)
        for read in ready.reads:
            # A duplicated ReadIndex response may release the same read twice: keep the first.
            if read.request_id in self._pending_reads:
                self._safe_reads.setdefault(read.request_id, read.index)
        self.raft.advance(ready)
        self.world.checker.after_ready(self)
        self._serve_reads()
        self._maybe_compact()

    def _send(self, messages: tuple[Message, ...]) -> None:
        send = self.world.network.send
        for message in messages:
            send(self.node_id, message.target, message)
            if isinstance(message, VoteResponse) and message.granted and not message.pre_vote:
                self.world.checker.on_vote_granted(self, message)
                self.world.on_vote_granted(self)

    def _answer_write(self, index: int, data: bytes, result: Result | None) -> None:
        pending = self._pending_writes.pop(index, None)
        if pending is None:
            return
        client, request_id, proposed = pending
        if proposed != data or result is None:
            self._reply(client, Reply(request_id, "retry", leader_hint=self.raft.leader_id))
            return
        value = result.value if isinstance(result, Applied) else result
        assert isinstance(result, Applied | Rejected)
        self._reply(client, Reply(request_id, "ok", value, result.index))

    def _serve_reads(self) -> None:
        applied = self.replica.applied_index
        ready = [read_id for read_id, index in self._safe_reads.items() if index <= applied]
        for read_id in ready:
            del self._safe_reads[read_id]
            client, request = self._pending_reads.pop(read_id)
            back = request.query.as_of_back
            as_of = None if back is None else max(1, applied - back)
            value = run_query(self.replica, request.query, as_of)
            self.world.checker.on_read(self, request.query, applied, as_of, value)
            self._reply(client, Reply(request.request_id, "ok", value, applied, as_of))

    def _maybe_compact(self) -> None:
        applied = self.replica.applied_index
        every = self.world.params.process.compact_every_entries
        if self.saving or applied - self.raft.log.snapshot_index < every:
            return
        data = self.replica.snapshot_data()
        meta = self.raft.compact(applied)
        self.storage.compact(Snapshot(meta, data))
        self.world.checker.counters["compactions"] += 1

    def _reply(self, client: int, reply: Reply) -> None:
        self.world.network.send(self.node_id, client, reply)
