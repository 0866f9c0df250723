"""`NodeDriver`: one Memora node run by trio on the real clock and the real disk.

What lives here: the trio counterpart of `memora.service.local_node.LocalNode`. It opens a data
directory (bootstrapping a founding one-voter member if it is new, restoring the newest snapshot),
runs the Raft node's ticks and its Ready loop in a nursery, and implements `NodeApi` for the REST
and MCP layers. What must not: any Raft logic (`memora.core.raft`), any state machine logic
(`memora.core.replica`), sockets or HTTP (the transport and the API live elsewhere).

One process at a time: `open` takes an exclusive lock (flock) on DATA_DIR/lock, which `run`
releases when it returns, so a second node on the same directory is refused, not let corrupt it.

Everything runs on the trio thread except the disk writes of a lone node and of snapshots.
`run()` starts two tasks:
- the tick loop ticks the RaftNode every `raft_tick_ms`, by elapsed monotonic time, so a pause of
  the process is caught up before anything else (the lease read depends on it);
- the Ready loop keeps `Ready`'s contract: persist (`FileStorage.save`; a leader sends its appends
  first, so its followers write in parallel with it; a lone node saves in a worker thread, see
  `_saves_in_thread`), then send (`Transport`), then apply the committed entries to the
  Replica, resolve the writers waiting on those log indexes and release the reads that became
  safe (a leader applies before it sends, see `_handle_ready`), then `advance`. Writers who
  propose while a save is under way land in the next Ready, persisted by one fsync together:
  group commit.
Callers (HTTP handlers in other tasks) propose, ask for read indexes and read the replica on the
trio thread, between the Ready loop's awaits, so nothing here needs a lock. The storage is used
by one thread at a time: the Ready loop awaits every worker thread it starts.

Snapshots are taken between two Readies, when asked (`snapshot()`) or when the log grew by
`DriverLimits.snapshot_every_entries`: the replica is encoded on the trio thread (no apply can
interleave), the files are written in a worker thread, and the log before the snapshot is dropped.

A node alone in its configuration has no messages to send (`NoPeers`). A member of a cluster is
given a `Transport` that sends a Ready's messages; whoever reads the peers' messages calls
`receive()` (see `memora.net.cluster`). Membership changes (`change_configuration`) and
leadership transfers are the leader's; forwarding them from other members is the cluster's job.

Shutdown (`stop()`): new work is refused with `UnavailableError`, work in flight gets up to
`DriverLimits.drain_timeout_s` to finish, the loops stop between two Readies, whoever still waits
gets `UnavailableError`, and `FileStorage.close()` persists the commit index (the final fsync).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import fcntl
import os
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol

import attrs
import trio

from memora.core import constants
from memora.core.codec import encode
from memora.core.errors import CodecError, LimitError, MemoraError, ValidationError
from memora.core.prng import Prng
from memora.core.raft import (
    Configuration,
    ConfigurationChange,
    EntryKind,
    LogEntry,
    Message,
    ProposalDroppedError,
    RaftNode,
    RaftOptions,
    Ready,
    Role,
    Snapshot,
)
from memora.core.raft import NotLeaderError as RaftNotLeaderError
from memora.core.replica import Replica
from memora.core.types import Applied, CreateNamespace, Proposal, Result
from memora.net.node_api import Consistency, NotLeaderError, UnavailableError, WriteOutcome
from memora.net.raft_storage import FileStorage, StorageRecovery

# The id of a node that founds its own one-voter cluster (`memora serve` without peers).
SOLE_NODE_ID = 1
# Held (flock) by the one process that has the data directory open; others are refused.
LOCK_FILE = "lock"
# Recorded as the author of what the node writes on its own behalf (the default namespace).
SYSTEM_PRINCIPAL = "memora"
_TICK_S = constants.raft_tick_ms / 1000
_DEFAULT_NAMESPACE_POLL_S = 0.1
_ALONE = "this node runs alone: start every member with --node-id and --peers to form a cluster"
# How often a caller waiting for a leadership transfer checks whether it happened.
_LEADER_POLL_S = 0.01
# What `metrics()` counts, all present from the start (at 0) so that every scrape has each name.
COUNTERS = (
    "writes_applied_total",
    "writes_rejected_total",
    "writes_not_leader_total",
    "writes_unavailable_total",
    "read_barriers_total",
    "read_barriers_unavailable_total",
    "disk_saves_total",
    "entries_persisted_total",
    "snapshots_total",
)


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch, as the system clock says (it may step backwards)."""
    return time.time_ns() // 1_000_000


