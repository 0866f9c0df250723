"""A one-voter Raft node driven synchronously, for the embedded store.

What lives here: the driver loop that keeps `Ready`'s contract (persist through `FileStorage`,
then apply the committed entries to the `Replica`, then advance) for a node with no peers, and the
thread discipline that turns concurrent writers into group commit. What must not: any Raft logic
(it is all in `memora.core.raft`) or any state machine logic (`memora.core.replica`).

Group commit: a writer proposes under the short node lock, then takes the drive lock and runs
Readies until its entry is applied. Writers that arrive while another drives wait for the drive
lock; by the time they get it, the Ready in hand holds all of their entries, persisted with one
fsync. A one-voter node has no messages to send; Raft still decides what commits, so a cluster
changes only the driver (issue 6), never this store's surface.

Apply while the fsync runs: a lone voter's Ready commits the very entries it asks to persist, so
`_persist_and_apply` hands the save to a worker thread (`_Saver`) and applies the committed entries
meanwhile (hnswlib and the fsync both release the GIL, so the two really overlap). Nothing applied
is visible before the save returns: the apply lock, which every read takes, is held until then,
and each writer gets its reply only after it. If the save fails, the replica holds entries that
may not be on disk, so the node refuses every later write and read (`NodeFailedError`); reopening
the store recovers what was durable.

Graph inserts after the reply: a single vector's HNSW insert is most of a write's cost, and the
state machine lets it wait (`Replica.settle_graphs`). Once a Ready's writers have their replies,
`_Settler` does it on a worker thread, holding the apply lock, while the caller goes on; hnswlib
releases the GIL, so the caller's next write runs beside it until it needs the apply lock. The
caller waits until the worker holds that lock: otherwise the worker, short of the GIL, would
start only when the caller's next apply had already done the insert itself. The graphs, and every
answer, are the same whoever does the insert (`memora.core.vectors`).
"""

from __future__ import annotations

import queue
import threading

from memora.core.errors import CodecError
from memora.core.prng import Prng
from memora.core.raft import Configuration, RaftNode, Ready, Role, Snapshot
from memora.core.replica import Replica
from memora.core.types import Result
from memora.net.raft_storage import FileStorage, StorageFailedError

LOCAL_NODE_ID = 1


class NodeFailedError(StorageFailedError):
    """The node stopped: a save failed after its entries were applied (the replica may be ahead
    of the disk), or adding a vector to its graph failed (the index may be damaged). Reopening
    the store recovers everything that was acknowledged."""


class _Saver:
    """A worker thread that runs `FileStorage.save` for one Ready while the driver applies it.

    One save at a time: `start` hands it over, `wait` returns its error (or None) once it is done.
    """

    def __init__(self, storage: FileStorage) -> None:
        self._storage = storage
        self._readies: queue.SimpleQueue[Ready | None] = queue.SimpleQueue()
        self._outcomes: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="memora-save", daemon=True)
        self._thread.start()

    def start(self, ready: Ready) -> None:
        assert not self._busy, "one save at a time"
        self._busy = True
        self._readies.put(ready)

    def wait(self) -> BaseException | None:
        assert self._busy
        outcome = self._outcomes.get()
        self._busy = False
        return outcome

    def stop(self) -> None:
        assert not self._busy
        self._readies.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            ready = self._readies.get()
            if ready is None:
                return
            try:
                self._storage.save(ready.hard_state, ready.entries, ready.snapshot)
            except BaseException as error:  # Handed to the driver, which raises it.
                self._outcomes.put(error)
            else:
                self._outcomes.put(None)


