"""The bytes between two cluster nodes: frames, their MACs, and the handshake that keys them.

What lives here: everything about the peer protocol that can be decided from bytes alone, in the
sans-io style of h11: the frame format, the incremental `FrameDecoder`, the `FrameEncoder`, and
the two sides of the handshake as small state machines (`DialerHandshake`, `AcceptorHandshake`).
What must not: sockets, trio, clocks or entropy. Nonces are passed in; `peer_transport` owns the
sockets, the timeouts and the randomness, and decides what a typed error here means (it closes
that one connection and counts it).

A frame is `[length u32][crc32 u32][payload]`, big-endian, where the length and the CRC cover the
payload. During the handshake the payload is a small CBOR map (at most
`peer_handshake_body_bytes_max`). After it, the payload is an opaque body (at most
`frame_body_bytes_max`, CBOR made by the layer above) followed by a 16-byte tag:
HMAC-SHA256(key of that direction, sequence u64 || body) truncated. The sequence is implicit: it
counts the frames of the connection in each direction from 0, so a frame that is injected,
replayed, reordered or moved to another connection fails its MAC. The CRC tells corruption apart
from tampering and is checked first.

The handshake is a mutual challenge-response over a shared cluster secret:
1. the dialer sends Hello{version, cluster_id, sender, receiver, address, incarnation_d, nonce_d};
2. the acceptor checks the version, the cluster id and that it is the receiver, and answers
   Accept{sender, incarnation_a, nonce_a, proof_a = HMAC(secret, "accept" | transcript)};
3. the dialer checks proof_a and answers Proof{proof_d = HMAC(secret, "dial" | transcript)};
4. the acceptor checks proof_d.
The transcript binds the version, the cluster id, both node ids, the dialer's advertised address,
both incarnations and both nonces, so nothing of one session verifies in another. An incarnation
is random bytes a node makes together with its data directory: a node whose directory was wiped
comes back with another one, which its peers can tell (`memora.net.peer_incarnations`). Each
direction's session key is derived from the secret and the transcript (an HKDF-style extract and
expand with HMAC-SHA256), so a key never outlives its connection. Nothing here encrypts: the
bodies travel in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Final

import attrs
import cbor2

from memora.core import constants
from memora.core.errors import MemoraError, ValidationError

_HEADER: Final = struct.Struct(">II")
_SEQUENCE: Final = struct.Struct(">Q")
HEADER_BYTES: Final = _HEADER.size
assert constants.frame_header_bytes == HEADER_BYTES
# The largest payload of an established connection: a body and its tag.
SESSION_PAYLOAD_BYTES_MAX: Final = constants.frame_body_bytes_max + constants.peer_mac_bytes
_SEQUENCE_MAX: Final = 2**64 - 1

# Domain separation: each HMAC input starts with a label that no other use of the secret shares.
_LABEL_TRANSCRIPT: Final = "memora peer transcript"
_LABEL_ACCEPT: Final = b"accept\x00"
_LABEL_DIAL: Final = b"dial\x00"
_LABEL_SESSION: Final = b"memora peer session\x00"
_LABEL_DIALER_TO_ACCEPTOR: Final = b"dialer to acceptor\x01"
_LABEL_ACCEPTOR_TO_DIALER: Final = b"acceptor to dialer\x01"


# -- Errors ---------------------------------------------------------------------------------------


class PeerWireError(MemoraError):
    """Bytes from a peer that break the protocol. The connection that carried them is closed."""

    code = "peer_wire"


class FrameTooLargeError(PeerWireError):
    """A length prefix beyond the limit of the connection's phase (never allocated)."""

    code = "frame_too_large"


class BadCrcError(PeerWireError):
    """A payload that does not match its CRC: corruption on the way."""

    code = "bad_crc"


class BadMacError(PeerWireError):
    """A frame whose tag does not verify: forged, replayed, reordered or from another session."""

    code = "bad_mac"


