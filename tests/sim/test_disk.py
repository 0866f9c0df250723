"""SimDisk and SimStorage: round trips against MemoryStorage, crashes with pending writes, a seeded
property test under every disk fault, and determinism.

The property test drives a SimStorage and a MemoryStorage with the same random saves, compactions,
syncs and crashes. Entry data is a function of (index, term), as Log Matching makes it in Raft, so
an entry that comes back different from every entry saved at its index is corruption that got
through. A failure names the seed that reproduces it.
"""

from __future__ import annotations

from collections import Counter

import attrs
import pytest

from memora.core.errors import CodecError
from memora.core.prng import Prng
from memora.core.raft.storage import MemoryStorage
from memora.core.raft.types import (
    Configuration,
    EntryKind,
    HardState,
    LogEntry,
    Snapshot,
    SnapshotMeta,
    encode_value,
)
from memora.sim.disk import (
    FAULT_LOST_UNSYNCED_WRITE,
    FAULT_TORN_WRITE,
    LOG_REGION_OFFSETS,
    SECTOR_BYTES,
    DiskFaults,
    EntryCodec,
    RecoveryReport,
    ScanStop,
    SimDisk,
    SimStorage,
    _encode_record,
)

CONFIGURATION = Configuration(voters=(1, 2, 3))
BOOTSTRAP_ENTRY = MemoryStorage.bootstrap(CONFIGURATION).entries()[0]
ALL_FAULTS = DiskFaults(
    torn_write_probability=0.7,
    write_bitflip_probability=0.05,
    read_bitflip_probability=0.05,
    misdirect_probability=0.03,
)
PROPERTY_SEEDS = 300
OPERATIONS_PER_CASE = 60


def entry(index: int, term: int) -> LogEntry:
    """The one entry Raft could hold at (index, term); sizes from a few bytes to several sectors."""
    repeat = 1 + (index * 7 + term * 13) % 150
    return LogEntry(term, index, EntryKind.NORMAL, f"{index}:{term};".encode() * repeat)


def entries(first: int, last: int, term: int) -> list[LogEntry]:
    return [entry(index, term) for index in range(first, last + 1)]


def snapshot(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONFIGURATION), f"state {index}@{term}".encode() * 9)


def view(storage: SimStorage | MemoryStorage) -> tuple[object, ...]:
    return (*storage.initial_state(), storage.latest_snapshot())


def reopen(disk: SimDisk) -> SimStorage:
    disk.crash()
    return SimStorage.open(disk)


def is_clean(report: RecoveryReport) -> bool:
    return (
        report.scan_stop is ScanStop.END
        and not report.corruption_detected
        and report.lost_acknowledged is None
        and report.commit_clamped_from is None
    )


# -- SimDisk on its own ------------------------------------------------------------------------


def test_disk_reads_pending_writes_and_keeps_only_synced_ones_on_crash() -> None:
    disk = SimDisk(Prng(1))
    assert disk.read(1000, 10) == bytes(10)
    disk.write(1000, b"durable")
    disk.sync()
    disk.write(5000, b"written after the sync")
    disk.complete_sync()
    disk.write(9000, b"never synced")
    assert disk.read(1000, 7) == b"durable"
    assert disk.read(9000, 12) == b"never synced"
    disk.crash()
    assert disk.read(1000, 7) == b"durable"
    assert disk.read(5000, 7) == bytes(7)
    assert disk.read(9000, 12) == bytes(12)
    assert disk.faults_injected == Counter({FAULT_LOST_UNSYNCED_WRITE: 2})


def test_an_unaligned_write_keeps_the_rest_of_its_sectors() -> None:
    disk = SimDisk(Prng(1))
    disk.write(0, b"a" * 2 * SECTOR_BYTES)
    disk.write(SECTOR_BYTES - 3, b"bbbbbb")
    assert disk.read(0, 2 * SECTOR_BYTES) == b"a" * 509 + b"bbbbbb" + b"a" * 509


