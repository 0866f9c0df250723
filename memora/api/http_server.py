"""Serving an ASGI app over HTTP/1.1 with hypercorn's trio worker, inside the caller's nursery.

This module owns hypercorn's configuration (keep-alive, h11 limits, graceful shutdown, logs) and
work-arounds for two hypercorn bugs; it must not import the REST app or know its routes.

The bug: a keep-alive connection hangs for good
------------------------------------------------
Hypercorn's trio `TCPServer.protocol_send` is called from whichever task produced the event, and
for everything the ASGI app sends, that is the app's own task. Only its `RawData` branch is
shielded from cancellation; `Closed` (shut the socket down) and `Updated` (restart or stop the
keep-alive timer) are not. quart-trio cancels its request task as soon as it receives
`http.disconnect`, and hypercorn itself delivers that message from inside the app's last `send`:
`send(body)` -> `StreamClosed` -> `H11Protocol._maybe_recycle` -> `_close_stream` -> the app's
receive queue. So on every request the app's task is cancelled half-way through hypercorn's own
bookkeeping, and the next checkpoint in `protocol_send` raises `trio.Cancelled`:

- When the client has sent its whole body (h11: both sides DONE), the connection is recycled but
  `Updated(idle=True)` dies on the timer lock: the keep-alive timeout is never restarted, so idle
  connections are never closed, not even at graceful shutdown.
- When the app answered before h11 had read the request body (a 404 or 204 that ignores the body,
  while `requests`/urllib3 writes headers and body in two sends), `_maybe_recycle` decides to close
  the connection, but `Closed` dies on the checkpoint in `send_eof`. The socket stays open. The
  body then arrives, usually together with the client's next request; the reader gets an h11
  `Data` event with no stream, breaks out of its loop (`elif self.stream is None: break`) and waits
  for more bytes, leaving the next request parsed by nobody. The client waits forever and the app
  never sees the request; the keep-alive timer, stopped for the previous request, never fires.

A tracing run showed exactly this sequence (`_maybe_recycle` entered with our=DONE,
their=SEND_BODY, never returned; then `next_event -> Data`, stream None, 151 bytes of a GET left in
h11's buffer). A raw ASGI app that cancels itself on `http.disconnect` as quart-trio does hangs
the same way, so Quart is not needed; the asyncio worker does not hang because Quart's asyncio
connection lets the handler task finish before cancelling the receiver.

The fix
-------
`CancelSafeTCPServer` shields all of `protocol_send`, as hypercorn already shields its `RawData`
branch: writing bytes, closing the socket and restarting the timer are the server's own
bookkeeping and must not be cut short by the app's cancellation. Each branch is short (the socket
write was already shielded), so the shield adds no new way to block.

That alone turns the hang into what hypercorn intends, closing the connection after a response
sent before the request body arrived, and `requests` then fails instead of hanging: it has
already sent its next request on the closing connection (7 `ConnectionError`s in 3,000 requests,
3 in 1,000 with the shield only). So `BodyDiscardingH11Protocol` keeps such a connection: the rest
of the body is read and dropped (up to `request_body_discard_bytes_max`, and within the keep-alive
timeout) and the connection is recycled as usual. Servers such as nginx do the same.

`install_hypercorn_fixes` swaps the two classes into the places hypercorn looks them up
(`hypercorn.trio.run.TCPServer`, `hypercorn.protocol.H11Protocol`), only for the hypercorn
releases in `hypercorn_versions_with_known_bugs`; with any other release it refuses to serve, so
that someone checks whether the bugs are still there (tests/api/test_keepalive.py fails on
0.18.0 without them).

A third problem: accepting under load
-------------------------------------
trio's `SocketListener.accept` takes one connection and then yields to the scheduler, and the
scheduler runs every other runnable task once before the accept loop's next turn. A server busy
with its open connections runs a whole batch of request work between two accepts: with 440
clients keeping the node busy, 560 more waited over 30 seconds in the listen queue (the load
test, tests/test_load.py, saw it). `BacklogDrainingListener` takes every connection already
queued at once (up to `accept_burst_connections_max`), then hands them out one per `accept` call
without yielding, so each scheduler turn of the accept loop empties the queue.
Hypercorn's trio worker builds its listeners with `trio.SocketListener` inside `worker_serve`,
so `install_hypercorn_fixes` gives `hypercorn.trio.run` a view of trio in which that name is
`BacklogDrainingListener` (`TrioForHypercorn`); nothing else sees it.

One write per response
----------------------
Hypercorn sends a response's head, each body chunk and its end as separate socket writes, each
under the connection's send lock and a cancel scope. `CoalescingH11Protocol` holds them until
the end of the response (up to `response_coalesce_bytes_max`) and writes them at once: on
loopback that cut the server's CPU time per request by about 9% for `GET /api/v1/health` and
6% for `GET /api/v1/nodes/{id}` (medians of 6 alternating rounds of 400 requests, a busy 2-core
machine), and the client gets a response in one segment instead of two.

Upstream report and patch (pgjones/hypercorn)
---------------------------------------------
Title: trio worker: keep-alive connection hangs when the app is cancelled during its last send.
The trio TCPServer.protocol_send runs in the ASGI app's task, and only its RawData branch is
shielded. quart-trio (and any app that cancels itself on http.disconnect) is cancelled from within
its final send, because StreamClosed -> _maybe_recycle -> _close_stream delivers http.disconnect;
the Cancelled then surfaces in send_eof (Closed) or in the idle task's lock (Updated). With
`requests`, a POST answered without reading its body leaves the socket open but abandoned, and the
next request on it hangs forever; otherwise the keep-alive timeout stops working. Patch:

    --- a/src/hypercorn/trio/tcp_server.py
    +++ b/src/hypercorn/trio/tcp_server.py
         async def protocol_send(self, event: Event) -> None:
    +        # Called from the app's task, which may be cancelled at any time.
    +        with trio.CancelScope(shield=True):
    +            await self._protocol_send(event)
    +
    +    async def _protocol_send(self, event: Event) -> None:
             if isinstance(event, RawData):
                 async with self.send_lock:
                     try:
    -                    with trio.CancelScope() as cancel_scope:
    -                        cancel_scope.shield = True
    -                        await self.stream.send_all(event.data)
    +                    await self.stream.send_all(event.data)

A second report: after a response sent before the request body arrived, `_maybe_recycle` closes
the connection, which races a keep-alive client's next request; reading and dropping the rest of
a small body, then recycling, avoids it. And `_handle_events`' `elif self.stream is None: break`
leaves buffered events unparsed, harmless only while the connection is then closed.
"""

