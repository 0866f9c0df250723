"""`python -m memora.bench http`: a real `memora serve` on loopback, measured from a trio client.

The server is `python -m memora serve` in a subprocess, as a user starts it: a fresh data
directory under /tmp (so every write is fsynced: `FileStorage` has no other mode), no tokens,
127.0.0.1 and a port the OS picks. The benchmark loads `nodes` nodes with `dimension`-float
vectors through `POST /api/v1/batch`, then times, at each level of `connections`:

- `health`: `GET /api/v1/health`, the cheapest endpoint: the floor of the HTTP stack plus this
  client, against which the others are compared;
- `get_node`: `GET /api/v1/nodes/{id}` of a random loaded node (linearizable, the default);
- `similar`: `GET /api/v1/vectors/{id}/similar?top_k=10` of a random loaded node;
- `insert_node`: `POST /api/v1/nodes` of a new node shaped as the seed's example (id, label, and a
  name), each acknowledged only once fsynced.

At one connection it then times two floors, servers of one `GET` route on the same HTTP stack
without Memora (`memora.bench.http_floor`): a bare ASGI app on hypercorn's trio worker, and a
QuartTrio app. They show how much of each request is the stack's before Memora does anything.

The client is this process: one trio task per connection, each a keep-alive HTTP/1.1 connection
(h11 over a trio socket, TCP_NODELAY) sending its next request as soon as the last was answered
(a closed loop). Latency is from the first byte sent to the last byte read, so it includes the
client's own parsing: the `health` row bounds that, and the client's CPU time per request (its
`process_time`) is reported next to the server's (from /proc, where there is one). Both
processes share the machine's cores.

Each (operation, connections) cell is `rounds` rounds of `requests` requests after `warmup`
untimed ones; requests/s, p50 and p99 are the medians of the per-round values. The targets (the
issue's: get-node p50 under 1 ms, insert-node p50 under 2 ms, on one node) are judged at one
connection, where p50 is a request's own latency and not a queue's. Progress goes to stderr; the
table and one `BENCH_JSON ` line go to stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, TextIO

import attrs
import h11
import numpy as np
import trio

from memora.bench import data, http_floor
from memora.bench.core import Progress
from memora.bench.raft import latency_summary, machine_info
from memora.core import constants
from memora.text_table import aligned_lines

LOOPBACK_HOST: Final = "127.0.0.1"
REPOSITORY: Final = Path(__file__).resolve().parents[2]
server_start_timeout_s: Final = 60.0
server_stop_timeout_s: Final = 30.0
request_timeout_s: Final = 30.0
receive_bytes_max: Final = 64 * 1024
vector_decimals: Final = 5  # Load bodies carry vectors rounded to this many decimals.
insert_label: Final = "BenchInsert"
load_label: Final = "BenchNode"
get_node_p50_ms_target: Final = 1.0
insert_node_p50_ms_target: Final = 2.0
OPERATIONS: Final = ("health", "get_node", "similar", "insert_node")
FLOOR_NAMES: Final = {"asgi": "floor: bare ASGI app", "quart": "floor: one Quart route"}
assert tuple(FLOOR_NAMES) == http_floor.KINDS
_LISTENING: Final = re.compile(r"REST API on http://127\.0\.0\.1:(\d+)/api/v1")
_READY: Final = re.compile("ready;")  # `memora serve` prints it once every listener is up.
_FLOOR_LISTENING: Final = re.compile(r"^listening on (\d+)$")


@attrs.frozen
class Config:
    nodes: int = 3_000
    requests: int = 2_000  # Timed requests per round of one operation at one connection level.
    rounds: int = 3
    warmup: int = 200  # Untimed requests before the rounds of each cell.
    connections: tuple[int, ...] = (1, 16)
    load_batch: int = 500  # Nodes per `POST /api/v1/batch` while loading.
    top_k: int = 10
    seed: int = 7

    def check(self) -> None:
        """Raise ValueError for a configuration the benchmark cannot run."""
        if self.nodes < self.top_k + 1:
            raise ValueError(f"need nodes >= top_k + 1 ({self.top_k + 1})")
        if self.requests < 1 or self.rounds < 1 or self.warmup < 0:
            raise ValueError("need requests >= 1, rounds >= 1 and warmup >= 0")
        if not self.connections or any(level < 1 for level in self.connections):
            raise ValueError("every connection level must be >= 1")
        if not 1 <= self.load_batch <= constants.batch_commands_max:
            raise ValueError(f"load batch must be within 1..{constants.batch_commands_max}")
        if not 1 <= self.top_k <= constants.top_k_max:
            raise ValueError(f"top_k must be within 1..{constants.top_k_max}")


# -- The client -----------------------------------------------------------------------------------


class HttpClientError(Exception):
    """The connection broke or was closed before the answer, or the answer is not HTTP/1.1."""


@attrs.frozen
class Request:
    method: str
    target: str
    body: bytes = b""


@attrs.frozen
class Response:
    status: int
    body: bytes


class HttpConnection:
    """One keep-alive HTTP/1.1 connection (h11 over a trio socket); one request at a time.

    When the server answers with `Connection: close` (hypercorn does after
    `keep_alive_requests_max` requests), the next request opens a new connection and counts
    it in `reconnections`; a connection that breaks otherwise raises `HttpClientError`."""

    def __init__(self, stream: trio.SocketStream, host: str, port: int) -> None:
        self._stream: trio.SocketStream | None = stream
        self._host = host
        self._port = port
        self._protocol = h11.Connection(h11.CLIENT)
        self.reconnections = 0

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        return cls(await _open_stream(host, port), host, port)

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def send(self, request: Request) -> Response:
        """Send `request` and read its whole response; the connection stays open for the next."""
        if self._stream is None:
            self._stream = await _open_stream(self._host, self._port)
            self._protocol = h11.Connection(h11.CLIENT)
            self.reconnections += 1
        try:
            await self._stream.send_all(self._encode(request))
            response = await self._receive(self._stream)
        except (h11.ProtocolError, trio.BrokenResourceError) as error:
            # h11 reports a connection the server closed before answering as a protocol error.
            raise HttpClientError(f"{request.method} {request.target}: {error}") from error
        if self._protocol.our_state is h11.MUST_CLOSE:
            await self.aclose()
        else:
            self._protocol.start_next_cycle()
        return response

    def _encode(self, request: Request) -> bytes:
        headers = [("Host", self._host), ("Content-Length", str(len(request.body)))]
        if request.body:
            headers.append(("Content-Type", "application/json"))
        head = h11.Request(method=request.method, target=request.target, headers=headers)
        encoded = self._protocol.send(head) or b""
        if request.body:
            encoded += self._protocol.send(h11.Data(data=request.body)) or b""
        return encoded + (self._protocol.send(h11.EndOfMessage()) or b"")

    async def _receive(self, stream: trio.SocketStream) -> Response:
        status = 0
        body = bytearray()
        while True:
            event = self._protocol.next_event()
            if event is h11.NEED_DATA:
                self._protocol.receive_data(await stream.receive_some(receive_bytes_max))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, bytes(body))
            elif not isinstance(event, h11.InformationalResponse):
                raise HttpClientError(f"unexpected HTTP event {event!r}")


async def _open_stream(host: str, port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(host, port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    return stream


def json_request(method: str, target: str, body: Any) -> Request:
    return Request(method, target, json.dumps(body, separators=(",", ":")).encode())


# -- The server -----------------------------------------------------------------------------------


class ServerProcessError(Exception):
    """`memora serve` did not start in time, or did not exit cleanly."""


class ServerProcess:
    """`python -m memora serve` on a free loopback port; its output is collected line by line.

    With `floor` ("asgi" or "quart"), the server is instead `memora.bench.http_floor`: the same
    HTTP stack serving one trivial route, with no data directory. `open_files_soft_limit`, if
    given, is the soft limit on open files the server starts with (it raises its own at
    start-up)."""

    def __init__(
        self,
        data_dir: str | None,
        *,
        floor: str | None = None,
        open_files_soft_limit: int | None = None,
    ) -> None:
        assert (data_dir is None) == (floor is not None), (data_dir, floor)
        if floor is not None:
            command = [sys.executable, "-m", "memora.bench.http_floor", floor]
            self._ready, self._port = _FLOOR_LISTENING, _FLOOR_LISTENING
        else:
            assert data_dir is not None
            command = [sys.executable, "-m", "memora", "serve", "--data-dir", data_dir]
            command += ["--host", LOOPBACK_HOST, "--http-port", "0", "--mcp-port", "0"]
            command += ["--embedder", "hashing"]
            self._ready, self._port = _READY, _LISTENING
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # One pipe, always drained by the reader thread.
            text=True,
            preexec_fn=None
            if open_files_soft_limit is None
            else partial(_lower_open_files_soft_limit, open_files_soft_limit),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.kill()
            raise

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + server_start_timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if any(self._ready.search(line) for line in list(self.lines)):
                return self._port_from_lines()
            time.sleep(0.05)
        raise ServerProcessError(f"the server did not start: {self.output()}")

    def _port_from_lines(self) -> int:
        for line in self.lines:
            match = self._port.search(line)
            if match:
                return int(match.group(1))
        raise ServerProcessError(f"the server reported no port: {self.output()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time of the server so far, or None without /proc."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # Fields 14 and 15 of proc(5) (utime, stime), counted from after the command name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        """SIGTERM, then wait for the clean exit; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=server_stop_timeout_s)
        self._reader.join(timeout=server_stop_timeout_s)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=server_stop_timeout_s)
        self._reader.join(timeout=server_stop_timeout_s)

    def output(self) -> str:
        return "\n".join(self.lines)

    def open_files_soft_limit(self) -> int | None:
        """The server's soft limit on open files, or None without /proc."""
        try:
            limits = Path(f"/proc/{self.pid}/limits").read_text()
        except OSError:
            return None
        match = re.search(r"^Max open files\s+(\S+)", limits, re.MULTILINE)
        assert match is not None, limits
        return resource.RLIM_INFINITY if match.group(1) == "unlimited" else int(match.group(1))

    def open_sockets(self) -> int | None:
        """How many sockets the server has open, or None without /proc."""
        directory = f"/proc/{self.pid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            return None
        links = []
        for name in names:
            with contextlib.suppress(OSError):  # Closed since the listing.
                links.append(os.readlink(os.path.join(directory, name)))
        return sum(link.startswith("socket:") for link in links)