def test_a_torn_crash_lands_a_prefix_of_the_pending_writes() -> None:
    for seed in range(200):
        disk = SimDisk(Prng(seed), DiskFaults(torn_write_probability=1.0))
        for number in range(4):
            disk.write(number * 4 * SECTOR_BYTES, bytes([number + 1]) * 4 * SECTOR_BYTES)
        disk.crash()
        sectors = [disk.read(number * SECTOR_BYTES, SECTOR_BYTES)[0] for number in range(16)]
        landed = [sector != 0 for sector in sectors]
        assert landed == sorted(landed, reverse=True), (seed, sectors)  # A prefix, in order.


def test_faults_never_touch_a_redundant_region() -> None:
    faults = DiskFaults(1.0, 1.0, 1.0, 1.0)
    disk = SimDisk(Prng(7), faults)
    disk.register_redundant_copies([(0, SECTOR_BYTES), (4 * SECTOR_BYTES, SECTOR_BYTES)])
    disk.write(8 * SECTOR_BYTES, b"x" * 8 * SECTOR_BYTES)
    disk.write(0, b"A" * SECTOR_BYTES)
    disk.write(4 * SECTOR_BYTES, b"B" * SECTOR_BYTES)
    assert disk.read(0, SECTOR_BYTES) == b"A" * SECTOR_BYTES
    assert disk.read(4 * SECTOR_BYTES, SECTOR_BYTES) == b"B" * SECTOR_BYTES
    for _ in range(50):
        disk.write(8 * SECTOR_BYTES, b"y" * 4 * SECTOR_BYTES)
    assert disk.read(0, SECTOR_BYTES) == b"A" * SECTOR_BYTES
    assert disk.read(4 * SECTOR_BYTES, SECTOR_BYTES) == b"B" * SECTOR_BYTES
    assert disk.faults_injected["misdirected_write"] > 0
    assert disk.faults_injected["write_bitflip"] > 0


# -- Round trips -------------------------------------------------------------------------------


def scripted_steps() -> list[tuple[HardState | None, list[LogEntry], Snapshot | None] | Snapshot]:
    """Saves (hard state, entries, snapshot) and compactions (a bare Snapshot), in order."""
    return [
        (HardState(1, 1, 3), entries(2, 10, 1), None),
        (HardState(2, 2, 3), [], None),
        (HardState(2, 2, 6), entries(7, 9, 2), None),  # Truncates 7..10 of term 1.
        (None, entries(10, 14, 2), None),
        snapshot(6, 1),
        (HardState(2, 2, 12), [], None),
        snapshot(11, 2),
        (HardState(3, None, 20), entries(21, 23, 3), snapshot(20, 3)),
        (HardState(4, 1, 21), entries(22, 30, 4), None),  # Truncates 22..23 of term 3.
        (None, [], None),
        snapshot(25, 4),
        (HardState(4, 1, 30), entries(31, 31, 4), None),
        snapshot(31, 4),  # Compacts everything: the log is empty.
        (None, entries(32, 33, 4), None),
    ]


def apply_step(
    storage: SimStorage | MemoryStorage,
    step: tuple[HardState | None, list[LogEntry], Snapshot | None] | Snapshot,
) -> None:
    if isinstance(step, Snapshot):
        storage.compact(step)
    else:
        storage.save(*step)


def test_round_trip_without_faults_matches_memory_storage() -> None:
    disk = SimDisk(Prng(11))
    storage = SimStorage.bootstrap(disk, CONFIGURATION)
    model = MemoryStorage.bootstrap(CONFIGURATION)
    for step in scripted_steps():
        apply_step(storage, step)
        apply_step(model, step)
        assert view(storage) == view(model), step
        disk.complete_sync()
        storage = reopen(disk)
        assert view(storage) == view(model), step
        assert is_clean(storage.report), storage.report
    assert disk.faults_injected == Counter()


def test_round_trip_of_a_whole_script_at_once() -> None:
    disk = SimDisk(Prng(12))
    storage = SimStorage.bootstrap(disk, CONFIGURATION)
    model = MemoryStorage.bootstrap(CONFIGURATION)
    for step in scripted_steps():
        apply_step(storage, step)
        apply_step(model, step)
    disk.complete_sync()
    recovered = reopen(disk)
    assert view(recovered) == view(model)
    assert recovered.report.durable_last == (33, 4)
    assert recovered.report.entries_recovered == 2