@attrs.frozen
class DriverLimits:
    """How long callers of one node wait (each bounds one call, from its start), and how long
    the log may grow."""

    write_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    # At shutdown, work in flight gets this long to finish before it is failed.
    drain_timeout_s: float = 5.0
    # The node snapshots by itself once this many entries were applied since its last snapshot,
    # so that neither the log on disk nor the replay at start-up grows without bound.
    snapshot_every_entries: int = 100_000

    def __attrs_post_init__(self) -> None:
        assert self.write_timeout_s > 0 and self.read_timeout_s > 0, self
        assert self.drain_timeout_s >= 0, self
        assert self.snapshot_every_entries > 0, self


class Transport(Protocol):
    """Carries a node's Raft messages to its peers; inbound ones go to `NodeDriver.receive`.

    `send` is called on the trio thread after the Ready that produced the messages is durable.
    It must not block: it queues, and may drop (Raft resends what matters)."""

    def send(self, messages: Sequence[Message]) -> None: ...


class NoPeers:
    """The transport of a node alone in its configuration: Raft has no one to send to."""

    def send(self, messages: Sequence[Message]) -> None:
        assert not messages, f"a one-voter node has no one to send to: {messages[0]}"


class ForeignDataDirError(MemoraError):
    """The data directory belongs to a cluster this node cannot serve alone."""

    code = "foreign_data_dir"


class NotClusteredError(MemoraError):
    """A membership change asked of a node that runs alone (started without peers)."""

    code = "not_clustered"


class DataDirLockedError(MemoraError):
    """Another process has the data directory open: two writers would corrupt it."""

    code = "data_dir_locked"


