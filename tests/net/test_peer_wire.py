"""The peer protocol without sockets: frames, their MACs, the decoder under any chunking, and both
sides of the handshake joined directly, message by message (h11's ConnectionPair style)."""

from __future__ import annotations

import contextlib
import hmac
import itertools
import struct
import zlib

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memora.core import constants
from memora.core.errors import ValidationError
from memora.net import peer_wire
from memora.net.peer_wire import (
    AcceptorHandshake,
    BadCrcError,
    BadMacError,
    BadProofError,
    DialerHandshake,
    FrameDecoder,
    FrameEncoder,
    FrameTooLargeError,
    HandshakeError,
    PeerWireError,
    Session,
    VersionError,
    WeakSecretError,
    WrongClusterError,
    WrongNodeError,
)

SECRET = b"a cluster secret of some length"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NONCE_D = b"d" * constants.peer_nonce_bytes
NONCE_A = b"a" * constants.peer_nonce_bytes
DIALER_INCARNATION = b"D" * constants.peer_incarnation_bytes
ACCEPTOR_INCARNATION = b"A" * constants.peer_incarnation_bytes


def dialer(
    *,
    secret: bytes = SECRET,
    cluster_id: str = "prod",
    node_id: int = 1,
    peer_id: int = 2,
    nonce: bytes = NONCE_D,
) -> DialerHandshake:
    return DialerHandshake(
        secret=secret,
        cluster_id=cluster_id,
        node_id=node_id,
        peer_id=peer_id,
        address="127.0.0.1:7001",
        incarnation=DIALER_INCARNATION,
        nonce=nonce,
    )


def acceptor(
    *, secret: bytes = SECRET, cluster_id: str = "prod", node_id: int = 2, nonce: bytes = NONCE_A
) -> AcceptorHandshake:
    return AcceptorHandshake(
        secret=secret,
        cluster_id=cluster_id,
        node_id=node_id,
        incarnation=ACCEPTOR_INCARNATION,
        nonce=nonce,
    )


def payload_of(frame: bytes) -> bytes:
    """The one handshake payload in `frame`, read back through a decoder."""
    decoder = FrameDecoder()
    (payload,) = list(decoder.feed(frame))
    return payload


def handshake(dialing: DialerHandshake, accepting: AcceptorHandshake) -> tuple[Session, Session]:
    accept = accepting.on_hello(payload_of(dialing.hello_frame()))
    proof, dialer_session = dialing.on_accept(payload_of(accept))
    return dialer_session, accepting.on_proof(payload_of(proof))


def raw_frame(payload: bytes, *, checksum: int | None = None) -> bytes:
    crc = zlib.crc32(payload) if checksum is None else checksum
    return struct.pack(">II", len(payload), crc) + payload


# -- Frames ---------------------------------------------------------------------------------------


def test_frames_round_trip_in_order() -> None:
    bodies = [b"", b"x", b"hello" * 100, bytes(range(256))]
    encoder, decoder = FrameEncoder(KEY), FrameDecoder(KEY)
    assert list(decoder.feed(encoder.encode_batch(bodies))) == bodies
    assert encoder.sequence == decoder.sequence == len(bodies)
    assert decoder.buffered_bytes == 0


def test_a_frame_is_its_header_then_the_body_then_a_tag() -> None:
    data = FrameEncoder(KEY).encode(b"body")
    length, checksum = struct.unpack(">II", data[:8])
    assert length == 4 + constants.peer_mac_bytes == len(data) - 8
    assert checksum == zlib.crc32(data[8:])
    assert data[8:12] == b"body"


def test_a_length_beyond_the_limit_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder(KEY)
    header = struct.pack(">II", peer_wire.SESSION_PAYLOAD_BYTES_MAX + 1, 0)
    with pytest.raises(FrameTooLargeError) as raised:
        list(decoder.feed(header))
    assert raised.value.code == "frame_too_large"


def test_the_largest_body_fits() -> None:
    decoder = FrameDecoder(KEY)
    header = struct.pack(">II", peer_wire.SESSION_PAYLOAD_BYTES_MAX, 0)
    assert list(decoder.feed(header)) == []  # It waits for the body.


def test_the_handshake_phase_has_a_small_limit() -> None:
    header = struct.pack(">II", constants.peer_handshake_body_bytes_max + 1, 0)
    with pytest.raises(FrameTooLargeError):
        list(FrameDecoder().feed(header))