def test_a_blank_disk_opens_as_a_joining_node() -> None:
    storage = SimStorage.empty(SimDisk(Prng(0)))
    assert view(storage) == view(MemoryStorage())
    assert storage.report.superblock_sequence == 0


def test_compaction_moves_the_log_to_the_other_region_and_back() -> None:
    disk = SimDisk(Prng(3))
    storage = SimStorage.bootstrap(disk, CONFIGURATION)
    storage.save(HardState(1, 1, 8), entries(2, 9, 1), None)
    assert disk.read(LOG_REGION_OFFSETS[1], 8) == bytes(8)
    storage.compact(snapshot(3, 1))
    assert disk.read(LOG_REGION_OFFSETS[1], 8) != bytes(8)  # The survivors moved over.
    first_record = disk.read(LOG_REGION_OFFSETS[0], SECTOR_BYTES)
    storage.compact(snapshot(5, 1))
    assert disk.read(LOG_REGION_OFFSETS[0], SECTOR_BYTES) != first_record  # And back.
    disk.complete_sync()
    recovered = reopen(disk)
    assert view(recovered) == view(storage) and is_clean(recovered.report)


# -- Crashes with pending writes, no corruption ---------------------------------------------------


def test_unsynced_saves_are_lost_whole() -> None:
    disk = SimDisk(Prng(5))
    storage = SimStorage.bootstrap(disk, CONFIGURATION)
    storage.save(HardState(1, 1, 4), entries(2, 8, 1), None)
    disk.complete_sync()
    durable = view(storage)
    storage.save(HardState(2, None, 4), entries(6, 12, 2), None)  # Synced, never completed.
    storage.save(None, entries(13, 15, 2), None)
    storage.compact(snapshot(10, 2))
    recovered = reopen(disk)
    assert view(recovered) == durable
    assert is_clean(recovered.report)


def test_a_crash_during_a_truncating_save_is_not_a_lost_acknowledgment() -> None:
    """A torn truncation leaves a prefix of the later log, not a loss: that save discarded the
    entries itself (a leader of a newer term replaced them)."""
    durable_log = [BOOTSTRAP_ENTRY, *entries(2, 10, 1)]
    later_log = [BOOTSTRAP_ENTRY, *entries(2, 4, 1), *entries(5, 12, 2)]
    stops: Counter[ScanStop] = Counter()
    for seed in range(100):
        disk = SimDisk(Prng(seed), DiskFaults(torn_write_probability=1.0))
        storage = SimStorage.bootstrap(disk, CONFIGURATION)
        storage.save(HardState(1, 1, 3), durable_log[1:], None)
        disk.complete_sync()
        storage.save(HardState(2, None, 3), later_log[4:], None)
        assert storage.entries() == later_log
        recovered = reopen(disk)
        report = recovered.report
        stops[report.scan_stop] += 1
        log = recovered.entries()
        assert report.lost_acknowledged is None and not report.corruption_detected, report
        assert len(log) >= 4, report
        assert log in (durable_log, later_log[: len(log)]), (seed, report)
    assert stops[ScanStop.LATER_SAVE] > 0 and stops[ScanStop.END] > 0, stops


def test_a_torn_superblock_pair_keeps_the_previous_copy() -> None:
    """Whatever prefix of (data, A, B) lands, the newest superblock whose data landed wins."""
    for seed in range(100):
        disk = SimDisk(Prng(seed), DiskFaults(torn_write_probability=1.0))
        storage = SimStorage.bootstrap(disk, CONFIGURATION)
        disk.complete_sync()
        storage.save(HardState(5, 2, 1), entries(2, 4, 5), None)
        recovered = reopen(disk)
        hard_state, _, _, log = recovered.initial_state()
        assert (hard_state.term, len(log)) in {(1, 1), (5, 4)}, (seed, hard_state, log)
        assert is_clean(recovered.report)


# -- Damage on the platter -------------------------------------------------------------------


