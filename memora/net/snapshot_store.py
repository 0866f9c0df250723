"""Snapshots on real disk, in the layout of DESIGN.md ("Disk layout of one node").

What lives here: naming and writing the data files of snapshot number N (`nodes/nodes-N.cbor`,
`edges/edges-N.cbor`, `vectors/vec-N.blob`, `metadata/<part>-N.cbor` for any other part), the
manifest `metadata/snapshot-N.json` that lists them with sizes and CRC-32s, finding the newest
snapshot that is whole, and deleting old ones.
What must not: interpret the parts' bytes (`memora.core.snapshot` does), or touch the Raft log.

A snapshot exists once its manifest does. Data files are each written atomically and fsynced
first, the manifest last, so a crash at any point leaves the previous snapshot intact. Old
snapshots are deleted only after the new manifest is durable.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any, Final

import attrs

from memora.core import codec, constants
from memora.net import files

# The newest snapshots kept on disk; the one before the newest is the fallback if it is damaged.

_PART_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_MANIFEST_NAME: Final = re.compile(r"^snapshot-(\d{6,})\.json$")
_DATA_NAME: Final = re.compile(r"^([a-z][a-z0-9_]*)-(\d{6,})\.(cbor|blob)$")
_TEMPORARY_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*-\d{6,}\.(cbor|blob|json)\..+\.tmp$")
_DIRECTORIES: Final = ("nodes", "edges", "vectors", "metadata")


@attrs.frozen
class SnapshotInfo:
    number: int
    index: int
    term: int
    manifest_path: str


class _Damaged(Exception):
    """A snapshot whose manifest or files do not check out (turned into a warning)."""


def part_path(part: str, number: int) -> str:
    """Where part `part` of snapshot `number` lives, relative to the data directory."""
    assert _PART_NAME.match(part) and part != "snapshot", part
    assert number >= 1, number
    if part == "nodes":
        return f"nodes/nodes-{number:06d}.cbor"
    if part == "edges":
        return f"edges/edges-{number:06d}.cbor"
    if part == "vectors":
        return f"vectors/vec-{number:06d}.blob"
    return f"metadata/{part}-{number:06d}.cbor"


def manifest_path(number: int) -> str:
    assert number >= 1, number
    return f"metadata/snapshot-{number:06d}.json"


class SnapshotStore:
    """Snapshots under one data directory. `warnings` lists what the last `latest()` skipped."""

    def __init__(self, data_dir: str) -> None:
        self._data_dir = data_dir
        self._lock = threading.Lock()
        self.warnings: list[str] = []

    def write(self, index: int, term: int, parts: dict[str, bytes]) -> SnapshotInfo:
        """Write a snapshot of state through log `index` (of `term`) as the next number."""
        assert index >= 0 and term >= 0, (index, term)
        assert parts, "a snapshot has at least one part"
        with self._lock:
            number = max(self._manifest_numbers(), default=0) + 1
            entries = [self._write_part(part, number, parts[part]) for part in sorted(parts)]
            manifest = {"number": number, "index": index, "term": term, "files": entries}
            path = self._absolute(manifest_path(number))
            files.make_directory(os.path.dirname(path))
            files.write_file_atomically(path, json.dumps(manifest, indent=1).encode())
            self._delete_old()
            return SnapshotInfo(number, index, term, path)

    def latest(self) -> tuple[SnapshotInfo, dict[str, bytes]] | None:
        """The newest snapshot whose manifest parses and whose files match it, or None.

        A damaged newer snapshot is skipped for an older whole one; `self.warnings` says why.
        """
        with self._lock:
            warnings = []
            found = None
            for number in sorted(self._manifest_numbers(), reverse=True):
                try:
                    found = self._load(number)
                    break
                except _Damaged as damage:
                    warnings.append(f"snapshot {number} skipped: {damage}")
            self.warnings = warnings
            return found

    # -- Writing --------------------------------------------------------------------------------

    def _write_part(self, part: str, number: int, data: bytes) -> dict[str, Any]:
        relative = part_path(part, number)
        path = self._absolute(relative)
        files.make_directory(os.path.dirname(path))
        files.write_file_atomically(path, data)
        return {"part": part, "path": relative, "bytes": len(data), "crc32": codec.crc32(data)}

    def _delete_old(self) -> None:
        """Delete every snapshot older than the newest `snapshots_kept`: manifests first, so that
        no manifest ever lists a file that is gone on purpose. Leftover temporary files go too."""
        numbers = sorted(self._manifest_numbers())
        oldest_kept = numbers[-constants.snapshots_kept :][0]
        metadata = self._absolute("metadata")
        for number in numbers:
            if number < oldest_kept:
                os.unlink(self._absolute(manifest_path(number)))
        files.fsync_directory(metadata)
        for directory in _DIRECTORIES:
            self._delete_data_files(self._absolute(directory), oldest_kept)

    def _delete_data_files(self, directory: str, oldest_kept: int) -> None:
        if not os.path.isdir(directory):
            return
        deleted = False
        for name in os.listdir(directory):
            if _is_old_data_file(directory, name, oldest_kept) or _TEMPORARY_NAME.match(name):
                os.unlink(os.path.join(directory, name))
                deleted = True
        if deleted:
            files.fsync_directory(directory)

    # -- Reading --------------------------------------------------------------------------------

    def _manifest_numbers(self) -> list[int]:
        metadata = self._absolute("metadata")
        if not os.path.isdir(metadata):
            return []
        matches = (_MANIFEST_NAME.match(name) for name in os.listdir(metadata))
        return [int(match.group(1)) for match in matches if match]

    def _load(self, number: int) -> tuple[SnapshotInfo, dict[str, bytes]]:
        path = self._absolute(manifest_path(number))
        manifest = _parse_manifest(self._read(path, "manifest"), number)
        parts = {}
        for entry in manifest["files"]:
            data = self._read(self._absolute(entry["path"]), f"part {entry['part']}")
            if len(data) != entry["bytes"]:
                raise _Damaged(f"{entry['path']} has {len(data)} bytes, not {entry['bytes']}")
            if codec.crc32(data) != entry["crc32"]:
                raise _Damaged(f"{entry['path']} does not match its CRC-32")
            parts[entry["part"]] = data
        return SnapshotInfo(number, manifest["index"], manifest["term"], path), parts

    def _read(self, path: str, what: str) -> bytes:
        try:
            return files.read_file(path)
        except OSError as error:
            raise _Damaged(f"cannot read the {what} at {path}: {error}") from error

    def _absolute(self, relative: str) -> str:
        return os.path.join(self._data_dir, *relative.split("/"))


def _is_old_data_file(directory: str, name: str, oldest_kept: int) -> bool:
    """Only names this module would have given (so that nothing else is ever deleted)."""
    match = _DATA_NAME.match(name)
    if match is None or match.group(1) == "snapshot":
        return False
    number = int(match.group(2))
    if not 1 <= number < oldest_kept:
        return False
    parts = {match.group(1), "vectors"} if match.group(1) == "vec" else {match.group(1)}
    relative = f"{os.path.basename(directory)}/{name}"
    return any(part_path(part, number) == relative for part in parts)


def _parse_manifest(data: bytes, number: int) -> dict[str, Any]:
    """The manifest as a checked dict; anything unexpected makes the snapshot damaged."""
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, ValueError) as error:
        raise _Damaged(f"the manifest is not JSON: {error}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise _Damaged("the manifest is not an object with a list of files")
    if manifest.get("number") != number or not _is_count(manifest.get("number")):
        raise _Damaged(f"the manifest names number {manifest.get('number')!r}, not {number}")
    if not (_is_count(manifest.get("index")) and _is_count(manifest.get("term"))):
        raise _Damaged("the manifest's index or term is not a non-negative integer")
    parts = [_check_entry(entry, number) for entry in manifest["files"]]
    if len(set(parts)) != len(parts) or not parts:
        raise _Damaged("the manifest lists no part or one part twice")
    return manifest


def _check_entry(entry: Any, number: int) -> str:
    if not isinstance(entry, dict):
        raise _Damaged("a manifest file entry is not an object")
    part = entry.get("part")
    if not isinstance(part, str) or not _PART_NAME.match(part) or part == "snapshot":
        raise _Damaged(f"bad part name {part!r}")
    if entry.get("path") != part_path(part, number):
        raise _Damaged(f"part {part} has path {entry.get('path')!r}, not {part_path(part, number)}")
    if not (_is_count(entry.get("bytes")) and _is_count(entry.get("crc32"))):
        raise _Damaged(f"part {part} has a bad size or CRC-32")
    return part


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0
