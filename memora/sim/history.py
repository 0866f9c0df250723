"""Checks of the client history, once the run is over.

Two independent checks:
- Real-time order of every operation, by log index. Each write reports the index of its entry and
  each read the applied index it was served at. An operation that began after another ended must
  see it: a write's index exceeds, and a read's index is at least, every index of an operation
  that returned before it was called. This covers the whole command mix, and trusts the indexes,
  which the checker has already matched against the canonical log.
- Linearizability of the register workload, by the Wing-Gong/Lowe search with P-compositionality
  (`memora.sim.linearizability`), which trusts nothing but call and return times and values.
  A write whose outcome the client never learned may have happened, or not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from memora.sim import linearizability
from memora.sim.linearizability import Read, Write
from memora.sim.protocol import register_value
from memora.sim.workload import Operation

SEARCH_STEP_LIMIT = 2_000_000


def check_history(
    history: Sequence[Operation], registers: int, deadline: Callable[[], bool] | None = None
) -> str | None:
    """None if the history passes both checks, else what failed."""
    problem = check_real_time_order(history)
    if problem is not None:
        return problem
    return check_registers(history, deadline)


def check_real_time_order(history: Sequence[Operation]) -> str | None:
    timed = [
        operation
        for operation in history
        if operation.ret_us is not None and operation.as_of is None and operation.index > 0
    ]
    by_return = sorted(timed, key=lambda operation: operation.ret_us or 0)
    position = 0
    floor, floor_operation = 0, None
    for operation in sorted(timed, key=lambda operation: operation.call_us):
        while position < len(by_return) and (by_return[position].ret_us or 0) < operation.call_us:
            done = by_return[position]
            if done.index > floor:
                floor, floor_operation = done.index, done
            position += 1
        too_old = operation.index <= floor if operation.kind == "write" else operation.index < floor
        if too_old:
            return (
                f"real-time order: {_describe(operation)} began after {_describe(floor_operation)} "
                f"ended, yet sits at index {operation.index} <= {floor}"
            )
    return None


def check_registers(
    history: Sequence[Operation], deadline: Callable[[], bool] | None = None
) -> str | None:
    operations = [
        _register_operation(operation) for operation in history if operation.register is not None
    ]
    kept = [operation for operation in operations if operation is not None]
    result = linearizability.check(linearizability.KeyValueModel(), kept, deadline=deadline)
    if result.verdict is linearizability.Verdict.NOT_LINEARIZABLE:
        return "register history is not linearizable:\n" + result.report(
            linearizability.KeyValueModel()
        )
    return None


def _register_operation(operation: Operation) -> linearizability.Operation | None:
    if operation.kind == "write":
        write = Write(operation.written, key=operation.register)
        if operation.ret_us is None:
            return linearizability.Operation(operation.client, write, operation.call_us, None)
        return linearizability.Operation(
            operation.client, write, operation.call_us, operation.ret_us, None
        )
    if operation.ret_us is None:
        return None  # A read nobody saw the answer to constrains nothing.
    return linearizability.Operation(
        operation.client,
        Read(key=operation.register),
        operation.call_us,
        operation.ret_us,
        register_value(operation.value),
    )


def _describe(operation: Operation | None) -> str:
    if operation is None:
        return "nothing"
    return (
        f"client {operation.client} {operation.kind} {operation.payload!r} "
        f"[{operation.call_us}us..{operation.ret_us}us]"
    )
