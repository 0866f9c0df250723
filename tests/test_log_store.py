"""The segmented log on real files: round trips, rolling, truncation, group commit, and crash
recovery (every torn tail is cut and reported; every other damage is an error naming file and
offset)."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from memora.core import codec
from memora.net import log_store
from memora.net.log_store import LogCorruptionError, LogFailedError, LogStore

# Small segments so that a few records roll; each record below is 16 + 40 = 56 bytes framed.
SEGMENT_BYTES = 200
FRAME_BYTES = 16 + 40


def payload(index: int) -> bytes:
    return f"payload of record {index:08d}".encode().ljust(40, b".")


def write_log(directory: Path, first: int, last: int, **options: int) -> None:
    log, _ = LogStore.open(str(directory), **options)
    for index in range(first, last + 1):
        log.append(index, payload(index))
    log.close()


def reopen(directory: Path, **options: int) -> tuple[LogStore, log_store.RecoveryReport]:
    return LogStore.open(str(directory), **options)


def contents(log: LogStore) -> list[tuple[int, bytes]]:
    first = log.first_index
    return [] if first is None else list(log.read(first))


def expected(first: int, last: int) -> list[tuple[int, bytes]]:
    return [(index, payload(index)) for index in range(first, last + 1)]


def segment_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".seg"))


# -- Round trips ------------------------------------------------------------------------------


def test_append_sync_reopen_round_trip(tmp_path: Path) -> None:
    log, report = reopen(tmp_path / "raft")
    assert (report.records, report.first_index, report.last_index) == (0, None, None)
    assert log.first_index is None and log.last_index is None and log.durable_index is None
    for index in range(1, 51):
        log.append(index, payload(index))
    assert log.durable_index is None
    log.sync_through(10)
    assert log.durable_index is not None and log.durable_index >= 10
    log.sync()
    assert log.durable_index == 50
    assert list(log.read(20)) == expected(20, 50)
    assert list(log.read(51)) == []
    log.close()
    log, report = reopen(tmp_path / "raft")
    assert report == log_store.RecoveryReport(50, 1, 50)
    assert contents(log) == expected(1, 50)
    assert log.durable_index == 50


def test_log_may_start_after_a_snapshot(tmp_path: Path) -> None:
    write_log(tmp_path, 101, 110)
    log, report = reopen(tmp_path)
    assert (report.first_index, report.last_index) == (101, 110)
    assert contents(log) == expected(101, 110)
    with pytest.raises(AssertionError):
        log.append(112, b"gap")
    with pytest.raises(AssertionError):
        list(log.read(100))


def test_read_sees_records_not_yet_written(tmp_path: Path) -> None:
    log, _ = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    for index in range(1, 6):
        log.append(index, payload(index))
    log.sync_through(3)
    for index in range(6, 10):
        log.append(index, payload(index))
    assert list(log.read(2)) == expected(2, 9)
    log.close()


def test_segments_roll_when_full(tmp_path: Path) -> None:
    write_log(tmp_path, 1, 20, segment_bytes_max=SEGMENT_BYTES)
    names = segment_files(tmp_path)
    assert names[:2] == ["log-000001.seg", "log-000002.seg"]
    assert len(names) == 7  # Three 56-byte records fit in 200 bytes.
    assert all(os.path.getsize(tmp_path / name) <= SEGMENT_BYTES for name in names)
    log, report = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    assert report.records == 20 and report.truncated_path is None
    assert contents(log) == expected(1, 20)
    assert list(log.read(8)) == expected(8, 20)


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    log, _ = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    log.append(1, payload(1))
    log.append(2, b"x" * 500)
    log.append(3, payload(3))
    log.close()
    sizes = [os.path.getsize(tmp_path / name) for name in segment_files(tmp_path)]
    assert sizes == [FRAME_BYTES, 516, FRAME_BYTES]
    log, _ = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    assert [index for index, _ in contents(log)] == [1, 2, 3]


# -- Truncation -------------------------------------------------------------------------------


def test_truncate_prefix_deletes_whole_segments_only(tmp_path: Path) -> None:
    write_log(tmp_path, 1, 20, segment_bytes_max=SEGMENT_BYTES)
    log, _ = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    log.truncate_prefix(7)  # Segments hold 1-3, 4-6, 7-9, ...: the third keeps 8 and 9.
    assert segment_files(tmp_path)[0] == "log-000003.seg"
    assert log.first_index == 7
    assert contents(log) == expected(7, 20)
    log.truncate_prefix(20)  # The segment with the last record stays.
    assert segment_files(tmp_path) == ["log-000007.seg"]
    assert contents(log) == expected(19, 20)
    log.append(21, payload(21))
    log.close()
    log, report = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    assert (report.first_index, report.last_index) == (19, 21)
    assert contents(log) == expected(19, 21)


@pytest.mark.parametrize("after_index", [20, 19, 13, 12, 9, 1])
def test_truncate_suffix_is_durable_and_appending_continues(
    tmp_path: Path, after_index: int
) -> None:
    write_log(tmp_path, 1, 20, segment_bytes_max=SEGMENT_BYTES)
    log, _ = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    log.truncate_suffix(after_index)
    assert log.last_index == after_index and log.durable_index == after_index
    assert contents(log) == expected(1, after_index)
    log.append(after_index + 1, b"new")
    log.sync()
    log.close()
    log, report = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    assert report.truncated_path is None
    assert contents(log) == [*expected(1, after_index), (after_index + 1, b"new")]


def test_truncate_suffix_of_records_not_yet_written(tmp_path: Path) -> None:
    log, _ = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    for index in range(1, 11):
        log.append(index, payload(index))
    log.sync_through(4)
    log.truncate_suffix(6)
    assert log.durable_index == 6
    log.append(7, b"seven")
    log.close()
    log, _ = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    assert contents(log) == [*expected(1, 6), (7, b"seven")]


def test_truncate_suffix_of_everything_empties_the_log(tmp_path: Path) -> None:
    write_log(tmp_path, 5, 12, segment_bytes_max=SEGMENT_BYTES)
    log, _ = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    log.truncate_suffix(4)
    assert log.first_index is None and log.last_index is None and log.durable_index is None
    assert segment_files(tmp_path) == []
    log.append(40, b"after a snapshot")
    log.close()
    log, report = reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    assert (report.first_index, report.last_index) == (40, 40)


# -- Group commit -----------------------------------------------------------------------------


def test_group_commit_batches_fsyncs_and_never_returns_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads_count, records_per_thread = 8, 25
    synced_bytes = [0]
    guard = threading.Lock()
    real_fdatasync = os.fdatasync

    def slow_fdatasync(descriptor: int) -> None:
        size = os.fstat(descriptor).st_size
        time.sleep(0.002)  # Slow disks make batching certain rather than likely.
        real_fdatasync(descriptor)
        with guard:
            synced_bytes[0] = max(synced_bytes[0], size)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    log, _ = reopen(tmp_path)
    append_lock = threading.Lock()  # The caller (Raft) assigns indexes, one at a time.
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(records_per_thread):
                with append_lock:
                    index = (log.last_index or 0) + 1
                    log.append(index, payload(index))
                log.sync_through(index)
                with guard:
                    assert synced_bytes[0] >= index * FRAME_BYTES, (index, synced_bytes[0])
                durable = log.durable_index
                assert durable is not None and durable >= index
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    records = threads_count * records_per_thread
    stats = log.stats
    assert stats.records_appended == records
    assert stats.bytes_written == records * FRAME_BYTES
    assert stats.fsyncs < records / 2, stats
    log.close()
    log, report = reopen(tmp_path)
    assert report.records == records
    assert contents(log) == expected(1, records)


def test_a_failed_fsync_fails_the_log_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _ = reopen(tmp_path)
    log.append(1, b"one")

    def failing_fdatasync(descriptor: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(OSError):
        log.sync_through(1)
    monkeypatch.undo()
    with pytest.raises(LogFailedError):
        log.sync_through(1)
    with pytest.raises(LogFailedError):
        log.append(2, b"two")
    log.close()


# -- Crash recovery ---------------------------------------------------------------------------

RECORDS = 5


def single_segment_log(directory: Path) -> tuple[Path, bytes]:
    write_log(directory, 1, RECORDS)
    path = directory / "log-000001.seg"
    data = path.read_bytes()
    assert len(data) == RECORDS * FRAME_BYTES
    return path, data


def assert_recovers_all_but_last(
    directory: Path,
    path: Path,
    truncated_bytes: int,
    last_start: int = (RECORDS - 1) * FRAME_BYTES,
    **options: int,
) -> None:
    """Recovery keeps records 1..N-1, reports the cut, and the log goes on working."""
    log, report = reopen(directory, **options)
    assert report.records == RECORDS - 1
    assert (report.first_index, report.last_index) == (1, RECORDS - 1)
    if truncated_bytes:
        assert report.truncated_path == str(path)
        assert report.truncated_offset == last_start
        assert report.truncated_bytes == truncated_bytes
        assert report.reason
    assert path.stat().st_size == last_start
    assert contents(log) == expected(1, RECORDS - 1)
    log.append(RECORDS, b"again")
    log.close()
    log, report = reopen(directory, **options)
    assert report.truncated_path is None
    assert contents(log) == [*expected(1, RECORDS - 1), (RECORDS, b"again")]
    log.close()


def test_every_torn_tail_inside_the_last_record_is_cut(tmp_path: Path) -> None:
    path, data = single_segment_log(tmp_path)
    last_start = (RECORDS - 1) * FRAME_BYTES
    for cut in range(last_start, len(data)):
        path.write_bytes(data[:cut])
        assert_recovers_all_but_last(tmp_path, path, cut - last_start)


def test_every_flipped_byte_in_the_last_record_is_cut(tmp_path: Path) -> None:
    path, data = single_segment_log(tmp_path)
    last_start = (RECORDS - 1) * FRAME_BYTES
    for position in range(last_start, len(data)):
        for pattern in (0x01, 0x80, 0x5A, 0xFF):
            damaged = bytearray(data)
            damaged[position] ^= pattern
            path.write_bytes(bytes(damaged))
            assert_recovers_all_but_last(tmp_path, path, FRAME_BYTES)


@pytest.mark.parametrize("tail", [b"\0" * 4096, b"\0" * 3, random.Random(7).randbytes(3000)])
def test_zeros_or_garbage_after_the_last_record_are_cut(tmp_path: Path, tail: bytes) -> None:
    path, data = single_segment_log(tmp_path)
    path.write_bytes(data + tail)
    log, report = reopen(tmp_path)
    assert report.records == RECORDS
    assert (report.truncated_path, report.truncated_offset) == (str(path), len(data))
    assert report.truncated_bytes == len(tail)
    assert contents(log) == expected(1, RECORDS)


def test_a_zeroed_last_record_is_cut(tmp_path: Path) -> None:
    path, data = single_segment_log(tmp_path)
    path.write_bytes(data[:-FRAME_BYTES] + b"\0" * FRAME_BYTES)
    assert_recovers_all_but_last(tmp_path, path, FRAME_BYTES)


def test_the_torn_tail_of_the_last_of_several_segments_is_cut(tmp_path: Path) -> None:
    # Records 4 and 5 sit in the second segment; cut inside record 5.
    write_log(tmp_path, 1, RECORDS, segment_bytes_max=SEGMENT_BYTES)
    path = tmp_path / "log-000002.seg"
    data = path.read_bytes()
    for cut in range(FRAME_BYTES, len(data)):
        path.write_bytes(data[:cut])
        assert_recovers_all_but_last(
            tmp_path, path, cut - FRAME_BYTES, FRAME_BYTES, segment_bytes_max=SEGMENT_BYTES
        )


def test_every_flipped_byte_in_a_middle_record_is_an_error(tmp_path: Path) -> None:
    path, data = single_segment_log(tmp_path)
    middle_start = 2 * FRAME_BYTES
    for position in range(middle_start, middle_start + FRAME_BYTES):
        for pattern in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[position] ^= pattern
            path.write_bytes(bytes(damaged))
            with pytest.raises(LogCorruptionError) as caught:
                reopen(tmp_path)
            assert (caught.value.path, caught.value.offset) == (str(path), middle_start)
            assert str(path) in str(caught.value) and str(middle_start) in str(caught.value)
    # Nothing was cut: the damage is still there for a person to look at.
    assert path.read_bytes() == bytes(damaged)


def test_a_zeroed_middle_record_is_an_error(tmp_path: Path) -> None:
    path, data = single_segment_log(tmp_path)
    start = FRAME_BYTES
    path.write_bytes(data[:start] + b"\0" * FRAME_BYTES + data[start + FRAME_BYTES :])
    with pytest.raises(LogCorruptionError) as caught:
        reopen(tmp_path)
    assert (caught.value.path, caught.value.offset) == (str(path), start)


@pytest.mark.parametrize("damage", ["flip", "tear"])
def test_a_bad_frame_in_a_segment_that_is_not_the_last_is_an_error(
    tmp_path: Path, damage: str
) -> None:
    write_log(tmp_path, 1, 9, segment_bytes_max=SEGMENT_BYTES)
    path = tmp_path / "log-000002.seg"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF
    else:
        del data[-3:]
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorruptionError) as caught:
        reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    assert (caught.value.path, caught.value.offset) == (str(path), 2 * FRAME_BYTES)


def test_a_valid_frame_with_the_wrong_index_is_an_error(tmp_path: Path) -> None:
    path, data = single_segment_log(tmp_path)
    intruder = codec.frame((RECORDS + 2).to_bytes(8, "little") + b"skipped one")
    path.write_bytes(data + intruder)
    with pytest.raises(LogCorruptionError) as caught:
        reopen(tmp_path)
    assert (caught.value.path, caught.value.offset) == (str(path), len(data))


def test_a_gap_between_segments_is_an_error(tmp_path: Path) -> None:
    write_log(tmp_path, 1, 9, segment_bytes_max=SEGMENT_BYTES)
    os.unlink(tmp_path / "log-000002.seg")
    with pytest.raises(LogCorruptionError) as caught:
        reopen(tmp_path, segment_bytes_max=SEGMENT_BYTES)
    assert (caught.value.path, caught.value.offset) == (str(tmp_path / "log-000003.seg"), 0)


def test_empty_trailing_segments_are_fine(tmp_path: Path) -> None:
    write_log(tmp_path, 1, RECORDS)
    (tmp_path / "log-000002.seg").write_bytes(b"")
    (tmp_path / "log-000003.seg").write_bytes(b"")
    log, report = reopen(tmp_path)
    assert report == log_store.RecoveryReport(RECORDS, 1, RECORDS)
    log.append(RECORDS + 1, b"next")
    log.close()
    assert os.path.getsize(tmp_path / "log-000003.seg") > 0
    log, _ = reopen(tmp_path)
    assert contents(log) == [*expected(1, RECORDS), (RECORDS + 1, b"next")]


def test_a_torn_tail_followed_only_by_empty_segments_is_cut(tmp_path: Path) -> None:
    path, data = single_segment_log(tmp_path)
    path.write_bytes(data[:-7])
    (tmp_path / "log-000002.seg").write_bytes(b"")
    assert_recovers_all_but_last(tmp_path, path, FRAME_BYTES - 7)


def test_a_torn_only_record_leaves_an_empty_log(tmp_path: Path) -> None:
    write_log(tmp_path, 30, 30)
    path = tmp_path / "log-000001.seg"
    data = path.read_bytes()
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        log, report = reopen(tmp_path)
        assert (report.records, report.first_index, report.truncated_offset) == (0, None, 0)
        assert report.truncated_bytes == cut
        log.append(31, b"first after a snapshot at 30")
        log.close()
        log, report = reopen(tmp_path)
        assert contents(log) == [(31, b"first after a snapshot at 30")]
        log.close()
        path.write_bytes(data)


def test_a_bad_first_record_followed_by_good_ones_is_an_error(tmp_path: Path) -> None:
    path, data = single_segment_log(tmp_path)
    path.write_bytes(b"\xff" * 5 + data[5:])
    with pytest.raises(LogCorruptionError) as caught:
        reopen(tmp_path)
    assert (caught.value.path, caught.value.offset) == (str(path), 0)