def test_a_corrupt_body_fails_its_crc() -> None:
    data = bytearray(FrameEncoder(KEY).encode(b"some body"))
    data[9] ^= 0x01
    with pytest.raises(BadCrcError) as raised:
        list(FrameDecoder(KEY).feed(bytes(data)))
    assert raised.value.code == "bad_crc"


def test_a_forged_body_with_a_good_crc_fails_its_mac() -> None:
    data = bytearray(FrameEncoder(KEY).encode(b"some body"))
    data[9] ^= 0x01
    forged = raw_frame(bytes(data[8:]))
    with pytest.raises(BadMacError) as raised:
        list(FrameDecoder(KEY).feed(forged))
    assert raised.value.code == "bad_mac"


def test_a_frame_under_another_key_fails_its_mac() -> None:
    with pytest.raises(BadMacError):
        list(FrameDecoder(OTHER_KEY).feed(FrameEncoder(KEY).encode(b"x")))


def test_a_replayed_frame_fails_its_mac() -> None:
    frame = FrameEncoder(KEY).encode(b"pay 10")
    decoder = FrameDecoder(KEY)
    frames = decoder.feed(frame + frame)
    assert next(frames) == b"pay 10"
    with pytest.raises(BadMacError):
        next(frames)


def test_reordered_frames_fail_their_mac() -> None:
    encoder = FrameEncoder(KEY)
    first, second = encoder.encode(b"1"), encoder.encode(b"2")
    with pytest.raises(BadMacError):
        list(FrameDecoder(KEY).feed(second + first))


def test_a_payload_too_short_for_a_mac_is_refused() -> None:
    with pytest.raises(BadMacError):
        list(FrameDecoder(KEY).feed(raw_frame(b"short")))


def test_bytes_after_the_handshake_are_read_under_the_session_key() -> None:
    """A dialer may send frames right behind its proof, in the same segment."""
    decoder = FrameDecoder()
    frames = decoder.feed(peer_wire.handshake_frame(b"proof") + FrameEncoder(KEY).encode(b"x"))
    assert next(frames) == b"proof"
    decoder.start_session(KEY)
    assert list(decoder.frames()) == [b"x"]


def test_a_decoder_that_raised_must_be_dropped() -> None:
    decoder = FrameDecoder(KEY)
    with pytest.raises(BadCrcError):
        list(decoder.feed(raw_frame(b"x" * 20, checksum=0)))
    with pytest.raises(AssertionError):
        decoder.feed(b"")


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_any_chunking_yields_exactly_the_frames_encoded(
    bodies: list[bytes], cuts: list[int]
) -> None:
    data = FrameEncoder(KEY).encode_batch(bodies)
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    decoder = FrameDecoder(KEY)
    decoded = [
        body for start, end in itertools.pairwise(points) for body in decoder.feed(data[start:end])
    ]
    assert decoded == bodies
    assert decoder.buffered_bytes == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2_000), established=st.booleans(), chunk=st.integers(1, 64))
def test_random_bytes_raise_nothing_but_the_typed_error(
    data: bytes, established: bool, chunk: int
) -> None:
    decoder = FrameDecoder(KEY if established else None)
    try:
        for start in range(0, len(data), chunk):
            list(decoder.feed(data[start : start + chunk]))
    except PeerWireError:
        pass


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(st.binary(max_size=50), min_size=1, max_size=5), flip=st.integers(0))
def test_a_flipped_bit_never_yields_a_changed_body(bodies: list[bytes], flip: int) -> None:
    data = bytearray(FrameEncoder(KEY).encode_batch(bodies))
    position = flip % (len(data) * 8)
    data[position // 8] ^= 1 << (position % 8)
    try:
        decoded = list(FrameDecoder(KEY).feed(bytes(data)))
    except PeerWireError:
        return
    # Only a length field that grew can leave the decoder waiting for more bytes instead.
    assert decoded == bodies[: len(decoded)] and len(decoded) < len(bodies)


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32), sequence=st.integers(0, 2**64 - 1), body=st.binary()
)
def test_the_mac_is_truncated_hmac_sha256_of_the_sequence_and_the_body(
    key: bytes, sequence: int, body: bytes
) -> None:
    expected = hmac.digest(key, struct.pack(">Q", sequence) + body, "sha256")
    assert peer_wire._Mac(key).tag(sequence, body) == expected[: constants.peer_mac_bytes]