def _lower_open_files_soft_limit(soft: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- Measuring ------------------------------------------------------------------------------------


class UnexpectedAnswerError(Exception):
    """The server answered a benchmark request with another status than the one expected."""


@attrs.frozen
class Workload:
    """The requests of one operation, made on demand, and the status each must get."""

    name: str
    status: int
    make: Callable[[], Request]


def workloads(config: Config, rng: np.random.Generator) -> dict[str, Workload]:
    """Every operation's requests; inserts take ids past the loaded ones, one each."""
    next_insert_id = iter(range(config.nodes + 1, constants.record_id_max))

    def random_id() -> int:
        return int(rng.integers(1, config.nodes + 1))

    def insert() -> Request:
        node_id = next(next_insert_id)
        body = {"id": node_id, "label": insert_label, "name": f"bench node {node_id}"}
        return json_request("POST", "/api/v1/nodes", body)

    similar_query = f"/similar?top_k={config.top_k}"
    found = {
        "health": Workload("health", 200, lambda: Request("GET", "/api/v1/health")),
        "get_node": Workload(
            "get_node", 200, lambda: Request("GET", f"/api/v1/nodes/{random_id()}")
        ),
        "similar": Workload(
            "similar",
            200,
            lambda: Request("GET", f"/api/v1/vectors/{random_id()}{similar_query}"),
        ),
        "insert_node": Workload("insert_node", 201, insert),
    }
    assert tuple(found) == OPERATIONS
    return found


@attrs.frozen
class RoundResult:
    requests_per_s: float
    latencies_ns: list[int]
    client_cpu_s: float
    server_cpu_s: float | None


async def timed_round(
    connections: Sequence[HttpConnection], requests: list[Request], status: int
) -> tuple[float, list[int]]:
    """Send `requests` over `connections`, each connection one request at a time; returns the
    elapsed seconds and every request's latency."""
    pending = iter(requests)
    latencies: list[int] = []

    async def drive(connection: HttpConnection) -> None:
        for request in pending:
            started = time.perf_counter_ns()
            with trio.fail_after(request_timeout_s):
                response = await connection.send(request)
            latencies.append(time.perf_counter_ns() - started)
            if response.status != status:
                raise UnexpectedAnswerError(
                    f"{request.method} {request.target}: {response.status} {response.body[:200]!r}"
                )

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for connection in connections:
            nursery.start_soon(drive, connection)
    elapsed = time.perf_counter() - started
    assert len(latencies) == len(requests), (len(latencies), len(requests))
    return elapsed, latencies


async def measure_round(
    server: ServerProcess,
    connections: Sequence[HttpConnection],
    workload: Workload,
    count: int,
) -> RoundResult:
    requests = [workload.make() for _ in range(count)]
    client_before = time.process_time()
    server_before = server.cpu_seconds()
    elapsed, latencies = await timed_round(connections, requests, workload.status)
    server_after = server.cpu_seconds()
    server_cpu = None
    if server_before is not None and server_after is not None:
        server_cpu = server_after - server_before
    return RoundResult(count / elapsed, latencies, time.process_time() - client_before, server_cpu)


def cell_summary(rounds: Sequence[RoundResult], requests: int) -> dict[str, Any]:
    """Medians over rounds of each round's requests/s, p50, p99 and CPU per request."""
    summaries = [latency_summary(result.latencies_ns) for result in rounds]
    server = [result.server_cpu_s for result in rounds]
    return {
        "requests_per_s": statistics.median(result.requests_per_s for result in rounds),
        "p50_ms": statistics.median(summary["p50_ms"] for summary in summaries),
        "p99_ms": statistics.median(summary["p99_ms"] for summary in summaries),
        "client_cpu_us_per_request": statistics.median(
            result.client_cpu_s / requests * 1e6 for result in rounds
        ),
        "server_cpu_us_per_request": (
            None
            if any(value is None for value in server)
            else statistics.median(value / requests * 1e6 for value in server if value is not None)
        ),
        "rounds": len(rounds),
        "requests_per_round": requests,
    }


async def measure_level(
    config: Config,
    server: ServerProcess,
    level: int,
    loads: dict[str, Workload],
    progress: Progress,
) -> dict[str, Any]:
    """Every operation over `level` fresh keep-alive connections."""
    connections = [await HttpConnection.open(LOOPBACK_HOST, server.port) for _ in range(level)]
    try:
        cells: dict[str, Any] = {}
        for name in OPERATIONS:
            workload = loads[name]
            if config.warmup:
                await measure_round(server, connections, workload, config.warmup)
            rounds = [
                await measure_round(server, connections, workload, config.requests)
                for _ in range(config.rounds)
            ]
            cells[name] = cell_summary(rounds, config.requests)
            progress(
                f"  {name} x{level}: {cells[name]['requests_per_s']:,.0f} req/s, "
                f"p50 {cells[name]['p50_ms']:.2f} ms, p99 {cells[name]['p99_ms']:.2f} ms"
            )
        return cells
    finally:
        for connection in connections:
            await connection.aclose()


async def load_nodes(config: Config, port: int, rng: np.random.Generator) -> None:
    """Insert nodes 1..`nodes`, each with a clustered vector, `load_batch` per atomic batch."""
    dimension = constants.dimension_default  # The default namespace's.
    vectors = data.clustered_vectors(rng, config.nodes, dimension, clusters=10)
    vectors = np.round(vectors, vector_decimals)
    connection = await HttpConnection.open(LOOPBACK_HOST, port)
    try:
        for start in range(0, config.nodes, config.load_batch):
            stop = min(start + config.load_batch, config.nodes)
            commands = [
                {"op": "insert_node", "id": row + 1, "label": load_label, "vector": vector}
                for row, vector in enumerate(vectors[start:stop].tolist(), start)
            ]
            request = json_request("POST", "/api/v1/batch", {"commands": commands})
            with trio.fail_after(request_timeout_s):
                response = await connection.send(request)
            if response.status != 200:
                answer = f"{response.status} {response.body[:200]!r}"
                raise UnexpectedAnswerError(f"loading nodes by batch: {answer}")
    finally:
        await connection.aclose()


async def measure(config: Config, server: ServerProcess, progress: Progress) -> dict[str, Any]:
    rng = np.random.default_rng(config.seed)
    progress(f"loading {config.nodes} nodes with {constants.dimension_default}-float vectors")
    load_started = time.perf_counter()
    await load_nodes(config, server.port, rng)
    load_s = time.perf_counter() - load_started
    loads = workloads(config, rng)
    levels = {}
    for level in config.connections:
        progress(f"measuring over {level} connections")
        levels[str(level)] = await measure_level(config, server, level, loads, progress)
    return {"load_nodes_per_s": config.nodes / load_s, "levels": levels}


async def measure_floor(config: Config, server: ServerProcess) -> dict[str, Any]:
    """`GET /` of a floor server over one keep-alive connection, timed as the other cells."""
    workload = Workload("floor", 200, lambda: Request("GET", "/"))
    connection = await HttpConnection.open(LOOPBACK_HOST, server.port)
    try:
        if config.warmup:
            await measure_round(server, [connection], workload, config.warmup)
        rounds = [
            await measure_round(server, [connection], workload, config.requests)
            for _ in range(config.rounds)
        ]
    finally:
        await connection.aclose()
    return cell_summary(rounds, config.requests)


def measure_floors(config: Config, progress: Progress) -> dict[str, Any]:
    """Each floor of `memora.bench.http_floor` at one connection: what the HTTP stack costs
    before Memora does anything."""
    floors = {}
    for kind in http_floor.KINDS:
        progress(f"measuring the {FLOOR_NAMES[kind]}")
        server = ServerProcess(None, floor=kind)
        try:
            floors[kind] = trio.run(measure_floor, config, server)
            code = server.stop()
            if code != 0:
                raise ServerProcessError(f"the {kind} floor exited with {code}: {server.output()}")
        finally:
            server.kill()
    return floors


# -- Reporting ------------------------------------------------------------------------------------


def targets(config: Config, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged at one connection (None: not measured at one connection)."""
    single = metrics["levels"].get("1")
    found = []
    for operation, limit in (
        ("get_node", get_node_p50_ms_target),
        ("insert_node", insert_node_p50_ms_target),
    ):
        p50 = None if single is None else single[operation]["p50_ms"]
        met = None if p50 is None else p50 < limit
        found.append({"operation": operation, "p50_ms": p50, "p50_ms_max": limit, "met": met})
    return found


def table(config: Config, metrics: dict[str, Any]) -> list[tuple[str, ...]]:
    """A row per cell; at one connection, the floors after Memora's operations."""
    rows: list[tuple[str, ...]] = []
    for level in config.connections:
        cells = metrics["levels"][str(level)]
        health_p50_ms = cells["health"]["p50_ms"]
        rows += [_row(name, str(level), cells[name], health_p50_ms) for name in OPERATIONS]
        if level == 1:
            floors = metrics["floors"].items()
            rows += [_row(FLOOR_NAMES[kind], "1", cell, health_p50_ms) for kind, cell in floors]
    return rows


def _row(name: str, level: str, cell: dict[str, Any], floor_p50_ms: float) -> tuple[str, ...]:
    server_cpu = cell["server_cpu_us_per_request"]
    return (
        name,
        level,
        f"{cell['requests_per_s']:,.0f}/s",
        f"{cell['p50_ms']:.2f} ms",
        f"{cell['p99_ms']:.2f} ms",
        f"{cell['p50_ms'] / floor_p50_ms:.2f}x",
        "n/a" if server_cpu is None else f"{server_cpu:,.0f} us",
        f"{cell['client_cpu_us_per_request']:,.0f} us",
    )


def write_table(
    rows: list[tuple[str, ...]], checks: list[dict[str, Any]], metrics: dict[str, Any], out: TextIO
) -> None:
    headers = (
        "operation",
        "connections",
        "requests",
        "p50",
        "p99",
        "p50/health",
        "server CPU/req",
        "client CPU/req",
    )
    for line in aligned_lines(headers, rows, rule=True):
        out.write(line + "\n")
    out.write(
        f"\nServer: python -m memora serve, one node, fsync on, {metrics['load_nodes_per_s']:,.0f} "
        "nodes/s loaded by batch. Client: this process, trio + h11, one keep-alive connection per "
        "task, closed loop. Values are medians over rounds; CPU/req is process CPU time / requests "
        "(both processes share the cores). The floors serve one GET route on the same HTTP stack "
        "without Memora (python -m memora.bench.http_floor): a bare ASGI app on hypercorn's trio "
        "worker, and a QuartTrio app.\n"
    )
    for check in checks:
        verdict = {True: "met", False: "NOT met", None: "not measured (no 1-connection level)"}
        p50 = "n/a" if check["p50_ms"] is None else f"{check['p50_ms']:.2f} ms"
        out.write(
            f"target {check['operation']} p50 < {check['p50_ms_max']:g} ms at 1 connection: "
            f"{p50}, {verdict[check['met']]}\n"
        )
    out.write("\n")


def run(config: Config, out: TextIO, progress_stream: TextIO) -> dict[str, Any]:
    """Start the server, load it, measure every cell, print the table and the JSON line."""
    config.check()
    progress = Progress(progress_stream)
    root = tempfile.mkdtemp(prefix="memora-bench-http-", dir="/tmp")
    try:
        metrics = _measure_server(config, os.path.join(root, "data"), progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    checks = targets(config, metrics)
    result = {
        "bench": "http",
        "config": attrs.asdict(config),
        "machine": machine_info(),
        "metrics": metrics,
        "targets": checks,
        "all_targets_met": all(check["met"] for check in checks),
    }
    write_table(table(config, metrics), checks, metrics, out)
    out.write("BENCH_JSON " + json.dumps(result, sort_keys=True) + "\n")
    out.flush()
    progress("done")
    return result


def _measure_server(config: Config, data_dir: str, progress: Progress) -> dict[str, Any]:
    progress("starting memora serve")
    server = ServerProcess(data_dir)
    try:
        progress(f"memora serve (pid {server.pid}) listens on {LOOPBACK_HOST}:{server.port}")
        metrics = trio.run(measure, config, server, progress)
        code = server.stop()
        if code != 0:
            raise ServerProcessError(f"memora serve exited with {code}: {server.output()}")
    finally:
        server.kill()
    metrics["floors"] = measure_floors(config, progress) if 1 in config.connections else {}
    return metrics
