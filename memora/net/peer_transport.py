"""`PeerTransport`: the TCP links between cluster nodes, on trio.

What lives here: sockets, timeouts, reconnection and queues for the bytes one node sends to its
peers, and the delivery of what they send to it. What must not: the protocol itself (framing,
MACs, the handshake: `memora.net.peer_wire`, pure), and any meaning of the bodies (Raft messages
and calls, encoded and decoded by the layer above, which sees opaque bytes here).

The model. Each node dials each peer it knows, and sends that peer its traffic on that outbound
connection only. Inbound connections only receive: after the handshake the acceptor sends
nothing but its handshake answer, so a connection carries frames one way, and every frame is
delivered with the id its sender proved in the handshake, in the order sent.
- `send(peer_id, body)` queues the body (it never blocks) for the peer's writer task, which
  dials, completes the handshake, and then coalesces queued frames into one socket write of up to
  `write_batch_bytes_max`. While that writer waits on an established connection with nothing
  queued, `send` writes the frame into the socket itself instead (non-blocking; what the socket
  does not take goes to the writer): the common case of a frame or two per Raft step leaves
  without a task switch. The queue is bounded in frames and bytes: beyond either bound, or for
  an unknown peer or an oversized body, `send` returns False and counts the drop. While a peer is
  unreachable its queue keeps the oldest frames up to the bound and delivers them, oldest first,
  once a connection is up again.
- A batch whose write fails, or that was written into a connection the peer had already closed,
  is lost, as are frames still queued when a peer is removed. Raft resends what matters (its
  heartbeats and append retries); the layer above must not count on delivery, only on order.
- The writer redials with a backoff that starts at `backoff_initial_s`, doubles with jitter up to
  `backoff_max_s`, and starts over after each successful handshake. While an outbound connection
  is idle, the writer watches it for the peer's close, so a restarted peer is redialed at once.
- A peer that dials in and completes the handshake is recorded in the address book at the address
  it advertised if the peer is not in it (`set_peer_address`): this is how a node that joins a
  cluster becomes reachable by nodes that never heard of it. A known peer keeps the address the
  book gives, whatever it advertises (a proxy or a NAT may stand between the two). A
  wildcard host ("0.0.0.0", "::") is replaced by the address the connection came from. A removed
  peer that dials in again is learned again the same way; the book is a cache of where peers
  are, not the membership (which is Raft's).
- A second inbound connection from the same peer replaces the first, which is closed.

Bad input from the network never escapes as an exception: a bad handshake (wrong secret, cluster
or receiver, malformed, too slow) or a bad frame (length, CRC, MAC) closes that one connection
and is counted, and the node goes on. Every read is bounded: in size (`peer_wire` limits each
frame, `peer_receive_bytes_max` each read), and, until the handshake completes, in time
(`handshake_timeout_s`, at most `peer_handshakes_pending_max` at once). An established connection
may be idle forever. On cancellation `run` closes every socket it opened or accepted.

Everything runs on the trio thread: `send`, `set_peer_address`, `remove_peer` and the status calls
are synchronous and must be called there; `deliver` is called there too, and must not raise.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Final

import attrs
import trio

from memora.core import constants
from memora.core.errors import MemoraError, ValidationError
from memora.net import peer_wire
from memora.net.peer_incarnations import IncarnationBook
from memora.net.peer_wire import (
    AcceptorHandshake,
    DialerHandshake,
    FrameDecoder,
    FrameEncoder,
    HandshakeError,
    PeerWireError,
)

logger = logging.getLogger(__name__)

PeerAddress = tuple[str, int]

# What `metrics()` counts, all present from the start (at 0) so that every scrape has each name.
# Bytes are counted on the wire after the handshake: frame headers and tags included.
COUNTERS: Final = (
    "frames_sent_total",
    "frames_received_total",
    "bytes_sent_total",
    "bytes_received_total",
    # Refused by `send`: queue full, unknown peer, or body over the limit.
    "frames_dropped_total",
    # Taken from a queue but lost with a connection that failed while writing them.
    "frames_lost_total",
    # Bad length, CRC or MAC (or stray bytes) on an established connection.
    "frames_rejected_total",
    # Wrong secret, cluster id or receiver id, malformed, too slow, or closed midway.
    "handshakes_rejected_total",
    "connections_accepted_total",
    "connections_dialed_total",
    # Dials that did not end in an established connection (refused, timed out, rejected).
    "dials_failed_total",
    # Socket writes of established connections: fewer than frames_sent_total when batching.
    "socket_writes_total",
    "addresses_learned_total",
    # Handshakes refused because a known peer came back with another incarnation (wiped).
    "incarnations_refused_total",
)
# Hosts a node may listen on that are not addresses another node can dial.
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})
# A DNS name is at most 253 bytes; with a port it fits `peer_address_bytes_max`.
_HOST_BYTES_MAX: Final = 253
assert _HOST_BYTES_MAX + len("[]:65535") <= constants.peer_address_bytes_max
# Errors a socket (or the clock) gives a connection, besides typed protocol errors.
_SOCKET_ERRORS: Final = (OSError, trio.BrokenResourceError, trio.TooSlowError)


class ReplacedPeerError(HandshakeError):
    """A known peer proved the secret with another incarnation: its data directory was wiped."""

    code = "replaced_peer"


class ConnectionClosedError(MemoraError):
    """The other side closed the connection while a frame was expected."""

    code = "connection_closed"


@attrs.frozen
class TransportSettings:
    """The cluster's identity and secret, and the bounds of one node's links."""

    cluster_id: str
    secret: bytes = attrs.field(repr=False)  # At least `peer_secret_bytes_min` bytes.
    send_queue_frames_max: int = 4096  # Per peer; beyond it `send` drops and counts.
    send_queue_bytes_max: int = 256 * 1024 * 1024
    connect_timeout_s: float = 2.0
    handshake_timeout_s: float = 2.0
    backoff_initial_s: float = 0.05  # Reconnect backoff, doubling with jitter, capped.
    backoff_max_s: float = 1.0
    write_batch_bytes_max: int = 4 * 1024 * 1024  # Frames coalesced into one socket write.
    # Made with the node's data directory (`read_or_make_incarnation`); random by default.
    incarnation: bytes = attrs.field(factory=lambda: os.urandom(constants.peer_incarnation_bytes))

    def __attrs_post_init__(self) -> None:
        peer_wire.check_secret(self.secret)
        peer_wire.check_cluster_id(self.cluster_id)
        assert self.send_queue_frames_max > 0 and self.send_queue_bytes_max > 0, self
        assert self.connect_timeout_s > 0 and self.handshake_timeout_s > 0, self
        assert 0 < self.backoff_initial_s <= self.backoff_max_s, self
        assert self.write_batch_bytes_max > 0, self
        assert peer_wire.is_incarnation(self.incarnation), self.incarnation


@attrs.frozen(eq=False)
class _IdleLink:
    """An established outbound connection whose writer waits for frames: its socket (by file
    descriptor, non-blocking as trio made it), its frame encoder, and its writer's scope."""

    fileno: int
    encoder: FrameEncoder
    writer: trio.CancelScope


