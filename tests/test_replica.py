"""The replica: Raft entries into the state machine, exactly once per client command."""

from __future__ import annotations

import attrs
import pytest

from memora.core import codec, constants
from memora.core.errors import (
    CodecError,
    ConflictError,
    LimitError,
    NotFoundError,
    ValidationError,
)
from memora.core.raft.types import EntryKind, LogEntry
from memora.core.replica import CLIENTS_PART, ClientTable, Replica
from memora.core.types import (
    Applied,
    CreateNamespace,
    ExpireClients,
    InsertNode,
    Proposal,
    Rejected,
)


class Log:
    """Feeds a replica entries with consecutive indexes, as Raft would commit them."""

    def __init__(self, replica: Replica | None = None) -> None:
        self.replica = replica or Replica()
        self.index = self.replica.applied_index

    def normal(self, proposal: Proposal, term: int = 1) -> object:
        self.index += 1
        entry = LogEntry(term, self.index, EntryKind.NORMAL, codec.encode(proposal))
        return self.replica.apply(entry)

    def other(self, kind: EntryKind) -> object:
        self.index += 1
        return self.replica.apply(LogEntry(1, self.index, kind, b""))


def proposal(
    command: object, *, client: str | None = None, sequence: int = 0, at: int = 10
) -> Proposal:
    return Proposal(at, "tester", "main", None, command, client, sequence)  # type: ignore[arg-type]


def started() -> Log:
    log = Log()
    assert log.other(EntryKind.CONFIGURATION) is None
    assert isinstance(log.normal(proposal(CreateNamespace(4))), Applied)
    return log


def test_no_ops_and_configurations_only_advance_the_index() -> None:
    log = started()
    before = log.replica.machine.content_hash()
    assert log.other(EntryKind.NO_OP) is None
    assert log.replica.applied_index == 3
    assert log.replica.machine.content_hash() == before


def test_a_retried_command_applies_once_and_gets_the_cached_reply() -> None:
    log = started()
    first = log.normal(proposal(InsertNode("Person"), client="c1", sequence=1))
    assert isinstance(first, Applied)
    content = log.replica.machine.content_hash()
    retry = log.normal(proposal(InsertNode("Person"), client="c1", sequence=1))
    assert retry == first  # The same reply, index included, not a second node.
    assert log.replica.machine.content_hash() == content
    assert len(log.replica.machine.namespace("main").nodes) == 1
    second = log.normal(proposal(InsertNode("Person"), client="c1", sequence=2))
    assert isinstance(second, Applied) and second.value.id == 2


def test_a_rejected_command_is_cached_too() -> None:
    log = started()
    refused = log.normal(proposal(InsertNode("Person", id=0), client="c1", sequence=1))
    assert isinstance(refused, Rejected) and isinstance(refused.error, ValidationError)
    assert log.normal(proposal(InsertNode("Person"), client="c1", sequence=1)) == refused


def test_an_older_sequence_is_refused() -> None:
    log = started()
    log.normal(proposal(InsertNode("A"), client="c1", sequence=1))
    log.normal(proposal(InsertNode("B"), client="c1", sequence=2))
    stale = log.normal(proposal(InsertNode("C"), client="c1", sequence=1))
    assert isinstance(stale, Rejected) and isinstance(stale.error, ConflictError)
    assert stale.error.field == "sequence"


@pytest.mark.parametrize(("client", "sequence"), [("", 1), ("c", 0), ("c", -3), ("x" * 300, 1)])
def test_bad_session_fields_are_refused(client: str, sequence: int) -> None:
    log = started()
    refused = log.normal(proposal(InsertNode("A"), client=client, sequence=sequence))
    assert isinstance(refused, Rejected) and isinstance(refused.error, ValidationError | LimitError)
    assert refused.error.field in ("client_id", "sequence")
    assert log.replica.machine.namespace("main").nodes == {}


def test_timestamps_of_a_leader_with_a_slow_clock_are_clamped() -> None:
    log = started()
    log.normal(proposal(InsertNode("A"), at=5_000))
    late = log.normal(proposal(InsertNode("B"), at=1_000), term=2)
    assert isinstance(late, Applied) and late.value.created.timestamp_ms == 5_000


def test_expiry_forgets_idle_clients_at_the_same_index_everywhere() -> None:
    log = started()
    log.normal(proposal(InsertNode("A"), client="old", sequence=1, at=100))
    log.normal(proposal(InsertNode("B"), client="new", sequence=1, at=900))
    assert isinstance(log.normal(proposal(ExpireClients(500), at=1_000)), Applied)
    assert set(log.replica.clients.records) == {"new"}
    # A forgotten client's retry applies again: expiry must be longer than any client retries.
    again = log.normal(proposal(InsertNode("A"), client="old", sequence=1, at=1_000))
    assert isinstance(again, Applied) and again.value.id == 3