from __future__ import annotations

import collections
import importlib.metadata
import os
import socket
import types
import urllib.parse
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import h11
import hypercorn.config
import hypercorn.events
import hypercorn.protocol
import hypercorn.protocol.events
import hypercorn.protocol.h11
import hypercorn.trio
import hypercorn.trio.run
import hypercorn.trio.tcp_server
import hypercorn.typing
import trio

# An idle keep-alive connection is closed after this long without a request.
keep_alive_timeout_s: Final = 5.0
# Requests still running at shutdown get this long to finish before they are cancelled.
graceful_timeout_s: Final = 5.0
# The request line and headers of one request (h11 buffers them whole) may not exceed this.
request_head_bytes_max: Final = 16 * 1024
# A connection is closed after this many requests, so clients spread over new connections.
keep_alive_requests_max: Final = 10_000
# Connections the kernel queues until the server accepts them (hypercorn's default is 100). A
# burst of connects beyond it has its SYNs dropped and retried a second or more later; the kernel
# caps the value at net.core.somaxconn.
listen_backlog_connections: Final = 1024

# A request body the app answered without reading is read and dropped, to keep the connection,
# up to this many bytes; beyond it the connection is closed.
request_body_discard_bytes_max: Final = 1024 * 1024
# A response is held until its end, to be sent in one write, up to this many bytes.
response_coalesce_bytes_max: Final = 64 * 1024
# Connections taken from the listen queue at once, after the one trio's accept waited for.
accept_burst_connections_max: Final = 256
# The hypercorn releases that have both bugs this module works around (see above).
hypercorn_versions_with_known_bugs: Final = frozenset({"0.18.0"})

ShutdownTrigger = Callable[[], Awaitable[None]]


class CancelSafeTCPServer(hypercorn.trio.tcp_server.TCPServer):
    """Hypercorn's trio TCPServer, with the connection's bookkeeping shielded from the app's
    cancellation (see the module docstring)."""

    async def protocol_send(self, event: hypercorn.events.Event) -> None:
        with trio.CancelScope(shield=True):
            await super().protocol_send(event)