@attrs.define(eq=False)
class _Peer:
    """What one node knows about one peer: where it is, what waits to go there, and its links."""

    peer_id: int
    address: PeerAddress
    queue: collections.deque[bytes] = attrs.Factory(collections.deque)
    queued_bytes: int = 0  # The sum of the lengths of the bodies in `queue`.
    frames_queued: trio.Event = attrs.Factory(trio.Event)  # Set when `queue` gets a body.
    writer: trio.CancelScope | None = None  # The current writer task's scope.
    # Set while the writer waits for frames on an established connection: `send` then writes
    # to that connection itself (see `_write_now`).
    idle_link: _IdleLink | None = None
    # Bytes of a frame `_write_now` left over when the socket took only part of it; the writer
    # sends them before anything queued, and then counts the frame.
    unsent: bytes = b""
    link_broken: bool = False  # `_write_now` failed: the writer must end the connection.
    outbound_connected: bool = False
    inbound: trio.CancelScope | None = None  # The current inbound connection's scope.
    connects_total: int = 0  # Outbound connections established (handshake completed).
    last_error: str | None = None
    last_received_s: float | None = None  # time.monotonic() of the last frame received.

    def take_batch(self, bytes_max: int) -> list[bytes]:
        """The oldest queued bodies up to `bytes_max` in all (at least one)."""
        assert self.queue
        batch = [self.queue.popleft()]
        size = len(batch[0])
        while self.queue and size + len(self.queue[0]) <= bytes_max:
            body = self.queue.popleft()
            size += len(body)
            batch.append(body)
        self.queued_bytes -= size
        assert self.queued_bytes >= 0 and (self.queue or self.queued_bytes == 0), self
        return batch

    def status(self, now_s: float) -> dict[str, Any]:
        received = self.last_received_s
        return {
            "address": peer_wire.format_address(*self.address),
            "outbound_connected": self.outbound_connected,
            "inbound_connected": self.inbound is not None,
            "queued_frames": len(self.queue),
            "queued_bytes": self.queued_bytes,
            "connects_total": self.connects_total,
            "last_error": self.last_error,
            "last_received_s_ago": None if received is None else max(0.0, now_s - received),
        }