class HandshakeError(PeerWireError):
    """A handshake message that is malformed (not CBOR, wrong keys, types or sizes)."""

    code = "handshake"


class VersionError(HandshakeError):
    """The dialer speaks another version of the peer protocol."""

    code = "bad_version"


class WrongClusterError(HandshakeError):
    """The dialer belongs to another cluster."""

    code = "wrong_cluster"


class WrongNodeError(HandshakeError):
    """The dialer meant another node, or claims an id it cannot have."""

    code = "wrong_node"


class BadProofError(HandshakeError):
    """A proof that does not verify: the other side does not know the cluster secret."""

    code = "bad_proof"


class WeakSecretError(ValidationError):
    """A cluster secret too short to key HMAC-SHA256 safely."""

    code = "weak_secret"


# -- Checks of configuration and of handshake fields ----------------------------------------------


def check_secret(secret: object) -> bytes:
    """The secret, if it is bytes of an acceptable length; WeakSecretError otherwise."""
    if not isinstance(secret, bytes):
        raise WeakSecretError("the cluster secret must be bytes", "secret")
    if len(secret) < constants.peer_secret_bytes_min:
        minimum = constants.peer_secret_bytes_min
        raise WeakSecretError(f"the cluster secret must be at least {minimum} bytes", "secret")
    if len(secret) > constants.peer_secret_bytes_max:
        maximum = constants.peer_secret_bytes_max
        raise WeakSecretError(f"the cluster secret must be at most {maximum} bytes", "secret")
    return secret


def check_cluster_id(cluster_id: object) -> str:
    if not isinstance(cluster_id, str) or not cluster_id:
        raise ValidationError("the cluster id must be a non-empty string", "cluster_id")
    if len(cluster_id.encode()) > constants.peer_cluster_id_bytes_max:
        maximum = constants.peer_cluster_id_bytes_max
        raise ValidationError(f"the cluster id must be at most {maximum} bytes", "cluster_id")
    return cluster_id


def is_node_id(value: object) -> bool:
    return type(value) is int and constants.raft_node_id_min <= value <= constants.raft_node_id_max


def check_node_id(value: object, field: str = "node_id") -> int:
    if not is_node_id(value):
        low, high = constants.raft_node_id_min, constants.raft_node_id_max
        raise ValidationError(f"{field} must be an integer in [{low}, {high}]", field)
    assert isinstance(value, int)
    return value


def format_address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 literal in brackets."""
    assert 0 <= port <= 65535, port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: object, field: str = "address") -> tuple[str, int]:
    """(host, port) from `host:port` or `[v6]:port`; the port must be in [1, 65535]."""
    if not isinstance(text, str) or len(text.encode()) > constants.peer_address_bytes_max:
        raise ValidationError("an address must be a short 'host:port' string", field)
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ValidationError(f"{text!r} is not 'host:port'", field)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValidationError(f"the port of {text!r} must be in [1, 65535]", field)
    return host, port


# -- Frames ---------------------------------------------------------------------------------------


class _Mac:
    """HMAC-SHA256 of (sequence, body) under one key, truncated to `peer_mac_bytes`.

    This is RFC 2104 written out over hashlib, with the inner and outer hashes keyed once per
    connection and copied for each frame: per frame that is a third cheaper than copying an
    `hmac.HMAC`, whose Python wrapper costs more than hashing a small body. A test checks it
    against `hmac.digest`."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        assert len(key) == hashlib.sha256().digest_size, len(key)
        padded = key.ljust(hashlib.sha256().block_size, b"\x00")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))

    def tag(self, sequence: int, body: bytes | memoryview) -> bytes:
        assert 0 <= sequence <= _SEQUENCE_MAX, sequence
        inner = self._inner.copy()
        inner.update(_SEQUENCE.pack(sequence))
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[: constants.peer_mac_bytes]


