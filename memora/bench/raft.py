"""`python -m memora.bench raft`: a 3-node Memora Raft cluster in one process against PySyncObj.

Memora side: three `RaftNode`s, each with a real `FileStorage` (fsync on) in its own temporary
directory under /tmp, and an in-memory transport: a queue of messages encoded as on the wire
(CBOR) that the driver loop decodes and delivers. The loop keeps `Ready`'s contract for every
node: `storage.save` (durable), then the messages go on the queue, then the committed entries are
applied, then `advance`. The state machine is a no-op: applying an entry on the leader only
records its commit time. Saves of different nodes that fall in the same loop iteration run on a
small thread pool (each FileStorage still has one thread at a time), as three separate servers
would fsync in parallel. Time is a fake clock: every node ticks once per `raft_tick_ms` of
`perf_counter`.

A client keeps N proposals outstanding on the leader at all times: each loop iteration proposes
until N are outstanding (so the proposals of one iteration share a Ready and its fsync), and each
entry the leader applies lets the next one in. Commit latency is the time from `propose()` to the
leader applying that entry. Fsyncs per entry count the log fsyncs of all three nodes (hard state
file writes, on term or vote changes only, are reported apart).

Peer: PySyncObj, three processes on 127.0.0.1 (this process is one of them, the other two are
subprocesses), `appendEntriesUseBatch=False`, a replicated counter whose `@replicated` method takes
the payload, called with `sync=True` sequentially (inflight 1) or from N threads (inflight N). Its
log is PySyncObj's default: in memory, no journal and no fsync. Progress goes to stderr; the table
and one `BENCH_JSON ` line go to stdout.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, TextIO

import attrs
import numpy as np

from memora.bench.core import Progress
from memora.core import constants
from memora.core.prng import Prng
from memora.core.raft import (
    Configuration,
    NotLeaderError,
    ProposalDroppedError,
    RaftNode,
    Ready,
    Role,
    decode_message,
    encode_value,
)
from memora.net.raft_storage import FileStorage
from memora.text_table import aligned_lines

NODE_IDS = (1, 2, 3)
election_deadline_s = 10.0
peer_ready_deadline_s = 30.0
peer_call_timeout_s = 2.0
peer_threads_max = 16  # Above this, N outstanding async calls with callbacks, not N threads.
warmup_fraction = 0.1  # Of each phase, untimed, capped at `warmup_max_s`.
warmup_max_s = 0.5
install_hint = "pip install pysyncobj"


@attrs.frozen
class Config:
    seconds: float = 5.0
    payload_bytes: int = 200
    inflight: tuple[int, ...] = (1, 16, 256)
    peer: bool = True

    def check(self) -> None:
        if self.seconds <= 0:
            raise ValueError("seconds must be positive")
        if not 1 <= self.payload_bytes <= constants.entry_bytes_max:
            raise ValueError(f"payload bytes must be within 1..{constants.entry_bytes_max}")
        if not self.inflight or any(level < 1 for level in self.inflight):
            raise ValueError("every inflight level must be >= 1")


# -- Memora: three nodes in one process ------------------------------------------------------------


class Cluster:
    """Three RaftNodes on FileStorage, a message queue, and a loop keeping Ready's contract."""

    def __init__(self, root: str) -> None:
        self.storages: dict[int, FileStorage] = {}
        self.nodes: dict[int, RaftNode] = {}
        configuration = Configuration(voters=NODE_IDS)
        for node_id in NODE_IDS:
            data_dir = os.path.join(root, f"node{node_id}")
            os.makedirs(data_dir)
            storage = FileStorage.bootstrap(data_dir, configuration)
            hard_state, config, meta, entries = storage.initial_state()
            self.storages[node_id] = storage
            self.nodes[node_id] = RaftNode(
                node_id,
                configuration=config,
                hard_state=hard_state,
                snapshot_meta=meta,
                entries=entries,
                prng=Prng(node_id),
                snapshot_source=storage,
            )
        self.network: deque[bytes] = deque()  # Encoded messages, as a socket would carry.
        self.pool = concurrent.futures.ThreadPoolExecutor(len(NODE_IDS), "raft-save")
        self.tick_s = constants.raft_tick_ms / 1e3
        self.next_tick = time.perf_counter() + self.tick_s
        self.leader_id: int | None = None
        # Proposal index -> perf_counter_ns at propose(), and what the leader applied, for the
        # client. Entries of a former leader's term that a new leader applies are just dropped.
        self.pending: dict[int, int] = {}
        self.latencies_ns: list[int] = []
        self.committed = 0
        self.applied_no_ops = 0

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for storage in self.storages.values():
            storage.close()

    def log_fsyncs(self) -> int:
        return sum(storage.log_fsyncs for storage in self.storages.values())

    def hard_state_writes(self) -> int:
        return sum(storage.hard_state_writes for storage in self.storages.values())

    def elect(self) -> int:
        """Campaign on node 1 and run the loop until a leader has committed its no-op."""
        self.nodes[NODE_IDS[0]].campaign()
        deadline = time.perf_counter() + election_deadline_s
        while time.perf_counter() < deadline:
            self.iterate()
            leader = self._current_leader()
            if leader is not None and self._no_op_committed(leader):
                self.leader_id = leader
                return leader
        raise RuntimeError("no leader elected within the deadline")

    def _current_leader(self) -> int | None:
        leaders = [n for n, node in self.nodes.items() if node.role is Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def _no_op_committed(self, leader: int) -> bool:
        node = self.nodes[leader]
        return node.log.term_at(node.log.committed) == node.term and node.log.applied >= (
            node.log.committed
        )

    def iterate(self) -> None:
        """One loop turn: tick if due, deliver the queued messages, then handle every Ready."""
        now = time.perf_counter()
        if now >= self.next_tick:
            for node in self.nodes.values():
                node.tick()
            self.next_tick = max(self.next_tick + self.tick_s, now)
        for _ in range(len(self.network)):
            message = decode_message(self.network.popleft())
            self.nodes[message.target].step(message)
        readies = [
            (node_id, node.ready()) for node_id, node in self.nodes.items() if node.has_ready()
        ]
        saving = [
            (n, r)
            for n, r in readies
            if r.hard_state is not None or r.entries or r.snapshot is not None
        ]
        if len(saving) > 1:
            futures = [self.pool.submit(self._save, n, r) for n, r in saving]
            for future in futures:
                future.result()
        elif saving:
            self._save(*saving[0])
        # Every save of this turn is durable: now send, apply, advance (per node, in order).
        for node_id, ready in readies:
            self.network.extend(encode_value(message) for message in ready.messages)
            self._apply(node_id, ready)
            self.nodes[node_id].advance(ready)

    def _save(self, node_id: int, ready: Ready) -> None:
        self.storages[node_id].save(ready.hard_state, ready.entries, ready.snapshot)

    def _apply(self, node_id: int, ready: Ready) -> None:
        if ready.snapshot is not None:
            raise AssertionError("the benchmark never compacts, so no snapshot is ever sent")
        if node_id != self.leader_id or not ready.committed:
            return
        now = time.perf_counter_ns()
        for entry in ready.committed:
            started = self.pending.pop(entry.index, None)
            if started is None:
                self.applied_no_ops += 1
                continue
            self.latencies_ns.append(now - started)
            self.committed += 1

    def propose(self, data: bytes) -> bool:
        """Propose on the leader; False if it cannot take it now (the client retries next turn)."""
        assert self.leader_id is not None
        try:
            index = self.nodes[self.leader_id].propose(data)
        except (ProposalDroppedError, NotLeaderError):
            return False
        self.pending[index] = time.perf_counter_ns()
        return True


def memora_phase(cluster: Cluster, inflight: int, seconds: float, payload: bytes) -> dict[str, Any]:
    """Keep `inflight` proposals outstanding for `seconds` (after a short warmup)."""
    warmup_s = min(warmup_max_s, seconds * warmup_fraction)
    started = time.perf_counter()
    measure_from = started + warmup_s
    end = measure_from + seconds
    measuring = False
    base_fsyncs = base_hard_state = base_committed = 0
    sequence = 0
    while True:
        now = time.perf_counter()
        if not measuring and now >= measure_from:
            measuring = True
            cluster.latencies_ns = []
            base_committed = cluster.committed
            base_fsyncs = cluster.log_fsyncs()
            base_hard_state = cluster.hard_state_writes()
            measure_from = now
        if now >= end:
            break
        while len(cluster.pending) < inflight:
            sequence += 1
            if not cluster.propose(sequence.to_bytes(8, "big") + payload):
                break
        cluster.iterate()
    elapsed = time.perf_counter() - measure_from
    committed = cluster.committed - base_committed
    fsyncs = cluster.log_fsyncs() - base_fsyncs
    hard_state_writes = cluster.hard_state_writes() - base_hard_state
    latencies = list(cluster.latencies_ns)
    # Drain: let every outstanding proposal commit before the next phase.
    deadline = time.perf_counter() + election_deadline_s
    while cluster.pending and time.perf_counter() < deadline:
        cluster.iterate()
    if cluster.pending:
        raise RuntimeError(f"{len(cluster.pending)} proposals never committed")
    return {
        "inflight": inflight,
        "seconds": elapsed,
        "committed": committed,
        "entries_per_s": committed / elapsed,
        **latency_summary(latencies),
        "log_fsyncs": fsyncs,
        "fsyncs_per_entry": fsyncs / committed if committed else None,
        "hard_state_writes": hard_state_writes,
    }


def memora_metrics(config: Config, root: str, progress: Progress) -> dict[str, Any]:
    cluster = Cluster(root)
    try:
        leader = cluster.elect()
        progress(f"memora: node {leader} is leader (term {cluster.nodes[leader].term})")
        payload = os.urandom(max(0, config.payload_bytes - 8))
        phases: dict[str, Any] = {}
        for inflight in config.inflight:
            progress(f"memora: inflight {inflight} for {config.seconds:g} s")
            phase = memora_phase(cluster, inflight, config.seconds, payload)
            progress(
                f"  {phase['entries_per_s']:,.0f} entries/s, p50 {phase['p50_ms']:.2f} ms, "
                f"p99 {phase['p99_ms']:.2f} ms, {phase['fsyncs_per_entry'] or 0:.3f} fsyncs/entry"
            )
            phases[str(inflight)] = phase
        if cluster._current_leader() != leader:
            raise RuntimeError("leadership changed during the run")
        rejected = {
            node_id: node.messages_rejected_by_reason() for node_id, node in cluster.nodes.items()
        }
        return {
            "state_machine": "no-op (the leader records each entry's commit time)",
            "storage": "FileStorage per node, fsync on, temp dirs under /tmp",
            "transport": "in-memory queue of CBOR-encoded messages, delivered by the driver loop",
            "leader": leader,
            "term": cluster.nodes[leader].term,
            "messages_rejected": rejected,
            "phases": phases,
        }
    finally:
        cluster.close()


def latency_summary(samples_ns: Sequence[int]) -> dict[str, Any]:
    if not samples_ns:
        return {"p50_ms": None, "p99_ms": None, "samples": 0}
    p50, p99 = np.percentile(np.asarray(samples_ns, dtype=np.float64), [50, 99])
    return {"p50_ms": float(p50) / 1e6, "p99_ms": float(p99) / 1e6, "samples": len(samples_ns)}


# -- PySyncObj ------------------------------------------------------------------------------------

PEER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):
        def __init__(self, self_address, partners, **options):
            conf = SyncObjConf(appendEntriesUseBatch=False, **options)
            super().__init__(self_address, partners, conf)
            self.count = 0
            self.bytes = 0

        @replicated
        def add(self, payload):
            self.count += 1
            self.bytes += len(payload)
            return self.count

    if __name__ == "__main__":
        counter = Counter(sys.argv[1], sys.argv[2:])
        while True:
            time.sleep(1)
    """
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def peer_metrics(config: Config, root: str, progress: Progress) -> dict[str, Any]:
    try:
        version = importlib.metadata.version("pysyncobj")
    except importlib.metadata.PackageNotFoundError:
        progress(f"pysyncobj is not installed: the peer rows are skipped ({install_hint})")
        return {"skipped": f"pysyncobj not installed; {install_hint}"}
    script = os.path.join(root, "pysyncobj_peer.py")
    with open(script, "w") as file:
        file.write(PEER_SCRIPT)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(len(NODE_IDS))]
    children: list[subprocess.Popen[bytes]] = []
    namespace: dict[str, Any] = {"__name__": "memora_bench_pysyncobj_peer"}
    counter: Any = None
    try:
        for address in addresses[1:]:
            partners = [other for other in addresses if other != address]
            children.append(
                subprocess.Popen(
                    [sys.executable, script, address, *partners],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        exec(compile(PEER_SCRIPT, script, "exec"), namespace)
        # This node's election timeout (0.31-0.39 s) is shorter than the subprocesses' (0.4-1.4 s,
        # the default), so it nearly always becomes the leader: clients call the leader directly.
        counter = namespace["Counter"](
            addresses[0], addresses[1:], raftMinTimeout=0.31, raftMaxTimeout=0.39
        )
        deadline = time.perf_counter() + peer_ready_deadline_s
        while not (counter.isReady() and counter._getLeader() is not None):
            if time.perf_counter() > deadline:
                raise RuntimeError("PySyncObj found no leader within the deadline")
            time.sleep(0.05)
        counter.add(b"warm", sync=True, timeout=peer_call_timeout_s)
        progress(f"pysyncobj {version}: leader {counter._getLeader()}, this node {addresses[0]}")
        payload = os.urandom(config.payload_bytes)
        phases: dict[str, Any] = {}
        for inflight in config.inflight:
            how = f"{inflight} threads" if inflight <= peer_threads_max else "callbacks"
            progress(f"pysyncobj: inflight {inflight} for {config.seconds:g} s ({how})")
            if inflight <= peer_threads_max:
                phase = peer_phase(counter, inflight, config.seconds, payload)
            else:
                phase = peer_callback_phase(counter, inflight, config.seconds, payload)
            progress(
                f"  {phase['entries_per_s']:,.0f} writes/s, p50 {ms(phase['p50_ms'])}, "
                f"p99 {ms(phase['p99_ms'])}, {phase['errors']} errors"
            )
            phases[str(inflight)] = phase
        return {
            "version": version,
            "mode": "3 processes on 127.0.0.1, appendEntriesUseBatch=False, in-memory log "
            "(no journal, no fsync), this node is the leader when leader_is_this_process; "
            f"sync=True calls from N threads (N <= {peer_threads_max}), else N outstanding "
            "async calls whose callbacks issue the next one",
            "leader_is_this_process": str(counter._getLeader()) == addresses[0],
            "phases": phases,
        }
    finally:
        if counter is not None:
            counter.destroy()
        for child in children:
            child.kill()
        for child in children:
            child.wait()


def peer_phase(counter: Any, inflight: int, seconds: float, payload: bytes) -> dict[str, Any]:
    warmup_s = min(warmup_max_s, seconds * warmup_fraction)
    started = time.perf_counter()
    measure_from = started + warmup_s
    end = measure_from + seconds
    latencies: list[list[int]] = [[] for _ in range(inflight)]
    errors = [0] * inflight
    completed = [0] * inflight

    def writer(slot: int) -> None:
        own = latencies[slot]
        while True:
            before = time.perf_counter()
            if before >= end:
                return
            try:
                counter.add(payload, sync=True, timeout=peer_call_timeout_s)
            except Exception:
                errors[slot] += 1
                continue
            after = time.perf_counter()
            if measure_from <= after <= end:
                completed[slot] += 1
                if before >= measure_from:
                    own.append(int((after - before) * 1e9))

    threads = [threading.Thread(target=writer, args=(slot,)) for slot in range(inflight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Throughput counts the calls that returned inside the window; latency those that also
    # started inside it.
    samples = [sample for own in latencies for sample in own]
    return {
        "inflight": inflight,
        "seconds": seconds,
        "committed": sum(completed),
        "entries_per_s": sum(completed) / seconds,
        **latency_summary(samples),
        "errors": sum(errors),
    }


def peer_callback_phase(
    counter: Any, inflight: int, seconds: float, payload: bytes
) -> dict[str, Any]:
    """Keep `inflight` async calls outstanding; each callback (on PySyncObj's thread) issues the
    next call. Latency is from the call to its callback."""
    warmup_s = min(warmup_max_s, seconds * warmup_fraction)
    measure_from = time.perf_counter() + warmup_s
    end = measure_from + seconds
    samples: list[int] = []
    completed = [0]
    errors = [0]
    outstanding = [0]
    lock = threading.Lock()
    finished = threading.Event()

    def issue() -> None:
        before = time.perf_counter()
        if before >= end:
            with lock:
                outstanding[0] -= 1
                if outstanding[0] == 0:
                    finished.set()
            return

        def done(result: Any, error: Any) -> None:
            after = time.perf_counter()
            if error != 0:  # FAIL_REASON.SUCCESS is 0.
                errors[0] += 1
            elif measure_from <= after <= end:
                completed[0] += 1
                if before >= measure_from:
                    samples.append(int((after - before) * 1e9))
            issue()

        counter.add(payload, callback=done)

    outstanding[0] = inflight
    for _ in range(inflight):
        issue()
    if not finished.wait(seconds + warmup_s + peer_call_timeout_s * 5):
        errors[0] += outstanding[0]
    return {
        "inflight": inflight,
        "seconds": seconds,
        "committed": completed[0],
        "entries_per_s": completed[0] / seconds,
        **latency_summary(samples),
        "errors": errors[0],
    }


# -- Reporting ------------------------------------------------------------------------------------


def table(metrics: dict[str, Any], config: Config) -> list[tuple[str, ...]]:
    memora = metrics["memora"]["phases"]
    peer = metrics["pysyncobj"].get("phases", {})
    rows: list[tuple[str, ...]] = []
    for inflight in config.inflight:
        m = memora[str(inflight)]
        p = peer.get(str(inflight))
        ratio = (
            f"{m['entries_per_s'] / p['entries_per_s']:.2f}x" if p and p["entries_per_s"] else "n/a"
        )
        rows.append(
            (
                str(inflight),
                f"{m['entries_per_s']:,.0f}/s",
                ms(m["p50_ms"]),
                ms(m["p99_ms"]),
                f"{m['fsyncs_per_entry']:.3f}" if m["fsyncs_per_entry"] is not None else "n/a",
                f"{p['entries_per_s']:,.0f}/s" if p else "skipped",
                ms(p["p50_ms"]) if p else "",
                ms(p["p99_ms"]) if p else "",
                ratio,
            )
        )
    return rows


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def write_table(rows: list[tuple[str, ...]], metrics: dict[str, Any], out: TextIO) -> None:
    headers = (
        "inflight",
        "Memora",
        "p50",
        "p99",
        "fsync/entry",
        "PySyncObj",
        "p50",
        "p99",
        "ratio",
    )
    for line in aligned_lines(headers, rows, rule=True):
        out.write(line + "\n")
    out.write(
        f"\nMemora: 3 RaftNodes in one process, {metrics['memora']['storage']}; "
        f"{metrics['memora']['transport']}; state machine {metrics['memora']['state_machine']}.\n"
    )
    peer = metrics["pysyncobj"]
    out.write(
        "PySyncObj: " + (peer["mode"] if "mode" in peer else f"skipped: {peer['skipped']}") + "\n"
    )
    out.write("ratio = Memora entries/s / PySyncObj writes/s\n\n")


def machine_info() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def run(config: Config, out: TextIO, progress_stream: TextIO) -> dict[str, Any]:
    """Run both systems at every inflight level, print the table and the JSON line."""
    config.check()
    progress = Progress(progress_stream)
    root = tempfile.mkdtemp(prefix="memora-bench-raft-", dir="/tmp")
    try:
        metrics: dict[str, Any] = {}
        metrics["memora"] = memora_metrics(config, os.path.join(root, "memora"), progress)
        if config.peer:
            metrics["pysyncobj"] = peer_metrics(config, root, progress)
        else:
            metrics["pysyncobj"] = {"skipped": "disabled by --no-peer"}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = table(metrics, config)
    result = {
        "bench": "raft",
        "config": attrs.asdict(config),
        "machine": machine_info(),
        "metrics": metrics,
    }
    write_table(rows, metrics, out)
    out.write("BENCH_JSON " + json.dumps(result, sort_keys=True) + "\n")
    out.flush()
    progress("done")
    return result