class RequestBodyDiscarder:
    """Stands in for a finished request's stream while the rest of its body arrives: drops the
    body, then recycles the connection, or closes it once more than the limit has come."""

    def __init__(
        self, *, recycle: Callable[[], Awaitable[None]], close: Callable[[], Awaitable[None]]
    ) -> None:
        self.recycle = recycle
        self.close = close
        self.discarded_bytes = 0

    async def handle(self, event: hypercorn.protocol.events.Event) -> None:
        if isinstance(event, hypercorn.protocol.events.Body):
            self.discarded_bytes += len(event.data)
            if self.discarded_bytes > request_body_discard_bytes_max:
                await self.close()
        elif isinstance(event, hypercorn.protocol.events.EndBody):
            await self.recycle()


class BodyDiscardingH11Protocol(hypercorn.protocol.h11.H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, keeping the connection when the app answers before the
    request body has arrived (see the module docstring)."""

    async def _maybe_recycle(self) -> None:
        # Close the stream first, as the base class does: closing yields to the reader, which
        # may meanwhile read the end of the body (and finding no stream, drop it).
        await self._close_stream()
        if not self._request_body_outlived_response():
            await super()._maybe_recycle()
            return
        # The reader hands the rest of the body to `self.stream`; at its end, h11 is DONE on
        # both sides and this method recycles the connection.
        self.stream = RequestBodyDiscarder(  # type: ignore[assignment]
            recycle=self._maybe_recycle,
            close=partial(self.send, hypercorn.events.Closed()),
        )
        # The keep-alive timeout bounds how long the rest of the body may take.
        await self.send(hypercorn.events.Updated(idle=True))

    def _request_body_outlived_response(self) -> bool:
        return (
            isinstance(self.connection, h11.Connection)
            and not self.context.terminated.is_set()
            and self.connection.our_state is h11.DONE
            and self.connection.their_state is h11.SEND_BODY
        )


class CoalescingH11Protocol(BodyDiscardingH11Protocol):
    """Sends a response's head, body and end in one write where hypercorn makes three (see the
    module docstring). A body larger than `response_coalesce_bytes_max` is sent as it comes, and
    so is a response without a Content-Length: a stream (server-sent events, chunked bodies)
    whose every piece must reach the client when it is sent, not when the stream ends."""

    _held = b""  # The response bytes not sent yet; per connection once assigned.
    _streaming = False  # The response in progress has no Content-Length.

    async def _send_h11_event(self, event: hypercorn.typing.H11SendableEvent) -> None:
        if not isinstance(event, h11.Response | h11.Data | h11.EndOfMessage):
            await self._flush_held()
            await super()._send_h11_event(event)
            return
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        assert data is not None, event
        if isinstance(event, h11.Response):
            self._streaming = all(name != b"content-length" for name, _ in event.headers)
        self._held += data
        if (
            self._streaming
            or isinstance(event, h11.EndOfMessage)
            or len(self._held) > response_coalesce_bytes_max
        ):
            await self._flush_held()

    async def stream_send(self, event: hypercorn.protocol.events.Event) -> None:
        if isinstance(event, hypercorn.protocol.events.StreamClosed):
            await self._flush_held()  # A response cut short still sends what it had.
        await super().stream_send(event)

    async def _flush_held(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            await self.send(hypercorn.events.RawData(data=held))


class BacklogDrainingListener(trio.abc.Listener[trio.SocketStream]):
    """trio's SocketListener, taking every connection already in the listen queue at once, so
    that a busy server still accepts promptly (see the module docstring)."""

    def __init__(self, listening: trio.socket.SocketType) -> None:
        self._listener = trio.SocketListener(listening)
        # A second descriptor on the same listening socket, to accept without a checkpoint.
        self._queue = socket.socket(fileno=os.dup(listening.fileno()))
        self._queue.setblocking(False)
        self._accepted: collections.deque[trio.SocketStream] = collections.deque()

    async def accept(self) -> trio.SocketStream:
        if self._accepted:
            # No checkpoint: the accept loop hands out the whole burst in one scheduler turn.
            return self._accepted.popleft()
        stream = await self._listener.accept()
        self._accept_queued()
        return stream

    def _accept_queued(self) -> None:
        for _ in range(accept_burst_connections_max):
            try:
                connection, _ = self._queue.accept()
            except OSError:
                # Nothing queued (EAGAIN), or out of descriptors: trio's next accept meets the
                # latter again, and its serve loop waits and retries.
                return
            self._accepted.append(trio.SocketStream(trio.socket.from_stdlib_socket(connection)))

    async def aclose(self) -> None:
        self._queue.close()
        while self._accepted:
            await trio.aclose_forcefully(self._accepted.popleft())
        await self._listener.aclose()


class TrioForHypercorn(types.ModuleType):
    """trio as `hypercorn.trio.run` sees it: trio itself, with `BacklogDrainingListener` as
    its `SocketListener`."""

    SocketListener = BacklogDrainingListener

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


_TRIO_FOR_HYPERCORN: Final = TrioForHypercorn("trio")


def install_hypercorn_fixes() -> None:
    """Make hypercorn serve connections with `CancelSafeTCPServer` and `CoalescingH11Protocol`
    (a `BodyDiscardingH11Protocol`), and accept them with `BacklogDrainingListener`.

    Idempotent. Raises if the installed hypercorn is not one these work-arounds were checked
    against, or if something else has already replaced the classes."""
    version = importlib.metadata.version("hypercorn")
    if version not in hypercorn_versions_with_known_bugs:
        raise RuntimeError(
            f"hypercorn {version} has not been checked for the keep-alive bugs that "
            "memora.api.http_server works around: run tests/api/test_keepalive.py without the "
            "work-arounds, then add the version to hypercorn_versions_with_known_bugs or drop "
            "the work-arounds"
        )
    replace_class(hypercorn.trio.run, "TCPServer", CancelSafeTCPServer)
    replace_class(hypercorn.protocol, "H11Protocol", CoalescingH11Protocol)
    seen_trio = vars(hypercorn.trio.run)["trio"]
    if seen_trio is not trio and seen_trio is not _TRIO_FOR_HYPERCORN:
        raise RuntimeError(f"hypercorn.trio.run.trio is already replaced by {seen_trio!r}")
    hypercorn.trio.run.trio = _TRIO_FOR_HYPERCORN  # type: ignore[attr-defined]


def replace_class(module: types.ModuleType, name: str, subclass: type) -> None:
    """Rebind `module.name`, which must be hypercorn's own class (one of `subclass`'s bases) or
    `subclass` itself, to `subclass`."""
    installed = vars(module)[name]
    if installed is subclass:
        return
    if installed not in subclass.__mro__ or not installed.__module__.startswith("hypercorn."):
        raise RuntimeError(f"{module.__name__}.{name} is already replaced by {installed!r}")
    setattr(module, name, subclass)


def hypercorn_config(*, host: str, port: int, access_log: bool) -> hypercorn.config.Config:
    """Hypercorn's configuration for one plain-HTTP listener on `host:port` (port 0: any free)."""
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.keep_alive_timeout = keep_alive_timeout_s
    config.graceful_timeout = graceful_timeout_s
    config.h11_max_incomplete_size = request_head_bytes_max
    config.keep_alive_max_requests = keep_alive_requests_max
    config.backlog = listen_backlog_connections
    config.accesslog = "-" if access_log else None
    config.errorlog = "-"
    return config


def port_of_bind(binds: list[str]) -> int:
    """The port hypercorn really bound, from the addresses it reports (`http://host:port`)."""
    if len(binds) != 1:
        raise RuntimeError(f"expected hypercorn to bind one address, it bound {binds!r}")
    port = urllib.parse.urlsplit(binds[0]).port
    if port is None:
        raise RuntimeError(f"hypercorn reported an address without a port: {binds[0]!r}")
    return port


async def serve_http(
    app: Any,
    *,
    host: str,
    port: int,
    shutdown_trigger: ShutdownTrigger,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    access_log: bool = False,
) -> None:
    """Serve the ASGI `app` on `host:port` until `shutdown_trigger` returns, then drain.

    Once listening, reports the bound port through `task_status` (the real one when `port` is 0).
    Returns after in-flight requests finish or `graceful_timeout_s` passes.
    """
    install_hypercorn_fixes()
    config = hypercorn_config(host=host, port=port, access_log=access_log)
    serve = partial(hypercorn.trio.serve, app, config, shutdown_trigger=shutdown_trigger)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve)
        task_status.started(port_of_bind(binds))
