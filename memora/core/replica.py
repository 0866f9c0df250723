"""A replica: the state machine fed by Raft's committed entries, with exactly-once client sessions.

What lives here: turning a committed `LogEntry` into a state machine `Entry` (NORMAL entries carry
an encoded `Proposal`; no-op and configuration entries only advance the applied index), the table
of client sessions that makes every numbered command apply once, and snapshots of both.

Rules: everything is a pure function of the committed log. Applied timestamps never go backwards:
a proposal stamped by a leader whose clock is behind is applied at the last applied timestamp.
The client table is bounded; when full, the client seen least recently (ties by id) is forgotten
first, the same one on every replica. Nothing here does I/O or reads a clock.

`injected_bugs` is for the simulator alone: with `InjectedBug.SESSION_DEDUP_OFF` a retried
command applies again. Every other caller leaves it empty.
"""

from __future__ import annotations

import hashlib
from typing import Final

import attrs

from memora.core import constants, snapshot, validate
from memora.core.codec import decode, decode_proposal, encode
from memora.core.errors import CodecError, ConflictError, MemoraError, ValidationError
from memora.core.raft.types import EntryKind, InjectedBug, LogEntry
from memora.core.state import HASH_BYTES, HASH_MODULUS, StateMachine
from memora.core.types import Applied, Entry, ExpireClients, Proposal, Rejected, Result

CLIENTS_PART: Final = "clients"


@attrs.frozen
class ClientRecord:
    """The last command a client had applied: its number, its reply, and when; and where it
    came from (`command_origin`), so that the reply is never handed to another command that
    reuses the number ("" for a record restored from a snapshot that predates it)."""

    sequence: int
    reply: Result
    last_seen_ms: int
    origin: str = ""


def command_origin(proposal: Proposal) -> str:
    """Who sent a numbered command, into which namespace, and of what kind: a retry has the
    same; a different command that reuses the client's number almost never does."""
    return f"{proposal.principal}\x1f{proposal.namespace}\x1f{type(proposal.command).__name__}"


def _client_digest(client_id: str, record: ClientRecord) -> int:
    summary = encode((client_id, record.sequence, record.last_seen_ms))
    return int.from_bytes(hashlib.sha256(summary).digest(), "big")


class ClientTable:
    """client id -> its last applied command; what makes retries exactly-once.

    `digest` is a sum of per-client digests (modulo HASH_MODULUS), brought up to date from the
    clients changed since it was last asked for: the simulator asks after every entry, and
    digesting the whole table each time cost more than applying the entry, while a server
    rarely asks at all. So `records` changes only through the methods below.
    """

    def __init__(self, records: dict[str, ClientRecord] | None = None) -> None:
        self.records: dict[str, ClientRecord] = dict(records or {})
        assert len(self.records) <= constants.clients_max
        self._digests: dict[str, int] = {}  # The digest of each client counted in the sum.
        self._digest_sum = 0
        self._changed: dict[str, None] = dict.fromkeys(self.records)  # Not yet (re)counted.

    def duplicate_reply(
        self, index: int, client_id: str, sequence: int, origin: str
    ) -> Result | None:
        """The reply to a command this client already had applied, or None if it is new.

        A retry of the last command gets its cached reply. An older number can no longer be
        answered (its reply was dropped when the next one applied), so it is refused; so is the
        last number reused by another principal, namespace or kind of command, which would
        otherwise be told of a write that is not its own (and never applied).
        """
        record = self.records.get(client_id)
        if record is None or sequence > record.sequence:
            return None
        if sequence < record.sequence:
            message = (
                f"command {sequence} of client {client_id!r} was superseded by {record.sequence}"
            )
            return Rejected(index, ConflictError(message, "sequence"))
        if record.origin not in ("", origin):
            message = (
                f"command {sequence} of client {client_id!r} was already used by another command "
                "(another kind, namespace or principal); number each new command anew"
            )
            return Rejected(index, ConflictError(message, "sequence"))
        return record.reply

    def remember(
        self, client_id: str, sequence: int, reply: Result, timestamp_ms: int, origin: str
    ) -> None:
        if client_id not in self.records and len(self.records) >= constants.clients_max:
            self._forget_least_recent()
        self.records[client_id] = ClientRecord(sequence, reply, timestamp_ms, origin)
        self._mark_changed(client_id)
        assert len(self.records) <= constants.clients_max

    def expire(self, before_ms: int) -> int:
        stale = [client for client, r in self.records.items() if r.last_seen_ms < before_ms]
        for client_id in stale:
            self._forget(client_id)
        return len(stale)

    def digest(self) -> bytes:
        total = self._digest_sum
        for client_id in self._changed:
            total -= self._digests.pop(client_id, 0)
            record = self.records.get(client_id)
            if record is not None:
                digest = _client_digest(client_id, record)
                self._digests[client_id] = digest
                total += digest
        self._changed.clear()
        self._digest_sum = total % HASH_MODULUS
        assert len(self._digests) == len(self.records)
        return self._digest_sum.to_bytes(HASH_BYTES, "big")

    def _forget_least_recent(self) -> None:
        oldest = min(self.records.items(), key=lambda item: (item[1].last_seen_ms, item[0]))
        self._forget(oldest[0])

    def _forget(self, client_id: str) -> None:
        del self.records[client_id]
        self._mark_changed(client_id)

    def _mark_changed(self, client_id: str) -> None:
        self._changed[client_id] = None
        if len(self._changed) > constants.clients_max:
            self.digest()  # Forgotten clients pile up here when nobody asks for the digest.
        assert len(self._changed) <= constants.clients_max


