"""The Raft log on real disk: an append-only, segmented file log of opaque records.

What lives here: the segment files `log-000001.seg`, `log-000002.seg`, ... in one directory, each a
sequence of frames `codec.frame(struct '<Q' index + payload)`; recovery at start-up (a torn tail is
cut and reported, corruption anywhere else is a `LogCorruptionError`); group commit (many threads
call `sync_through`, one of them writes and fsyncs everything appended so far for all of them).
What must not: decode payloads (they are opaque bytes), or decide anything Raft decides. Indexes
are contiguous within the log but need not start at 1: a log after a snapshot starts after it.

Threads: every public method may be called from any thread. One lock guards the in-memory state;
the thread doing the group write releases it during the write and the fsync so that others keep
appending into the next batch. Segment descriptors are only touched by the thread that holds the
write role (`_writing`) or by an exclusive operation that waited for it to be free.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import os
import re
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Final

import attrs
import numpy as np

from memora.core import codec, constants
from memora.net import files

_INDEX: Final = struct.Struct("<Q")
_SEGMENT_NAME: Final = re.compile(r"^log-(\d{6,})\.seg$")
# The smallest frame that can hold a record: a header and an index with an empty payload.
_record_frame_bytes_min: Final = constants.frame_header_bytes + _INDEX.size
# Bytes scanned at a time when looking for a valid record after a bad frame (bounds memory).
_index_max: Final = 2**64 - 1


class LogCorruptionError(Exception):
    """A log file holds damage that is not a torn tail: records after it would be lost."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"corrupt log record in {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class LogFailedError(Exception):
    """An earlier write or fsync failed: nothing more can be trusted, so the node must restart."""


@attrs.frozen
class RecoveryReport:
    """What `LogStore.open` found, and what it cut, for the caller to log."""

    records: int
    first_index: int | None
    last_index: int | None
    truncated_path: str | None = None
    truncated_offset: int | None = None
    truncated_bytes: int = 0
    reason: str | None = None


@attrs.frozen
class LogStats:
    fsyncs: int
    records_appended: int
    bytes_written: int


@attrs.define(eq=False)
class _Segment:
    number: int
    path: str
    first_index: int | None  # None while the segment holds no record.
    offsets: array.array[int]  # Start of each record's frame, pending records included.
    size_bytes: int  # The file's size once every pending record is written.
    written_bytes: int  # Bytes already handed to the OS (always at a record boundary).
    on_disk: bool  # A segment that appends rolled to is created by its first write.
    descriptor: int | None = None

    @property
    def last_index(self) -> int | None:
        if self.first_index is None:
            return None
        return self.first_index + len(self.offsets) - 1


@attrs.frozen(eq=False)
class _Record:
    segment: _Segment
    index: int
    payload: bytes
    frame: bytes


@attrs.frozen
class _SegmentScan:
    offsets: array.array[int]
    first_index: int | None
    last_index: int | None
    bad_offset: int | None = None
    bad_reason: str | None = None


def segment_file_name(number: int) -> str:
    assert number >= 1, number
    return f"log-{number:06d}.seg"


class LogStore:
    """Open with `LogStore.open`; see the module docstring for the rules."""

    def __init__(
        self,
        directory: str,
        segments: list[_Segment],
        next_segment_number: int,
        segment_bytes_max: int,
    ) -> None:
        assert segment_bytes_max >= _record_frame_bytes_min, segment_bytes_max
        self._directory = directory
        self._segment_bytes_max = segment_bytes_max
        self._segments = segments
        self._next_segment_number = next_segment_number
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: list[_Record] = []  # Appended, not yet taken by a writer.
        self._in_flight: list[_Record] = []  # Taken by the writer, being written and fsynced.
        self._writing = False
        self._failure: BaseException | None = None
        self._closed = False
        indexes = [s.first_index for s in segments if s.first_index is not None]
        self._first_index: int | None = indexes[0] if indexes else None
        lasts = [s.last_index for s in segments if s.last_index is not None]
        self._last_index: int | None = lasts[-1] if lasts else None
        self._durable_index = self._last_index  # `open` fsynced everything it found.
        self._fsyncs = 0
        self._records_appended = 0
        self._bytes_written = 0

    # -- Opening and recovery -----------------------------------------------------------------

    @classmethod
    def open(
        cls, directory: str, *, segment_bytes_max: int = constants.log_segment_bytes_max
    ) -> tuple[LogStore, RecoveryReport]:
        """Open (creating if missing) the log in `directory`, recovering it as the rules say."""
        files.make_directory(directory)
        numbered = _segment_paths(directory)
        segments, report = _recover(numbered)
        files.fsync_directory(directory)
        next_number = numbered[-1][0] + 1 if numbered else 1
        return cls(directory, segments, next_number, segment_bytes_max), report

    # -- Appending and group commit -------------------------------------------------------------

    def append(self, index: int, payload: bytes) -> None:
        """Buffer one record; it is durable only once `sync_through(index)` has returned."""
        assert index >= 1, index
        frame = codec.frame(_INDEX.pack(index) + payload)
        with self._lock:
            self._check_usable()
            assert self._last_index is None or index == self._last_index + 1, (
                index,
                self._last_index,
            )
            segment = self._segment_for(len(frame))
            if segment.first_index is None:
                segment.first_index = index
            segment.offsets.append(segment.size_bytes)
            segment.size_bytes += len(frame)
            self._pending.append(_Record(segment, index, payload, frame))
            if self._first_index is None:
                self._first_index = index
            self._last_index = index
            self._records_appended += 1

    def sync_through(self, index: int) -> None:
        """Return once every record up to `index` is fsynced (group commit, never skipped).

        If no write is under way, this thread becomes the writer for everything appended so far;
        otherwise it waits for the write under way, which may already cover `index`, and checks
        again.
        """
        with self._lock:
            assert self._last_index is not None and index <= self._last_index, (
                index,
                self._last_index,
            )
            while not self._is_durable(index):
                self._check_usable()
                if self._writing:
                    self._changed.wait()
                else:
                    self._write_pending_locked()

    def sync(self) -> None:
        """Make everything appended so far durable."""
        with self._lock:
            last_index = self._last_index
        if last_index is not None:
            self.sync_through(last_index)

    def _is_durable(self, index: int) -> bool:
        return self._durable_index is not None and self._durable_index >= index

    def _segment_for(self, frame_bytes: int) -> _Segment:
        """The segment the next frame goes to, rolling to a new one when the active one is full."""
        if self._segments:
            active = self._segments[-1]
            if active.size_bytes == 0 or active.size_bytes + frame_bytes <= self._segment_bytes_max:
                return active
        number = self._next_segment_number
        self._next_segment_number += 1
        path = os.path.join(self._directory, segment_file_name(number))
        segment = _Segment(number, path, None, array.array("Q"), 0, 0, on_disk=False)
        self._segments.append(segment)
        return segment

    def _write_pending_locked(self) -> None:
        """Take the write role and write+fsync every pending record. Called with the lock held;
        releases it during the I/O so that others can append into the next batch."""
        assert not self._writing and self._pending
        batch, self._pending = self._pending, []
        self._in_flight = batch
        self._writing = True
        error: BaseException | None = None
        self._lock.release()
        try:
            fsyncs, bytes_written = self._write_and_sync(batch)
        except BaseException as caught:
            error = caught
            raise
        finally:
            self._lock.acquire()
            self._writing = False
            self._in_flight = []
            self._changed.notify_all()
            if error is not None:
                self._failure = error
        self._finish_write(batch, fsyncs, bytes_written)

    def _write_and_sync(self, batch: list[_Record]) -> tuple[int, int]:
        """Write the batch segment by segment, fsyncing each before the next one is created, so
        that a later segment never exists on disk while an earlier one has a torn tail."""
        created = False
        fsyncs = 0
        bytes_written = 0
        for segment, records in _group_by_segment(batch):
            created |= not segment.on_disk
            descriptor = self._descriptor(segment)
            data = b"".join(record.frame for record in records)
            files.write_all(descriptor, data)
            os.fdatasync(descriptor)
            fsyncs += 1
            bytes_written += len(data)
        if created:
            files.fsync_directory(self._directory)
            fsyncs += 1
        return fsyncs, bytes_written

    def _finish_write(self, batch: list[_Record], fsyncs: int, bytes_written: int) -> None:
        """Publish a finished write (lock held): the batch is durable and readable from disk."""
        for record in batch:
            record.segment.written_bytes = record.segment.offsets[
                record.index - _first(record.segment)
            ] + len(record.frame)
        self._durable_index = batch[-1].index
        self._fsyncs += fsyncs
        self._bytes_written += bytes_written
        for segment in self._segments[:-1]:
            self._close_descriptor(segment)

    def _descriptor(self, segment: _Segment) -> int:
        if segment.descriptor is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            segment.descriptor = os.open(segment.path, flags, 0o644)
            segment.on_disk = True
        return segment.descriptor

    def _close_descriptor(self, segment: _Segment) -> None:
        if segment.descriptor is not None:
            os.close(segment.descriptor)
            segment.descriptor = None

    def _check_usable(self) -> None:
        assert not self._closed, "the log is closed"
        if self._failure is not None:
            raise LogFailedError(f"an earlier log write failed: {self._failure}") from self._failure

    # -- Reading --------------------------------------------------------------------------------

    def read(self, first_index: int) -> Iterator[tuple[int, bytes]]:
        """(index, payload) for every record from `first_index` to the last one appended when
        `read` was called. The caller must not truncate that range while it iterates."""
        with self._lock:
            self._check_usable()
            if self._last_index is None or first_index > self._last_index:
                return iter(())
            assert self._first_index is not None and first_index >= self._first_index, (
                first_index,
                self._first_index,
            )
            plan = [span for s in self._segments if (span := _disk_span(s, first_index))]
            memory = [
                (record.index, record.payload)
                for record in self._in_flight + self._pending
                if record.index >= first_index
            ]
        return _iterate(plan, memory)

    @property
    def first_index(self) -> int | None:
        with self._lock:
            return self._first_index

    @property
    def last_index(self) -> int | None:
        with self._lock:
            return self._last_index

    @property
    def durable_index(self) -> int | None:
        with self._lock:
            return self._durable_index

    @property
    def stats(self) -> LogStats:
        with self._lock:
            return LogStats(self._fsyncs, self._records_appended, self._bytes_written)

    # -- Truncation and closing -----------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the lock with nothing pending and no write under way (for rare operations)."""
        with self._lock:
            while self._writing or self._pending:
                self._check_usable()
                if self._writing:
                    self._changed.wait()
                else:
                    self._write_pending_locked()
            self._check_usable()
            yield

    def truncate_prefix(self, through_index: int) -> None:
        """Delete whole segment files whose records are all <= `through_index` (after a snapshot).

        The segment holding the last record is never deleted, so a non-empty log stays non-empty
        and `first_index` may stay below `through_index + 1`. Oldest files go first, so a crash
        leaves a contiguous log.
        """
        with self._exclusive():
            if self._last_index is None:
                return
            removable = []
            for segment in self._segments:
                last = segment.last_index
                if (last is not None and last > through_index) or last == self._last_index:
                    break
                removable.append(segment)
            for segment in removable:
                self._delete_segment(segment)
            if removable:
                files.fsync_directory(self._directory)
                self._fsyncs += 1
            del self._segments[: len(removable)]
            self._first_index = next(
                s.first_index for s in self._segments if s.first_index is not None
            )

    def truncate_suffix(self, after_index: int) -> None:
        """Drop every record > `after_index`, durably, before returning.

        Later segment files go first (newest first), then the boundary file is cut, so a crash
        midway leaves a contiguous log that is merely longer than asked.
        """
        assert after_index >= 0, after_index
        with self._exclusive():
            if self._last_index is None or after_index >= self._last_index:
                return
            deleted = False
            while self._segments and _starts_after(self._segments[-1], after_index):
                self._delete_segment(self._segments.pop())
                deleted = True
            if deleted:
                files.fsync_directory(self._directory)
                self._fsyncs += 1
            if self._segments:
                self._cut_segment(self._segments[-1], after_index)
                self._last_index = after_index
            else:
                self._first_index = self._last_index = None
            if self._durable_index is not None and self._last_index is not None:
                self._durable_index = min(self._durable_index, self._last_index)
            else:
                self._durable_index = None

    def _cut_segment(self, segment: _Segment, after_index: int) -> None:
        kept = after_index - _first(segment) + 1
        assert 1 <= kept <= len(segment.offsets), (kept, len(segment.offsets))
        if kept == len(segment.offsets):
            return
        cut = segment.offsets[kept]
        descriptor = self._descriptor(segment)
        os.ftruncate(descriptor, cut)
        os.fsync(descriptor)
        self._fsyncs += 1
        del segment.offsets[kept:]
        segment.size_bytes = segment.written_bytes = cut

    def _delete_segment(self, segment: _Segment) -> None:
        self._close_descriptor(segment)
        if segment.on_disk:
            os.unlink(segment.path)

    def close(self) -> None:
        """Sync everything appended, then release the files. Closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            failed = self._failure is not None
        if not failed:
            self.sync()
        with self._lock:
            while self._writing:
                self._changed.wait()
            for segment in self._segments:
                self._close_descriptor(segment)
            self._closed = True


# -- Helpers for the store ------------------------------------------------------------------------


def _starts_after(segment: _Segment, index: int) -> bool:
    return segment.first_index is None or segment.first_index > index


def _first(segment: _Segment) -> int:
    assert segment.first_index is not None
    return segment.first_index


def _group_by_segment(batch: list[_Record]) -> Iterator[tuple[_Segment, list[_Record]]]:
    group: list[_Record] = []
    for record in batch:
        if group and group[-1].segment is not record.segment:
            yield group[0].segment, group
            group = []
        group.append(record)
    if group:
        yield group[0].segment, group


def _disk_span(segment: _Segment, first_index: int) -> tuple[str, int, int, int] | None:
    """(path, start offset, end offset, first index) of the written records >= `first_index`."""
    if segment.first_index is None:
        return None
    written = bisect.bisect_left(segment.offsets, segment.written_bytes)
    last_written = segment.first_index + written - 1
    if written == 0 or last_written < first_index:
        return None
    start_index = max(first_index, segment.first_index)
    start = segment.offsets[start_index - segment.first_index]
    return segment.path, start, segment.written_bytes, start_index


def _iterate(
    plan: list[tuple[str, int, int, int]], memory: list[tuple[int, bytes]]
) -> Iterator[tuple[int, bytes]]:
    for path, start, end, first_index in plan:
        yield from _read_span(path, start, end, first_index)
    yield from memory


def _read_span(path: str, start: int, end: int, index: int) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as file:
        file.seek(start)
        offset = start
        while offset < end:
            header = file.read(constants.frame_header_bytes)
            length = struct.unpack_from("<I", header)[0] if len(header) == 8 else 0
            body = file.read(min(length, end - offset))
            read = codec.read_frame(header + body, 0)
            reason = _bad_frame_reason(read)
            if reason is not None:
                raise LogCorruptionError(path, offset, reason)
            _check_index(path, offset, _INDEX.unpack_from(read.body)[0], index)
            yield index, read.body[_INDEX.size :]
            index += 1
            offset += len(header) + len(body)


# -- Recovery ---------------------------------------------------------------------------------


def _segment_paths(directory: str) -> list[tuple[int, str]]:
    numbered = []
    for name in os.listdir(directory):
        match = _SEGMENT_NAME.match(name)
        if match and os.path.isfile(os.path.join(directory, name)):
            numbered.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(numbered)


def _recover(numbered: list[tuple[int, str]]) -> tuple[list[_Segment], RecoveryReport]:
    """Scan every segment in order, cut a torn tail, raise on any other damage."""
    segments: list[_Segment] = []
    previous: int | None = None  # The last good index so far.
    records = 0
    report: RecoveryReport | None = None
    for position, (number, path) in enumerate(numbered):
        buffer = files.read_file(path)
        scan = _scan_segment(path, buffer, previous)
        size = len(buffer)
        if scan.bad_offset is not None:
            assert scan.bad_reason is not None
            last_good = scan.last_index if scan.last_index is not None else previous
            _check_is_tail(path, buffer, scan.bad_offset, scan.bad_reason, last_good)
            _check_later_segments_empty(path, scan, numbered[position + 1 :])
            _cut_file(path, scan.bad_offset)
            size = scan.bad_offset
            report = RecoveryReport(
                0, None, None, path, scan.bad_offset, len(buffer) - size, scan.bad_reason
            )
        elif buffer:
            _fsync_file(path)
        segments.append(
            _Segment(number, path, scan.first_index, scan.offsets, size, size, on_disk=True)
        )
        previous = scan.last_index if scan.last_index is not None else previous
        records += len(scan.offsets)
    first = next((s.first_index for s in segments if s.first_index is not None), None)
    report = report or RecoveryReport(0, None, None)
    return segments, attrs.evolve(report, records=records, first_index=first, last_index=previous)


def _scan_segment(path: str, buffer: bytes, previous: int | None) -> _SegmentScan:
    """Every good record from the start of `buffer`, up to the first bad frame (if any)."""
    offsets: array.array[int] = array.array("Q")
    first: int | None = None
    last = previous
    offset = 0
    while offset < len(buffer):
        read = codec.read_frame(buffer, offset)
        reason = _bad_frame_reason(read)
        if reason is not None:
            return _SegmentScan(offsets, first, last if offsets else None, offset, reason)
        index = _INDEX.unpack_from(read.body)[0]
        _check_index(path, offset, index, None if last is None else last + 1)
        offsets.append(offset)
        first = index if first is None else first
        last = index
        offset = read.end
    return _SegmentScan(offsets, first, last if offsets else None)


def _bad_frame_reason(read: codec.FrameRead) -> str | None:
    if read.status is codec.FrameStatus.SHORT:
        return "torn frame: the file ends inside it"
    if read.status is codec.FrameStatus.TOO_LARGE:
        return "length field beyond the frame limit"
    if read.status is codec.FrameStatus.BAD_CRC:
        return "checksum mismatch"
    if len(read.body) < _INDEX.size:
        return "frame too small to hold a record index"
    return None


def _check_index(path: str, offset: int, index: int, expected: int | None) -> None:
    """A frame with a valid checksum but the wrong index is corruption, never a torn tail."""
    if expected is None and index < 1:
        raise LogCorruptionError(path, offset, f"record index {index} is below 1")
    if expected is not None and index != expected:
        raise LogCorruptionError(path, offset, f"record index {index} where {expected} belongs")


def _check_is_tail(
    path: str, buffer: bytes, bad_offset: int, reason: str, last_good: int | None
) -> None:
    """A bad frame is a torn tail only if no valid record starts anywhere after it.

    Looking only where the bad frame says it ends is not enough: a flipped bit in its length
    field would hide the good records behind it, and cutting them would lose durable data.
    """
    found = _find_record_after(buffer, bad_offset, last_good)
    if found is not None:
        raise LogCorruptionError(
            path, bad_offset, f"{reason}; a valid record follows at offset {found}"
        )


def _check_later_segments_empty(
    path: str, scan: _SegmentScan, later: list[tuple[int, str]]
) -> None:
    assert scan.bad_offset is not None
    for _, later_path in later:
        if os.path.getsize(later_path) > 0:
            raise LogCorruptionError(
                path, scan.bad_offset, f"{scan.bad_reason}; a later segment {later_path} has data"
            )


def _find_record_after(buffer: bytes, bad_offset: int, last_good: int | None) -> int | None:
    """The offset of a valid record frame starting after `bad_offset`, or None.

    Every byte position is a candidate. numpy filters them by a plausible length and index
    (an index after `last_good`, no larger than the records that could fit), and only the few
    that pass have their checksum verified.
    """
    remaining = len(buffer) - bad_offset
    index_low = 1 if last_good is None else last_good + 1
    index_high = _index_max
    if last_good is not None:
        index_high = min(_index_max, last_good + 1 + remaining // _record_frame_bytes_min)
    start = bad_offset + 1
    while start <= len(buffer) - _record_frame_bytes_min:
        stop = min(
            start + constants.log_recovery_scan_window_bytes,
            len(buffer) - _record_frame_bytes_min + 1,
        )
        for candidate in _candidates(buffer, start, stop, index_low, index_high):
            read = codec.read_frame(buffer, candidate)
            if _bad_frame_reason(read) is None:
                index = _INDEX.unpack_from(read.body)[0]
                if index_low <= index <= index_high:
                    return candidate
        start = stop
    return None


def _candidates(
    buffer: bytes, start: int, stop: int, index_low: int, index_high: int
) -> Iterable[int]:
    """Positions p in [start, stop) whose header length fits the buffer and whose index is in
    [index_low, index_high], in increasing order. Reads 8-byte words at each residue mod 8."""
    found: list[np.ndarray] = []
    for residue in range(8):
        base = start + residue
        if base >= stop:
            break
        count = (stop - 1 - base) // 8 + 1
        headers = np.frombuffer(buffer, dtype="<u8", count=count, offset=base)
        indexes = np.frombuffer(buffer, dtype="<u8", count=count, offset=base + 8)
        positions = base + 8 * np.arange(count, dtype=np.int64)
        lengths = (headers & np.uint64(0xFFFFFFFF)).astype(np.int64)
        fits = (lengths >= _INDEX.size) & (lengths <= len(buffer) - positions - 8)
        plausible = (indexes >= np.uint64(index_low)) & (indexes <= np.uint64(index_high))
        found.append(positions[fits & plausible])
    return (int(p) for p in np.sort(np.concatenate(found))) if found else ()


def _cut_file(path: str, offset: int) -> None:
    descriptor = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(descriptor, offset)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_file(path: str) -> None:
    """Records found at start-up may sit only in the page cache (the process, not the machine,
    crashed). They are reported durable, so make them so."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