def handshake_frame(payload: bytes) -> bytes:
    """Frame a handshake message (no MAC: no key exists yet)."""
    assert len(payload) <= constants.peer_handshake_body_bytes_max, len(payload)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class FrameEncoder:
    """Frames the bodies one side sends on one established connection, in order."""

    def __init__(self, send_key: bytes) -> None:
        self._mac = _Mac(send_key)
        self.sequence = 0  # The sequence number of the next frame.

    def encode(self, body: bytes) -> bytes:
        return b"".join(self._parts(body))

    def encode_batch(self, bodies: Iterable[bytes]) -> bytes:
        """Many frames as one buffer, for one socket write."""
        return b"".join([part for body in bodies for part in self._parts(body)])

    def _parts(self, body: bytes) -> tuple[bytes, bytes, bytes]:
        assert len(body) <= constants.frame_body_bytes_max, len(body)
        tag = self._mac.tag(self.sequence, body)
        self.sequence += 1
        checksum = zlib.crc32(tag, zlib.crc32(body))
        return _HEADER.pack(len(body) + len(tag), checksum), body, tag


class FrameDecoder:
    """Turns the bytes of one connection, however they are chunked, into frames.

    It starts in the handshake phase (payloads of at most `peer_handshake_body_bytes_max`, no
    MAC) unless given a key; `start_session` switches to the established phase, where each payload
    ends with the tag of the next sequence number. Bytes already buffered are read in the phase
    that is current when they are reached, so a dialer may send frames right after its proof.

    `feed` buffers the bytes and returns an iterator over the complete frames; iteration raises a
    PeerWireError at the first bad frame. After an error the decoder must be dropped.

    The bytes are kept as one immutable buffer plus the chunks fed since it was last joined. The
    chunks are joined only when the next header or frame is complete, so a 64 MiB frame that
    arrives in small reads is copied once, not once per read; and each body is one slice of the
    buffer, the only copy a frame costs."""

    def __init__(self, receive_key: bytes | None = None) -> None:
        self._buffer = b""
        self._start = 0  # Where the next frame begins in `_buffer`.
        self._chunks: list[bytes] = []  # Fed after `_buffer`, not joined yet.
        self._chunks_bytes = 0
        self._mac: _Mac | None = None
        self._payload_bytes_max = constants.peer_handshake_body_bytes_max
        self._failed = False
        self.sequence = 0  # The sequence number of the next frame of the established phase.
        if receive_key is not None:
            self.start_session(receive_key)

    @property
    def established(self) -> bool:
        return self._mac is not None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._start + self._chunks_bytes

    def start_session(self, receive_key: bytes) -> None:
        assert self._mac is None, "the session of a connection starts once"
        self._mac = _Mac(receive_key)
        self._payload_bytes_max = SESSION_PAYLOAD_BYTES_MAX

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        assert not self._failed, "a decoder that raised must be dropped"
        if data:
            self._chunks.append(bytes(data))
            self._chunks_bytes += len(data)
        return self.frames()

    def frames(self) -> Iterator[bytes]:
        """The complete frames buffered so far (the bodies, without their tags)."""
        while (body := self.next_frame()) is not None:
            yield body

    def next_frame(self) -> bytes | None:
        """The next complete frame's body, or None if the buffer ends inside a frame."""
        assert not self._failed, "a decoder that raised must be dropped"
        try:
            return self._next_frame()
        except PeerWireError:
            self._failed = True
            raise

    def _has(self, size: int) -> bool:
        """Whether `size` bytes from `_start` are buffered, joining the chunks if that helps."""
        if len(self._buffer) - self._start >= size:
            return True
        if len(self._buffer) - self._start + self._chunks_bytes < size:
            return False
        self._buffer = b"".join([self._buffer[self._start :], *self._chunks])
        self._start = 0
        self._chunks.clear()
        self._chunks_bytes = 0
        return True

    def _next_frame(self) -> bytes | None:
        if not self._has(HEADER_BYTES):
            return None
        length, checksum = _HEADER.unpack_from(self._buffer, self._start)
        if length > self._payload_bytes_max:
            maximum = self._payload_bytes_max
            raise FrameTooLargeError(f"a frame of {length} bytes (at most {maximum})")
        if not self._has(HEADER_BYTES + length):
            return None
        payload_start = self._start + HEADER_BYTES
        end = payload_start + length
        body = self._authenticated_body(payload_start, end, checksum)
        self._start = end
        if self._start == len(self._buffer):  # Let go of a large frame's buffer at once.
            self._buffer, self._start = b"", 0
        return body

    def _authenticated_body(self, start: int, end: int, checksum: int) -> bytes:
        """The body of the payload at [start, end), checked against its CRC and its MAC."""
        split = end if self._mac is None else end - constants.peer_mac_bytes
        if split < start:
            raise BadMacError(f"frame {self.sequence} is too short to carry a MAC")
        body, tag = self._buffer[start:split], self._buffer[split:end]
        if zlib.crc32(tag, zlib.crc32(body)) != checksum:
            raise BadCrcError(f"frame {self.sequence}: the payload does not match its CRC")
        if self._mac is None:
            return body
        if not hmac.compare_digest(self._mac.tag(self.sequence, body), tag):
            raise BadMacError(f"frame {self.sequence}: the MAC does not verify")
        self.sequence += 1
        return body


