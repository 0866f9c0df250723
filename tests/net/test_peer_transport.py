"""`PeerTransport` on loopback TCP: delivery in order with batching, refused handshakes, bad bytes
from raw sockets (after a genuine handshake made with `peer_wire`), replays, reconnection with a
bounded queue, learned addresses, and replaced connections.

Every test is bounded by `TEST_TIMEOUT_S`; waits poll a condition, so a test takes as long as the
transports need and no longer."""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio

from memora.core import constants
from memora.core.errors import ValidationError
from memora.net import peer_wire
from memora.net.peer_incarnations import IncarnationBook, read_or_make_incarnation
from memora.net.peer_transport import PeerTransport, TransportSettings
from memora.net.peer_wire import DialerHandshake, FrameDecoder, FrameEncoder, WeakSecretError

TEST_TIMEOUT_S = 10.0
SECRET = b"the test cluster secret"
SETTINGS = TransportSettings(
    cluster_id="test",
    secret=SECRET,
    handshake_timeout_s=0.5,
    backoff_initial_s=0.01,
    backoff_max_s=0.05,
)
LOOPBACK = "127.0.0.1"
RAW_INCARNATION = b"r" * constants.peer_incarnation_bytes
RAW_NODE_ID = 9


@attrs.define
class Inbox:
    """What a transport delivered, in order: (sender, body)."""

    received: list[tuple[int, bytes]] = attrs.Factory(list)

    def deliver(self, sender: int, body: bytes) -> None:
        self.received.append((sender, body))

    def bodies_from(self, sender: int) -> list[bytes]:
        return [body for source, body in self.received if source == sender]


def transport(
    node_id: int,
    inbox: Inbox,
    *,
    peers: dict[int, tuple[str, int]] | None = None,
    settings: TransportSettings = SETTINGS,
    port: int = 0,
) -> PeerTransport:
    return PeerTransport(node_id, (LOOPBACK, port), peers or {}, settings, inbox.deliver)


def address(node: PeerTransport) -> tuple[str, int]:
    return LOOPBACK, node.listen_port


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(*nodes: PeerTransport) -> AsyncIterator[trio.Nursery]:
    """Run the transports until the block ends, then cancel them."""
    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for node in nodes:
                await nursery.start(node.run)
            yield nursery
            nursery.cancel_scope.cancel()


def connect_all(*nodes: PeerTransport) -> None:
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.set_peer_address(other._node_id, address(other))


# -- Raw peers, for bad bytes ---------------------------------------------------------------------


async def raw_session(
    node: PeerTransport,
    node_id: int = RAW_NODE_ID,
    advertised: str = f"{LOOPBACK}:1",
    incarnation: bytes = RAW_INCARNATION,
) -> tuple[trio.SocketStream, FrameEncoder]:
    """A genuine handshake with `node`, made by hand with peer_wire, as peer `node_id`."""
    stream = await trio.open_tcp_stream(LOOPBACK, node.listen_port)
    handshake = DialerHandshake(
        secret=SECRET,
        cluster_id=SETTINGS.cluster_id,
        node_id=node_id,
        peer_id=node._node_id,
        address=advertised,  # By default nothing listens there: the node's dials back fail.
        incarnation=incarnation,
        nonce=os.urandom(constants.peer_nonce_bytes),
    )
    await stream.send_all(handshake.hello_frame())
    decoder = FrameDecoder()
    while (payload := decoder.next_frame()) is None:
        decoder.feed(await stream.receive_some(4096))
    proof, session = handshake.on_accept(payload)
    await stream.send_all(proof)
    return stream, FrameEncoder(session.send_key)


async def closed_by_peer(stream: trio.SocketStream) -> bool:
    """True once the other side closed `stream` (it sends nothing else on it)."""
    with trio.fail_after(5):
        try:
            return await stream.receive_some(4096) == b""
        except trio.BrokenResourceError:
            return True