def small(index: int, term: int) -> LogEntry:
    """An entry whose record fills exactly one sector, so entry i sits at sector i - 1."""
    return LogEntry(term, index, EntryKind.NORMAL, f"{index}:{term}".encode())


def record_offset(index: int, region: int = 0) -> int:
    return LOG_REGION_OFFSETS[region] + (index - 1) * SECTOR_BYTES


def rot(disk: SimDisk, offset: int) -> None:
    """Bit rot on the platter: one byte of a record's payload changes, durably."""
    byte = disk.read(offset + 40, 1)
    disk.write(offset + 40, bytes([byte[0] ^ 0x55]))
    disk.sync()
    disk.complete_sync()


def test_records_that_differ_only_in_their_header_have_different_checksums() -> None:
    """A header CRC inside the CRC'd payload would make these equal (CRC is linear)."""
    codec = EntryCodec()
    first, first_checksum = _encode_record(codec, small(5, 2), 1111, 7, 0)
    second, second_checksum = _encode_record(codec, small(5, 2), 2222, 8, 0)
    assert first != second and first_checksum != second_checksum


def test_the_entry_codec_answers_as_the_codec_does() -> None:
    """Remembered encodings and decodings are the codec's own; a body that does not decode is
    refused every time, never remembered as something else."""
    codec = EntryCodec()
    original = entry(9, 4)
    body = codec.encode(original)
    assert body == encode_value(original) and codec.encode(original) is body
    decoded = codec.decode(body)
    assert decoded == original and codec.decode(bytes(body)) is decoded
    damaged = b"\xff" + body[1:]
    for _ in range(2):
        with pytest.raises(CodecError):
            codec.decode(damaged)


def test_a_damaged_record_is_a_lost_acknowledgment_remembered_until_committed() -> None:
    disk = SimDisk(Prng(21))
    storage = SimStorage.bootstrap(disk, CONFIGURATION)
    storage.save(HardState(1, 1, 3), [small(index, 1) for index in range(2, 11)], None)
    disk.complete_sync()
    rot(disk, record_offset(6))
    storage = reopen(disk)
    report = storage.report
    assert report.scan_stop is ScanStop.BAD_CRC and report.corruption_detected
    assert report.lost_acknowledged == 10 and report.records_cut == 5
    assert [item.index for item in storage.entries()] == [1, 2, 3, 4, 5]
    assert storage.hard_state().commit == 3  # The record at the commit proves it.
    # The loss outlives superblocks that no longer name the lost entries.
    storage.save(HardState(1, 1, 4), [], None)
    disk.complete_sync()
    storage = reopen(disk)
    assert storage.report.scan_stop is ScanStop.END
    assert storage.report.inherited_recovering_to == storage.report.lost_acknowledged == 10
    # Until the commit index reaches it, as RaftNode leaves recovering mode then.
    storage.save(HardState(1, 1, 10), [small(index, 1) for index in range(6, 11)], None)
    assert storage.recovering_to is None
    disk.complete_sync()
    storage = reopen(disk)
    assert is_clean(storage.report) and storage.report.lost_acknowledged is None


def test_a_refill_after_a_loss_does_not_explain_the_loss() -> None:
    refills = 0
    for seed in range(60):
        disk = SimDisk(Prng(seed), DiskFaults(torn_write_probability=1.0))
        storage = SimStorage.bootstrap(disk, CONFIGURATION)
        storage.save(HardState(1, 1, 3), [small(index, 1) for index in range(2, 11)], None)
        disk.complete_sync()
        rot(disk, record_offset(6))
        storage = reopen(disk)
        storage.save(None, [small(index, 1) for index in range(6, 9)], None)  # Never completed.
        storage = reopen(disk)
        refills += storage.report.scan_stop is ScanStop.LATER_REFILL
        assert storage.report.lost_acknowledged == 10, (seed, storage.report)
    assert refills > 0


