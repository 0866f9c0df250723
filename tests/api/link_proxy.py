"""`LinkProxy`: a TCP proxy on 127.0.0.1 that a test puts on one directed link between two
cluster members, and breaks on demand.

What lives here: the proxy (threads and blocking sockets, every wait bounded by a poll interval)
and its modes. What must not: anything about Memora's peer protocol; bytes are opaque here.

Modes, switched at any time with `set_mode`:
- PASS: bytes flow both ways as they come.
- CUT: every open connection is closed at once and new ones are closed as soon as accepted.
- DELAY: each chunk is held `delay_s` before it is passed on (latency, not a bandwidth cap:
  chunks queue up behind each other with their own due times).
- DROP: before passing each chunk on, the proxy closes the connection with `drop_chance`.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import random
import select
import socket
import threading
import time
from typing import Final

poll_interval_s: Final = 0.05
connect_timeout_s: Final = 1.0
chunk_bytes_max: Final = 65536
delay_s_default: Final = 0.1
drop_chance_default: Final = 0.05
assert poll_interval_s < connect_timeout_s


class LinkMode(enum.Enum):
    PASS = "pass"
    CUT = "cut"
    DELAY = "delay"
    DROP = "drop"


class _Connection:
    """One accepted connection and its dial to the target: two sockets, closed together."""

    def __init__(self, accepted: socket.socket, dialed: socket.socket) -> None:
        self.sockets = (accepted, dialed)
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for each in self.sockets:
            with contextlib.suppress(OSError):  # Already shut down by the other end.
                each.shutdown(socket.SHUT_RDWR)
            each.close()


class LinkProxy:
    """Listens on 127.0.0.1 (a port the OS picks) and forwards to 127.0.0.1:`target_port`."""

    def __init__(self, target_port: int, name: str, seed: int) -> None:
        self.name = name
        self.target_port = target_port
        self.mode = LinkMode.PASS
        self.delay_s = delay_s_default
        self.drop_chance = drop_chance_default
        self.counters: collections.Counter[str] = collections.Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(poll_interval_s)
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True, name=name)]
        self._threads[0].start()

    def set_mode(
        self,
        mode: LinkMode,
        delay_s: float = delay_s_default,
        drop_chance: float = drop_chance_default,
    ) -> None:
        assert delay_s >= 0 and 0 <= drop_chance <= 1
        with self._lock:
            self.mode, self.delay_s, self.drop_chance = mode, delay_s, drop_chance
            doomed = list(self._connections) if mode is LinkMode.CUT else []
        for connection in doomed:
            self._count("connections_cut")
            self._forget(connection)

    def close(self) -> None:
        """Stop accepting, close every connection, and wait for the threads (bounded)."""
        self._stopping.set()
        with self._lock:
            doomed = list(self._connections)
        for connection in doomed:
            self._forget(connection)
        for thread in self._threads:
            thread.join(timeout=1.0)
        self._listener.close()

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
        connection.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                accepted, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # The listener was closed.
            self._open(accepted)

    def _open(self, accepted: socket.socket) -> None:
        if self.mode is LinkMode.CUT:
            self._count("connections_refused")
            accepted.close()
            return
        try:
            dialed = socket.create_connection(("127.0.0.1", self.target_port), connect_timeout_s)
        except OSError:
            self._count("dials_failed")
            accepted.close()
            return
        self._count("connections_accepted")
        connection = _Connection(accepted, dialed)
        with self._lock:
            self._connections.add(connection)
        for source, target in ((accepted, dialed), (dialed, accepted)):
            self._start_direction(connection, source, target)

    def _start_direction(
        self, connection: _Connection, source: socket.socket, target: socket.socket
    ) -> None:
        """A reader that stamps each chunk with its due time and a writer that sends it then."""
        due: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()
        reader = threading.Thread(
            target=self._read_loop, args=(connection, source, due, ready), daemon=True
        )
        writer = threading.Thread(
            target=self._write_loop, args=(connection, target, due, ready), daemon=True
        )
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        self._threads += [reader, writer]
        reader.start()
        writer.start()

    def _read_loop(
        self,
        connection: _Connection,
        source: socket.socket,
        due: collections.deque[tuple[float, bytes]],
        ready: threading.Condition,
    ) -> None:
        while not connection.closed.is_set():
            try:
                readable, _, _ = select.select([source], [], [], poll_interval_s)
                if not readable:
                    continue
                chunk = source.recv(chunk_bytes_max)
            except (OSError, ValueError):  # ValueError: closed by another thread meanwhile.
                break
            if not chunk or self._drops_now():
                break
            delay_s = self.delay_s if self.mode is LinkMode.DELAY else 0.0
            with ready:
                due.append((time.monotonic() + delay_s, chunk))
                ready.notify()
        self._forget(connection)
        with ready:
            ready.notify()

    def _drops_now(self) -> bool:
        if self.mode is not LinkMode.DROP:
            return False
        with self._lock:
            dropped = self._random.random() < self.drop_chance
        if dropped:
            self._count("connections_dropped")
        return dropped

    def _write_loop(
        self,
        connection: _Connection,
        target: socket.socket,
        due: collections.deque[tuple[float, bytes]],
        ready: threading.Condition,
    ) -> None:
        while not connection.closed.is_set():
            with ready:
                if not due:
                    ready.wait(timeout=poll_interval_s)
                    continue
                due_s, chunk = due[0]
                wait_s = due_s - time.monotonic()
                if wait_s > 0:
                    ready.wait(timeout=min(wait_s, poll_interval_s))
                    continue
                due.popleft()
            try:
                target.sendall(chunk)
            except OSError:
                break
            self._count("bytes_forwarded", len(chunk))
        self._forget(connection)
