"""The codec round-trips every command, record and entry, and framing catches damage."""

from __future__ import annotations

import math
from typing import Any

import attrs
import cbor2
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from memora.core import codec
from memora.core.codec import FrameStatus
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
    InsertEdge,
    InsertNode,
    Namespace,
    Node,
    Observation,
    Proposal,
    Provenance,
    SetVector,
    Stamp,
    UpdateEdge,
    UpdateNode,
    vector_to_bytes,
)

texts = st.text(max_size=20)
ids = st.integers(min_value=1, max_value=2**63 - 1)
optional_ids = st.none() | ids
finite = st.floats(allow_nan=False, allow_infinity=False)
property_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
properties = st.dictionaries(texts, property_values, max_size=4)
vectors = st.none() | st.lists(finite.filter(lambda x: abs(x) < 1e30), min_size=1, max_size=8).map(
    vector_to_bytes
)
provenances = st.builds(
    Provenance,
    st.none() | texts,
    st.floats(0, 1),
    st.none() | st.integers(0, 2**40),
    st.none() | st.integers(0, 2**40),
)
stamps = st.builds(Stamp, ids, st.integers(0, 2**45), texts, st.none() | texts)

simple_commands = st.one_of(
    st.builds(CreateNamespace, st.integers(1, 4096), st.sampled_from(["cosine", "l2"])),
    st.builds(
        InsertNode,
        texts,
        optional_ids,
        st.none() | texts,
        properties,
        st.none() | texts,
        vectors,
        provenances,
    ),
    st.builds(
        UpdateNode,
        ids,
        st.none() | texts,
        st.none() | texts,
        st.none() | properties,
        st.none() | texts,
        vectors,
        st.none() | provenances,
        st.lists(st.sampled_from(["name", "text", "vector"]), max_size=3),
    ),
    st.builds(DeleteNode, ids),
    st.builds(SetVector, ids, vectors.filter(lambda v: v is not None)),
    st.builds(InsertEdge, ids, ids, texts, optional_ids, properties, provenances),
    st.builds(UpdateEdge, ids, st.none() | properties, st.none() | provenances),
    st.builds(DeleteEdge, ids),
    st.builds(AddObservation, ids, texts, vectors, optional_ids, provenances),
    st.builds(DeleteObservation, ids),
)
commands = simple_commands | st.builds(Batch, st.lists(simple_commands, max_size=4))
entries = st.builds(
    Entry,
    ids,
    st.integers(0, 2**40),
    st.integers(0, 2**45),
    texts,
    texts,
    st.none() | texts,
    commands,
)
records = st.one_of(
    st.builds(
        Node,
        texts,
        ids,
        st.integers(1, 100),
        texts,
        st.none() | texts,
        properties,
        st.none() | texts,
        vectors,
        provenances,
        stamps,
        stamps,
        st.booleans(),
    ),
    st.builds(
        Edge,
        texts,
        ids,
        st.integers(1, 100),
        ids,
        ids,
        texts,
        properties,
        provenances,
        stamps,
        stamps,
        st.booleans(),
    ),
    st.builds(
        Observation,
        texts,
        ids,
        st.integers(1, 100),
        ids,
        texts,
        vectors,
        provenances,
        stamps,
        stamps,
        st.booleans(),
    ),
)


@given(entries)
def test_entries_round_trip(entry: Entry) -> None:
    assert codec.decode(codec.encode(entry)) == entry


@given(records)
def test_records_round_trip(record: Any) -> None:
    assert codec.decode(codec.encode(record)) == record


proposals = st.builds(
    Proposal,
    st.integers(0, 2**45),
    texts,
    texts,
    st.none() | texts,
    commands,
    st.none() | texts,
    st.none() | st.integers(1, 2**63),
)


@given(entries | records | commands | proposals)
def test_encode_model_writes_what_cbor2_writes(value: Any) -> None:
    assert codec.encode_model(value) == codec.encode(value)


def test_encode_model_leaves_unusual_items_to_cbor2() -> None:
    class Label(str):
        pass

    unusual: list[Any] = [
        InsertNode("Ünïcode", id=2**64, name=Label("sub"), properties={"a": [1, {"b": None}]}),
        InsertNode("L", id=-(2**64) - 1, text="", vector=b""),
        Provenance("s", math.nan, -(2**64), 2**64 - 1),
        Provenance(None, math.inf, -1, -24),
        Provenance(None, -math.inf, 23, 24),
        Batch((DeleteNode(255), DeleteNode(256), DeleteNode(65_535), DeleteNode(65_536))),
        Batch((DeleteNode(2**32 - 1), DeleteNode(2**32), DeleteNode(True))),
        Applied(3, (1, "two")),
    ]
    for value in unusual:
        assert codec.encode_model(value) == codec.encode(value), value