class Replica:
    """A state machine and its client table, applying what Raft commits, in log order."""

    def __init__(
        self,
        machine: StateMachine | None = None,
        clients: ClientTable | None = None,
        *,
        injected_bugs: frozenset[InjectedBug] = frozenset(),
    ) -> None:
        self.machine = machine if machine is not None else StateMachine()
        self.clients = clients if clients is not None else ClientTable()
        assert all(isinstance(bug, InjectedBug) for bug in injected_bugs), injected_bugs
        self.injected_bugs = injected_bugs

    @property
    def applied_index(self) -> int:
        return self.machine.applied_index

    def apply(self, entry: LogEntry) -> Result | None:
        """Apply one committed entry. Returns the reply to a NORMAL entry, None otherwise."""
        assert entry.index == self.machine.applied_index + 1, (entry.index, self.applied_index)
        if entry.kind is not EntryKind.NORMAL:
            self.machine.skip(entry.index)
            return None
        try:
            proposal = decode_proposal(entry.data)
        except CodecError:
            # Only this replica's service proposes, so this is a bug or a damaged log that passed
            # its CRC: refuse it in the same way everywhere rather than crash every replica.
            self.machine.skip(entry.index)
            return Rejected(entry.index, CodecError("the entry does not hold a proposal"))
        return self._apply_proposal(entry, proposal)

    @property
    def graphs_unsettled(self) -> bool:
        return self.machine.graphs_unsettled

    def settle_graphs(self) -> None:
        """`StateMachine.settle_graphs`: work no reply waits for, done when the caller likes."""
        self.machine.settle_graphs()

    def state_hash(self) -> str:
        """The machine's state hash extended with the client table: one digest of both."""
        return hashlib.sha256(self.machine.state_header() + self.clients.digest()).hexdigest()

    def snapshot_parts(self) -> dict[str, bytes]:
        parts = snapshot.take(self.machine)
        table = self.clients.records
        parts[CLIENTS_PART] = encode(
            [[c, r.sequence, r.reply, r.last_seen_ms, r.origin] for c, r in table.items()]
        )
        return parts

    def snapshot_data(self) -> bytes:
        """The snapshot as the one blob Raft stores and streams: a CBOR map of named parts."""
        return encode(self.snapshot_parts())

    @classmethod
    def from_snapshot_data(
        cls, data: bytes, *, injected_bugs: frozenset[InjectedBug] = frozenset()
    ) -> Replica:
        """The replica `snapshot_data()` describes. Raises `CodecError` on malformed data."""
        parts = decode(data)
        if not isinstance(parts, dict) or not all(
            isinstance(name, str) and isinstance(part, bytes) for name, part in parts.items()
        ):
            raise CodecError("a snapshot's data is not a map of named parts")
        return cls.restore(parts, injected_bugs=injected_bugs)

    @classmethod
    def restore(
        cls, parts: dict[str, bytes], *, injected_bugs: frozenset[InjectedBug] = frozenset()
    ) -> Replica:
        machine = snapshot.restore(parts)
        records = decode(parts.get(CLIENTS_PART, encode([])))
        if not isinstance(records, list):
            raise CodecError("the clients part of the snapshot is not a list")
        table = {}
        for item in records:
            # Snapshots written before origins were kept have four fields.
            if not (isinstance(item, list) and len(item) in (4, 5) and isinstance(item[0], str)):
                raise CodecError("a client record in the snapshot is malformed")
            client_id, sequence, reply, last_seen_ms, *origin = item
            if origin and not isinstance(origin[0], str):
                raise CodecError("a client record's origin in the snapshot is not text")
            table[client_id] = ClientRecord(sequence, reply, last_seen_ms, *origin)
        return cls(machine, ClientTable(table), injected_bugs=injected_bugs)

    def _check_client(self, index: int, proposal: Proposal, origin: str) -> Result | None:
        """A reply that settles the command without applying it: bad session fields, or a
        duplicate of a command already applied (`origin` is the proposal's `command_origin`)."""
        client_id, sequence = proposal.client_id, proposal.sequence
        try:
            validate.text_field(client_id, "client_id", constants.client_id_bytes_max)
            if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
                raise ValidationError("sequence must be an integer >= 1", "sequence")
        except MemoraError as error:
            return Rejected(index, error)
        assert isinstance(client_id, str) and isinstance(sequence, int)
        if InjectedBug.SESSION_DEDUP_OFF in self.injected_bugs:
            return None  # Every command looks new: a retry applies a second time.
        return self.clients.duplicate_reply(index, client_id, sequence, origin)

    def _apply_proposal(self, entry: LogEntry, proposal: Proposal) -> Result:
        timestamp_ms = max(proposal.timestamp_ms, self.machine.last_timestamp_ms)
        if isinstance(proposal.command, ExpireClients):
            self.clients.expire(proposal.command.before_ms)
            self.machine.skip(entry.index)
            self.machine.last_timestamp_ms = timestamp_ms
            return Applied(entry.index, None)
        origin = command_origin(proposal) if proposal.client_id is not None else ""
        if proposal.client_id is not None:
            cached = self._check_client(entry.index, proposal, origin)
            if cached is not None:
                self.machine.skip(entry.index)
                return cached
        state_entry = Entry(
            entry.index,
            entry.term,
            timestamp_ms,
            proposal.principal,
            proposal.namespace,
            proposal.session,
            proposal.command,
        )
        reply = self.machine.apply(state_entry)
        if proposal.client_id is not None:
            self.clients.remember(
                proposal.client_id, proposal.sequence, reply, timestamp_ms, origin
            )
        return reply
