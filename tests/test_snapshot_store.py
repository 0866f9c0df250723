"""Snapshots on real files: layout, round trip, fallback past damage, crash before the manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from memora.core import codec
from memora.net.snapshot_store import SnapshotInfo, SnapshotStore


def parts_of(number: int) -> dict[str, bytes]:
    return {
        "state": f"state {number}".encode(),
        "nodes": f"nodes {number}".encode() * 10,
        "edges": f"edges {number}".encode(),
        "observations": f"observations {number}".encode(),
        "vectors": bytes(range(256)) * number,
    }


def write_snapshots(data_dir: Path, count: int) -> SnapshotStore:
    store = SnapshotStore(str(data_dir))
    for number in range(1, count + 1):
        store.write(index=100 * number, term=number, parts=parts_of(number))
    return store


def test_no_snapshot_yet(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    assert store.latest() is None
    assert store.warnings == []


def test_write_then_latest_round_trip_in_the_design_layout(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    info = store.write(index=42, term=3, parts=parts_of(1))
    manifest_path = tmp_path / "metadata" / "snapshot-000001.json"
    assert info == SnapshotInfo(1, 42, 3, str(manifest_path))
    for relative in [
        "nodes/nodes-000001.cbor",
        "edges/edges-000001.cbor",
        "vectors/vec-000001.blob",
        "metadata/state-000001.cbor",
        "metadata/observations-000001.cbor",
    ]:
        assert (tmp_path / relative).is_file(), relative
    manifest = json.loads(manifest_path.read_bytes())
    assert (manifest["number"], manifest["index"], manifest["term"]) == (1, 42, 3)
    nodes = next(entry for entry in manifest["files"] if entry["part"] == "nodes")
    data = parts_of(1)["nodes"]
    assert nodes == {
        "part": "nodes",
        "path": "nodes/nodes-000001.cbor",
        "bytes": len(data),
        "crc32": codec.crc32(data),
    }
    assert SnapshotStore(str(tmp_path)).latest() == (info, parts_of(1))


def test_numbers_increase_and_only_the_newest_two_are_kept(tmp_path: Path) -> None:
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "someone-elses-000001.txt").write_bytes(b"keep me")
    store = write_snapshots(tmp_path, 4)
    assert sorted(os.listdir(tmp_path / "metadata")) == [
        "observations-000003.cbor",
        "observations-000004.cbor",
        "snapshot-000003.json",
        "snapshot-000004.json",
        "someone-elses-000001.txt",
        "state-000003.cbor",
        "state-000004.cbor",
    ]
    assert sorted(os.listdir(tmp_path / "vectors")) == ["vec-000003.blob", "vec-000004.blob"]
    latest = store.latest()
    assert latest is not None and latest[0].number == 4 and latest[1] == parts_of(4)


def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def damage_remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage", [damage_flip, damage_truncate, damage_remove])
@pytest.mark.parametrize(
    "relative", ["nodes/nodes-000002.cbor", "vectors/vec-000002.blob", "metadata/state-000002.cbor"]
)
def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(
    tmp_path: Path, damage: object, relative: str
) -> None:
    write_snapshots(tmp_path, 2)
    assert callable(damage)
    damage(tmp_path / relative)
    store = SnapshotStore(str(tmp_path))
    latest = store.latest()
    assert latest is not None
    info, parts = latest
    assert (info.number, info.index, info.term) == (1, 100, 1)
    assert parts == parts_of(1)
    assert len(store.warnings) == 1
    assert "snapshot 2" in store.warnings[0] and relative.split("/")[1] in store.warnings[0]


@pytest.mark.parametrize(
    "manifest",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"number": 2, "index": 200, "term": 2, "files": []}',
        b'{"number": 1, "index": 200, "term": 2, "files": []}',
        b'{"number": 2, "index": -1, "term": 2, "files": []}',
        json.dumps(
            {
                "number": 2,
                "index": 200,
                "term": 2,
                "files": [{"part": "nodes", "path": "../../etc/passwd", "bytes": 1, "crc32": 0}],
            }
        ).encode(),
    ],
)
def test_a_damaged_newest_manifest_falls_back_to_the_previous_one(
    tmp_path: Path, manifest: bytes
) -> None:
    write_snapshots(tmp_path, 2)
    (tmp_path / "metadata" / "snapshot-000002.json").write_bytes(manifest)
    store = SnapshotStore(str(tmp_path))
    latest = store.latest()
    assert latest is not None and latest[0].number == 1
    assert len(store.warnings) == 1 and "snapshot 2" in store.warnings[0]


def test_when_every_snapshot_is_damaged_there_is_none(tmp_path: Path) -> None:
    write_snapshots(tmp_path, 2)
    damage_flip(tmp_path / "nodes" / "nodes-000001.cbor")
    damage_flip(tmp_path / "edges" / "edges-000002.cbor")
    store = SnapshotStore(str(tmp_path))
    assert store.latest() is None
    assert len(store.warnings) == 2


def test_a_crash_before_the_manifest_leaves_the_previous_snapshot_latest(tmp_path: Path) -> None:
    write_snapshots(tmp_path, 2)
    # Snapshot 3 got its data files (and a half-written manifest temp file), then the crash.
    for relative, data in [
        ("nodes/nodes-000003.cbor", b"new nodes"),
        ("edges/edges-000003.cbor", b"new edges"),
        ("vectors/vec-000003.blob", b"new vectors"),
        ("metadata/snapshot-000003.json.k2j3h4.tmp", b'{"number": 3, "ind'),
    ]:
        (tmp_path / relative).write_bytes(data)
    store = SnapshotStore(str(tmp_path))
    latest = store.latest()
    assert latest is not None and latest[0].number == 2 and latest[1] == parts_of(2)
    assert store.warnings == []
    # The next snapshot takes number 3, overwriting the orphans, and cleans up the temp file.
    info = store.write(index=300, term=3, parts=parts_of(3))
    assert info.number == 3
    assert store.latest() == (info, parts_of(3))
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "metadata"))