@given(st.binary(max_size=200))
def test_frames_round_trip(body: bytes) -> None:
    framed = codec.frame(body)
    read = codec.read_frame(framed, 0)
    assert read.status is FrameStatus.OK and read.body == body and read.end == len(framed)


@given(st.binary(min_size=1, max_size=64), st.data())
def test_any_single_byte_change_is_caught(body: bytes, data: st.DataObject) -> None:
    framed = bytearray(codec.frame(body))
    position = data.draw(st.integers(0, len(framed) - 1))
    framed[position] ^= data.draw(st.integers(1, 255))
    assert codec.read_frame(bytes(framed), 0).status is not FrameStatus.OK


def test_a_cut_frame_is_short() -> None:
    framed = codec.frame(b"hello world")
    for cut in range(len(framed)):
        assert codec.read_frame(framed[:cut], 0).status is FrameStatus.SHORT


def test_garbage_is_a_codec_error_not_a_crash() -> None:
    for garbage in [b"\xff\xff", b"\xd9\x9c\x41\x81\x01", codec.encode([1, 2]), b""]:
        try:
            codec.decode_proposal(garbage)
        except codec.CodecError:
            continue
        raise AssertionError(f"{garbage!r} decoded")


def test_vectors_travel_as_exact_float32() -> None:
    vector = np.array([0.1, -2.5, math.pi], dtype=np.float32)
    node = InsertNode("L", vector=vector_to_bytes(vector))
    decoded = codec.decode(codec.encode(node))
    assert decoded.vector == vector.tobytes()


def test_digest_input_spells_out_every_field_so_digests_see_every_change() -> None:
    from memora.core.state import version_digest

    stamp = Stamp(3, 1_000, "alice", "s1")
    node = Node(
        "main",
        7,
        2,
        "Person",
        "bob",
        {"a": [1, {"b": 2}]},
        "text",
        vector_to_bytes([1.0, 2.0]),
        Provenance("chat", 0.5, 1, 2),
        stamp,
        stamp,
    )
    spelled = cbor2.loads(codec.digest_input(node))
    # The tag, the properties, the 8 plain fields, then Provenance and two Stamps, 4 fields each.
    assert spelled[0] == codec._TAG_OF_CLASS[Node] and len(spelled) == 2 + 8 + 4 + 4 + 4
    assert spelled[1] == {"a": [1, {"b": 2}]}
    assert spelled[9:13] == ["chat", 0.5, 1, 2]
    changed = {
        "namespace": "other",
        "id": 8,
        "version": 3,
        "label": "P",
        "name": None,
        "properties": {"a": [1, {"b": 3}]},
        "text": "x",
        "vector": vector_to_bytes([1.0, 2.5]),
        "provenance": Provenance("chat", 0.6, 1, 2),
        "created": Stamp(3, 1_000, "eve", "s1"),
        "updated": Stamp(4, 1_000, "alice", "s1"),
        "deleted": True,
    }
    assert set(changed) == {field.name for field in attrs.fields(Node)}
    digests = {
        version_digest(attrs.evolve(node, **{name: value})) for name, value in changed.items()
    }
    assert version_digest(node) not in digests and len(digests) == len(changed)


def test_digest_inputs_of_records_of_each_kind_differ() -> None:
    stamp = Stamp(3, 1_000, "alice", None)
    records = [
        Namespace("main", 4, "cosine", stamp),
        Node("main", 1, 1, "A", None, {}, None, None, Provenance(), stamp, stamp),
        Edge("main", 1, 1, 1, 1, "A", {}, Provenance(), stamp, stamp),
        Observation("main", 1, 1, 1, "A", None, Provenance(), stamp, stamp),
    ]
    assert len({codec.digest_input(record) for record in records}) == len(records)


@given(properties)
def test_digest_input_does_not_depend_on_the_order_of_map_keys(value: dict[str, Any]) -> None:
    def reversed_maps(item: Any) -> Any:
        if isinstance(item, dict):
            return {key: reversed_maps(item[key]) for key in reversed(list(item))}
        if isinstance(item, list):
            return [reversed_maps(inner) for inner in item]
        return item

    stamp = Stamp(3, 1_000, "alice", None)
    node = Node("main", 1, 1, "A", None, value, None, None, Provenance(), stamp, stamp)
    edge = Edge("main", 1, 1, 1, 1, "A", value, Provenance(), stamp, stamp)
    for record in (node, edge):
        reordered = attrs.evolve(record, properties=reversed_maps(value))
        assert codec.digest_input(reordered) == codec.digest_input(record)


def test_a_batch_reply_round_trips_equal() -> None:
    """A cached batch reply restored from a snapshot must equal the live one (tuple, not list)."""
    reply = Applied(7, (1, "two"))
    assert codec.decode(codec.encode(reply)) == reply
