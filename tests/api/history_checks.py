"""The checks of a register history recorded against a real cluster, by the simulator's checkers.

- `linearizability_problem`: the Wing-Gong/Lowe search of `memora.sim.linearizability` with its
  key-value model (one register per key, P-compositional), which trusts only call and return
  times and values. A write with an unknown outcome may have happened at any time after its call,
  or never.
- `real_time_order_problem`: `memora.sim.history.check_real_time_order`, which trusts the log
  indexes the members reported: an operation that began after another ended must sit at a later
  index (a write) or at least at its index (a read).
- `missing_writes`: every acknowledged write is among the versions each member keeps of its
  register.
- `with_stale_read`: a doctored copy of a history, with a read that cannot be linearized, to show
  that the linearizability check is not vacuous.

What must not live here: HTTP or processes; every function is pure over records.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from register_clients import Record, initial_value

from memora.core.types import UpdateNode
from memora.sim import history as sim_history
from memora.sim import linearizability
from memora.sim.linearizability import KeyValueModel, Read, Verdict, Write
from memora.sim.protocol import Query
from memora.sim.workload import Operation

check_timeout_s: Final = 60.0


def as_checker_operation(record: Record) -> linearizability.Operation:
    """The record as `memora.sim.linearizability` takes it: a write or read at its key."""
    if record.kind == "write":
        write = Write(record.value, key=record.key)
        if record.ret_us is None:
            return linearizability.Operation(record.client, write, record.call_us, None)
        return linearizability.Operation(record.client, write, record.call_us, record.ret_us, None)
    assert record.ret_us is not None, "a read without an answer is never recorded"
    read = Read(key=record.key)
    return linearizability.Operation(
        record.client, read, record.call_us, record.ret_us, record.value
    )


def linearizability_problem(records: Sequence[Record]) -> str | None:
    """None if the history is linearizable, else the checker's report (or that it timed out)."""
    model = KeyValueModel()
    operations = [as_checker_operation(record) for record in records]
    deadline = linearizability.deadline_after(check_timeout_s, time.monotonic)
    result = linearizability.check(model, operations, deadline=deadline)
    if result.verdict is Verdict.LINEARIZABLE:
        return None
    report: str = result.report(model)
    return report


def as_simulator_operation(record: Record) -> Operation:
    payload: UpdateNode | Query
    if record.kind == "write":
        payload = UpdateNode(record.key, properties={"value": record.value})
    else:
        payload = Query("get", record.key)
    return Operation(
        client=record.client,
        kind=record.kind,
        payload=payload,
        call_us=record.call_us,
        ret_us=record.ret_us,
        value=record.value,
        index=record.index,
        register=record.key,
        attempts=record.attempts,
    )


def real_time_order_problem(records: Sequence[Record]) -> str | None:
    operations = [as_simulator_operation(record) for record in records]
    problem: str | None = sim_history.check_real_time_order(operations)
    return problem


def missing_writes(
    records: Sequence[Record], versions: Mapping[int, Mapping[int, Sequence[Any]]]
) -> list[str]:
    """Each acknowledged write that a member's versions of its register lack.

    `versions[node_id][key]` is every value the member's node `key` ever held, oldest first."""
    missing = []
    for record in records:
        if record.kind != "write" or record.ret_us is None:
            continue
        for node_id, registers in versions.items():
            if record.value not in registers[record.key]:
                missing.append(f"node {node_id} lacks {record} (acknowledged)")
    return missing


def with_stale_read(records: Sequence[Record]) -> tuple[int, list[Record]]:
    """The key and that key's records plus one read, begun after every operation ended, that
    returns the register's initial value although a later write was acknowledged: a stale read
    no linearization explains (each client writes values of its own, never the initial one)."""
    written = [
        record
        for record in records
        if record.kind == "write" and record.ret_us is not None and record.client != 0
    ]
    assert written, "no write was acknowledged, so there is nothing to read stale"
    key = written[-1].key
    end_us = max(record.ret_us or record.call_us for record in records)
    stale = Record(-1, "read", key, initial_value, end_us + 1, end_us + 2)
    return key, [record for record in records if record.key == key] + [stale]
