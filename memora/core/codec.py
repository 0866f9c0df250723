"""CBOR encoding of records, commands and entries, and the on-disk frame around each record.

Each attrs class below is encoded as a CBOR tag (a number of its own) around the list of its field
values, in declaration order. Property maps and lists stay plain CBOR. Decoding rebuilds the
classes by tag, so `decode(encode(x)) == x` for every value of the model (a property test says so).

A stored record is framed as [length u32][crc32 u32][cbor], little-endian, where the CRC covers the
CBOR body. `read_frame` tells a good frame from a short (torn) or corrupt one; deciding what a bad
frame means for a log is the caller's business.

Tag numbers are part of the disk format: never renumber one, only add.
"""

from __future__ import annotations

import enum
import math
import operator
import struct
import typing
import zlib
from typing import Any, Final

import attrs
import cbor2

from memora.core import constants
from memora.core.errors import CodecError, MemoraError
from memora.core.fields import fields_getter
from memora.core.types import (
    AddObservation,
    Applied,
    Batch,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    DeleteObservation,
    Edge,
    Entry,
    ExpireClients,
    FrozenList,
    FrozenMap,
    InsertEdge,
    InsertNode,
    Namespace,
    Node,
    Observation,
    Proposal,
    Provenance,
    Rejected,
    SetVector,
    Stamp,
    UpdateEdge,
    UpdateNode,
)

TAG_BASE: Final = 40_000
_TAGGED_CLASSES: Final[dict[int, type]] = {
    TAG_BASE + 1: Provenance,
    TAG_BASE + 2: Stamp,
    TAG_BASE + 3: Namespace,
    TAG_BASE + 4: Node,
    TAG_BASE + 5: Edge,
    TAG_BASE + 6: Observation,
    TAG_BASE + 20: CreateNamespace,
    TAG_BASE + 21: InsertNode,
    TAG_BASE + 22: UpdateNode,
    TAG_BASE + 23: DeleteNode,
    TAG_BASE + 24: SetVector,
    TAG_BASE + 25: InsertEdge,
    TAG_BASE + 26: UpdateEdge,
    TAG_BASE + 27: DeleteEdge,
    TAG_BASE + 28: AddObservation,
    TAG_BASE + 29: DeleteObservation,
    TAG_BASE + 30: Batch,
    TAG_BASE + 31: ExpireClients,
    TAG_BASE + 40: Entry,
    TAG_BASE + 41: Applied,
    TAG_BASE + 42: Proposal,
}
# A Rejected result carries an exception, encoded as [index, error class name, message, field].
TAG_REJECTED: Final = TAG_BASE + 43
_TAG_OF_CLASS: Final[dict[type, int]] = {cls: tag for tag, cls in _TAGGED_CLASSES.items()}
_FIELD_NAMES: Final[dict[type, tuple[str, ...]]] = {
    cls: tuple(field.name for field in attrs.fields(cls)) for cls in _TAGGED_CLASSES.values()
}


# Per class, its tag and a C-level getter of all its fields as a tuple (CBOR encodes it as an
# array): encoding runs for every record written and every version digested, so it stays lean.
_ENCODERS: Final[dict[type, tuple[int, Any]]] = {
    cls: (tag, fields_getter(_FIELD_NAMES[cls])) for tag, cls in _TAGGED_CLASSES.items()
}


def _encode_default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    found = _ENCODERS.get(type(value))
    if found is None and isinstance(value, Rejected):
        error = value.error
        assert isinstance(error, MemoraError), error
        fields = [value.index, type(error).__name__, error.message, error.field]
        encoder.encode(cbor2.CBORTag(TAG_REJECTED, fields))
        return
    if found is None:
        raise CodecError(f"cannot encode a value of type {type(value).__name__}")
    tag, fields = found
    encoder.encode(cbor2.CBORTag(tag, fields(value)))


def _tag_decoder(cls: type) -> Any:
    count = len(_FIELD_NAMES[cls])

    # Called for every tagged value decoded (three per proposal), so it checks no more than
    # the shape; the state machine validates the values.
    def decode_fields(value: Any, immutable: bool = False) -> Any:
        if type(value) is not list or len(value) != count:
            raise CodecError(f"malformed {cls.__name__}: expected {count} fields")
        try:
            return cls(*value)
        except (TypeError, ValueError) as error:
            raise CodecError(f"malformed {cls.__name__}: {error}") from error

    return decode_fields


