"""The simulator's disk: `SimDisk`, a faulty sector device, and `SimStorage`, a Raft `Storage`
on it.

What lives here: a sparse block device with explicit durability (write, sync, complete_sync,
crash) and seeded faults, and the on-disk layout that turns it into a Raft `Storage` that recovers
from whatever a crash or a fault left. What must not: trio, sockets, clocks, `random`, `os`,
threads, or `memora.net`. Every random choice comes from the `Prng` the disk is given, so the same
seed and the same calls give the same platter, byte for byte.

## SimDisk
Writes are pending until a `sync()` and the `complete_sync()` that follows it (the simulator draws
the latency between them). `crash()` loses every pending write, except that with
`torn_write_probability` a prefix of them (in write order) reaches the platter, the last one
possibly torn at a sector boundary: its first sectors new, the rest old. Faults on write (a bit
flipped in one sector as stored, or the whole write landing on another place this disk has
written, leaving the intended place as it was) and on read (a bit flipped in the returned bytes
only) are drawn when the call is made.

The fault atlas. Regions registered with `register_redundant_copies` (the superblock copies) are
the root of recovery, so the disk never damages them: a write into one is never bit-flipped,
misdirected or torn (a copy is one sector, written whole or not at all), no misdirected write lands
on one, and reads of one are never bit-flipped. Together with prefix-only crash loss, and with
SimStorage writing copy A, then copy B, each after the data they point to, at least one copy always
holds the newest superblock whose data reached the platter. Which nodes get corruption faults at
all is the simulator's choice: it gives non-zero probabilities to a minority of nodes only.

## SimStorage layout
    superblock A, B     one sector each, at fixed offsets, with its own CRC: sequence, hard
                        state, the current snapshot slot (length and CRC), the log's start
                        (offset, first index, chain seed), `durable_last` (index, term) = the end
                        of the log as saved, the CRCs of the records at the commit index and at
                        `durable_last`, and `recovering_to` (below)
    two log regions     records, each starting on a sector boundary:
                        [length u32][crc32 u32][header crc u32] then the payload
                        [previous u32][sequence u64][index u64][flags u8][CBOR LogEntry].
                        The CRC covers the payload. `previous` is the CRC of the record before
                        (for the first, a value derived from the log's seed), so the records form
                        a hash chain; `sequence` is that of the save that wrote the record. The
                        header CRC covers length, previous, sequence, index and flags, so a torn
                        record still tells who was writing it.
    two snapshot slots  [meta length u32][CBOR SnapshotMeta][data]; the CRC is in the superblock

Every `save()` and `compact()` writes its data first (the snapshot into the slot that is not
current, then the records in one write), then superblock A, then B, then calls `disk.sync()`. It
never overwrites what the latest superblock written points to, except the conflicting suffix it
truncates (it rewinds the write position to the first conflicting record, found in an in-memory
index -> offset map). A snapshot, from `save` or `compact`, starts a new log in the other region
(a compaction rewrites the surviving entries there), so the switch is atomic with the superblock.

## Recovery (`SimStorage.open`)
The valid superblock copy with the highest sequence wins. Its snapshot is read and CRC-checked (a
damaged snapshot is lost, and the log after it with it). The log is scanned from its start while
each record has a sane length, a good CRC, the expected `previous` (the chain: stale records left
after a rewind, or from an older log in the same region, never continue it), the next index, and
a sequence and a term no newer than the superblock's; the scan ends at `durable_last`, whose
record must have the CRC the superblock names. So the recovered state is the superblock's, cut
short only by damage: records of saves whose superblock never landed are not taken.

Lost acknowledgments. A scan that ends before `durable_last` is a loss of entries the node may
have acknowledged (`RecoveryReport.lost_acknowledged`, RaftNode's `recovering_to`), with one
exception: the record where it ends was written by a later save (whose superblock never landed)
at exactly that place, continuing the chain, as its header says even if the rest is torn. That
save truncated the entries from there on itself: a leader of a newer term replaced them, so Raft
never commits them, and what is left is a prefix of that save's log. Unless the save was made by
a life still recovering from a loss (flagged in its records): refilling a lost log explains
nothing. The loss is also persisted: every superblock carries `recovering_to` and every record
the flag until a save's commit index reaches it, as RaftNode leaves recovering mode then, so a
crash while recovering still finds the loss after the superblock has moved on.

The commit index. A log cut short by damage may hold stale records before the cut (a misdirected
rewrite leaves the old version in place, and the old chain runs through it), so the superblock's
commit stands only if the record at the commit index is the one it names: the hash chain then
proves every entry up to it. Otherwise the commit falls back to the snapshot's index.

Sequence numbers. Each life of a node (from one `open` to the next crash) numbers its saves in a
range of its own, from `disk.crashes * SEQUENCES_PER_LIFE_MAX`, so that records a dead life wrote
after the superblock it started from stay newer than that superblock, and older than any
superblock a later life writes.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import struct
from collections import Counter
from collections.abc import Sequence
from typing import Final

import attrs

from memora.core import constants
from memora.core.codec import crc32
from memora.core.errors import CodecError
from memora.core.prng import Prng
from memora.core.raft.storage import bootstrap_state
from memora.core.raft.types import (
    Configuration,
    HardState,
    LogEntry,
    Snapshot,
    SnapshotMeta,
    decode_value,
    encode_value,
    latest_configuration,
)

SECTOR_BYTES: Final = 512
_ZERO_SECTOR: Final = bytes(SECTOR_BYTES)
_BITS_PER_SECTOR: Final = SECTOR_BYTES * 8
# A misdirected write draws a landing place among written sectors up to this many times.
MISDIRECT_ATTEMPTS_MAX: Final = 8

# The names under which `SimDisk.faults_injected` counts faults.
FAULT_TORN_WRITE: Final = "torn_write"
FAULT_WRITE_BITFLIP: Final = "write_bitflip"
FAULT_READ_BITFLIP: Final = "read_bitflip"
FAULT_MISDIRECTED_WRITE: Final = "misdirected_write"
FAULT_LOST_UNSYNCED_WRITE: Final = "lost_unsynced_write"

_GIBIBYTE: Final = 1 << 30
_TEBIBYTE: Final = 1 << 40
SUPERBLOCK_OFFSETS: Final = (0, 8 * SECTOR_BYTES)  # Copy A, then copy B.
LOG_REGION_OFFSETS: Final = (1 * _TEBIBYTE, 2 * _TEBIBYTE)
LOG_REGION_BYTES_MAX: Final = _TEBIBYTE
SNAPSHOT_SLOT_OFFSETS: Final = (3 * _TEBIBYTE, 4 * _TEBIBYTE)
SNAPSHOT_SLOT_BYTES_MAX: Final = 64 * _GIBIBYTE
# Reads fail transiently (bit flips in what is returned): a bad record is read this many times
# before recovery calls it damaged on the platter.
READ_ATTEMPTS_MAX: Final = 3
# Sequence numbers per life of a node (module docstring): more saves than any life makes.
SEQUENCES_PER_LIFE_MAX: Final = 1 << 32

assert SUPERBLOCK_OFFSETS[0] % SECTOR_BYTES == 0 and SUPERBLOCK_OFFSETS[1] % SECTOR_BYTES == 0
assert SUPERBLOCK_OFFSETS[1] - SUPERBLOCK_OFFSETS[0] >= SECTOR_BYTES
assert SUPERBLOCK_OFFSETS[1] + SECTOR_BYTES <= LOG_REGION_OFFSETS[0]
assert LOG_REGION_OFFSETS[0] + LOG_REGION_BYTES_MAX <= LOG_REGION_OFFSETS[1]
assert LOG_REGION_OFFSETS[1] + LOG_REGION_BYTES_MAX <= SNAPSHOT_SLOT_OFFSETS[0]
assert SNAPSHOT_SLOT_OFFSETS[0] + SNAPSHOT_SLOT_BYTES_MAX <= SNAPSHOT_SLOT_OFFSETS[1]
assert constants.raft_snapshot_bytes_max < SNAPSHOT_SLOT_BYTES_MAX


# ---------------------------------------------------------------------------------------------
# The device.


def _probability(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], not {value}")


@attrs.frozen
class DiskFaults:
    """How likely each fault is, per write (bit flip, misdirection), per read (bit flip) and per
    crash with pending writes (torn write)."""

    torn_write_probability: float = attrs.field(default=0.0, validator=_probability)
    write_bitflip_probability: float = attrs.field(default=0.0, validator=_probability)
    read_bitflip_probability: float = attrs.field(default=0.0, validator=_probability)
    misdirect_probability: float = attrs.field(default=0.0, validator=_probability)


@attrs.frozen
class _Write:
    """One write as it will reach the platter: whole sectors from `first_sector` on."""

    first_sector: int
    sectors: tuple[bytes, ...]


class EntryCodec:
    """`encode_value` and `decode_value` of log entries, each done once per entry and byte string.

    Every node of a run writes the same entries (they travel as objects, not bytes) and reads its
    whole log back at each restart, so the same encodings and decodings recur many times. Both
    functions are pure, so remembering their answers changes nothing but the time taken: an entry
    is remembered by identity (and kept alive, so its id stays its own), a record body by its
    bytes. A body is remembered only once it has really been decoded, so every distinct body
    on a platter, damaged ones included, goes through the codec at least once.
    """

    def __init__(self) -> None:
        self._bodies: dict[int, tuple[LogEntry, bytes]] = {}  # id(entry) -> (entry, encoding).
        self._entries: dict[bytes, LogEntry] = {}

    def encode(self, entry: LogEntry) -> bytes:
        known = self._bodies.get(id(entry))
        if known is not None:
            assert known[0] is entry
            return known[1]
        body = encode_value(entry)
        self._bodies[id(entry)] = (entry, body)
        return body

    def decode(self, body: bytes) -> LogEntry:
        """The entry `body` encodes, or CodecError (never remembered: it is raised each time)."""
        entry = self._entries.get(body)
        if entry is None:
            entry = decode_value(body, LogEntry)
            self._entries[body] = entry
        return entry


class SimDisk:
    """A sparse, sector-addressed block device of one node (see the module docstring)."""

    def __init__(
        self, prng: Prng, faults: DiskFaults | None = None, codec: EntryCodec | None = None
    ) -> None:
        self.prng = prng
        self.faults = faults or DiskFaults()  # The simulator may swap it (e.g. to heal a node).
        # SimStorage's entry codec. It lives with the disk, which outlives every SimStorage
        # opened on it; the simulator gives all the disks of a run one codec to share.
        self.codec = codec or EntryCodec()
        self.faults_injected: Counter[str] = Counter()
        self._durable: dict[int, bytes] = {}  # The platter: sector -> SECTOR_BYTES bytes.
        self._current: dict[int, bytes] = {}  # What reads see: the platter, then pending writes.
        self._pending: list[_Write] = []
        self._synced_writes = 0  # The first this many pending writes belong to the last sync().
        self._written_sectors: list[int] = []  # Every sector ever written, in first-write order.
        self._written_set: set[int] = set()
        self._protected: list[int] = []  # Sorted, for bisect: a write checks it by range.
        self.writes = 0
        self.syncs = 0
        # How many times the machine lost power: the boot counter a real node would replace with
        # a random boot nonce. SimStorage numbers each life's saves from it.
        self.crashes = 0

    # -- Queries --------------------------------------------------------------------------------

    def is_blank(self) -> bool:
        """True until the first write."""
        return not self._written_sectors

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    @property
    def syncing(self) -> bool:
        """A sync() was called whose complete_sync() has not come yet."""
        return self._synced_writes > 0

    def durable_sectors(self) -> dict[int, bytes]:
        """A copy of the platter, for tests and determinism checks."""
        return dict(self._durable)

    # -- Operations -----------------------------------------------------------------------------

    def register_redundant_copies(self, regions: Sequence[tuple[int, int]]) -> None:
        """Declare (offset, length) regions that hold redundant copies of the same structure: the
        disk never damages them (the fault atlas, module docstring). Registering again is fine."""
        assert len(regions) >= 2, regions
        for offset, length in regions:
            assert offset >= 0 and length > 0, (offset, length)
            sectors = range(offset // SECTOR_BYTES, _sector_end(offset + length))
            self._protected = sorted(set(self._protected).union(sectors))

    def write(self, offset: int, data: bytes) -> None:
        """Queue a write; it is not durable until a sync() and its complete_sync()."""
        assert offset >= 0 and data, (offset, len(data))
        write = self._sector_images(offset, data)
        if not self._is_protected(write.first_sector, len(write.sectors)):
            write = self._maybe_flip_on_write(write)
            write = self._maybe_misdirect(write)
        for number, sector in enumerate(write.sectors, write.first_sector):
            self._current[number] = sector
            if number not in self._written_set:
                self._written_set.add(number)
                self._written_sectors.append(number)
        self._pending.append(write)
        self.writes += 1

    def sync(self) -> None:
        """Everything written so far must become durable, at the next complete_sync()."""
        self._synced_writes = len(self._pending)
        self.syncs += 1

    def complete_sync(self) -> None:
        """The last sync() is done: everything written before it is on the platter."""
        for write in self._pending[: self._synced_writes]:
            self._land(write, len(write.sectors))
        del self._pending[: self._synced_writes]
        self._synced_writes = 0

    def crash(self) -> None:
        """The process died: pending writes are lost, or (torn writes) a prefix of them lands."""
        landed = 0
        if self._pending and self._chance(self.faults.torn_write_probability):
            last = self.prng.randint(1, len(self._pending))
            for write in self._pending[: last - 1]:
                self._land(write, len(write.sectors))
            landed = last - 1 + self._land_torn(self._pending[last - 1])
        for write in self._pending:
            for number in range(write.first_sector, write.first_sector + len(write.sectors)):
                if number in self._durable:
                    self._current[number] = self._durable[number]
                else:
                    self._current.pop(number, None)
        self.faults_injected[FAULT_LOST_UNSYNCED_WRITE] += len(self._pending) - landed
        self._pending = []
        self._synced_writes = 0
        self.crashes += 1

    def read(self, offset: int, length: int) -> bytes:
        """Durable-or-pending contents (zeros where never written), maybe with one bit flipped."""
        assert offset >= 0 and length >= 0, (offset, length)
        if length == 0:
            return b""
        first, end = offset // SECTOR_BYTES, _sector_end(offset + length)
        joined = b"".join(self._current.get(number, _ZERO_SECTOR) for number in range(first, end))
        start = offset - first * SECTOR_BYTES
        data = joined[start : start + length]
        if self._is_protected(first, end - first):
            return data
        if self._chance(self.faults.read_bitflip_probability):
            data = _flip_bit(data, self.prng.randint(0, len(data) * 8 - 1))
            self.faults_injected[FAULT_READ_BITFLIP] += 1
        return data

    # -- Helpers --------------------------------------------------------------------------------

    def _chance(self, probability: float) -> bool:
        """True with `probability`; no draw at all when it is 0, so a fault-free disk consumes
        nothing from its generator."""
        if probability <= 0.0:
            return False
        return self.prng.next_u64() < int(probability * (1 << 64))

    def _is_protected(self, first_sector: int, count: int) -> bool:
        """Whether any of `count` sectors from `first_sector` on is protected: the first
        protected sector at or after `first_sector` lies before the end of the range."""
        protected = self._protected
        position = bisect.bisect_left(protected, first_sector)
        return position < len(protected) and protected[position] < first_sector + count

    def _sector_images(self, offset: int, data: bytes) -> _Write:
        """Whole sectors as they will be stored; a partial sector keeps the rest of what reads
        see."""
        first, end = offset // SECTOR_BYTES, _sector_end(offset + len(data))
        start = offset - first * SECTOR_BYTES
        if start == 0 and len(data) == (end - first) * SECTOR_BYTES:
            padded = data
        else:
            buffer = bytearray((end - first) * SECTOR_BYTES)
            buffer[:SECTOR_BYTES] = self._current.get(first, _ZERO_SECTOR)
            buffer[-SECTOR_BYTES:] = self._current.get(end - 1, _ZERO_SECTOR)
            buffer[start : start + len(data)] = data
            padded = bytes(buffer)
        if len(padded) == SECTOR_BYTES:  # Most writes: a superblock copy or a small record.
            return _Write(first, (padded,))
        sectors = [
            padded[index : index + SECTOR_BYTES] for index in range(0, len(padded), SECTOR_BYTES)
        ]
        return _Write(first, tuple(sectors))

    def _maybe_flip_on_write(self, write: _Write) -> _Write:
        if not self._chance(self.faults.write_bitflip_probability):
            return write
        which = self.prng.randint(0, len(write.sectors) - 1)
        sectors = list(write.sectors)
        sectors[which] = _flip_bit(sectors[which], self.prng.randint(0, _BITS_PER_SECTOR - 1))
        self.faults_injected[FAULT_WRITE_BITFLIP] += 1
        return _Write(write.first_sector, tuple(sectors))

    def _maybe_misdirect(self, write: _Write) -> _Write:
        """Maybe land the write on a written, unprotected place other than the intended one."""
        if not self._written_sectors or not self._chance(self.faults.misdirect_probability):
            return write
        count = len(write.sectors)
        for _ in range(MISDIRECT_ATTEMPTS_MAX):
            landing = self._written_sectors[self.prng.randint(0, len(self._written_sectors) - 1)]
            if landing != write.first_sector and not self._is_protected(landing, count):
                self.faults_injected[FAULT_MISDIRECTED_WRITE] += 1
                return _Write(landing, write.sectors)
        return write

    def _land(self, write: _Write, count: int) -> None:
        for number, sector in enumerate(write.sectors[:count], write.first_sector):
            self._durable[number] = sector

    def _land_torn(self, write: _Write) -> int:
        """The last write of a crash's surviving prefix: its first sectors only, at random. A
        protected write is one sector (a superblock copy) and lands whole or not at all. Returns
        1 if any of it landed, else 0."""
        count = len(write.sectors)
        if self._is_protected(write.first_sector, count):
            kept = count * self.prng.randint(0, 1)
        else:
            kept = self.prng.randint(0, count)
        self._land(write, kept)
        if 0 < kept < count:
            self.faults_injected[FAULT_TORN_WRITE] += 1
        return 1 if kept else 0


def _sector_end(end_offset: int) -> int:
    """The number of the first sector after the byte just before `end_offset`."""
    return -(-end_offset // SECTOR_BYTES)


def _flip_bit(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def _padded(length: int) -> int:
    """`length` rounded up to whole sectors."""
    return _sector_end(length) * SECTOR_BYTES


# ---------------------------------------------------------------------------------------------
# The on-disk formats of SimStorage.

# Payload length, payload CRC, header CRC. The header CRC stays out of the payload: a CRC over
# bytes that end with their own CRC is blind to changes in them (CRC is linear), so two records
# differing only in previous and sequence would otherwise have the same payload CRC.
_RECORD_HEADER: Final = struct.Struct("<III")
# The payload's start: previous, sequence, index, flags.
_RECORD_PREFIX: Final = struct.Struct("<IQQB")
_HEADER_CHECKED: Final = struct.Struct("<IIQQB")  # What the header CRC covers: length, prefix.
# A record flag: written by a life still recovering from lost acknowledged entries.
_FLAG_RECOVERING: Final = 1
RECORD_PAYLOAD_BYTES_MAX: Final = constants.frame_body_bytes_max + _RECORD_PREFIX.size
_SNAPSHOT_META_LENGTH: Final = struct.Struct("<I")
_SUPERBLOCK: Final = struct.Struct("<IHQQBQQIbQIQQQQQIQ")
_SUPERBLOCK_CRC: Final = struct.Struct("<I")
_SUPERBLOCK_MAGIC: Final = 0x4D53_4442
_SUPERBLOCK_VERSION: Final = 1
_EMPTY_META: Final = SnapshotMeta(index=0, term=0, configuration=Configuration())
_EMPTY_HARD_STATE: Final = HardState(term=0, vote=None, commit=0)

assert _RECORD_HEADER.size + _RECORD_PREFIX.size <= SECTOR_BYTES
assert _SUPERBLOCK.size + _SUPERBLOCK_CRC.size <= SECTOR_BYTES
assert RECORD_PAYLOAD_BYTES_MAX < 2**32


@attrs.frozen
class _Superblock:
    sequence: int
    hard_state: HardState
    snapshot_slot: int | None  # None: no snapshot yet.
    snapshot_bytes: int
    snapshot_crc: int
    log_offset: int  # Where the first record is: the start of one of the log regions.
    log_first_index: int
    log_seed: int
    durable_last: tuple[int, int]  # (index, term) of the last entry, or of the snapshot.
    # The CRCs of the records at the commit index and at durable_last (0 where no record is):
    # anchors that authenticate the hash chain up to them.
    commit_checksum: int
    last_checksum: int
    recovering_to: int  # 0, or the loss the node is still recovering from (RecoveryReport).


def _encode_superblock(superblock: _Superblock) -> bytes:
    hard_state = superblock.hard_state
    slot = superblock.snapshot_slot
    fields = _SUPERBLOCK.pack(
        _SUPERBLOCK_MAGIC,
        _SUPERBLOCK_VERSION,
        superblock.sequence,
        hard_state.term,
        0 if hard_state.vote is None else 1,
        hard_state.vote or 0,
        hard_state.commit,
        superblock.commit_checksum,
        -1 if slot is None else slot,
        superblock.snapshot_bytes,
        superblock.snapshot_crc,
        superblock.log_offset,
        superblock.log_first_index,
        superblock.log_seed,
        *superblock.durable_last,
        superblock.last_checksum,
        superblock.recovering_to,
    )
    sector = fields + _SUPERBLOCK_CRC.pack(crc32(fields))
    return sector + bytes(SECTOR_BYTES - len(sector))


def _decode_superblock(sector: bytes) -> _Superblock | None:
    """The superblock in a sector, or None if the sector does not hold a valid one."""
    fields = sector[: _SUPERBLOCK.size]
    (checksum,) = _SUPERBLOCK_CRC.unpack_from(sector, _SUPERBLOCK.size)
    if crc32(fields) != checksum:
        return None
    magic, version, sequence, term, has_vote, vote, commit, commit_checksum, *rest = (
        _SUPERBLOCK.unpack(fields)
    )
    slot, snapshot_bytes, snapshot_crc, log_offset, first_index, seed, *last = rest
    last_index, last_term, last_checksum, recovering_to = last
    if magic != _SUPERBLOCK_MAGIC or version != _SUPERBLOCK_VERSION:
        return None
    if has_vote not in (0, 1) or slot not in (-1, 0, 1) or log_offset not in LOG_REGION_OFFSETS:
        return None
    return _Superblock(
        sequence=sequence,
        hard_state=HardState(term=term, vote=vote if has_vote else None, commit=commit),
        snapshot_slot=None if slot == -1 else slot,
        snapshot_bytes=snapshot_bytes,
        snapshot_crc=snapshot_crc,
        log_offset=log_offset,
        log_first_index=first_index,
        log_seed=seed,
        durable_last=(last_index, last_term),
        commit_checksum=commit_checksum,
        last_checksum=last_checksum,
        recovering_to=recovering_to,
    )


def _chain_start(seed: int) -> int:
    """The `previous` of a log's first record: its seed's own value, unlike any older log's."""
    return crc32(b"memora.sim.log" + seed.to_bytes(8, "little"))


