"""`python -m memora.bench cluster`: a 3-process Memora cluster on loopback against PySyncObj.

Memora side: three members with fsync on, joined by the real peer transport (TCP, HMAC-framed):
nodes 2 and 3 are `memora serve` processes, node 1 runs in this process (a `ClusterNode` on trio
with its own `PeerTransport`), and leads (leadership is transferred to it when needed). Writers are
trio tasks calling `ClusterNode.write` on node 1 with an `InsertNode` carrying `payload_bytes` of
text: the node API the REST and MCP layers call, so the time is Raft replication to a quorum with
every member's fsync, plus the state machine applying the insert, and no HTTP. `inflight` writers
each wait for their write before the next: 1 is sequential, 16 is sixteen concurrent writers, and
the largest level is the pipelined row (that many writes outstanding at all times).

One more row goes through HTTP: leadership moves to node 2, and one keep-alive connection from a
thread of this process posts `POST /api/v1/nodes` to it, one after another, so it is the REST
path a client sees (Quart, hypercorn, JSON) on top of the same replication.

Peer: PySyncObj, three processes on 127.0.0.1 as in `memora.bench raft` (its harness is reused):
`appendEntriesUseBatch=False`, in-memory log, no fsync; `sync=True` calls from N threads, or N
outstanding async calls above 16. Progress goes to stderr; the table and one `BENCH_JSON ` line
go to stdout.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, Final, TextIO

import attrs
import trio

from memora.bench import raft
from memora.bench.core import Progress
from memora.core import constants
from memora.core.errors import MemoraError
from memora.core.types import InsertNode, Proposal
from memora.net.cluster import ClusterNode, RaftOutbox
from memora.net.driver import NodeDriver
from memora.net.peer_transport import PeerTransport, TransportSettings
from memora.text_table import aligned_lines

SECRET: Final = os.urandom(32).hex()
CLUSTER_ID: Final = "memora-bench"
start_deadline_s: Final = 60.0
_LISTENING: Final = re.compile(r"REST API on http://127\.0\.0\.1:(\d+)/api/v1")


@attrs.frozen
class Config:
    seconds: float = 5.0
    payload_bytes: int = 200
    inflight: tuple[int, ...] = (1, 16, 256)
    http_requests: int = 1_000
    peer: bool = True

    def check(self) -> None:
        raft.Config(self.seconds, self.payload_bytes, self.inflight, self.peer).check()
        if self.http_requests < 1:
            raise ValueError("http requests must be >= 1")


# -- The members ----------------------------------------------------------------------------------


class ServeProcess:
    """One `memora serve` member in a child process; its REST port is read from its output."""

    def __init__(self, node_id: int, peers: str, data_dir: str) -> None:
        flags = ["--node-id", str(node_id), "--peers", peers, "--data-dir", data_dir]
        flags += ["--cluster-id", CLUSTER_ID]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memora",
                "serve",
                "--http-port",
                "0",
                "--mcp-port",
                "0",
                "--embedder",
                "hashing",
                *flags,
            ],
            env={**os.environ, "MEMORA_CLUSTER_SECRET": SECRET},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.port: int | None = None
        self._found = threading.Event()
        threading.Thread(target=self._read_output, daemon=True).start()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                self._found.set()

    def wait_listening(self) -> int:
        if not self._found.wait(start_deadline_s) or self.port is None:
            raise RuntimeError("memora serve did not start")
        return self.port

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def open_local_member(
    data_dir: str, peers: dict[int, tuple[str, int]]
) -> tuple[ClusterNode, PeerTransport]:
    link = PeerTransport(
        1,
        peers[1],
        peers,
        TransportSettings(CLUSTER_ID, SECRET.encode()),
        lambda sender, body: member.deliver(sender, body),
    )
    driver = NodeDriver.open(
        data_dir, node_id=1, transport=RaftOutbox(link), founding_voters=tuple(sorted(peers))
    )
    member = ClusterNode(driver, link, cluster_id=CLUSTER_ID)
    return member, link


async def lead_and_be_ready(member: ClusterNode, node_id: int) -> None:
    with trio.fail_after(start_deadline_s):
        while constants.namespace_default not in member.replica.machine.namespaces:
            await trio.sleep(0.05)
        await member.transfer_leadership(node_id)


# -- Phases ---------------------------------------------------------------------------------------


def insert(payload: str) -> Proposal:
    command = InsertNode("Bench", text=payload)
    return Proposal(0, "bench", constants.namespace_default, None, command)


async def write_phase(member: ClusterNode, inflight: int, seconds: float, payload: str) -> Any:
    """`inflight` writers, each writing one insert after another, for `seconds` after a warmup."""
    warmup_s = min(raft.warmup_max_s, seconds * raft.warmup_fraction)
    measure_from = time.perf_counter() + warmup_s
    end = measure_from + seconds
    samples: list[int] = []
    counts = {"committed": 0, "errors": 0}
    error_codes: collections.Counter[str] = collections.Counter()
    fsyncs_before = member.driver.metrics()["log_fsyncs_total"]

    async def writer() -> None:
        while (before := time.perf_counter()) < end:
            try:
                await member.write(insert(payload))
            except MemoraError as error:
                counts["errors"] += 1
                error_codes[f"{error.code}: {error.message}"] += 1
                continue
            after = time.perf_counter()
            if measure_from <= after <= end:
                counts["committed"] += 1
                if before >= measure_from:
                    samples.append(int((after - before) * 1e9))

    async with trio.open_nursery() as nursery:
        for _ in range(inflight):
            nursery.start_soon(writer)
    fsyncs = member.driver.metrics()["log_fsyncs_total"] - fsyncs_before
    return {
        "inflight": inflight,
        "seconds": seconds,
        "committed": counts["committed"],
        "entries_per_s": counts["committed"] / seconds,
        **raft.latency_summary(samples),
        "errors": counts["errors"],
        "error_kinds": dict(error_codes.most_common(3)),
        "leader_fsyncs_per_entry": fsyncs / counts["committed"] if counts["committed"] else None,
    }


def http_phase(port: int, requests: int, payload: str) -> dict[str, Any]:
    """Sequential `POST /api/v1/nodes` on one keep-alive connection; latency per request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"label": "Bench", "text": payload})
    headers = {"Content-Type": "application/json"}
    samples = []
    errors = 0
    for position in range(requests + requests // 10):
        before = time.perf_counter()
        connection.request("POST", "/api/v1/nodes", body, headers)
        answer = connection.getresponse()
        answer.read()
        after = time.perf_counter()
        if answer.status != 201:
            errors += 1
        elif position >= requests // 10:  # The first tenth warms up.
            samples.append(int((after - before) * 1e9))
    connection.close()
    return {"requests": len(samples), "errors": errors, **raft.latency_summary(samples)}


async def memora_metrics(config: Config, root: str, progress: Progress) -> dict[str, Any]:
    ports = raft.free_ports(3)
    peers = {node: ("127.0.0.1", port) for node, port in zip((1, 2, 3), ports, strict=True)}
    peers_flag = ",".join(f"{node}=127.0.0.1:{port}" for node, (_, port) in peers.items())
    children = [ServeProcess(node, peers_flag, os.path.join(root, f"n{node}")) for node in (2, 3)]
    try:
        member, link = open_local_member(os.path.join(root, "n1"), peers)
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            await nursery.start(member.run)
            http_port = await trio.to_thread.run_sync(children[0].wait_listening)
            result = await _measure(member, config, http_port, progress)
            member.stop()
            while member.driver.serving:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return result
    finally:
        for child in children:
            child.stop()


async def _measure(
    member: ClusterNode, config: Config, http_port: int, progress: Progress
) -> dict[str, Any]:
    await lead_and_be_ready(member, 1)
    progress("memora: 3 members up, node 1 (this process) leads")
    payload = "x" * config.payload_bytes
    phases = {}
    for inflight in config.inflight:
        progress(f"memora: inflight {inflight} for {config.seconds:g} s")
        phase = await write_phase(member, inflight, config.seconds, payload)
        progress(
            f"  {phase['entries_per_s']:,.0f} writes/s, p50 {raft.ms(phase['p50_ms'])}, "
            f"p99 {raft.ms(phase['p99_ms'])}, {phase['errors']} errors {phase['error_kinds']}"
        )
        phases[str(inflight)] = phase
    await member.transfer_leadership(2)
    progress(f"memora: node 2 leads; {config.http_requests} sequential REST inserts to it")
    rest = await trio.to_thread.run_sync(http_phase, http_port, config.http_requests, payload)
    progress(f"  REST insert p50 {raft.ms(rest['p50_ms'])}, p99 {raft.ms(rest['p99_ms'])}")
    return {
        "mode": "3 members on 127.0.0.1 (2 `memora serve` processes and this one), fsync on, "
        "peer transport over TCP; writes through ClusterNode.write on the leader (no HTTP)",
        "phases": phases,
        "rest_sequential": rest,
    }


# -- Reporting ------------------------------------------------------------------------------------

TARGETS: Final = {
    "sequential p50": "<= 2 ms",
    "16 writers": ">= 1.5x PySyncObj",
    "pipelined": ">= 10,000/s",
}


def table_rows(metrics: dict[str, Any], config: Config) -> Iterator[tuple[str, ...]]:
    memora = metrics["memora"]["phases"]
    peer = metrics["pysyncobj"].get("phases", {})
    for inflight in config.inflight:
        m, p = memora[str(inflight)], peer.get(str(inflight))
        ratio = f"{m['entries_per_s'] / p['entries_per_s']:.2f}x" if p else "n/a"
        yield (
            str(inflight),
            f"{m['entries_per_s']:,.0f}/s",
            f"{raft.ms(m['p50_ms'])} / {raft.ms(m['p99_ms'])}",
            f"{p['entries_per_s']:,.0f}/s" if p else "skipped",
            f"{raft.ms(p['p50_ms'])} / {raft.ms(p['p99_ms'])}" if p else "",
            ratio,
        )
    rest = metrics["memora"]["rest_sequential"]
    yield ("1 (REST)", "", f"{raft.ms(rest['p50_ms'])} / {raft.ms(rest['p99_ms'])}", "", "", "")


def write_table(metrics: dict[str, Any], config: Config, out: TextIO) -> None:
    headers = ("writers", "Memora", "p50 / p99", "PySyncObj", "p50 / p99", "ratio")
    for line in aligned_lines(headers, list(table_rows(metrics, config)), rule=True):
        out.write(line + "\n")
    out.write(f"\nMemora: {metrics['memora']['mode']}.\n")
    peer = metrics["pysyncobj"]
    out.write("PySyncObj: " + peer.get("mode", f"skipped: {peer.get('skipped')}") + "\n")
    out.write("Targets: " + "; ".join(f"{what} {goal}" for what, goal in TARGETS.items()) + "\n\n")


def run(config: Config, out: TextIO, progress_stream: TextIO) -> dict[str, Any]:
    config.check()
    progress = Progress(progress_stream)
    root = tempfile.mkdtemp(prefix="memora-bench-cluster-", dir="/tmp")
    try:
        metrics: dict[str, Any] = {"memora": trio.run(memora_metrics, config, root, progress)}
        raft_config = raft.Config(config.seconds, config.payload_bytes, config.inflight)
        if config.peer:
            metrics["pysyncobj"] = raft.peer_metrics(raft_config, root, progress)
        else:
            metrics["pysyncobj"] = {"skipped": "disabled by --no-peer"}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "bench": "cluster",
        "config": attrs.asdict(config),
        "machine": raft.machine_info(),
        "metrics": metrics,
    }
    write_table(metrics, config, out)
    out.write("BENCH_JSON " + json.dumps(result, sort_keys=True) + "\n")
    out.flush()
    progress("done")
    return result