# -- Handshake messages ---------------------------------------------------------------------------


@attrs.frozen
class Hello:
    """The dialer's first message: who it is, whom it means, and its challenge."""

    version: int
    cluster_id: str
    sender: int
    receiver: int
    address: str  # Where the sender listens, "host:port": how a joining node becomes reachable.
    incarnation: bytes  # Made with the sender's data directory.
    nonce: bytes


@attrs.frozen
class Accept:
    """The acceptor's answer: its id and incarnation, its challenge, its proof of the secret."""

    sender: int
    incarnation: bytes
    nonce: bytes
    proof: bytes


@attrs.frozen
class Proof:
    """The dialer's proof of the secret, which ends the handshake."""

    proof: bytes


@attrs.frozen
class Session:
    """What a completed handshake yields for one connection."""

    peer_id: int
    peer_address: str  # The peer's advertised address (the dialer's; empty on the dialer's side).
    peer_incarnation: bytes
    send_key: bytes
    receive_key: bytes


_KIND_HELLO: Final = "hello"
_KIND_ACCEPT: Final = "accept"
_KIND_PROOF: Final = "proof"
_PROOF_BYTES: Final = hashlib.sha256().digest_size


def _message_frame(kind: str, fields: dict[str, Any]) -> bytes:
    return handshake_frame(cbor2.dumps({"kind": kind, **fields}))


def _message_map(payload: bytes, kind: str, keys: frozenset[str]) -> dict[str, Any]:
    """The CBOR map of a handshake message of `kind`, with exactly `keys` besides "kind"."""
    try:
        value = cbor2.loads(payload)
    # The payload comes from an unauthenticated peer, and cbor2's semantic tags run decoders of
    # their own (dates, regular expressions, MIME), which raise errors of many kinds: every one
    # of them means the message is malformed.
    except Exception as error:
        raise HandshakeError(f"the {kind} message is not CBOR: {type(error).__name__}") from None
    if not isinstance(value, dict) or value.get("kind") != kind:
        raise HandshakeError(f"expected a {kind} message")
    if set(value) != keys | {"kind"}:
        raise HandshakeError(f"the {kind} message must have exactly the keys {sorted(keys)}")
    del value["kind"]
    return value


def _check_field(fields: dict[str, Any], name: str, valid: bool) -> None:
    if not valid:
        raise HandshakeError(f"malformed handshake field {name!r}", name)


def _is_nonce(value: object) -> bool:
    return type(value) is bytes and len(value) == constants.peer_nonce_bytes


def is_incarnation(value: object) -> bool:
    return type(value) is bytes and len(value) == constants.peer_incarnation_bytes


def _is_proof(value: object) -> bool:
    return type(value) is bytes and len(value) == _PROOF_BYTES