def test_the_client_table_forgets_the_least_recent_client_when_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(constants, "clients_max", 3)
    table = ClientTable()
    reply = Applied(1, None)
    for number, seen in enumerate([30, 10, 20]):
        table.remember(f"c{number}", 1, reply, seen, "origin")
    table.remember("c9", 1, reply, 40, "origin")
    assert sorted(table.records) == ["c0", "c2", "c9"]  # c1, seen at 10, went first.


def test_the_client_digest_kept_by_each_change_equals_one_taken_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(constants, "clients_max", 3)
    table = ClientTable()
    reply = Applied(1, None)
    empty = table.digest()
    steps = [("a", 1, 10), ("b", 1, 20), ("a", 2, 30), ("c", 1, 40), ("d", 1, 50)]
    digests = set()
    for client_id, sequence, seen in steps:
        table.remember(client_id, sequence, reply, seen, "o")  # "d" evicts "b", the least recent.
        assert table.digest() == ClientTable(table.records).digest()
        digests.add(table.digest())
    assert len(digests) == len(steps)
    assert table.expire(45) == 2 and sorted(table.records) == ["d"]
    assert table.digest() == ClientTable(table.records).digest()
    assert table.expire(60) == 1 and table.digest() == empty


def test_snapshot_keeps_state_and_cached_replies() -> None:
    log = started()
    first = log.normal(proposal(InsertNode("Person"), client="c1", sequence=1))
    log.normal(proposal(InsertNode("Person", id=7)))
    restored = Replica.restore(log.replica.snapshot_parts())
    assert restored.state_hash() == log.replica.state_hash()
    log_after = Log(restored)
    assert log_after.normal(proposal(InsertNode("Person"), client="c1", sequence=1)) == first
    missing = log_after.normal(proposal(InsertNode("X"), client="c2", sequence=1))
    assert isinstance(missing, Applied)


def test_a_number_reused_by_another_command_is_refused_not_answered_with_its_reply() -> None:
    log = started()
    assert isinstance(
        log.normal(attrs.evolve(proposal(CreateNamespace(4)), namespace="other")), Applied
    )
    first = log.normal(proposal(InsertNode("Person"), client="c1", sequence=1))
    assert isinstance(first, Applied)
    content = log.replica.machine.content_hash()
    reused = [
        proposal(CreateNamespace(8), client="c1", sequence=1),  # Another kind of command.
        attrs.evolve(proposal(InsertNode("Person"), client="c1", sequence=1), namespace="other"),
        attrs.evolve(proposal(InsertNode("Person"), client="c1", sequence=1), principal="eve"),
    ]
    for command in reused:
        refused = log.normal(command)
        assert isinstance(refused, Rejected) and isinstance(refused.error, ConflictError)
        assert refused.error.field == "sequence" and "already used" in str(refused.error)
    assert log.replica.machine.content_hash() == content
    assert log.normal(proposal(InsertNode("Other label"), client="c1", sequence=1)) == first


def test_client_records_of_a_snapshot_without_origins_still_answer_retries() -> None:
    log = started()
    first = log.normal(proposal(InsertNode("Person"), client="c1", sequence=1))
    parts = log.replica.snapshot_parts()
    rows = codec.decode(parts[CLIENTS_PART])
    parts[CLIENTS_PART] = codec.encode([row[:4] for row in rows])  # The older layout.
    restored = Log(Replica.restore(parts))
    assert restored.normal(proposal(InsertNode("Person"), client="c1", sequence=1)) == first
    parts[CLIENTS_PART] = codec.encode([[*row[:4], 7] for row in rows])
    with pytest.raises(CodecError):
        Replica.restore(parts)


def test_an_entry_without_a_proposal_is_refused_the_same_way_everywhere() -> None:
    replicas = [started(), started()]
    for log in replicas:
        log.index += 1
        result = log.replica.apply(LogEntry(1, log.index, EntryKind.NORMAL, b"\xff\x00garbage"))
        assert isinstance(result, Rejected)
    assert replicas[0].replica.state_hash() == replicas[1].replica.state_hash()


def test_unknown_namespace_is_a_typed_rejection() -> None:
    log = started()
    refused = log.normal(Proposal(10, "t", "elsewhere", None, InsertNode("A")))
    assert isinstance(refused, Rejected) and isinstance(refused.error, NotFoundError)