class _Settler:
    """A worker thread that settles a replica's graphs (`Replica.settle_graphs`) under a lock.

    `start` returns once the worker holds the lock, so whoever takes the lock next waits for the
    settling to finish. An error in it (a bug or out of memory) is kept for `failure`.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._replicas: queue.SimpleQueue[Replica | None] = queue.SimpleQueue()
        self._holding = threading.Lock()  # Released by the worker once it holds `lock`.
        self._holding.acquire()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="memora-settle", daemon=True)
        self._thread.start()

    def start(self, replica: Replica) -> None:
        self._replicas.put(replica)
        self._holding.acquire()

    def stop(self) -> None:
        self._replicas.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            replica = self._replicas.get()
            if replica is None:
                return
            with self._lock:
                self._holding.release()
                try:
                    replica.settle_graphs()
                except BaseException as error:  # Reported by the node's next call.
                    self.failure = error


class LocalNode:
    """A single-voter RaftNode, its FileStorage and its Replica, in one process."""

    def __init__(self, node: RaftNode, storage: FileStorage, replica: Replica) -> None:
        self.storage = storage
        self._replica = replica
        self._node = node
        self._node_lock = threading.Lock()  # Guards the RaftNode: propose, ready, advance.
        self._drive_lock = threading.Lock()  # One driver at a time: persist and apply in order.
        self.apply_lock = threading.RLock()  # Guards the replica: applies and reads.
        self._results: dict[int, Result] = {}  # Replies not yet collected, by log index.
        self._saver = _Saver(storage)
        self._settler = _Settler(self.apply_lock)
        self._failure: BaseException | None = None  # A save that failed after its apply.

    @classmethod
    def open(cls, data_dir: str) -> LocalNode:
        """Open the node in `data_dir` (a founding one-voter member if the directory is new),
        restore its latest snapshot, apply its committed log, and make it leader."""
        storage = _open_storage(data_dir)
        hard_state, configuration, meta, entries = storage.initial_state()
        replica = Replica()
        latest = storage.latest_snapshot()
        if latest is not None:
            replica = Replica.from_snapshot_data(latest[1])
            assert replica.applied_index == meta.index, (replica.applied_index, meta.index)
        node = RaftNode(
            LOCAL_NODE_ID,
            configuration=configuration,
            hard_state=hard_state,
            snapshot_meta=meta,
            entries=entries,
            prng=Prng(LOCAL_NODE_ID),
            snapshot_source=storage,
        )
        local = cls(node, storage, replica)
        try:
            local._become_leader()
        except BaseException:
            local.close()
            raise
        return local

    @property
    def replica(self) -> Replica:
        """The replica; refused once a save failed after its apply (it may be ahead of disk)."""
        self._check_usable()
        return self._replica

    def propose(self, data: bytes) -> Result:
        """Append `data` through Raft and return the replica's reply once it is applied."""
        with self._node_lock:
            index = self._node.propose(data)
        with self._drive_lock:
            self._check_usable()
            if index not in self._results:
                self._drive()
                if self._replica.graphs_unsettled:
                    self._settler.start(self._replica)
            return self._results.pop(index)

    def snapshot(self) -> int:
        """Snapshot the replica at its applied index and let the log before it go."""
        with self._drive_lock:
            with self.apply_lock:
                data = self.replica.snapshot_data()
                index = self._replica.applied_index
            with self._node_lock:
                meta = self._node.compact(index)
            self.storage.compact(Snapshot(meta, data))
            return index

    def close(self) -> None:
        with self._drive_lock:
            self._saver.stop()
            self._settler.stop()
            self.storage.close()

    def _become_leader(self) -> None:
        with self._drive_lock:
            with self._node_lock:
                self._node.campaign()
            self._drive()
            assert self._node.role is Role.LEADER, self._node.soft_state()
            # The leader's no-op commits every entry of earlier terms: the log is now applied.
            assert self._replica.applied_index == self._node.log.committed

    def _drive(self) -> None:
        """Persist, apply and advance Readies until the node has nothing more to do."""
        while True:
            with self._node_lock:
                if not self._node.has_ready():
                    return
                ready = self._node.ready()
            self._persist_and_apply(ready)
            with self._node_lock:
                self._node.advance(ready)

    def _persist_and_apply(self, ready: Ready) -> None:
        """Save the Ready and apply its committed entries, overlapped (module docstring)."""
        assert not ready.messages, "a one-voter node has no one to send to"
        if ready.snapshot is not None or not ready.committed:
            self.storage.save(ready.hard_state, ready.entries, ready.snapshot)
            with self.apply_lock:
                self._apply(ready)
            return
        self._saver.start(ready)  # The save needs no lock: it may run while graphs settle.
        with self.apply_lock:
            try:
                self._apply(ready)
            finally:
                failure = self._saver.wait()
                if failure is not None:
                    self._fail(failure)

    def _apply(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self._replica = Replica.from_snapshot_data(ready.snapshot.data)
        for entry in ready.committed:
            reply = self._replica.apply(entry)
            if reply is not None:
                self._results[entry.index] = reply

    def _fail(self, failure: BaseException) -> None:
        """Refuse everything from now on: what was applied may not be on disk."""
        self._failure = failure
        self._results.clear()
        raise failure

    def _check_usable(self) -> None:
        if self._failure is not None:
            message = f"a save failed after its entries were applied: {self._failure}"
            raise NodeFailedError(message) from self._failure
        if self._settler.failure is not None:
            message = f"adding a vector to its graph failed: {self._settler.failure}"
            raise NodeFailedError(message) from self._settler.failure


def _open_storage(data_dir: str) -> FileStorage:
    storage = FileStorage.open(data_dir)
    hard_state, configuration, meta, entries = storage.initial_state()
    if hard_state.term == 0 and not entries and meta.index == 0:
        storage.close()
        return FileStorage.bootstrap(data_dir, Configuration(voters=(LOCAL_NODE_ID,)))
    if configuration.voters != (LOCAL_NODE_ID,):
        storage.close()
        raise CodecError(
            f"{data_dir} belongs to a cluster with voters {configuration.voters}; "
            "open it with `memora serve`, not as an embedded store"
        )
    return storage