def test_a_stale_record_left_by_a_misdirected_rewrite_never_carries_the_commit() -> None:
    """The old version of a rewritten record chains fine from the start: only the superblock's
    checksum of the record at the commit index tells it apart."""
    saved = {small(index, 1) for index in range(2, 8)} | {small(4, 2), small(5, 2)}
    stale_kept = 0
    for seed in range(20):
        disk = SimDisk(Prng(seed))
        storage = SimStorage.bootstrap(disk, CONFIGURATION)
        storage.save(HardState(1, 1, 1), [small(index, 1) for index in range(2, 8)], None)
        disk.complete_sync()
        disk.faults = DiskFaults(misdirect_probability=1.0)
        storage.save(HardState(2, None, 1), [small(4, 2), small(5, 2)], None)  # Lands elsewhere.
        disk.faults = DiskFaults()
        storage.save(HardState(2, None, 5), [], None)
        disk.complete_sync()
        assert disk.faults_injected["misdirected_write"] == 1
        storage = reopen(disk)
        report = storage.report
        assert report.lost_acknowledged == 5 and report.corruption_detected, report
        assert storage.hard_state().commit == 0 and report.commit_clamped_from == 5, report
        assert all(item in saved for item in storage.entries()[1:]), report
        stale_kept += small(4, 1) in storage.entries()
    assert stale_kept > 0


# -- The property test -------------------------------------------------------------------------


@attrs.frozen
class Expected:
    """What a superblock stands for: the model's state right after the save that wrote it."""

    hard_state: HardState
    meta: SnapshotMeta
    entries: tuple[LogEntry, ...]
    snapshot: tuple[SnapshotMeta, bytes] | None
    recovering_to: int | None

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.meta.index