def _describe(error: BaseException) -> str:
    if isinstance(error, MemoraError):
        return f"{error.code}: {error.message}"
    if isinstance(error, trio.TooSlowError):
        return "timed out"
    return f"{type(error).__name__}: {error}".rstrip(": ")


def _check_address(address: object, *, listen: bool = False) -> PeerAddress:
    """A (host, port) pair from the layer above, or ValidationError."""
    port_min = 0 if listen else 1
    if (
        not isinstance(address, tuple)
        or len(address) != 2
        or not isinstance(address[0], str)
        or type(address[1]) is not int
        or not port_min <= address[1] <= 65535
        or (not listen and not address[0])
        or len(address[0].encode()) > _HOST_BYTES_MAX
    ):
        raise ValidationError(f"{address!r} is not a (host, port) pair", "address")
    return address[0], address[1]


def _set_no_delay(stream: trio.SocketStream) -> None:
    # Frames are coalesced by the writer already; Nagle would only add latency to each batch.
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)


async def _receive_frame(stream: trio.SocketStream, decoder: FrameDecoder) -> bytes:
    """The next handshake frame (the decoder bounds its size)."""
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(constants.peer_receive_bytes_max)
        if not data:
            raise ConnectionClosedError("the connection closed during the handshake")
        decoder.feed(data)
    return frame