def _encode_record(
    codec: EntryCodec, entry: LogEntry, previous: int, sequence: int, flags: int
) -> tuple[bytes, int]:
    """A record padded to whole sectors, and its CRC (what the next record's `previous` is)."""
    body = codec.encode(entry)
    length = _RECORD_PREFIX.size + len(body)
    assert length <= RECORD_PAYLOAD_BYTES_MAX, length
    header = (previous, sequence, entry.index, flags)
    header_crc = crc32(_HEADER_CHECKED.pack(length, *header))
    payload = _RECORD_PREFIX.pack(*header) + body
    checksum = crc32(payload)
    record = _RECORD_HEADER.pack(length, checksum, header_crc) + payload
    return record + bytes(_padded(len(record)) - len(record)), checksum


def _encode_snapshot(snapshot: Snapshot) -> bytes:
    meta = encode_value(snapshot.meta)
    return _SNAPSHOT_META_LENGTH.pack(len(meta)) + meta + snapshot.data


def _decode_snapshot(payload: bytes) -> Snapshot:
    """The snapshot in a slot's payload (whose CRC matched), or CodecError."""
    if len(payload) < _SNAPSHOT_META_LENGTH.size:
        raise CodecError("snapshot payload shorter than its header")
    (meta_length,) = _SNAPSHOT_META_LENGTH.unpack_from(payload)
    meta_end = _SNAPSHOT_META_LENGTH.size + meta_length
    if meta_end > len(payload):
        raise CodecError("snapshot meta longer than the payload")
    meta: SnapshotMeta = decode_value(payload[_SNAPSHOT_META_LENGTH.size : meta_end], SnapshotMeta)
    return Snapshot(meta, payload[meta_end:])