def _errors_by_name() -> dict[str, type[MemoraError]]:
    found: dict[str, type[MemoraError]] = {}
    pending: list[type[MemoraError]] = [MemoraError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def _decode_rejected(value: Any, immutable: bool = False) -> Rejected:
    if not isinstance(value, list) or len(value) != 4:
        raise CodecError("malformed Rejected: expected 4 fields")
    index, name, message, field = value
    # Looked up when decoding, so error classes defined after this module (Raft's) are known.
    cls = _errors_by_name().get(name) if isinstance(name, str) else None
    if cls is None or not isinstance(index, int) or not isinstance(message, str):
        raise CodecError(f"malformed Rejected: unknown error {name!r}")
    if field is not None and not isinstance(field, str):
        raise CodecError("malformed Rejected: field must be a string")
    error = cls.__new__(cls)
    MemoraError.__init__(error, message, field)
    return Rejected(index, error)


# Semantic decoders (not a tag_hook) so that maps and lists inside a record decode as plain,
# mutable dicts and lists, equal to the ones that were encoded.
_SEMANTIC_DECODERS: Final = {
    **{tag: _tag_decoder(cls) for tag, cls in _TAGGED_CLASSES.items()},
    TAG_REJECTED: _decode_rejected,
}


def encode(value: Any) -> bytes:
    """Encode a model value (or plain CBOR data containing model values) to bytes."""
    return cbor2.dumps(value, default=_encode_default)


def encode_model(value: Any) -> bytes:
    """`encode` of one model value (a proposal, a command, a record): the same bytes, faster.

    Every write encodes its proposal, whose command and provenance are tags: cbor2's C encoder
    spends microseconds on each tag (and on each call of `_encode_default` that makes one), more
    than this walk in Python costs (on flat data without tags, as in `digest_input`, cbor2 is
    the faster). Values of exact builtin types are written byte for byte as cbor2 writes them (a
    property test compares the two on every model value); anything else (a map with items,
    non-ASCII text, an int beyond 64 bits, a float that is not finite, a subclass) is left to
    `encode`, one item at a time: CBOR items delimit themselves, and cbor2 shares nothing
    between items.
    """
    out: list[bytes] = []
    _write(value, out)
    return b"".join(out)


_BYTES: Final = tuple(bytes((number,)) for number in range(256))
_HEAD_16: Final = struct.Struct(">BH")
_HEAD_32: Final = struct.Struct(">BI")
_HEAD_64: Final = struct.Struct(">BQ")
_FLOAT_64: Final = struct.Struct(">Bd")
_UINT_LIMIT: Final = 2**64
# CBOR major types, as the high bits of an item's first byte.
_UNSIGNED: Final = 0x00
_NEGATIVE: Final = 0x20
_BYTE_STRING: Final = 0x40
_TEXT: Final = 0x60
_ARRAY: Final = 0x80
_TAG: Final = 0xC0
_EMPTY_MAP: Final = b"\xa0"
_FALSE, _TRUE, _NULL = b"\xf4", b"\xf5", b"\xf6"
_FLOAT_64_HEAD: Final = 0xFB


def _head(major: int, argument: int) -> bytes:
    """An item's first bytes: its major type and its argument in the fewest bytes."""
    if argument < 24:
        return _BYTES[major | argument]
    if argument < 0x100:
        return _BYTES[major | 24] + _BYTES[argument]
    if argument < 0x10000:
        return _HEAD_16.pack(major | 25, argument)
    if argument < 0x100000000:
        return _HEAD_32.pack(major | 26, argument)
    return _HEAD_64.pack(major | 27, argument)


def _write(value: Any, out: list[bytes]) -> None:
    kind = type(value)
    if kind is str and value.isascii():
        out.append(_head(_TEXT, len(value)))
        out.append(value.encode("ascii"))
    elif value is None:
        out.append(_NULL)
    elif kind is int and -_UINT_LIMIT <= value < _UINT_LIMIT:
        out.append(_head(_UNSIGNED, value) if value >= 0 else _head(_NEGATIVE, -1 - value))
    elif kind is bytes:
        out.append(_head(_BYTE_STRING, len(value)))
        out.append(value)
    elif kind is bool:
        out.append(_TRUE if value else _FALSE)
    elif kind is float and math.isfinite(value):
        out.append(_FLOAT_64.pack(_FLOAT_64_HEAD, value))
    elif kind is tuple or kind is list or kind is FrozenList:
        out.append(_head(_ARRAY, len(value)))
        for item in value:
            _write(item, out)
    elif (kind is dict or kind is FrozenMap) and not value:
        out.append(_EMPTY_MAP)
    elif kind in _ENCODERS:
        tag, fields = _ENCODERS[kind]
        out.append(_head(_TAG, tag))
        _write(fields(value), out)
    else:
        out.append(encode(value))


def _digest_getter(cls: type) -> Any:
    """A getter of a record's fields as one flat tuple, each nested Provenance or Stamp spelled
    out in place, and the properties map (if any) left out: `digest_input` adds it sorted."""
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for field in attrs.fields(cls):
        nested = hints[field.name]
        if field.name == "properties":
            continue
        if attrs.has(nested):
            assert not any(attrs.has(hint) for hint in typing.get_type_hints(nested).values())
            names.extend(f"{field.name}.{inner.name}" for inner in attrs.fields(nested))
        else:
            names.append(field.name)
    return fields_getter(tuple(names))


# Per digested class: its tag, a getter of its properties (None if it has none), and its flat
# getter of every other field.
_DIGESTED: Final[dict[type, tuple[int, Any, Any]]] = {
    cls: (
        _TAG_OF_CLASS[cls],
        operator.attrgetter("properties") if "properties" in _FIELD_NAMES[cls] else None,
        _digest_getter(cls),
    )
    for cls in (Namespace, Node, Edge, Observation)
}
_SCALAR_TYPES: Final = frozenset({str, int, float, bool, type(None)})


def _sorted_maps(value: Any) -> Any:
    """A property value with every map in sorted key order, so insertion order never counts."""
    if isinstance(value, dict):
        return {
            key: item if type(item) in _SCALAR_TYPES else _sorted_maps(item)
            for key, item in sorted(value.items())
        }
    if isinstance(value, list):
        return [item if type(item) in _SCALAR_TYPES else _sorted_maps(item) for item in value]
    return value


def digest_input(record: object) -> bytes:
    """The bytes a record version is digested from: [tag, properties?, field, ...] as one flat
    CBOR array, nested Provenance and Stamp values spelled out in place, maps in sorted key order.

    Not cbor2's canonical mode: it pays about a microsecond for every nested array and
    for every map it sorts itself, and this runs for every version written and again for every
    version restored. Each class has a fixed number of fields and CBOR items delimit themselves,
    so the bytes still name one version of one class. Floats stay float64 (not canonical CBOR's
    shortest form): deterministic all the same.
    """
    found = _DIGESTED.get(type(record))
    assert found is not None, f"{type(record).__name__} is not a record"
    tag, properties_of, fields = found
    if properties_of is not None:
        properties = properties_of(record)
        if properties:
            properties = _sorted_maps(properties)
        return cbor2.dumps((tag, properties, *fields(record)), default=_encode_default)
    return cbor2.dumps((tag, *fields(record)), default=_encode_default)


def decode(data: bytes) -> Any:
    """Decode bytes made by `encode`. Raises `CodecError` on anything malformed."""
    try:
        return cbor2.loads(data, semantic_decoders=_SEMANTIC_DECODERS)
    except CodecError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as error:
        raise CodecError(f"undecodable CBOR: {error}") from error


def decode_proposal(data: bytes) -> Proposal:
    """Decode what a NORMAL Raft entry carries, or raise CodecError."""
    value = decode(data)
    if not isinstance(value, Proposal):
        raise CodecError(f"expected a Proposal, found {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------
# Framing: [length u32][crc32 u32][body].

_HEADER: Final = struct.Struct("<II")
assert _HEADER.size == constants.frame_header_bytes


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def frame(body: bytes) -> bytes:
    """Wrap a body in its header. The body must fit the frame limit (a programmer error if not)."""
    assert len(body) <= constants.frame_body_bytes_max, len(body)
    return _HEADER.pack(len(body), crc32(body)) + body


class FrameStatus(enum.Enum):
    OK = "ok"
    SHORT = "short"  # The buffer ends inside the header or the body.
    TOO_LARGE = "too_large"  # The length field is beyond any frame we write.
    BAD_CRC = "bad_crc"  # The body does not match its checksum.


@attrs.frozen
class FrameRead:
    status: FrameStatus
    offset: int
    body: bytes = b""

    @property
    def end(self) -> int:
        """The offset just past this frame (only meaningful when OK)."""
        assert self.status is FrameStatus.OK
        return self.offset + constants.frame_header_bytes + len(self.body)


def read_frame(buffer: bytes | memoryview, offset: int) -> FrameRead:
    """Read the frame that starts at `offset`. Never raises on bad bytes."""
    assert 0 <= offset <= len(buffer)
    if len(buffer) - offset < _HEADER.size:
        return FrameRead(FrameStatus.SHORT, offset)
    length, checksum = _HEADER.unpack_from(buffer, offset)
    if length > constants.frame_body_bytes_max:
        return FrameRead(FrameStatus.TOO_LARGE, offset)
    body_start = offset + _HEADER.size
    if len(buffer) - body_start < length:
        return FrameRead(FrameStatus.SHORT, offset)
    body = bytes(buffer[body_start : body_start + length])
    if crc32(body) != checksum:
        return FrameRead(FrameStatus.BAD_CRC, offset)
    return FrameRead(FrameStatus.OK, offset, body)