class Workload:
    """Random saves, compactions, syncs and crashes on one SimStorage, checked against a model."""

    def __init__(self, seed: int, faults: DiskFaults, corrupting: bool) -> None:
        self.seed = seed
        self.choices = Prng(seed)
        self.corrupting = corrupting
        self.disk = SimDisk(Prng(seed ^ 0x5EED), faults)
        self.storage = SimStorage.bootstrap(self.disk, CONFIGURATION)
        self.model = MemoryStorage.bootstrap(CONFIGURATION)
        self.saved: set[LogEntry] = set(self.model.entries())
        self.states: dict[int, Expected] = {}
        # Every save that wrote entries, over every life: (sequence, first index, log after).
        self.writes: list[tuple[int, int, Expected]] = []
        self.durable_sequence = 0
        self.recovering_to: int | None = None  # What RaftNode's recovering mode would be.
        self.reports: list[RecoveryReport] = []
        self._record(self.model.entries())
        self.disk.complete_sync()
        self.durable_sequence = self.storage.sequence

    def run(self, operations: int) -> None:
        actions = [
            (self.append, 30),
            (self.truncate, 8),
            (self.vote, 5),
            (self.commit, 15),
            (self.compact, 6),
            (self.install, 4),
            (self.sync, 20),
            (self.crash, 8),
        ]
        table = [action for action, weight in actions for _ in range(weight)]
        for _ in range(operations):
            table[self.choices.randint(0, len(table) - 1)]()
        self.crash()

    # -- Operations (each also applied to the model) --

    def save(
        self, hard_state: HardState | None, new: list[LogEntry], shot: Snapshot | None
    ) -> None:
        self.storage.save(hard_state, new, shot)
        self.model.save(hard_state, new, shot)
        self.saved.update(new)
        self._record(new)

    def append(self) -> None:
        last, term = self.model.last_index(), self.model.hard_state().term
        count = self.choices.randint(1, 4)
        self.save(None, entries(last + 1, last + count, term), None)

    def truncate(self) -> None:
        floor = max(self.model.hard_state().commit, self.model.initial_state()[2].index)
        last = self.model.last_index()
        if last <= floor:
            return
        first = self.choices.randint(floor + 1, last)
        term = self.model.hard_state().term + 1
        count = self.choices.randint(1, 5)
        hard_state = attrs.evolve(self.model.hard_state(), term=term, vote=None)
        self.save(hard_state, entries(first, first + count - 1, term), None)

    def vote(self) -> None:
        hard_state = self.model.hard_state()
        term, vote = hard_state.term + 1, self.choices.randint(1, 3)
        self.save(HardState(term, vote, hard_state.commit), [], None)

    def commit(self) -> None:
        hard_state = self.model.hard_state()
        commit = self.choices.randint(hard_state.commit, self.model.last_index())
        self.save(attrs.evolve(hard_state, commit=commit), [], None)

    def compact(self) -> None:
        meta_index = self.model.initial_state()[2].index
        commit = self.model.hard_state().commit
        if commit <= meta_index:
            return
        index = self.choices.randint(meta_index + 1, commit)
        term = self.model.entries()[index - meta_index - 1].term
        self.storage.compact(snapshot(index, term))
        self.model.compact(snapshot(index, term))
        self._record([])

    def install(self) -> None:
        meta_index = self.model.initial_state()[2].index
        floor = max(meta_index, self.model.hard_state().commit)
        index = self.choices.randint(floor + 1, self.model.last_index() + 5)
        term = self.model.hard_state().term + 1
        count = self.choices.randint(0, 3)
        hard_state = HardState(term, None, index)
        self.save(hard_state, entries(index + 1, index + count, term), snapshot(index, term))

    def sync(self) -> None:
        self.disk.complete_sync()
        self.durable_sequence = self.storage.sequence

    def crash(self) -> None:
        self.disk.crash()
        self.storage = SimStorage.open(self.disk)
        self.reports.append(self.storage.report)
        self.check_recovery()
        self.durable_sequence = self.storage.report.superblock_sequence
        self.recovering_to = self.storage.report.lost_acknowledged
        hard_state, _, _, log = self.storage.initial_state()
        latest = self.storage.latest_snapshot()
        self.model = MemoryStorage()
        shot = None if latest is None else Snapshot(*latest)
        self.model.save(hard_state, log, shot)
        assert view(self.model) == view(self.storage)

    def _record(self, new: list[LogEntry]) -> None:
        assert view(self.storage) == view(self.model), self.seed
        hard_state, _, meta, log = self.model.initial_state()
        if self.recovering_to is not None and hard_state.commit >= self.recovering_to:
            self.recovering_to = None
        assert self.storage.recovering_to == self.recovering_to, self.seed
        latest = self.model.latest_snapshot()
        expected = Expected(hard_state, meta, tuple(log), latest, self.recovering_to)
        self.states[self.storage.sequence] = expected
        if new:
            self.writes.append((self.storage.sequence, new[0].index, expected))

    # -- The properties --

    def check_recovery(self) -> None:
        report, seed = self.storage.report, self.seed
        hard_state, _, meta, log = self.storage.initial_state()
        # No corrupted entry ever comes back.
        assert all(item in self.saved for item in log), (seed, report)
        # The superblock never goes back past the last completed sync, nor do term and vote.
        assert report.superblock_sequence >= self.durable_sequence, (seed, report)
        expected = self.states[report.superblock_sequence]
        durable = self.states[self.durable_sequence]
        assert hard_state.term >= durable.hard_state.term, (seed, report)
        assert (hard_state.term, hard_state.vote) == (
            expected.hard_state.term,
            expected.hard_state.vote,
        ), (seed, report)
        # What came back is a prefix of that superblock's state (or nothing, snapshot lost).
        if report.snapshot_lost:
            assert self.corrupting and log == [] and meta.index == 0, (seed, report)
        else:
            assert meta == expected.meta, (seed, report)
            assert self.storage.latest_snapshot() == expected.snapshot, (seed, report)
            # Damage may leave stale records before the cut (a misdirected rewrite keeps the old
            # version in place): only the entries up to the commit, which the superblock's
            # checksum proves, must be the superblock's.
            proven = hard_state.commit - meta.index if report.corruption_detected else len(log)
            assert tuple(log[:proven]) == expected.entries[:proven], (seed, report)
        assert hard_state.commit <= expected.hard_state.commit, (seed, report)
        if not report.corruption_detected:
            assert hard_state.commit == expected.hard_state.commit, (seed, report)
        last_index = log[-1].index if log else meta.index
        self.check_loss(report, log, last_index, expected, durable)

    def check_loss(
        self,
        report: RecoveryReport,
        log: list[LogEntry],
        last_index: int,
        expected: Expected,
        durable: Expected,
    ) -> None:
        seed = self.seed
        assert report.durable_last[0] == expected.last_index, (seed, report)
        assert report.inherited_recovering_to == expected.recovering_to, (seed, report)
        short = last_index < expected.last_index
        scan_loss = expected.last_index if short else None
        if report.scan_stop is ScanStop.LATER_SAVE:
            # A later save (of a life not recovering from a loss) truncated there itself.
            assert self.explained_by_later_save(report, log, expected), (seed, report)
            scan_loss = None
        if scan_loss is not None or report.inherited_recovering_to is not None:
            assert self.corrupting, (seed, report)
        if scan_loss is not None:
            assert report.corruption_detected, (seed, report)
        losses = [loss for loss in (scan_loss, report.inherited_recovering_to) if loss]
        assert report.lost_acknowledged == max(losses, default=None), (seed, report)
        if not self.corrupting:
            assert not report.corruption_detected, (seed, report)
        # Shorter than the last completed sync only for a reported loss, a later superblock (a
        # later truncation or snapshot may be shorter), or a later save's truncation.
        if last_index < durable.last_index and report.lost_acknowledged is None:
            later = report.superblock_sequence > self.durable_sequence
            assert later or report.scan_stop is ScanStop.LATER_SAVE, (seed, report)

    def explained_by_later_save(
        self, report: RecoveryReport, log: list[LogEntry], expected: Expected
    ) -> bool:
        """Some save after the superblock wrote the entry after `log`, continuing `log`."""
        following = len(log) + expected.meta.index + 1
        for sequence, first, after in self.writes:
            if sequence <= report.superblock_sequence or after.meta != expected.meta:
                continue
            writes_there = first <= following <= after.last_index
            if writes_there and after.entries[: len(log)] == tuple(log):
                return True
        return False