class _Lifecycle(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Broadcast:
    """Wakes every task waiting for some state to change; waiters re-check their condition."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._waiting = 0  # Fires with no one waiting cost nothing: most writes wake no one.

    def fire(self) -> None:
        if self._waiting:
            self._event.set()
            self._event = trio.Event()

    async def wait(self) -> None:
        self._waiting += 1
        try:
            await self._event.wait()
        finally:
            self._waiting -= 1


@attrs.define(eq=False)
class Waiter:
    """One caller waiting for the Ready loop: a write, a read index, or a snapshot."""

    term: int
    done: trio.Event = attrs.Factory(trio.Event)
    value: Any = None
    error: MemoraError | None = None

    def succeed(self, value: Any) -> None:
        assert not self.done.is_set()
        self.value = value
        self.done.set()

    def fail(self, error: MemoraError) -> None:
        assert not self.done.is_set()
        self.error = error
        self.done.set()

    def outcome(self) -> Any:
        assert self.done.is_set()
        if self.error is not None:
            raise self.error
        return self.value


class Waiters:
    """Callers waiting for the Ready loop, by key: a log index (writes) or a request id (reads)."""

    def __init__(self) -> None:
        self._by_key: dict[int, Waiter] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def add(self, key: int, term: int) -> Waiter:
        assert key not in self._by_key, key
        waiter = Waiter(term)
        self._by_key[key] = waiter
        return waiter

    def discard(self, key: int, waiter: Waiter) -> None:
        """Forget a waiter that gave up (deadline, cancellation) or was answered."""
        if self._by_key.get(key) is waiter:
            del self._by_key[key]

    def pop(self, key: int) -> Waiter | None:
        return self._by_key.pop(key, None)

    def fail_where(self, reason: str, *, key_at_most: int | None = None) -> None:
        """Fail every waiter (with a key up to `key_at_most`, if given) with UnavailableError."""
        keys = [key for key in self._by_key if key_at_most is None or key <= key_at_most]
        for key in keys:
            self._by_key.pop(key).fail(UnavailableError(reason))

    def fail_older_terms(self, term: int, reason: str) -> None:
        for key in [key for key, waiter in self._by_key.items() if waiter.term < term]:
            self._by_key.pop(key).fail(UnavailableError(reason))


def resolve_write(writes: Waiters, entry: LogEntry, result: Result | None) -> None:
    """Answer the writer waiting on `entry.index`, if any, once that entry is applied.

    The writer proposed at that index in some term. If the entry applied there is of another
    term, a new leader replaced the writer's entry: the write was lost, and says so. A
    configuration change has no reply of the state machine: its waiter gets `Applied(index,
    None)`."""
    waiter = writes.pop(entry.index)
    if waiter is None:
        return
    if entry.term != waiter.term:
        reason = f"entry {entry.index} was replaced by a leader of term {entry.term}; retry"
        waiter.fail(UnavailableError(reason))
        return
    if entry.kind is EntryKind.CONFIGURATION:
        assert result is None, result
        waiter.succeed(Applied(entry.index, None))
        return
    assert result is not None, f"entry {entry.index} is a writer's, so it carries a proposal"
    waiter.succeed(result)


class Deadline:
    """Turn the deadline of one call into the UnavailableError its caller expects; the message
    ends with `consequence`, if given.

    One cancel scope, entered and left directly: every write and read passes through here, and
    the generator-based `trio.fail_after` inside a `contextlib.contextmanager` cost twice as much.
    """

    __slots__ = ("_consequence", "_scope", "_seconds", "_what")

    def __init__(self, seconds: float, what: str, consequence: str = "") -> None:
        assert seconds > 0, seconds
        self._seconds = seconds
        self._what = what
        self._consequence = consequence
        self._scope = trio.CancelScope()

    def __enter__(self) -> None:
        self._scope.deadline = trio.current_time() + self._seconds
        self._scope.__enter__()

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        self._scope.__exit__(exception_type, exception, traceback)
        if self._scope.cancelled_caught:
            message = f"{self._what} did not complete within {self._seconds:g} s"
            consequence = f"; {self._consequence}" if self._consequence else ""
            raise UnavailableError(message + consequence) from None
        # The scope swallows only its own cancellation, which became the error above; anything
        # else it let through propagates from here.
        return False


class NodeDriver:
    """A Replica behind a RaftNode and its FileStorage, run by `run()` in a trio nursery.

    Open with `NodeDriver.open`; see the module docstring. Implements `NodeApi`."""

    def __init__(
        self,
        raft: RaftNode,
        storage: FileStorage,
        replica: Replica,
        *,
        lock_descriptor: int,
        transport: Transport,
        limits: DriverLimits,
        default_namespace: str | None,
        wall_clock_ms: Callable[[], int],
    ) -> None:
        assert replica.applied_index == raft.log.snapshot_index, (replica.applied_index,)
        self.replica = replica
        self.storage_recovery: StorageRecovery = storage.recovery
        self._raft = raft
        self._storage = storage
        self._lock_descriptor = lock_descriptor
        self._transport = transport
        self._limits = limits
        self._default_namespace = default_namespace
        self._lifecycle = _Lifecycle.STARTING
        self._stop_requested = trio.Event()
        self._work = trio.Event()  # Set when the Ready loop may have something to do.
        self._applied = _Broadcast()  # Fired whenever the replica's applied index moves.
        self._in_flight = 0  # Calls under way (writes, reads, snapshots): shutdown drains them.
        self._in_flight_changed = _Broadcast()
        self._writes = Waiters()  # Writers by the log index of their entry.
        self._reads = Waiters()  # ReadIndex requests by request id.
        self._next_read_id = 1
        self._snapshot_requests: list[Waiter] = []
        self._wall_clock_ms = wall_clock_ms
        self._last_timestamp_ms = replica.machine.last_timestamp_ms
        self._clock_origin_s = 0.0  # trio's clock when `run` started ticking.
        self._ticks = 0
        self._started_monotonic_s = time.monotonic()
        self._counters: collections.Counter[str] = collections.Counter(dict.fromkeys(COUNTERS, 0))

    # -- Opening ----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str,
        *,
        node_id: int = SOLE_NODE_ID,
        transport: Transport | None = None,
        founding_voters: tuple[int, ...] | None = None,
        joining: bool = False,
        options: RaftOptions | None = None,
        limits: DriverLimits | None = None,
        default_namespace: str | None = constants.namespace_default,
        wall_clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> NodeDriver:
        """Open the node in `data_dir` and restore its newest snapshot. `run()` then applies the
        committed log and starts serving.

        A new directory founds a cluster of `founding_voters` (by default this node alone), or,
        if `joining`, starts empty: it waits for a leader that added it to send it the log.
        Without a `transport` the node must be the only voter of its configuration.
        `default_namespace`, if not None, is created on first start. `wall_clock_ms` stamps
        writes (tests pass their own)."""
        os.makedirs(data_dir, exist_ok=True)
        lock_descriptor = _lock_data_dir(data_dir)
        try:
            founding = None if joining else Configuration(voters=founding_voters or (node_id,))
            storage = _open_or_bootstrap(data_dir, founding)
        except BaseException:
            os.close(lock_descriptor)
            raise
        try:
            hard_state, configuration, meta, entries = storage.initial_state()
            if transport is None and configuration.voters != (node_id,):
                raise ForeignDataDirError(
                    f"{data_dir} belongs to a cluster with voters {list(configuration.voters)}; "
                    f"node {node_id} cannot serve it alone"
                )
            latest = storage.latest_snapshot()
            replica = Replica() if latest is None else Replica.from_snapshot_data(latest[1])
            raft = RaftNode(
                node_id,
                configuration=configuration,
                hard_state=hard_state,
                snapshot_meta=meta,
                entries=entries,
                # Real nodes draw election timeouts from real entropy, so that no two restart in
                # lockstep; only the simulator needs a replayable seed.
                prng=Prng(int.from_bytes(os.urandom(8), "little")),
                options=options,
                snapshot_source=storage,
            )
        except BaseException:
            storage.close()
            os.close(lock_descriptor)
            raise
        return cls(
            raft,
            storage,
            replica,
            lock_descriptor=lock_descriptor,
            transport=transport if transport is not None else NoPeers(),
            limits=limits if limits is not None else DriverLimits(),
            default_namespace=default_namespace,
            wall_clock_ms=wall_clock_ms,
        )

    @property
    def data_dir(self) -> str:
        return self._storage.data_dir

    @property
    def node_id(self) -> int:
        return self._raft.node_id

    @property
    def leader_id(self) -> int | None:
        """The leader this node knows of in its current term (itself, if it leads)."""
        return self._raft.leader_id

    @property
    def configuration(self) -> Configuration:
        return self._raft.configuration

    @property
    def serving(self) -> bool:
        return self._lifecycle is _Lifecycle.SERVING

    def match_index(self, node_id: int) -> int | None:
        """On a leader, the last log index known to be on `node_id`; None elsewhere."""
        progress = self._raft.progress(node_id)
        return None if progress is None else progress.match

    # -- Life cycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until `stop()`; reports started once the log on disk is applied.

        Returns after a clean shutdown (drained, final fsync, storage closed)."""
        assert self._lifecycle is _Lifecycle.STARTING, "run() a NodeDriver once"
        try:
            async with trio.open_nursery() as nursery:
                self._clock_origin_s = trio.current_time()
                nursery.start_soon(self._tick_loop)
                nursery.start_soon(self._ready_loop)
                await self._start_up()
                if self._lifecycle is _Lifecycle.STARTING:
                    self._lifecycle = _Lifecycle.SERVING
                if self._default_namespace is not None:
                    nursery.start_soon(self._create_default_namespace_when_leader)
                task_status.started()
                await self._stop_requested.wait()
                await self._drain()
                nursery.cancel_scope.cancel()
        finally:
            self._lifecycle = _Lifecycle.STOPPED
            self._fail_all_waiters("the node stopped")
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._storage.close)
            os.close(self._lock_descriptor)  # Releases the lock on the data directory.

    def stop(self) -> None:
        """Refuse new work from now on; `run()` drains what is in flight, fsyncs and returns."""
        if self._lifecycle in (_Lifecycle.STARTING, _Lifecycle.SERVING):
            self._lifecycle = _Lifecycle.STOPPING
        self._stop_requested.set()

    async def _start_up(self) -> None:
        """Apply every entry of the log, then create the default namespace if it is new.

        A lone voter elects itself at once; the no-op it appends then commits all of its log
        (Figure 8), so it waits for that no-op too. A member of a cluster applies what its disk
        says is committed; the rest waits for a leader."""
        if self._raft.configuration.voters == (self._raft.node_id,):
            self._raft.campaign()
            assert self._raft.role is Role.LEADER, self._raft.soft_state()
            self._kick()
            await self._wait_applied(self._raft.log.last_index())
        else:
            await self._wait_applied(self._raft.log.committed)
        if self._raft.role is Role.LEADER:
            await self._create_default_namespace()

    async def _create_default_namespace(self) -> None:
        namespace = self._default_namespace
        if namespace is not None and namespace not in self.replica.machine.namespaces:
            command = CreateNamespace(constants.dimension_default)
            await self._write(Proposal(0, SYSTEM_PRINCIPAL, namespace, None, command))

    async def _create_default_namespace_when_leader(self) -> None:
        """A member of a cluster starts without a leader: whichever node leads first creates
        the default namespace (a second leader's attempt is refused as a duplicate, harmlessly).
        It looks again whenever the replica applies an entry (a new leader's no-op is one), so
        the namespace follows the first election at once, and at least every poll interval."""
        while self._default_namespace not in self.replica.machine.namespaces:
            if self._raft.role is Role.LEADER and self._lifecycle is _Lifecycle.SERVING:
                with contextlib.suppress(MemoraError):
                    await self._create_default_namespace()
                    return
            with trio.move_on_after(_DEFAULT_NAMESPACE_POLL_S):
                await self._applied.wait()

    async def _drain(self) -> None:
        with trio.move_on_after(self._limits.drain_timeout_s):
            while self._in_flight:
                await self._in_flight_changed.wait()

    def _fail_all_waiters(self, reason: str) -> None:
        self._writes.fail_where(reason)
        self._reads.fail_where(reason)
        requests, self._snapshot_requests = self._snapshot_requests, []
        for request in requests:
            request.fail(UnavailableError(reason))
        self._applied.fire()  # Readers waiting for an index see the node stopped.

    def _check_serving(self) -> None:
        if self._lifecycle is not _Lifecycle.SERVING:
            raise UnavailableError(f"the node is {self._lifecycle.value}")

    def _counted_in_flight(self) -> _InFlight:
        return _InFlight(self)

    def _in_flight_started(self) -> None:
        self._in_flight += 1

    def _in_flight_ended(self) -> None:
        self._in_flight -= 1
        assert self._in_flight >= 0
        self._in_flight_changed.fire()

    # -- NodeApi: writes --------------------------------------------------------------------------

    async def write(self, proposal: Proposal) -> WriteOutcome:
        """See `NodeApi.write`."""
        self._check_serving()
        try:
            outcome = await self._write(proposal)
        except UnavailableError:
            self._counters["writes_unavailable_total"] += 1
            raise
        except NotLeaderError:
            self._counters["writes_not_leader_total"] += 1
            raise
        except MemoraError:
            self._counters["writes_rejected_total"] += 1
            raise
        self._counters["writes_applied_total"] += 1
        return outcome

    async def _write(self, proposal: Proposal) -> WriteOutcome:
        data = _encode_proposal(attrs.evolve(proposal, timestamp_ms=self._timestamp_ms()))
        with self._counted_in_flight():
            index, waiter = self._propose(data)
            try:
                with Deadline(self._limits.write_timeout_s, f"the write at log index {index}"):
                    await waiter.done.wait()
            finally:
                self._writes.discard(index, waiter)
        result: Result = waiter.outcome()
        if isinstance(result, Applied):
            return WriteOutcome(result.value, result.index)
        raise result.error

    def _propose(self, data: bytes) -> tuple[int, Waiter]:
        try:
            index = self._raft.propose(data)
        except RaftNotLeaderError as error:
            raise _not_leader(error.leader_hint) from None
        except ProposalDroppedError as error:
            raise UnavailableError(error.message) from None
        self._kick()
        return index, self._writes.add(index, self._raft.term)

    def _timestamp_ms(self) -> int:
        """The wall clock in ms, never going backwards within this node."""
        self._last_timestamp_ms = max(self._last_timestamp_ms, self._wall_clock_ms())
        return self._last_timestamp_ms

    # -- Membership (the leader's) ----------------------------------------------------------------

    async def change_configuration(self, change: ConfigurationChange) -> int:
        """Propose one single-server membership change as the leader and wait until it is
        applied; returns its log index. Raises `NotLeaderError` on a follower,
        `UnavailableError` while another change is uncommitted or the deadline passes, and
        `ConfigurationChangeError` for a change that does not fit the configuration."""
        self._check_serving()
        with self._counted_in_flight():
            try:
                index = self._raft.propose_configuration_change(change)
            except RaftNotLeaderError as error:
                raise _not_leader(error.leader_hint) from None
            except ProposalDroppedError as error:
                raise UnavailableError(error.message) from None
            self._kick()
            waiter = self._writes.add(index, self._raft.term)
            try:
                with Deadline(self._limits.write_timeout_s, f"the change at log index {index}"):
                    await waiter.done.wait()
            finally:
                self._writes.discard(index, waiter)
        waiter.outcome()
        return index

    async def transfer_leadership(self, node_id: int) -> None:
        """Hand leadership to the voter `node_id` and wait until it leads (this node must lead)."""
        self._check_serving()
        with self._counted_in_flight():
            try:
                self._raft.transfer_leadership(node_id)
            except RaftNotLeaderError as error:
                raise _not_leader(error.leader_hint) from None
            self._kick()
            with Deadline(self._limits.write_timeout_s, f"the transfer to node {node_id}"):
                while self._raft.leader_id != node_id:
                    await trio.sleep(_LEADER_POLL_S)

    # -- NodeApi: reads ---------------------------------------------------------------------------

    async def read_barrier(
        self, consistency: Consistency, min_commit_index: int | None = None
    ) -> Replica:
        """See `NodeApi.read_barrier`."""
        self._check_serving()
        if min_commit_index is not None and (
            isinstance(min_commit_index, bool)
            or not isinstance(min_commit_index, int)
            or min_commit_index < 0
        ):
            raise ValidationError("min_commit_index must be an integer >= 0", "min_commit_index")
        try:
            with self._counted_in_flight(), Deadline(self._limits.read_timeout_s, "the read"):
                index = min_commit_index or 0
                if consistency is not Consistency.FOLLOWER:
                    lease = consistency is Consistency.LEASE
                    index = max(index, await self._read_index(lease=lease))
                await self._wait_applied(index)
        except (UnavailableError, NotLeaderError):
            self._counters["read_barriers_unavailable_total"] += 1
            raise
        self._counters["read_barriers_total"] += 1
        # No await between the barrier and the return: the caller reads this state as it is.
        return self.replica

    async def _read_index(self, *, lease: bool) -> int:
        """Raft's ReadIndex: the commit index a read must wait for to see every write
        acknowledged before it began. With `lease`, Raft answers from its lease when
        `RaftOptions` (check-quorum) and the lease allow, and by ReadIndex otherwise."""
        if lease:
            self._catch_up_ticks()
        request_id = self._next_read_id
        self._next_read_id += 1
        waiter = self._reads.add(request_id, self._raft.term)
        try:
            try:
                self._raft.read_index(request_id, lease=lease)
            except RaftNotLeaderError as error:
                raise _not_leader(error.leader_hint) from None
            except ProposalDroppedError as error:
                raise UnavailableError(error.message) from None
            self._kick()
            await waiter.done.wait()
        finally:
            self._reads.discard(request_id, waiter)
        index: int = waiter.outcome()
        return index

    async def _wait_applied(self, index: int) -> None:
        while self.replica.applied_index < index:
            if self._lifecycle is _Lifecycle.STOPPED:
                raise UnavailableError("the node stopped")
            await self._applied.wait()

    # -- NodeApi: snapshots, health, metrics ------------------------------------------------------

    async def snapshot(self) -> int:
        """See `NodeApi.snapshot`. The Ready loop takes it between two Readies."""
        self._check_serving()
        with self._counted_in_flight():
            request = Waiter(self._raft.term)
            self._snapshot_requests.append(request)
            self._kick()
            await request.done.wait()
        index: int = request.outcome()
        return index

    def health(self) -> dict[str, Any]:
        """See `NodeApi.health`. `peers` is empty for a node alone in its configuration."""
        raft = self._raft
        return {
            "node_id": raft.node_id,
            "state": self._lifecycle.value,
            "role": raft.role.value,
            "term": raft.term,
            "leader_id": raft.leader_id,
            "commit_index": raft.log.committed,
            "applied_index": self.replica.applied_index,
            "last_index": raft.log.last_index(),
            "snapshot_index": raft.log.snapshot_index,
            "voters": list(raft.configuration.voters),
            "learners": list(raft.configuration.learners),
            "peers": self._peers_health(),
            "data_dir": self.data_dir,
        }

    def _peers_health(self) -> list[dict[str, Any]]:
        """Each other member; on a leader, how far its log is behind (`lag`, in entries)."""
        last_index = self._raft.log.last_index()
        peers = []
        for member in self._raft.configuration.members():
            if member == self._raft.node_id:
                continue
            progress = self._raft.progress(member)
            match = None if progress is None else progress.match
            lag = None if match is None else last_index - match
            role = "voter" if self._raft.configuration.is_voter(member) else "learner"
            peers.append({"node_id": member, "role": role, "match_index": match, "lag": lag})
        return peers

    def cluster_status(self) -> dict[str, Any]:
        """See `NodeApi.cluster_status`: a node alone has no cluster id and no peers."""
        return cluster_status_of(None, self.health(), self.replica)

    async def add_member(self, node_id: int, address: str | None) -> int:
        raise NotClusteredError(_ALONE, "node_id")

    async def remove_member(self, node_id: int) -> int:
        raise NotClusteredError(_ALONE, "node_id")

    def metrics(self) -> dict[str, float | int]:
        """See `NodeApi.metrics`. Names end in `_total` for counters; the rest are gauges."""
        raft = self._raft
        saves = self._counters["disk_saves_total"]
        persisted = self._counters["entries_persisted_total"]
        gauges: dict[str, float | int] = {
            "uptime_seconds": time.monotonic() - self._started_monotonic_s,
            "is_leader": int(raft.role is Role.LEADER),
            "term": raft.term,
            "commit_index": raft.log.committed,
            "applied_index": self.replica.applied_index,
            "last_index": raft.log.last_index(),
            "snapshot_index": raft.log.snapshot_index,
            "requests_in_flight": self._in_flight,
            "writes_waiting": len(self._writes),
            "entries_per_disk_save": persisted / saves if saves else 0.0,
            "log_fsyncs_total": self._storage.log_fsyncs,
            "hard_state_writes_total": self._storage.hard_state_writes,
            "raft_messages_rejected_total": sum(raft.messages_rejected_by_reason().values()),
        }
        assert set(self._counters) == set(COUNTERS), sorted(self._counters)
        return {**gauges, **self._counters}

    # -- Peers ------------------------------------------------------------------------------------

    def receive(self, message: Message) -> None:
        """Step one message from a peer (the transport calls this). A malformed or misaddressed
        one is dropped and counted by Raft (`raft_messages_rejected_total`)."""
        if self._lifecycle is _Lifecycle.STOPPED:
            return
        self._raft.step(message)
        self._kick()

    # -- The tick loop ----------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep_until(self._clock_origin_s + (self._ticks + 1) * _TICK_S)
            self._catch_up_ticks()

    def _catch_up_ticks(self) -> None:
        """Tick once per `raft_tick_ms` elapsed since the last tick, at least.

        After a long pause, `election_timeout_ticks_max` ticks are as good as any more: every
        timer and lease has expired by then, so the rest are skipped rather than run."""
        due = int((trio.current_time() - self._clock_origin_s) / _TICK_S)
        behind = due - self._ticks
        if behind <= 0:
            return
        for _ in range(min(behind, self._raft.options.election_timeout_ticks_max + 1)):
            self._raft.tick()
        self._ticks = due
        self._kick()

    # -- The Ready loop ---------------------------------------------------------------------------

    def _kick(self) -> None:
        """Tell the Ready loop the node may have something for it."""
        self._work.set()

    async def _ready_loop(self) -> None:
        while True:
            await self._work.wait()
            self._work = trio.Event()
            await self._snapshot_if_due()
            while self._raft.has_ready():
                if not await self._handle_ready(self._raft.ready()):
                    # Between two Readies, let callers run: a long replay must not starve them.
                    # A Ready that waited for a worker thread let them run already, and what it
                    # waited for (its save) usually made the next Ready's commit visible: that
                    # one goes at once, to answer its writers sooner.
                    await trio.lowlevel.checkpoint()

    async def _handle_ready(self, ready: Ready) -> bool:
        """Persist, send, apply and advance, in an order `Ready` allows. Returns whether it
        waited for a worker thread (other tasks ran meanwhile).

        A leader with entries to save sends its appends first, so that its followers write
        while it writes (see `Ready`). A leader with entries to apply applies them before it
        sends the rest, and lets its writers take their answers before the sends: on the 2-core
        VM a loopback send can take longer than the apply (it wakes the receiving process,
        which may take this CPU). A follower sends first, since its leader waits for its
        acknowledgment."""
        disk = _needs_disk(ready, self._storage)
        early = ready.messages_before_persist() if disk else ()
        self._transport.send(early)
        waited = await self._persist(ready, disk=disk)
        # Appends held back (nothing to save, so nothing to overlap) go with the rest.
        rest = ready.messages_after_persist() if early else ready.messages
        if ready.soft_state.role is Role.LEADER and ready.committed:
            self._apply(ready)
            await trio.lowlevel.checkpoint()
            self._transport.send(rest)
        else:
            self._transport.send(rest)
            self._apply(ready)
        self._raft.advance(ready)
        return waited

    async def _persist(self, ready: Ready, *, disk: bool) -> bool:
        if not disk:
            # Only the commit index moved, which FileStorage persists lazily: no I/O to wait for.
            self._storage.save(ready.hard_state, ready.entries, ready.snapshot)
            return False
        save = self._storage.save
        in_thread = self._saves_in_thread(ready)
        if in_thread:
            await trio.to_thread.run_sync(save, ready.hard_state, ready.entries, ready.snapshot)
        else:
            save(ready.hard_state, ready.entries, ready.snapshot)
        self._counters["disk_saves_total"] += 1
        self._counters["entries_persisted_total"] += len(ready.entries)
        return in_thread

    def _saves_in_thread(self, ready: Ready) -> bool:
        """Whether to save `ready` in a worker thread, the event loop serving meanwhile.

        A lone node does, so that its callers' deadlines fire even if its disk stalls; so does
        any save of a snapshot, which may be large. A member of a cluster saves its entries
        right here: a follower cannot send anything before its save anyway, and a leader's
        appends already left (`messages_before_persist`), so its followers write while it does.
        On the 2-core VM a hop to a worker thread and back costs more than a small fsync: the
        thread waits for the GIL until the event loop goes idle, and the loop waits for a
        wakeup from the thread (traced on a leader: its save started 0.7-1.5 ms after its
        appends left, and the loop resumed 1-2 ms after the save ended; a follower's CPU per
        write fell from 1.7 to 1.1 ms without the hop). What arrives meanwhile waits in the
        socket buffers and joins the next Ready. A member whose disk stalls stalls whole: a
        follower as it would for its leader anyway, and a leader long enough to lose its
        followers, which is what should happen to a leader that cannot write."""
        return ready.snapshot is not None or len(self._raft.configuration.members()) == 1

    def _apply(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.replica = Replica.from_snapshot_data(ready.snapshot.data)
            reason = "the node installed a leader's snapshot past this write; retry"
            self._writes.fail_where(reason, key_at_most=ready.snapshot.meta.index)
        for entry in ready.committed:
            resolve_write(self._writes, entry, self.replica.apply(entry))
        for read in ready.reads:
            waiter = self._reads.pop(read.request_id)
            if waiter is not None:
                waiter.succeed(read.index)
        # Raft drops the reads of a leader that lost its term: they will never be answered.
        self._reads.fail_older_terms(ready.soft_state.term, "leadership changed during the read")
        if ready.committed:
            assert self.replica.applied_index == ready.committed[-1].index, ready.committed[-1]
        if ready.committed or ready.snapshot is not None:
            self._applied.fire()

    async def _snapshot_if_due(self) -> None:
        """Snapshot if asked to, or if the log grew by `snapshot_every_entries`. Runs with no
        Ready outstanding, as `RaftNode.compact` needs."""
        grown = self.replica.applied_index - self._raft.log.snapshot_index
        if not self._snapshot_requests and grown < self._limits.snapshot_every_entries:
            return
        requests, self._snapshot_requests = self._snapshot_requests, []
        index = self.replica.applied_index
        assert index == self._raft.log.applied, (index, self._raft.log.applied)
        if index > self._raft.log.snapshot_index:
            data = self.replica.snapshot_data()
            meta = self._raft.compact(index)
            await trio.to_thread.run_sync(self._storage.compact, Snapshot(meta, data))
            self._counters["snapshots_total"] += 1
        for request in requests:
            request.succeed(self._raft.log.snapshot_index)


class _InFlight:
    """Counts one call under way on a driver, for the drain at shutdown (a class, not a
    generator-based context manager: every read and write enters one)."""

    __slots__ = ("_driver",)

    def __init__(self, driver: NodeDriver) -> None:
        self._driver = driver

    def __enter__(self) -> None:
        self._driver._in_flight_started()

    def __exit__(self, *exception: object) -> None:
        self._driver._in_flight_ended()


def cluster_status_of(
    cluster_id: str | None, health: dict[str, Any], replica: Replica
) -> dict[str, Any]:
    """The cluster as one node sees it, with its replica's applied index and state hash: two
    members at the same applied index must have the same hash."""
    names = ("node_id", "leader_id", "term", "voters", "learners", "peers")
    status = {"cluster_id": cluster_id, **{name: health[name] for name in names}}
    return {**status, "applied_index": replica.applied_index, "state_hash": replica.state_hash()}


def _needs_disk(ready: Ready, storage: FileStorage) -> bool:
    """Whether saving `ready` writes and syncs files (entries, a snapshot, a new term or vote)."""
    if ready.entries or ready.snapshot is not None:
        return True
    saved = storage.hard_state()
    new = ready.hard_state
    return new is not None and (new.term, new.vote) != (saved.term, saved.vote)


def _encode_proposal(proposal: Proposal) -> bytes:
    try:
        data = encode(proposal)
    except (CodecError, TypeError, ValueError, OverflowError) as error:
        raise ValidationError(f"the command cannot be encoded: {error}", "command") from error
    if len(data) > constants.entry_bytes_max:
        raise LimitError(
            f"the command encodes to {len(data)} bytes; the limit is {constants.entry_bytes_max}",
            "command",
        )
    return data


def _not_leader(leader_hint: int | None) -> MemoraError:
    if leader_hint is None:
        return UnavailableError("no leader is known; retry later")
    return NotLeaderError(f"node {leader_hint} is the leader", leader_hint)


def _lock_data_dir(data_dir: str) -> int:
    """An open descriptor holding an exclusive lock on the data directory's lock file."""
    path = os.path.join(data_dir, LOCK_FILE)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise DataDirLockedError(f"{data_dir} is in use by another process") from None
    return descriptor


def _open_or_bootstrap(data_dir: str, founding: Configuration | None) -> FileStorage:
    """The node's storage. A directory with no Raft state founds a cluster of `founding`, or
    stays empty (a node that joins) if that is None."""
    storage = FileStorage.open(data_dir)
    hard_state, _, meta, entries = storage.initial_state()
    if founding is not None and hard_state.term == 0 and not entries and meta.index == 0:
        storage.close()
        return FileStorage.bootstrap(data_dir, founding)
    return storage