def frame_with_crc(payload: bytes, checksum: int) -> bytes:
    return struct.pack(">II", len(payload), checksum) + payload


# -- Delivery -------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_three_nodes_exchange_thousands_of_frames_in_order_with_batching() -> None:
    inboxes = {node_id: Inbox() for node_id in (1, 2, 3)}
    nodes = {node_id: transport(node_id, inboxes[node_id]) for node_id in (1, 2, 3)}
    count = 3_000
    async with running(*nodes.values()):
        connect_all(*nodes.values())
        for source, node in nodes.items():
            for target in nodes:
                if target != source:
                    sent = [
                        node.send(target, f"{source}>{target}:{i}".encode()) for i in range(count)
                    ]
                    assert all(sent)
        await eventually(
            lambda: all(len(inbox.received) == 2 * count for inbox in inboxes.values())
        )
        for node in nodes.values():
            for status in node.peer_status().values():
                assert status["outbound_connected"] and status["inbound_connected"]
                assert status["queued_frames"] == status["queued_bytes"] == 0
                assert status["connects_total"] == 1 and status["last_error"] is None
                assert status["last_received_s_ago"] is not None
    for target, inbox in inboxes.items():
        for source in nodes:
            if source != target:
                expected = [f"{source}>{target}:{i}".encode() for i in range(count)]
                assert inbox.bodies_from(source) == expected
    for node in nodes.values():
        metrics = node.metrics()
        assert metrics["frames_sent_total"] == metrics["frames_received_total"] == 2 * count
        assert metrics["socket_writes_total"] < metrics["frames_sent_total"] / 10
        assert metrics["frames_dropped_total"] == metrics["frames_rejected_total"] == 0
        assert metrics["handshakes_rejected_total"] == metrics["frames_lost_total"] == 0
        assert metrics["connections_dialed_total"] == metrics["connections_accepted_total"] == 2


@pytest.mark.trio
async def test_large_and_empty_bodies_arrive_whole_across_small_batches() -> None:
    inbox = Inbox()
    settings = attrs.evolve(SETTINGS, write_batch_bytes_max=64 * 1024)
    receiver = transport(2, inbox)
    bodies = [b"", os.urandom(3 * 1024 * 1024), b"x", os.urandom(100_000), b""] * 3
    async with running(receiver):
        sender = transport(1, Inbox(), peers={2: address(receiver)}, settings=settings)
        async with running(sender):
            assert all(sender.send(2, body) for body in bodies)
            await eventually(lambda: len(inbox.received) == len(bodies))
    assert inbox.bodies_from(1) == bodies


@pytest.mark.trio
async def test_frames_sent_on_an_idle_connection_leave_at_once_and_in_order() -> None:
    """With the writer parked on an established connection, `send` writes into the socket
    itself: a small frame is one socket write before `send` returns; a body larger than the
    socket takes is finished by the writer, ahead of the frames queued behind it."""
    inbox = Inbox()
    receiver = transport(2, inbox)
    async with running(receiver):
        sender = transport(1, Inbox(), peers={2: address(receiver)})
        async with running(sender):
            assert sender.send(2, b"hello")
            await eventually(lambda: len(inbox.received) == 1)
            await eventually(lambda: sender.peer_status()[2]["outbound_connected"])
            writes = sender.metrics()["socket_writes_total"]
            assert sender.send(2, b"now")
            assert sender.metrics()["socket_writes_total"] == writes + 1  # Before any checkpoint.
            assert sender.peer_status()[2]["queued_frames"] == 0
            bodies = [os.urandom(16 * 1024 * 1024), b"a", b"b", os.urandom(70_000), b"c"]
            assert all(sender.send(2, body) for body in bodies)
            assert sender.peer_status()[2]["queued_frames"] == len(bodies) - 1
            await eventually(lambda: len(inbox.received) == 2 + len(bodies))
    assert inbox.bodies_from(1) == [b"hello", b"now", *bodies]
    metrics = sender.metrics()
    assert metrics["frames_sent_total"] == 2 + len(bodies)
    assert metrics["frames_lost_total"] == metrics["frames_dropped_total"] == 0