@pytest.mark.parametrize("chunk", range(3))
def test_random_saves_and_crashes_under_every_fault(chunk: int) -> None:
    seeds = range(chunk, PROPERTY_SEEDS, 3)
    injected: Counter[str] = Counter()
    stops: Counter[ScanStop] = Counter()
    for seed in seeds:
        workload = Workload(seed, ALL_FAULTS, corrupting=True)
        try:
            workload.run(OPERATIONS_PER_CASE)
        except AssertionError as error:
            raise AssertionError(f"reproduce with Workload({seed}, ALL_FAULTS, True)") from error
        injected.update(workload.disk.faults_injected)
        stops.update(report.scan_stop for report in workload.reports)
    # The faults really happened, and recovery met the damage they do.
    for kind in ("torn_write", "write_bitflip", "read_bitflip", "misdirected_write"):
        assert injected[kind] > 0, injected
    assert stops[ScanStop.END] > 0 and len(stops) >= 4, stops


def test_random_crashes_with_torn_writes_lose_nothing_durable() -> None:
    faults = DiskFaults(torn_write_probability=0.8)
    injected: Counter[str] = Counter()
    for seed in range(100):
        workload = Workload(seed, faults, corrupting=False)
        try:
            workload.run(OPERATIONS_PER_CASE)
        except AssertionError as error:
            raise AssertionError(f"reproduce with Workload({seed}, torn only)") from error
        assert all(is_clean(r) or r.scan_stop is ScanStop.LATER_SAVE for r in workload.reports)
        injected.update(workload.disk.faults_injected)
    assert injected[FAULT_TORN_WRITE] > 0, injected


# -- Determinism -------------------------------------------------------------------------------


def test_same_seed_same_platter_and_reports() -> None:
    for seed in (1, 2, 3):
        first = Workload(seed, ALL_FAULTS, corrupting=True)
        second = Workload(seed, ALL_FAULTS, corrupting=True)
        first.run(OPERATIONS_PER_CASE)
        second.run(OPERATIONS_PER_CASE)
        assert first.disk.durable_sectors() == second.disk.durable_sectors()
        assert first.disk.faults_injected == second.disk.faults_injected
        assert first.reports == second.reports
    other = Workload(4, ALL_FAULTS, corrupting=True)
    other.run(OPERATIONS_PER_CASE)
    assert other.disk.durable_sectors() != first.disk.durable_sectors()