# -- Handshake ------------------------------------------------------------------------------------


def test_a_handshake_keys_both_directions() -> None:
    dialer_session, acceptor_session = handshake(dialer(), acceptor())
    assert dialer_session.peer_id == 2 and acceptor_session.peer_id == 1
    assert acceptor_session.peer_address == "127.0.0.1:7001"
    assert dialer_session.send_key == acceptor_session.receive_key
    assert dialer_session.receive_key == acceptor_session.send_key
    assert dialer_session.send_key != dialer_session.receive_key
    encoder = FrameEncoder(dialer_session.send_key)
    assert list(FrameDecoder(acceptor_session.receive_key).feed(encoder.encode(b"x"))) == [b"x"]


def test_fresh_nonces_give_fresh_keys() -> None:
    first, _ = handshake(dialer(), acceptor())
    second, _ = handshake(dialer(nonce=b"e" * 32), acceptor())
    third, _ = handshake(dialer(), acceptor(nonce=b"b" * 32))
    assert len({first.send_key, second.send_key, third.send_key}) == 3


def test_the_acceptor_refuses_another_cluster() -> None:
    with pytest.raises(WrongClusterError) as raised:
        acceptor().on_hello(payload_of(dialer(cluster_id="staging").hello_frame()))
    assert raised.value.code == "wrong_cluster"


def test_the_acceptor_refuses_a_hello_meant_for_another_node() -> None:
    with pytest.raises(WrongNodeError):
        acceptor(node_id=3).on_hello(payload_of(dialer().hello_frame()))


def test_the_acceptor_refuses_another_version() -> None:
    hello = peer_wire.Hello(99, "prod", 1, 2, "127.0.0.1:7001", DIALER_INCARNATION, NONCE_D)
    with pytest.raises(VersionError):
        acceptor().on_hello(payload_of(peer_wire.encode_hello(hello)))


def test_the_acceptor_refuses_its_own_id_as_sender() -> None:
    hello = peer_wire.Hello(1, "prod", 2, 2, "127.0.0.1:7001", DIALER_INCARNATION, NONCE_D)
    with pytest.raises(WrongNodeError):
        acceptor().on_hello(payload_of(peer_wire.encode_hello(hello)))


def test_an_acceptor_without_the_secret_is_caught_by_the_dialer() -> None:
    dialing = dialer()
    accept = acceptor(secret=b"another secret of 16+ bytes").on_hello(
        payload_of(dialing.hello_frame())
    )
    with pytest.raises(BadProofError):
        dialing.on_accept(payload_of(accept))


def test_a_dialer_without_the_secret_is_caught_by_the_acceptor() -> None:
    accepting = acceptor()
    impostor = dialer(secret=b"another secret of 16+ bytes")
    accepting.on_hello(payload_of(impostor.hello_frame()))
    # The impostor cannot verify the Accept; a proof made with its own secret fails.
    transcript = peer_wire.transcript(impostor.hello, ACCEPTOR_INCARNATION, NONCE_A)
    forged = peer_wire.dial_proof(b"another secret of 16+ bytes", transcript)
    with pytest.raises(BadProofError):
        accepting.on_proof(payload_of(peer_wire.encode_proof(peer_wire.Proof(forged))))


def test_a_proof_from_another_session_does_not_verify() -> None:
    """A recorded handshake replayed to an acceptor that draws a new nonce fails."""
    recorded = dialer()
    old_accept = acceptor().on_hello(payload_of(recorded.hello_frame()))
    old_proof, _ = recorded.on_accept(payload_of(old_accept))
    replayed_to = acceptor(nonce=b"n" * 32)
    replayed_to.on_hello(payload_of(recorded.hello_frame()))
    with pytest.raises(BadProofError):
        replayed_to.on_proof(payload_of(old_proof))


def test_the_accept_proof_is_not_a_dial_proof() -> None:
    """Reflecting the acceptor's own proof back does not complete the handshake."""
    accepting = acceptor()
    accept = peer_wire.decode_accept(
        payload_of(accepting.on_hello(payload_of(dialer().hello_frame())))
    )
    with pytest.raises(BadProofError):
        accepting.on_proof(payload_of(peer_wire.encode_proof(peer_wire.Proof(accept.proof))))