@pytest.mark.trio
async def test_send_refuses_unknown_peers_full_queues_and_oversized_bodies() -> None:
    settings = attrs.evolve(SETTINGS, send_queue_frames_max=3, send_queue_bytes_max=100)
    node = transport(1, Inbox(), peers={2: (LOOPBACK, 1)}, settings=settings)
    assert not node.send(7, b"to nobody")
    assert not node.send(2, b"x" * (constants.frame_body_bytes_max + 1))
    assert [node.send(2, b"y" * 40) for _ in range(3)] == [True, True, False]  # 120 > 100 bytes
    assert [node.send(2, b"z") for _ in range(2)] == [True, False]  # 3 frames
    assert node.metrics()["frames_dropped_total"] == 4
    assert node.peer_status()[2]["queued_frames"] == 3
    assert node.peer_status()[2]["queued_bytes"] == 81


def test_configuration_errors_are_typed() -> None:
    with pytest.raises(WeakSecretError):
        TransportSettings(cluster_id="test", secret=b"too short")
    with pytest.raises(ValidationError):
        TransportSettings(cluster_id="", secret=SECRET)
    with pytest.raises(ValidationError):
        transport(0, Inbox())
    with pytest.raises(ValidationError):
        transport(1, Inbox(), peers={2: (LOOPBACK, 0)})


def test_a_node_leaves_itself_out_of_its_address_book() -> None:
    node = transport(1, Inbox(), peers={1: (LOOPBACK, 7001), 2: (LOOPBACK, 7002)})
    assert node.peers() == {2: (LOOPBACK, 7002)}


# -- Refused handshakes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "target_id"),
    [
        (attrs.evolve(SETTINGS, secret=b"another secret, same length"), 1),
        (attrs.evolve(SETTINGS, cluster_id="another cluster"), 1),
        (SETTINGS, 3),  # The intruder dials node 1's address believing it is node 3.
    ],
    ids=["wrong secret", "wrong cluster id", "wrong node id"],
)
@pytest.mark.trio
async def test_a_refused_handshake_is_counted_and_delivers_nothing(
    settings: TransportSettings, target_id: int
) -> None:
    inbox = Inbox()
    node = transport(1, inbox)
    async with running(node):
        intruder = transport(2, Inbox(), peers={target_id: address(node)}, settings=settings)
        async with running(intruder):
            assert intruder.send(target_id, b"let me in")
            await eventually(
                lambda: (
                    node.metrics()["handshakes_rejected_total"] >= 2
                    and intruder.metrics()["dials_failed_total"] >= 2
                )
            )
            status = intruder.peer_status()[target_id]
            assert not status["outbound_connected"] and status["queued_frames"] == 1
            assert status["last_error"] is not None and status["connects_total"] == 0
    assert inbox.received == []
    assert node.peers() == {}  # Nothing was learned from an unproven Hello.
    assert node.metrics()["frames_received_total"] == 0
    assert intruder.metrics()["dials_failed_total"] >= 2


# -- Bad bytes from the network -------------------------------------------------------------------


async def garbage(stream: trio.SocketStream) -> None:
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: memora\r\n\r\n")


async def huge_length(stream: trio.SocketStream) -> None:
    await stream.send_all(struct.pack(">II", 2**32 - 1, 0))