class PeerTransport:
    """One node's links to its peers; see the module docstring. Run with `run()`."""

    def __init__(
        self,
        node_id: int,
        listen: PeerAddress,
        peers: Mapping[int, PeerAddress],
        settings: TransportSettings,
        deliver: Callable[[int, bytes], None],
        incarnations: IncarnationBook | None = None,
    ) -> None:
        """`peers` may include this node itself, which is left out of the address book.
        `incarnations` remembers each peer's incarnation (in memory only if not given)."""
        self.incarnations = incarnations if incarnations is not None else IncarnationBook()
        self._node_id = peer_wire.check_node_id(node_id)
        self._listen = _check_address(listen, listen=True)
        self._settings = settings
        self._deliver = deliver
        self._peers: dict[int, _Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._listen_port: int | None = None
        self._handshakes_pending = 0
        # Backoff jitter only: real entropy, so that restarted nodes do not redial in lockstep.
        self._random = random.Random(os.urandom(16))
        self._counters: collections.Counter[str] = collections.Counter(dict.fromkeys(COUNTERS, 0))
        for peer_id, address in peers.items():
            self.set_peer_address(peer_id, address)

    # -- Life cycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial every known peer, accept peers, until cancelled; then close every socket.

        Reports started once listening (`listen_port` is then known). An address that cannot be
        bound (in use, not local) raises OSError before that: a configuration error. With port 0
        and a host that resolves to several addresses, `listen_port` is the first listener's."""
        assert self._nursery is None, "run() a PeerTransport once at a time"
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        try:
            self._listen_port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for peer in self._peers.values():
                    self._start_writer(peer)
                nursery.start_soon(self._serve, listeners, nursery)
                task_status.started()
        finally:
            self._nursery = None
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            for peer in self._peers.values():
                peer.writer = peer.inbound = None
                peer.outbound_connected = False

    async def _serve(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        await trio.serve_listeners(self._serve_inbound, listeners, handler_nursery=nursery)
        raise AssertionError("serve_listeners should never complete")

    @property
    def listen_port(self) -> int:
        """The port the listener is bound to (known once `run` reported started)."""
        assert self._listen_port is not None, "listen_port is known once run() started"
        return self._listen_port

    @property
    def advertised_address(self) -> str:
        """Where peers can dial this node, as it tells them in its Hello. A node listening on
        every interface says "0.0.0.0": its acceptors use the address it dials from instead."""
        return peer_wire.format_address(self._listen[0] or "0.0.0.0", self.listen_port)

    # -- The address book -------------------------------------------------------------------------

    def set_peer_address(self, peer_id: int, address: PeerAddress) -> None:
        """Add a peer, or move it (its outbound connection is redialed; its queue is kept)."""
        peer_wire.check_node_id(peer_id, "peer_id")
        address = _check_address(address)
        if peer_id == self._node_id:
            return  # A node never dials itself.
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer(peer_id, address)
        elif peer.address == address:
            return
        else:
            peer.address = address
        self._start_writer(peer)

    def remove_peer(self, peer_id: int) -> None:
        """Forget a peer: close its connections and drop what was queued for it."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        for scope in (peer.writer, peer.inbound):
            if scope is not None:
                scope.cancel()
        peer.writer = peer.inbound = None
        peer.queue.clear()
        peer.queued_bytes = 0

    def forget_departed(self, members: Collection[int]) -> None:
        """Forget the incarnations of peers no longer in the configuration (see
        `IncarnationBook.forget_except`)."""
        self.incarnations.forget_except(members)

    def peers(self) -> dict[int, PeerAddress]:
        return {peer_id: peer.address for peer_id, peer in self._peers.items()}

    def peer_status(self) -> dict[int, dict[str, Any]]:
        now_s = time.monotonic()
        return {peer_id: peer.status(now_s) for peer_id, peer in self._peers.items()}

    def metrics(self) -> dict[str, int]:
        return dict(self._counters)

    # -- Sending ----------------------------------------------------------------------------------

    def send(self, peer_id: int, body: bytes) -> bool:
        """Queue `body` for `peer_id`; False (and counted) if it cannot be. Never blocks."""
        assert isinstance(body, bytes), type(body)
        peer = self._peers.get(peer_id)
        settings = self._settings
        if (
            peer is None
            or len(body) > constants.frame_body_bytes_max
            or len(peer.queue) >= settings.send_queue_frames_max
            or peer.queued_bytes + len(body) > settings.send_queue_bytes_max
        ):
            self._counters["frames_dropped_total"] += 1
            return False
        link = peer.idle_link
        if link is not None and link.writer is peer.writer:
            self._write_now(peer, link, body)
            return True
        peer.queue.append(body)
        peer.queued_bytes += len(body)
        peer.frames_queued.set()
        return True

    def _write_now(self, peer: _Peer, link: _IdleLink, body: bytes) -> None:
        """Write one frame into an idle connection from the caller's task: the frame leaves now,
        without waking the writer task (a task switch, and on a busy loop a delay, per frame).

        Safe because the writer is parked with nothing queued or unsent, so no other bytes can
        be in flight on the connection. What the socket does not take at once, or a failed
        write, is handed to the writer (woken by `frames_queued`): it sends the rest first, or
        ends the connection as it does when its own write fails."""
        assert not peer.queue and not peer.unsent, peer
        data = link.encoder.encode(body)
        try:
            written = os.write(link.fileno, data)
        except BlockingIOError:
            written = 0
        except OSError as error:
            self._counters["frames_lost_total"] += 1
            peer.last_error = f"send: {_describe(error)}"
            peer.link_broken = True
            self._hand_to_writer(peer)
            return
        self._counters["bytes_sent_total"] += written
        if written < len(data):
            peer.unsent = data[written:]
            self._hand_to_writer(peer)
            return
        self._counters["frames_sent_total"] += 1
        self._counters["socket_writes_total"] += 1

    @staticmethod
    def _hand_to_writer(peer: _Peer) -> None:
        """Stop writing directly and wake the writer, to finish `unsent` or end the link."""
        peer.idle_link = None
        peer.frames_queued.set()

    def _start_writer(self, peer: _Peer) -> None:
        """(Re)start the peer's writer task, if running; a previous one is cancelled."""
        if peer.writer is not None:
            peer.writer.cancel()
            peer.writer = None
        peer.outbound_connected = False
        if self._nursery is None:
            return  # `run` starts it.
        peer.writer = trio.CancelScope()
        self._nursery.start_soon(self._write_loop, peer, peer.writer)

    async def _write_loop(self, peer: _Peer, scope: trio.CancelScope) -> None:
        """Dial, send until the connection breaks, back off, dial again: until cancelled."""
        backoff_s = self._settings.backoff_initial_s
        with scope:
            while True:
                if await self._connect_and_send(peer, scope):
                    backoff_s = self._settings.backoff_initial_s
                # Jitter in [backoff/2, backoff] keeps restarted nodes from dialing in lockstep.
                await trio.sleep(backoff_s * (0.5 + self._random.random() / 2))
                backoff_s = min(2 * backoff_s, self._settings.backoff_max_s)

    async def _connect_and_send(self, peer: _Peer, scope: trio.CancelScope) -> bool:
        """One outbound connection, from dialing to its end; True if the handshake completed."""
        stream = await self._open(peer)
        if stream is None:
            return False
        try:
            encoder = await self._dial_handshake(peer, stream)
            if encoder is None:
                return False
            if peer.writer is scope:
                peer.outbound_connected = True
                peer.connects_total += 1
            try:
                await self._send_until_broken(peer, stream, encoder, scope)
            finally:
                if peer.writer is scope:
                    peer.outbound_connected = False
            return True
        finally:
            await trio.aclose_forcefully(stream)

    async def _open(self, peer: _Peer) -> trio.SocketStream | None:
        host, port = peer.address
        try:
            with trio.fail_after(self._settings.connect_timeout_s):
                stream = await trio.open_tcp_stream(host, port)
        except _SOCKET_ERRORS as error:
            self._dial_failed(peer, error)
            return None
        self._counters["connections_dialed_total"] += 1
        return stream

    async def _dial_handshake(self, peer: _Peer, stream: trio.SocketStream) -> FrameEncoder | None:
        """Complete the handshake as the dialer; None (counted) if it fails."""
        handshake = DialerHandshake(
            secret=self._settings.secret,
            cluster_id=self._settings.cluster_id,
            node_id=self._node_id,
            peer_id=peer.peer_id,
            address=self.advertised_address,
            incarnation=self._settings.incarnation,
            nonce=os.urandom(constants.peer_nonce_bytes),
        )
        decoder = FrameDecoder()
        try:
            _set_no_delay(stream)
            with trio.fail_after(self._settings.handshake_timeout_s):
                await stream.send_all(handshake.hello_frame())
                proof, session = handshake.on_accept(await _receive_frame(stream, decoder))
                if decoder.buffered_bytes:
                    raise HandshakeError("the acceptor sent bytes after its answer")
                self._admit(session)
                await stream.send_all(proof)
        except (*_SOCKET_ERRORS, MemoraError) as error:
            if isinstance(error, PeerWireError) and not isinstance(error, ReplacedPeerError):
                self._counters["handshakes_rejected_total"] += 1
            self._dial_failed(peer, error)
            return None
        return FrameEncoder(session.send_key)

    def _admit(self, session: peer_wire.Session) -> None:
        """Refuse (ReplacedPeerError, counted) a known peer that came back wiped."""
        if not self.incarnations.admit(session.peer_id, session.peer_incarnation):
            self._counters["incarnations_refused_total"] += 1
            raise ReplacedPeerError(
                f"node {session.peer_id} came back with another data directory (wiped?): it has "
                f"forgotten its votes and log, so it may not rejoin as node {session.peer_id}; "
                f"remove it (memora cluster remove-node {session.peer_id}) and add it under a "
                "new id"
            )

    def _dial_failed(self, peer: _Peer, error: BaseException) -> None:
        self._counters["dials_failed_total"] += 1
        peer.last_error = f"dial {peer_wire.format_address(*peer.address)}: {_describe(error)}"

    async def _send_until_broken(
        self,
        peer: _Peer,
        stream: trio.SocketStream,
        encoder: FrameEncoder,
        writer: trio.CancelScope,
    ) -> None:
        """Write batches until a write fails or the peer closes the connection."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_for_close, peer, stream, nursery.cancel_scope)
            link = _IdleLink(stream.socket.fileno(), encoder, writer)
            await self._write_batches(peer, stream, link)
            nursery.cancel_scope.cancel()

    async def _write_batches(self, peer: _Peer, stream: trio.SocketStream, link: _IdleLink) -> None:
        """Send what is queued for `peer` on `stream` (whose socket and encoder `link` names),
        until a write fails."""
        if peer.unsent:  # The tail of a frame begun on a connection that has ended since.
            self._counters["frames_lost_total"] += 1
        peer.unsent, peer.link_broken = b"", False
        encoder = link.encoder
        while True:
            while not peer.queue and not peer.unsent:
                await self._wait_for_frames(peer, link)
                if peer.link_broken:
                    return
            if peer.unsent:  # The rest of a frame `_write_now` began: it goes first.
                data, frames = peer.unsent, 1
                peer.unsent = b""
            else:
                batch = peer.take_batch(self._settings.write_batch_bytes_max)
                data, frames = encoder.encode_batch(batch), len(batch)
            try:
                await stream.send_all(data)
            except _SOCKET_ERRORS as error:
                self._counters["frames_lost_total"] += frames
                peer.last_error = f"send: {_describe(error)}"
                return
            except trio.Cancelled:  # The peer closed, moved or was removed mid-write.
                self._counters["frames_lost_total"] += frames
                raise
            self._counters["frames_sent_total"] += frames
            self._counters["bytes_sent_total"] += len(data)
            self._counters["socket_writes_total"] += 1

    @staticmethod
    async def _wait_for_frames(peer: _Peer, link: _IdleLink) -> None:
        """Park until `send` queues a frame, letting it write into the connection meanwhile."""
        peer.idle_link = link
        peer.frames_queued = trio.Event()
        try:
            await peer.frames_queued.wait()
        finally:
            if peer.idle_link is link:
                peer.idle_link = None

    async def _watch_for_close(
        self, peer: _Peer, stream: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        """End the connection when the peer closes it (or breaks the rule that it sends nothing)."""
        try:
            data = await stream.receive_some(constants.peer_receive_bytes_max)
        except _SOCKET_ERRORS as error:
            peer.last_error = f"receive: {_describe(error)}"
        else:
            if data:
                self._counters["frames_rejected_total"] += 1
                peer.last_error = "the peer sent bytes on a connection that only it receives on"
            else:
                peer.last_error = "the peer closed the connection"
        scope.cancel()

    # -- Receiving --------------------------------------------------------------------------------

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        """One accepted connection: handshake, then deliver its frames until it ends."""
        self._counters["connections_accepted_total"] += 1
        try:
            decoder = FrameDecoder()
            session = await self._accept_handshake(stream, decoder)
            if session is not None:
                await self._receive_frames(stream, decoder, session)
        finally:
            await trio.aclose_forcefully(stream)

    async def _accept_handshake(
        self, stream: trio.SocketStream, decoder: FrameDecoder
    ) -> peer_wire.Session | None:
        """Complete the handshake as the acceptor; None (counted) if it fails."""
        if self._handshakes_pending >= constants.peer_handshakes_pending_max:
            self._counters["handshakes_rejected_total"] += 1
            return None
        handshake = AcceptorHandshake(
            secret=self._settings.secret,
            cluster_id=self._settings.cluster_id,
            node_id=self._node_id,
            incarnation=self._settings.incarnation,
            nonce=os.urandom(constants.peer_nonce_bytes),
        )
        self._handshakes_pending += 1
        try:
            _set_no_delay(stream)
            with trio.fail_after(self._settings.handshake_timeout_s):
                hello = await _receive_frame(stream, decoder)
                await stream.send_all(handshake.on_hello(hello))
                session = handshake.on_proof(await _receive_frame(stream, decoder))
                self._admit(session)
                return session
        except ReplacedPeerError as error:
            logger.warning("%s", error.message)
            return None
        except (*_SOCKET_ERRORS, MemoraError) as error:
            self._counters["handshakes_rejected_total"] += 1
            logger.info("peer handshake rejected: %s", _describe(error))
            return None
        finally:
            self._handshakes_pending -= 1
            assert self._handshakes_pending >= 0

    async def _receive_frames(
        self, stream: trio.SocketStream, decoder: FrameDecoder, session: peer_wire.Session
    ) -> None:
        decoder.start_session(session.receive_key)
        peer = self._register_inbound(session, stream)
        scope = peer.inbound
        assert scope is not None
        with scope:
            try:
                self._deliver_frames(peer, scope, decoder.frames())
                while peer.inbound is scope:
                    data = await stream.receive_some(constants.peer_receive_bytes_max)
                    if not data:
                        return
                    self._counters["bytes_received_total"] += len(data)
                    self._deliver_frames(peer, scope, decoder.feed(data))
            except PeerWireError as error:
                self._counters["frames_rejected_total"] += 1
                peer.last_error = f"inbound: {_describe(error)}"
                logger.info("peer %d sent a bad frame: %s", peer.peer_id, _describe(error))
            except _SOCKET_ERRORS as error:
                peer.last_error = f"inbound: {_describe(error)}"
            finally:
                if peer.inbound is scope:
                    peer.inbound = None

    def _deliver_frames(
        self, peer: _Peer, scope: trio.CancelScope, bodies: Iterator[bytes]
    ) -> None:
        """Hand each body to `deliver`, in order, while this connection is the peer's current one
        (`deliver` may remove the peer, or a newer connection may have replaced this one)."""
        delivered = 0
        try:
            for body in bodies:
                if peer.inbound is not scope:
                    break
                self._deliver(peer.peer_id, body)
                delivered += 1
        finally:  # A bad frame ends the iteration: the good ones before it were delivered.
            if delivered:
                self._counters["frames_received_total"] += delivered
                peer.last_received_s = time.monotonic()

    def _register_inbound(self, session: peer_wire.Session, stream: trio.SocketStream) -> _Peer:
        """Make this connection the peer's inbound one, learning its address on the way."""
        self._learn_address(session, stream)
        peer = self._peers[session.peer_id]
        if peer.inbound is not None:
            peer.inbound.cancel()  # A newer connection from the same peer replaces the old one.
        peer.inbound = trio.CancelScope()
        return peer

    def _learn_address(self, session: peer_wire.Session, stream: trio.SocketStream) -> None:
        host, port = peer_wire.parse_address(session.peer_address)  # Checked in the handshake.
        if host in _WILDCARD_HOSTS:
            host = stream.socket.getpeername()[0]
        peer = self._peers.get(session.peer_id)
        # Only a peer the book does not know is learned: a configured address wins over the one
        # a peer advertises, so a peer reached through a proxy or a NAT stays reached that way.
        # A member that really moved is given its new address (`memora cluster add-node`).
        if peer is None:
            self._counters["addresses_learned_total"] += 1
            logger.info("peer %d is at %s", session.peer_id, peer_wire.format_address(host, port))
            self.set_peer_address(session.peer_id, (host, port))