def test_the_dialer_refuses_an_answer_from_another_node() -> None:
    dialing = dialer(peer_id=2)
    accept = acceptor(node_id=3).on_hello(payload_of(dialer(peer_id=3).hello_frame()))
    with pytest.raises(WrongNodeError):
        dialing.on_accept(payload_of(accept))


HELLO_FIELDS = {
    "kind": "hello",
    "version": 1,
    "cluster_id": "prod",
    "sender": 1,
    "receiver": 2,
    "address": "127.0.0.1:7001",
    "nonce": NONCE_D,
}


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "accept"},
        {"version": True},
        {"version": "1"},
        {"cluster_id": ""},
        {"cluster_id": "x" * (constants.peer_cluster_id_bytes_max + 1)},
        {"cluster_id": b"prod"},
        {"sender": 0},
        {"sender": True},
        {"sender": constants.raft_node_id_max + 1},
        {"receiver": -2},
        {"receiver": 2.0},
        {"address": "nowhere"},
        {"address": "host:0"},
        {"address": "host:99999"},
        {"address": ":7001"},
        {"address": 7001},
        {"nonce": NONCE_D[:-1]},
        {"nonce": NONCE_D.decode()},
        {"extra": 1},
    ],
)
def test_a_malformed_hello_is_refused(change: dict[str, object]) -> None:
    fields = {**HELLO_FIELDS, **change}
    with pytest.raises(HandshakeError):
        acceptor().on_hello(cbor2.dumps(fields))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff",
        cbor2.dumps([1, 2]),
        cbor2.dumps({key: value for key, value in HELLO_FIELDS.items() if key != "nonce"}),
        bytes.fromhex("d8236128"),  # Tag 35 (a regular expression) around "(": re.error.
        bytes.fromhex("c074") + b"not a date at all!!!",
        b"\x81" * 1000 + b"\x00",  # Deeply nested arrays.
    ],
)
def test_undecodable_handshake_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(HandshakeError):
        acceptor().on_hello(payload)
    with pytest.raises(HandshakeError):
        peer_wire.decode_accept(payload)
    with pytest.raises(HandshakeError):
        peer_wire.decode_proof(payload)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=constants.peer_handshake_body_bytes_max))
def test_random_handshake_payloads_raise_nothing_but_the_typed_error(payload: bytes) -> None:
    for decode in (peer_wire.decode_hello, peer_wire.decode_accept, peer_wire.decode_proof):
        with contextlib.suppress(HandshakeError):
            decode(payload)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(WeakSecretError) as raised:
        peer_wire.check_secret(b"x" * (constants.peer_secret_bytes_min - 1))
    assert raised.value.code == "weak_secret"
    with pytest.raises(WeakSecretError):
        dialer(secret=b"short")
    with pytest.raises(WeakSecretError):
        peer_wire.check_secret("a string of more than 16 characters")
    assert peer_wire.check_secret(SECRET) == SECRET


@pytest.mark.parametrize(
    ("host", "port"), [("127.0.0.1", 7001), ("::1", 1), ("node-3.example.org", 65535)]
)
def test_addresses_round_trip(host: str, port: int) -> None:
    assert peer_wire.parse_address(peer_wire.format_address(host, port)) == (host, port)


@pytest.mark.parametrize("text", ["", "host", "host:", "host:-1", "host:1e3", "host:٣"])
def test_malformed_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        peer_wire.parse_address(text)


def test_both_sides_learn_the_other_incarnation_bound_by_the_proofs() -> None:
    dialing, accepting = dialer(), acceptor()
    accept = accepting.on_hello(payload_of(dialing.hello_frame()))
    proof, dialer_session = dialing.on_accept(payload_of(accept))
    acceptor_session = accepting.on_proof(payload_of(proof))
    assert dialer_session.peer_incarnation == ACCEPTOR_INCARNATION
    assert acceptor_session.peer_incarnation == DIALER_INCARNATION
    # An Accept whose incarnation was changed on the way no longer carries a valid proof.
    forged = peer_wire.decode_accept(payload_of(accept))
    tampered = peer_wire.encode_accept(attrs.evolve(forged, incarnation=DIALER_INCARNATION))
    with pytest.raises(peer_wire.BadProofError):
        dialer().on_accept(payload_of(tampered))