async def truncated_hello_then_close(stream: trio.SocketStream) -> None:
    hello = DialerHandshake(
        secret=SECRET,
        cluster_id="test",
        node_id=RAW_NODE_ID,
        peer_id=1,
        address=f"{LOOPBACK}:1",
        incarnation=RAW_INCARNATION,
        nonce=os.urandom(constants.peer_nonce_bytes),
    ).hello_frame()
    await stream.send_all(hello[: len(hello) // 2])
    await stream.send_eof()


async def truncated_hello_then_silence(stream: trio.SocketStream) -> None:
    await stream.send_all(struct.pack(">II", 100, 0) + b"partial")  # The handshake times out.


@pytest.mark.parametrize(
    "misbehave",
    [garbage, huge_length, truncated_hello_then_close, truncated_hello_then_silence],
)
@pytest.mark.trio
async def test_bad_handshake_bytes_close_the_connection_and_the_node_goes_on(
    misbehave: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    inbox = Inbox()
    node = transport(1, inbox)
    async with running(node):
        good = transport(2, Inbox(), peers={1: address(node)})
        async with running(good):
            stream = await trio.open_tcp_stream(LOOPBACK, node.listen_port)
            await misbehave(stream)
            assert await closed_by_peer(stream)
            assert good.send(1, b"still here")
            await eventually(lambda: inbox.received == [(2, b"still here")])
    assert node.metrics()["handshakes_rejected_total"] == 1
    assert node.metrics()["connections_accepted_total"] == 2


def bad_crc(encoder: FrameEncoder) -> bytes:
    data = bytearray(encoder.encode(b"corrupted on the way"))
    data[10] ^= 0xFF
    return bytes(data)


def bad_mac(encoder: FrameEncoder) -> bytes:
    """A forged body with a correct CRC: only the MAC tells."""
    data = bytearray(encoder.encode(b"pay 10 to alice"))
    data[12] ^= 0x01
    return frame_with_crc(bytes(data[8:]), zlib.crc32(data[8:]))


def huge_frame(encoder: FrameEncoder) -> bytes:
    return struct.pack(">II", peer_wire.SESSION_PAYLOAD_BYTES_MAX + 1, 0)


def unkeyed_frame(encoder: FrameEncoder) -> bytes:
    return FrameEncoder(os.urandom(32)).encode(b"from someone without the session key")


@pytest.mark.parametrize("bad_frame", [bad_crc, bad_mac, huge_frame, unkeyed_frame])
@pytest.mark.trio
async def test_a_bad_frame_after_a_genuine_handshake_is_rejected_and_counted(
    bad_frame: Callable[[FrameEncoder], bytes],
) -> None:
    inbox = Inbox()
    node = transport(1, inbox)
    async with running(node):
        good = transport(2, Inbox(), peers={1: address(node)})
        async with running(good):
            stream, encoder = await raw_session(node)
            await stream.send_all(encoder.encode(b"a good frame first"))
            await stream.send_all(bad_frame(encoder) + encoder.encode(b"never delivered"))
            assert await closed_by_peer(stream)
            assert good.send(1, b"still here")
            await eventually(lambda: (2, b"still here") in inbox.received)
    assert inbox.bodies_from(RAW_NODE_ID) == [b"a good frame first"]
    assert node.metrics()["frames_rejected_total"] == 1
    assert node.metrics()["handshakes_rejected_total"] == 0


@pytest.mark.trio
async def test_a_replayed_frame_is_rejected_by_the_mac_sequence() -> None:
    inbox = Inbox()
    node = transport(1, inbox)
    async with running(node):
        stream, encoder = await raw_session(node)
        frame = encoder.encode(b"pay 10 to alice")
        await stream.send_all(frame)
        await stream.send_all(frame)
        assert await closed_by_peer(stream)
    assert inbox.received == [(RAW_NODE_ID, b"pay 10 to alice")]
    assert node.metrics()["frames_rejected_total"] == 1


@pytest.mark.trio
async def test_a_frame_from_another_connection_is_rejected() -> None:
    inbox = Inbox()
    node = transport(1, inbox)
    async with running(node):
        first, first_encoder = await raw_session(node, node_id=8)
        second, _ = await raw_session(node, node_id=9)
        frame = first_encoder.encode(b"meant for the first connection")
        await second.send_all(frame)
        assert await closed_by_peer(second)
        await first.send_all(frame)
        await eventually(lambda: len(inbox.received) == 1)
    assert inbox.received == [(8, b"meant for the first connection")]
    assert node.metrics()["frames_rejected_total"] == 1


@pytest.mark.trio
async def test_unauthenticated_connections_are_bounded() -> None:
    node = transport(1, Inbox(), settings=attrs.evolve(SETTINGS, handshake_timeout_s=5.0))
    async with running(node):
        pending = [
            await trio.open_tcp_stream(LOOPBACK, node.listen_port)
            for _ in range(constants.peer_handshakes_pending_max)
        ]
        await eventually(lambda: node.metrics()["connections_accepted_total"] == len(pending))
        one_too_many = await trio.open_tcp_stream(LOOPBACK, node.listen_port)
        assert await closed_by_peer(one_too_many)
        assert node.metrics()["handshakes_rejected_total"] == 1
        for stream in pending:
            await stream.aclose()


# -- Reconnection, learning, replacement ----------------------------------------------------------


@pytest.mark.trio
async def test_a_restarted_peer_gets_the_bounded_queue_of_the_outage() -> None:
    first_inbox, second_inbox = Inbox(), Inbox()
    node = transport(1, Inbox(), settings=attrs.evolve(SETTINGS, send_queue_frames_max=20))
    async with running(node):
        first = transport(2, first_inbox)
        async with running(first):
            port = first.listen_port
            node.set_peer_address(2, (LOOPBACK, port))
            assert all(node.send(2, f"before {i}".encode()) for i in range(10))
            await eventually(lambda: len(first_inbox.received) == 10)
        # The peer is gone: its close is noticed while the connection is idle.
        await eventually(lambda: not node.peer_status()[2]["outbound_connected"])
        sent = [node.send(2, f"during {i}".encode()) for i in range(50)]
        assert sent == [True] * 20 + [False] * 30
        await eventually(lambda: node.metrics()["dials_failed_total"] >= 2)  # Refused, backing off.
        async with running(transport(2, second_inbox, port=port)):
            await eventually(lambda: len(second_inbox.received) == 20)
            assert node.peer_status()[2]["outbound_connected"]
    assert first_inbox.bodies_from(1) == [f"before {i}".encode() for i in range(10)]
    assert second_inbox.bodies_from(1) == [f"during {i}".encode() for i in range(20)]
    metrics = node.metrics()
    assert metrics["frames_dropped_total"] == 30 and metrics["frames_lost_total"] == 0
    assert node.peer_status()[2]["connects_total"] == 2


@pytest.mark.trio
async def test_a_joining_peer_is_learned_from_its_handshake_and_becomes_reachable() -> None:
    founder_inbox, joiner_inbox = Inbox(), Inbox()
    founder = transport(1, founder_inbox)
    async with running(founder):
        joiner = transport(5, joiner_inbox, peers={1: address(founder)})
        async with running(joiner):
            assert joiner.send(1, b"hello, I am 5")
            await eventually(lambda: founder_inbox.received == [(5, b"hello, I am 5")])
            assert founder.peers() == {5: address(joiner)}
            assert founder.metrics()["addresses_learned_total"] == 1
            assert founder.send(5, b"welcome")
            await eventually(lambda: joiner_inbox.received == [(1, b"welcome")])


@pytest.mark.trio
async def test_a_wildcard_host_is_learned_as_the_address_the_peer_dialed_from() -> None:
    node = transport(1, Inbox())
    async with running(node):
        await raw_session(node, advertised="0.0.0.0:4567")
        await eventually(lambda: RAW_NODE_ID in node.peers())
        assert node.peers()[RAW_NODE_ID] == (LOOPBACK, 4567)


@pytest.mark.trio
async def test_a_peer_back_with_another_incarnation_is_refused_until_it_departs() -> None:
    inbox = Inbox()
    node = transport(1, inbox)
    async with running(node):
        first, encoder = await raw_session(node)
        await first.send_all(encoder.encode(b"before the wipe"))
        await eventually(lambda: len(inbox.received) == 1)
        wiped = b"w" * constants.peer_incarnation_bytes
        second, _ = await raw_session(node, incarnation=wiped)
        assert await closed_by_peer(second)  # Refused after the handshake: it proved the secret.
        assert node.metrics()["incarnations_refused_total"] == 1
        assert node.incarnations.known() == {RAW_NODE_ID: RAW_INCARNATION}
        node.forget_departed({1})  # Removed from the configuration: its id may come back.
        third, encoder = await raw_session(node, incarnation=wiped)
        await third.send_all(encoder.encode(b"added back"))
        await eventually(lambda: len(inbox.received) == 2)
    assert inbox.bodies_from(RAW_NODE_ID) == [b"before the wipe", b"added back"]


def test_the_incarnation_book_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "book.json")
    book = IncarnationBook(path)
    assert book.admit(2, RAW_INCARNATION) and book.admit(2, RAW_INCARNATION)
    reopened = IncarnationBook(path)
    assert not reopened.admit(2, b"x" * constants.peer_incarnation_bytes)
    assert read_or_make_incarnation(str(tmp_path)) == read_or_make_incarnation(str(tmp_path))


@pytest.mark.trio
async def test_a_known_peer_keeps_its_configured_address_whatever_it_advertises() -> None:
    configured = (LOOPBACK, 4568)  # A proxy in front of the peer, say.
    node = transport(1, Inbox(), peers={RAW_NODE_ID: configured})
    async with running(node):
        stream, _ = await raw_session(node, advertised=f"{LOOPBACK}:4569")
        await eventually(lambda: node.peer_status()[RAW_NODE_ID]["inbound_connected"])
        await stream.aclose()
        assert node.peers()[RAW_NODE_ID] == configured
        assert node.metrics()["addresses_learned_total"] == 0


@pytest.mark.trio
async def test_a_moved_peer_is_redialed_with_its_queue() -> None:
    inbox = Inbox()
    receiver = transport(2, inbox)
    async with running(receiver):
        sender = transport(1, Inbox(), peers={2: (LOOPBACK, 1)})  # Nothing listens on port 1.
        async with running(sender):
            assert sender.send(2, b"queued while unreachable")
            await eventually(lambda: sender.peer_status()[2]["last_error"] is not None)
            sender.set_peer_address(2, address(receiver))
            await eventually(lambda: inbox.received == [(1, b"queued while unreachable")])
            sender.remove_peer(2)
            assert sender.peers() == {} and not sender.send(2, b"gone")


@pytest.mark.trio
async def test_a_second_inbound_connection_from_a_peer_replaces_the_first() -> None:
    inbox = Inbox()
    node = transport(1, inbox)
    async with running(node):
        first, first_encoder = await raw_session(node)
        await first.send_all(first_encoder.encode(b"on the first"))
        await eventually(lambda: len(inbox.received) == 1)
        second, second_encoder = await raw_session(node)
        assert await closed_by_peer(first)
        await second.send_all(second_encoder.encode(b"on the second"))
        await eventually(lambda: len(inbox.received) == 2)
        assert node.peer_status()[RAW_NODE_ID]["inbound_connected"]
    assert inbox.bodies_from(RAW_NODE_ID) == [b"on the first", b"on the second"]
    assert node.metrics()["frames_rejected_total"] == 0


@pytest.mark.trio
async def test_cancelling_run_closes_every_socket() -> None:
    node = transport(1, Inbox())
    async with running(node):
        stream, _ = await raw_session(node)
        port = node.listen_port
    assert await closed_by_peer(stream)
    async with running(transport(1, Inbox(), port=port)):
        pass  # The port is free again.