def encode_hello(hello: Hello) -> bytes:
    return _message_frame(_KIND_HELLO, attrs.asdict(hello))


def decode_hello(payload: bytes) -> Hello:
    fields = _message_map(payload, _KIND_HELLO, frozenset(attrs.fields_dict(Hello)))
    _check_field(fields, "version", type(fields["version"]) is int)
    _check_field(fields, "cluster_id", type(fields["cluster_id"]) is str)
    _check_field(fields, "sender", is_node_id(fields["sender"]))
    _check_field(fields, "receiver", is_node_id(fields["receiver"]))
    _check_field(fields, "incarnation", is_incarnation(fields["incarnation"]))
    _check_field(fields, "nonce", _is_nonce(fields["nonce"]))
    try:
        check_cluster_id(fields["cluster_id"])
        parse_address(fields["address"])
    except ValidationError as error:
        raise HandshakeError(error.message, error.field) from None
    return Hello(**fields)


def encode_accept(accept: Accept) -> bytes:
    return _message_frame(_KIND_ACCEPT, attrs.asdict(accept))


def decode_accept(payload: bytes) -> Accept:
    fields = _message_map(payload, _KIND_ACCEPT, frozenset(attrs.fields_dict(Accept)))
    _check_field(fields, "sender", is_node_id(fields["sender"]))
    _check_field(fields, "incarnation", is_incarnation(fields["incarnation"]))
    _check_field(fields, "nonce", _is_nonce(fields["nonce"]))
    _check_field(fields, "proof", _is_proof(fields["proof"]))
    return Accept(**fields)


def encode_proof(proof: Proof) -> bytes:
    return _message_frame(_KIND_PROOF, attrs.asdict(proof))


def decode_proof(payload: bytes) -> Proof:
    fields = _message_map(payload, _KIND_PROOF, frozenset(attrs.fields_dict(Proof)))
    _check_field(fields, "proof", _is_proof(fields["proof"]))
    return Proof(**fields)


# -- Handshake keys -------------------------------------------------------------------------------


def transcript(hello: Hello, acceptor_incarnation: bytes, acceptor_nonce: bytes) -> bytes:
    """The bytes both proofs and both session keys are bound to."""
    assert len(acceptor_nonce) == constants.peer_nonce_bytes
    assert is_incarnation(acceptor_incarnation), acceptor_incarnation
    fields = [
        _LABEL_TRANSCRIPT,
        hello.version,
        hello.cluster_id,
        hello.sender,
        hello.receiver,
        hello.address,
        hello.incarnation,
        hello.nonce,
        acceptor_incarnation,
        acceptor_nonce,
    ]
    # Integers, strings and byte strings have one CBOR encoding each, so this is canonical.
    return cbor2.dumps(fields)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def accept_proof(secret: bytes, transcript_bytes: bytes) -> bytes:
    return _hmac(secret, _LABEL_ACCEPT + transcript_bytes)


def dial_proof(secret: bytes, transcript_bytes: bytes) -> bytes:
    return _hmac(secret, _LABEL_DIAL + transcript_bytes)


def session_keys(secret: bytes, transcript_bytes: bytes) -> tuple[bytes, bytes]:
    """(dialer-to-acceptor key, acceptor-to-dialer key): extract, then expand per direction."""
    pseudo_random_key = _hmac(secret, _LABEL_SESSION + transcript_bytes)
    dialer_to_acceptor = _hmac(pseudo_random_key, _LABEL_DIALER_TO_ACCEPTOR)
    acceptor_to_dialer = _hmac(pseudo_random_key, _LABEL_ACCEPTOR_TO_DIALER)
    assert dialer_to_acceptor != acceptor_to_dialer
    return dialer_to_acceptor, acceptor_to_dialer


# -- The two sides of the handshake ---------------------------------------------------------------