# ---------------------------------------------------------------------------------------------
# Reading records back.


class _RecordStatus(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # A zero header: never written there.
    BAD_LENGTH = "bad_length"
    BAD_CRC = "bad_crc"


@attrs.frozen
class _RecordRead:
    status: _RecordStatus
    span_bytes: int = 0  # The record's size on disk, padded to sectors.
    checksum: int = 0
    header_valid: bool = False  # The fields below are trustworthy (their own CRC matched).
    previous: int = 0
    sequence: int = 0
    index: int = 0
    flags: int = 0
    body: bytes = b""


def _read_record_once(disk: SimDisk, offset: int) -> _RecordRead:
    first = disk.read(offset, SECTOR_BYTES)
    length, checksum, header_crc = _RECORD_HEADER.unpack_from(first)
    if length == 0 and checksum == 0 and header_crc == 0:
        return _RecordRead(_RecordStatus.MISSING)
    if not _RECORD_PREFIX.size <= length <= RECORD_PAYLOAD_BYTES_MAX:
        return _RecordRead(_RecordStatus.BAD_LENGTH)
    total = _RECORD_HEADER.size + length
    data = first
    if total > SECTOR_BYTES:
        data += disk.read(offset + SECTOR_BYTES, total - SECTOR_BYTES)
    payload = data[_RECORD_HEADER.size : total]
    header = previous, sequence, index, flags = _RECORD_PREFIX.unpack_from(payload)
    header_valid = crc32(_HEADER_CHECKED.pack(length, *header)) == header_crc
    intact = header_valid and crc32(payload) == checksum
    return _RecordRead(
        status=_RecordStatus.OK if intact else _RecordStatus.BAD_CRC,
        span_bytes=_padded(total),
        checksum=checksum,
        header_valid=header_valid,
        previous=previous,
        sequence=sequence,
        index=index,
        flags=flags,
        body=payload[_RECORD_PREFIX.size :],
    )


def _read_record(disk: SimDisk, offset: int) -> _RecordRead:
    """A record, read again while it looks damaged (read faults are transient); of the damaged
    reads, one whose header is intact is preferred."""
    best: _RecordRead | None = None
    for _ in range(READ_ATTEMPTS_MAX):
        read = _read_record_once(disk, offset)
        if read.status is _RecordStatus.OK:
            return read
        if best is None or (read.header_valid and not best.header_valid):
            best = read
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# Recovery.


class ScanStop(enum.Enum):
    """Why the log scan of a recovery stopped."""

    END = "end"  # It reached `durable_last`: the whole log of the superblock is back.
    LATER_SAVE = "later_save"  # A save after the superblock truncated here (module docstring).
    # The same, by a life still recovering from a loss: the loss it was mending stands.
    LATER_REFILL = "later_refill"
    MISSING = "missing"  # Zeros where a record should be.
    BAD_LENGTH = "bad_length"
    BAD_CRC = "bad_crc"
    BROKEN_CHAIN = "broken_chain"  # A whole record, but not the successor of the one before.
    INDEX_GAP = "index_gap"
    NEWER_RECORD = "newer_record"  # A later sequence or term than the superblock's.
    UNDECODABLE = "undecodable"
    LAST_MISMATCH = "last_mismatch"  # The record at durable_last is not the one it names.
    SNAPSHOT_LOST = "snapshot_lost"  # The snapshot failed its CRC: the log after it is useless.


_DAMAGE_OF_STATUS: Final = {
    _RecordStatus.MISSING: ScanStop.MISSING,
    _RecordStatus.BAD_LENGTH: ScanStop.BAD_LENGTH,
    _RecordStatus.BAD_CRC: ScanStop.BAD_CRC,
}


@attrs.frozen
class RecoveryReport:
    """What `SimStorage.open` found.

    `lost_acknowledged` is what to pass RaftNode as `recovering_to`: the highest of
    - `durable_last[0]`, when the recovered log (or snapshot) ends before it for any reason but
      a later save's truncation (`ScanStop.LATER_SAVE`);
    - `inherited_recovering_to`, the loss an earlier life was still recovering from when it
      wrote the superblock (its commit had not reached it yet);
    or None if neither applies.
    """

    superblock_sequence: int  # 0: no superblock (a blank disk).
    durable_last: tuple[int, int]  # (index, term), from the superblock.
    entries_recovered: int
    records_cut: int  # Entries up to `durable_last` that did not come back.
    scan_stop: ScanStop
    corruption_detected: bool
    snapshot_lost: bool
    # The superblock's commit, when the recovered log does not prove it (`open`).
    commit_clamped_from: int | None
    inherited_recovering_to: int | None
    lost_acknowledged: int | None


class _Log:
    """The log in memory: the entries after the snapshot, and where each one's record is."""

    def __init__(self, region: int, seed: int, first_index: int) -> None:
        assert region in (0, 1) and first_index >= 1, (region, first_index)
        self.region = region
        self.seed = seed
        self.first_index = first_index
        self.entries: list[LogEntry] = []
        self.offsets: list[int] = []
        self.checksums: list[int] = []
        self.end = LOG_REGION_OFFSETS[region]  # Where the next record goes.

    def last_index(self) -> int:
        return self.first_index - 1 + len(self.entries)

    def previous(self) -> int:
        return self.checksums[-1] if self.checksums else _chain_start(self.seed)

    def add(self, entry: LogEntry, checksum: int, span_bytes: int) -> None:
        assert entry.index == self.last_index() + 1, (entry.index, self.last_index())
        self.entries.append(entry)
        self.offsets.append(self.end)
        self.checksums.append(checksum)
        self.end += span_bytes
        assert self.end - LOG_REGION_OFFSETS[self.region] <= LOG_REGION_BYTES_MAX

    def truncate(self, index: int) -> None:
        """Drop the entries from `index` on; the next record goes where `index`'s was."""
        kept = index - self.first_index
        assert 0 <= kept <= len(self.entries), (index, self.first_index)
        if kept < len(self.entries):
            self.end = self.offsets[kept]
            del self.entries[kept:], self.offsets[kept:], self.checksums[kept:]


def _read_superblock(disk: SimDisk) -> tuple[_Superblock | None, bool]:
    """The valid copy with the highest sequence (None if none), and whether a copy that is not
    blank failed its checks."""
    best: _Superblock | None = None
    damaged = False
    for offset in SUPERBLOCK_OFFSETS:
        sector = disk.read(offset, SECTOR_BYTES)
        superblock = _decode_superblock(sector)
        if superblock is None:
            damaged = damaged or sector != _ZERO_SECTOR
        elif best is None or superblock.sequence > best.sequence:
            best = superblock
    return best, damaged


def _read_snapshot(disk: SimDisk, superblock: _Superblock) -> Snapshot | None:
    """The superblock's snapshot (an empty one if it names none), or None if it is damaged."""
    if superblock.snapshot_slot is None:
        return Snapshot(_EMPTY_META, b"") if superblock.log_first_index == 1 else None
    offset = SNAPSHOT_SLOT_OFFSETS[superblock.snapshot_slot]
    for _ in range(READ_ATTEMPTS_MAX):
        payload = disk.read(offset, superblock.snapshot_bytes)
        if crc32(payload) != superblock.snapshot_crc:
            continue
        try:
            snapshot = _decode_snapshot(payload)
        except CodecError:
            return None
        if snapshot.meta.index + 1 != superblock.log_first_index:
            return None
        return snapshot
    return None


def _judge(read: _RecordRead, index: int, previous: int, sequence: int) -> ScanStop | None:
    """Why the record read where entry `index` should be does not continue the log, if not."""
    continues = read.header_valid and read.index == index and read.previous == previous
    if continues and read.sequence > sequence:
        return ScanStop.LATER_REFILL if read.flags & _FLAG_RECOVERING else ScanStop.LATER_SAVE
    if read.status is not _RecordStatus.OK:
        return _DAMAGE_OF_STATUS[read.status]
    if read.previous != previous:
        return ScanStop.BROKEN_CHAIN
    if read.index != index:
        return ScanStop.INDEX_GAP
    if read.sequence > sequence:
        return ScanStop.NEWER_RECORD
    return None


def _scan_log(disk: SimDisk, superblock: _Superblock) -> tuple[_Log, ScanStop]:
    """The superblock's log, as far as it is intact, and why the scan stopped."""
    region = LOG_REGION_OFFSETS.index(superblock.log_offset)
    log = _Log(region, superblock.log_seed, superblock.log_first_index)
    last_index, last_term = superblock.durable_last
    while log.last_index() < last_index:
        index = log.last_index() + 1
        read = _read_record(disk, log.end)
        stop = _judge(read, index, log.previous(), superblock.sequence)
        if stop is not None:
            return log, stop
        try:
            entry = disk.codec.decode(read.body)
        except CodecError:
            return log, ScanStop.UNDECODABLE
        if entry.index != index:
            return log, ScanStop.UNDECODABLE
        if entry.term > superblock.hard_state.term:
            return log, ScanStop.NEWER_RECORD
        last_record = (entry.term, read.checksum) == (last_term, superblock.last_checksum)
        if index == last_index and not last_record:
            return log, ScanStop.LAST_MISMATCH
        log.add(entry, read.checksum, read.span_bytes)
    return log, ScanStop.END


# ---------------------------------------------------------------------------------------------
# The Storage.


class SimStorage:
    """Raft's `Storage` on a `SimDisk`. Make one with `open`, `bootstrap` or `empty`.

    While it runs, the in-memory view (`initial_state`, `latest_snapshot`) reflects every save
    at once, as `MemoryStorage` does; what a crash leaves is whatever `open` recovers. `save` and
    `compact` issue their writes and `disk.sync()`; the simulator calls `disk.complete_sync()`.
    """

    def __init__(
        self,
        disk: SimDisk,
        hard_state: HardState,
        snapshot: Snapshot,
        snapshot_place: tuple[int, int, int] | None,
        log: _Log,
        sequences: tuple[int, int],
        report: RecoveryReport,
    ) -> None:
        self.disk = disk
        self.report = report
        self._hard_state = hard_state
        self._snapshot = snapshot
        self._snapshot_place = snapshot_place  # (slot, bytes, CRC) of the current snapshot.
        self._log = log
        # While set, the node is recovering from lost acknowledged entries (RecoveryReport): it
        # is persisted in every superblock and flags every record until a save's commit
        # reaches it, as RaftNode leaves its recovering mode then.
        self._recovering_to = report.lost_acknowledged
        # The sequence of the last superblock written or recovered, and the next save's minus one.
        self._sequence, self._sequence_next = sequences
        self.saves = 0
        self._check()

    # -- Opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, disk: SimDisk) -> SimStorage:
        """Recover what the platter holds (module docstring). A blank disk gives the state of a
        node that joins later: term 0, no entries, an empty configuration."""
        disk.register_redundant_copies([(offset, SECTOR_BYTES) for offset in SUPERBLOCK_OFFSETS])
        life = disk.crashes * SEQUENCES_PER_LIFE_MAX  # Where this life's sequences start.
        superblock, damaged = _read_superblock(disk)
        if superblock is None:
            report = RecoveryReport(0, (0, 0), 0, 0, ScanStop.END, damaged, False, None, None, None)
            log = _Log(region=0, seed=life, first_index=1)
            empty = Snapshot(_EMPTY_META, b"")
            return cls(disk, _EMPTY_HARD_STATE, empty, None, log, (0, life), report)
        sequence = max(superblock.sequence, life)
        snapshot = _read_snapshot(disk, superblock)
        place: tuple[int, int, int] | None = None
        if snapshot is None:
            # Start over in the other region, which the superblock does not point to.
            other = 1 - LOG_REGION_OFFSETS.index(superblock.log_offset)
            log = _Log(other, seed=sequence + 1, first_index=1)
            snapshot, stop = Snapshot(_EMPTY_META, b""), ScanStop.SNAPSHOT_LOST
        else:
            log, stop = _scan_log(disk, superblock)
            if superblock.snapshot_slot is not None:
                slot = superblock.snapshot_slot
                place = (slot, superblock.snapshot_bytes, superblock.snapshot_crc)
        hard_state = _authenticated_commit(superblock, log, stop)
        clamped_from = superblock.hard_state.commit if hard_state != superblock.hard_state else None
        report = _report(superblock, damaged, stop, log, clamped_from)
        sequences = (superblock.sequence, sequence)
        return cls(disk, hard_state, snapshot, place, log, sequences, report)

    @classmethod
    def bootstrap(cls, disk: SimDisk, configuration: Configuration) -> SimStorage:
        """A founding member on a blank disk: `bootstrap_state` saved (durable once the caller
        completes the sync, like any save)."""
        storage = cls.empty(disk)
        hard_state, meta, entries = bootstrap_state(configuration)
        assert meta == storage.snapshot_meta(), meta
        storage.save(hard_state, entries, None)
        return storage

    @classmethod
    def empty(cls, disk: SimDisk) -> SimStorage:
        """A node that joins later, on a blank disk: term 0, no entries, no configuration."""
        assert disk.is_blank(), "SimStorage.empty wants a blank disk"
        return cls.open(disk)

    # -- The Storage protocol -------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, Configuration, SnapshotMeta, list[LogEntry]]:
        meta = self._snapshot.meta
        entries = list(self._log.entries)
        return self._hard_state, latest_configuration(meta, entries), meta, entries

    def save(
        self, hard_state: HardState | None, entries: Sequence[LogEntry], snapshot: Snapshot | None
    ) -> None:
        """Issue one Ready's writes (snapshot, records, superblock A then B) and `disk.sync()`."""
        sequence = self._sequence_next + 1
        if snapshot is not None:
            assert snapshot.meta.index > self._snapshot.meta.index, snapshot.meta
            self._write_snapshot(snapshot)
            self._log = _Log(1 - self._log.region, sequence, snapshot.meta.index + 1)
        if entries:
            first = entries[0].index
            assert self._log.first_index <= first <= self.last_index() + 1, first
            self._log.truncate(first)
            self._append(entries, sequence)
        if hard_state is not None:
            assert hard_state.term >= self._hard_state.term, (hard_state, self._hard_state)
            self._hard_state = hard_state
        if self._recovering_to is not None and self._hard_state.commit >= self._recovering_to:
            self._recovering_to = None
        self._write_superblock(sequence)
        self.saves += 1
        self._check()

    def compact(self, snapshot: Snapshot) -> None:
        """Write the snapshot, rewrite the entries after it into the other log region, and
        switch to both with the superblock."""
        meta = self._snapshot.meta
        index = snapshot.meta.index
        assert meta.index < index <= self.last_index(), (meta.index, index)
        survivors = self._log.entries[index - meta.index :]
        assert self._log.entries[index - meta.index - 1].term == snapshot.meta.term
        sequence = self._sequence_next + 1
        self._write_snapshot(snapshot)
        self._log = _Log(1 - self._log.region, sequence, index + 1)
        if survivors:
            self._append(survivors, sequence)
        self._write_superblock(sequence)
        self._check()

    def latest_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        if self._snapshot.meta.index == 0:
            return None
        return self._snapshot.meta, self._snapshot.data

    # -- Like MemoryStorage, for drivers and tests -----------------------------------------------

    def last_index(self) -> int:
        return self._log.last_index()

    def entries(self) -> list[LogEntry]:
        return list(self._log.entries)

    def hard_state(self) -> HardState:
        return self._hard_state

    def snapshot_meta(self) -> SnapshotMeta:
        return self._snapshot.meta

    @property
    def recovering_to(self) -> int | None:
        """The loss this node is still recovering from, as persisted (see RecoveryReport)."""
        return self._recovering_to

    @property
    def sequence(self) -> int:
        """The sequence number of the last superblock written (or recovered; 0 if none)."""
        return self._sequence

    # -- Writing ----------------------------------------------------------------------------------

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        """Into the slot that is not current: the current one stays valid until the switch."""
        slot = 0 if self._snapshot_place is None else 1 - self._snapshot_place[0]
        payload = _encode_snapshot(snapshot)
        assert len(payload) <= SNAPSHOT_SLOT_BYTES_MAX, len(payload)
        self.disk.write(SNAPSHOT_SLOT_OFFSETS[slot], payload)
        self._snapshot = snapshot
        self._snapshot_place = (slot, len(payload), crc32(payload))

    def _append(self, entries: Sequence[LogEntry], sequence: int) -> None:
        """One write for all the records, at the log's write position."""
        start = self._log.end
        flags = 0 if self._recovering_to is None else _FLAG_RECOVERING
        records = []
        for entry in entries:
            previous = self._log.previous()
            record, checksum = _encode_record(self.disk.codec, entry, previous, sequence, flags)
            self._log.add(entry, checksum, len(record))
            records.append(record)
        self.disk.write(start, b"".join(records))

    def _write_superblock(self, sequence: int) -> None:
        """Copy A, then copy B, then sync: after the data they point to."""
        place = self._snapshot_place
        superblock = _Superblock(
            sequence=sequence,
            hard_state=self._hard_state,
            snapshot_slot=None if place is None else place[0],
            snapshot_bytes=0 if place is None else place[1],
            snapshot_crc=0 if place is None else place[2],
            log_offset=LOG_REGION_OFFSETS[self._log.region],
            log_first_index=self._log.first_index,
            log_seed=self._log.seed,
            durable_last=(self.last_index(), self._last_term()),
            commit_checksum=self._checksum_at(self._hard_state.commit),
            last_checksum=self._checksum_at(self.last_index()),
            recovering_to=self._recovering_to or 0,
        )
        sector = _encode_superblock(superblock)
        for offset in SUPERBLOCK_OFFSETS:
            self.disk.write(offset, sector)
        self.disk.sync()
        self._sequence = self._sequence_next = sequence

    # -- Checks -----------------------------------------------------------------------------------

    def _checksum_at(self, index: int) -> int:
        """The CRC of the record of entry `index`, or 0 if it is in the snapshot."""
        if index < self._log.first_index:
            return 0
        return self._log.checksums[index - self._log.first_index]

    def _last_term(self) -> int:
        entries = self._log.entries
        return entries[-1].term if entries else self._snapshot.meta.term

    def _check(self) -> None:
        log, meta = self._log, self._snapshot.meta
        assert log.first_index == meta.index + 1, (log.first_index, meta)
        assert len(log.entries) == len(log.offsets) == len(log.checksums)
        for previous, entry in itertools.pairwise(log.entries[-2:]):
            assert entry.index == previous.index + 1, (previous.index, entry.index)
        assert self._hard_state.commit <= self.last_index(), (self._hard_state, self.last_index())
        assert self._last_term() <= self._hard_state.term, (self._last_term(), self._hard_state)
        recovering_to = self._recovering_to
        assert recovering_to is None or self._hard_state.commit < recovering_to, recovering_to


def _authenticated_commit(superblock: _Superblock, log: _Log, stop: ScanStop) -> HardState:
    """The superblock's hard state, its commit lowered to what the recovered log proves.

    A whole log (the scan reached `durable_last` and its checksum) proves everything. A log cut
    short by damage may hold stale records before the cut (a misdirected write leaves the old
    version of a rewritten record in place, and the old chain runs through it), so the commit
    stands only if the record at the commit index is the one the superblock names: the hash chain
    then proves every entry up to it. Otherwise it falls back to the snapshot, which is checked
    whole. A commit past the recovered log is lowered the same way.
    """
    hard_state = superblock.hard_state
    commit, first_index = hard_state.commit, log.first_index
    if stop is ScanStop.END or commit < first_index:
        return hard_state
    if commit <= log.last_index() and log.checksums[commit - first_index] == (
        superblock.commit_checksum
    ):
        return hard_state
    return attrs.evolve(hard_state, commit=first_index - 1)


def _report(
    superblock: _Superblock,
    damaged: bool,
    stop: ScanStop,
    log: _Log,
    commit_clamped_from: int | None,
) -> RecoveryReport:
    durable_index = superblock.durable_last[0]
    last_index = log.last_index()
    short = last_index < durable_index
    lost = durable_index if short and stop is not ScanStop.LATER_SAVE else None
    inherited = superblock.recovering_to or None
    if inherited is not None:
        lost = max(lost or 0, inherited)
    corrupt = damaged or stop not in (ScanStop.END, ScanStop.LATER_SAVE)
    return RecoveryReport(
        superblock_sequence=superblock.sequence,
        durable_last=superblock.durable_last,
        entries_recovered=len(log.entries),
        records_cut=max(0, durable_index - last_index),
        scan_stop=stop,
        corruption_detected=corrupt,
        snapshot_lost=stop is ScanStop.SNAPSHOT_LOST,
        commit_clamped_from=commit_clamped_from,
        inherited_recovering_to=inherited,
        lost_acknowledged=lost,
    )