class DialerHandshake:
    """The dialer's side: `hello_frame()` to send, then `on_accept(payload)` gives the proof to
    send and the session. Raises a HandshakeError on a bad answer."""

    def __init__(
        self,
        *,
        secret: bytes,
        cluster_id: str,
        node_id: int,
        peer_id: int,
        address: str,
        incarnation: bytes,
        nonce: bytes,
    ) -> None:
        assert len(nonce) == constants.peer_nonce_bytes, len(nonce)
        assert is_incarnation(incarnation), incarnation
        assert node_id != peer_id, node_id
        self._secret = check_secret(secret)
        version = constants.peer_protocol_version
        cluster = check_cluster_id(cluster_id)
        self.hello = Hello(version, cluster, node_id, peer_id, address, incarnation, nonce)
        self._done = False

    def hello_frame(self) -> bytes:
        return encode_hello(self.hello)

    def on_accept(self, payload: bytes) -> tuple[bytes, Session]:
        assert not self._done, "a handshake completes once"
        accept = decode_accept(payload)
        if accept.sender != self.hello.receiver:
            raise WrongNodeError(f"node {accept.sender} answered, not {self.hello.receiver}")
        transcript_bytes = transcript(self.hello, accept.incarnation, accept.nonce)
        if not hmac.compare_digest(accept.proof, accept_proof(self._secret, transcript_bytes)):
            raise BadProofError(f"node {accept.sender} does not prove the cluster secret")
        self._done = True
        send_key, receive_key = session_keys(self._secret, transcript_bytes)
        proof = encode_proof(Proof(dial_proof(self._secret, transcript_bytes)))
        return proof, Session(accept.sender, "", accept.incarnation, send_key, receive_key)


class AcceptorHandshake:
    """The acceptor's side: `on_hello(payload)` gives the Accept to send, then
    `on_proof(payload)` gives the session. Raises a HandshakeError on a bad message."""

    def __init__(
        self, *, secret: bytes, cluster_id: str, node_id: int, incarnation: bytes, nonce: bytes
    ) -> None:
        assert len(nonce) == constants.peer_nonce_bytes, len(nonce)
        assert is_incarnation(incarnation), incarnation
        self._incarnation = incarnation
        self._secret = check_secret(secret)
        self._cluster_id = check_cluster_id(cluster_id)
        self._node_id = check_node_id(node_id)
        self._nonce = nonce
        self._hello: Hello | None = None
        self._transcript = b""
        self._done = False

    @property
    def hello(self) -> Hello | None:
        """The dialer's Hello once `on_hello` accepted it (its claims are not proven yet)."""
        return self._hello

    def on_hello(self, payload: bytes) -> bytes:
        assert self._hello is None, "one Hello per handshake"
        hello = decode_hello(payload)
        if hello.version != constants.peer_protocol_version:
            raise VersionError(f"protocol version {hello.version} is not spoken here")
        if hello.cluster_id != self._cluster_id:
            raise WrongClusterError(f"the dialer is in cluster {hello.cluster_id!r}")
        if hello.receiver != self._node_id:
            raise WrongNodeError(f"the dialer means node {hello.receiver}, this is {self._node_id}")
        if hello.sender == self._node_id:
            raise WrongNodeError(f"the dialer claims this node's own id {self._node_id}")
        self._hello = hello
        self._transcript = transcript(hello, self._incarnation, self._nonce)
        proof = accept_proof(self._secret, self._transcript)
        return encode_accept(Accept(self._node_id, self._incarnation, self._nonce, proof))

    def on_proof(self, payload: bytes) -> Session:
        assert self._hello is not None and not self._done, "on_proof follows one on_hello"
        proof = decode_proof(payload)
        if not hmac.compare_digest(proof.proof, dial_proof(self._secret, self._transcript)):
            raise BadProofError(f"node {self._hello.sender} does not prove the cluster secret")
        self._done = True
        dialer_to_acceptor, acceptor_to_dialer = session_keys(self._secret, self._transcript)
        hello = self._hello
        return Session(
            hello.sender, hello.address, hello.incarnation, acceptor_to_dialer, dialer_to_acceptor
        )
