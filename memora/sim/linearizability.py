"""A linearizability checker, generic over a sequential model, plus a register model and a parser
for Jepsen's etcd logs.

What lives here: the history types (`Operation`, `UNKNOWN_OUTPUT`), the `Model` base class, the
search (`check`), the register and key-value models, the Jepsen log parser and the command line
`python -m memora.sim.linearizability FILE...`. What must not: threads, trio, or a wall clock in the
checker. `check` learns when to give up from an injected `deadline`; only `main` reads a real clock.

## What is checked
A history is a set of operations, each with a call time and a return time. It is linearizable when
the operations can be put in one sequence that (1) respects real time: if `a.ret < b.call` then `a`
comes before `b` (equal times count as concurrent) and (2) is legal for the sequential model, step
by step from `model.init()`. An operation whose outcome is unknown (`ret is None`) may take effect
at any instant after its call, or never: it may appear anywhere after every operation that returned
before its call, or be left out.

## The search (Wing & Gong, with Lowe's memoisation)
The call and return events, sorted by time, form a doubly linked list. Scanning from the front,
every call entry met before the first return entry belongs to an operation that may come next: every
operation that returned before that call has been linearized already (its return entry would
otherwise stop the scan). The search tries such an operation in the model; if the model accepts it,
it "lifts" the call and return entries out of the list, pushes the choice on a stack, and restarts
the scan from the front. When the scan meets a return entry, the operation it closes has not been
linearized although everything still in the list comes after it: a dead end. The search then pops
the last choice, puts its entries back ("unlifts" them, in reverse order, so the links come back
exactly) and tries the next call after it. It fails when a dead end has nothing left to pop.

Lowe's improvement: the rest of the search depends only on which operations are linearized and on
the model state, so every (set of linearized operations, state) pair reached is remembered, and
reaching one again is skipped as a failed try. The set is an int used as a bitset, which is why
model states must be hashable.

Unknown outcomes get a call entry and no return entry (a return at +infinity): the scan never stops
on them, so they may be linearized anywhere after their call; and since nothing forces them in, the
search succeeds as soon as no return entry is left, i.e. when every completed operation is
linearized, whatever pending calls remain. The model sees their output as `UNKNOWN_OUTPUT`, must
accept it, and applies the input's effect.

Two refinements keep unknown outcomes cheap (Jepsen histories have many: every timed-out write).
Each level of the search tries completed operations before pending ones, so a pending operation is
linearized only once something needs its effect. And the memo also skips a pair that an earlier one
dominates: same completed operations, same state, a subset of the pending ones (see `_Visited`).

## P-compositionality
Linearizability is local (Herlihy & Wing): a history of independent objects is linearizable exactly
when each object's sub-history is. `model.partition` splits the history (by key, say) and each part
is searched on its own, which turns one exponential search into several much smaller ones.
"""

from __future__ import annotations

import abc
import argparse
import enum
import re
import sys
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import attrs

# How many search steps pass between two calls of the deadline: often enough to stop within
# milliseconds of it, rarely enough that asking costs nothing.
deadline_poll_interval_steps: Final = 1024
# How many sets of linearized pending operations the memo keeps per (completed set, state) for its
# dominance test (see `_Visited`); more would prune more and cost more per step.
dominance_pending_sets_max: Final = 32
# The command line gives up on a history (and says `unknown`) after this long.
cli_timeout_s_default: Final = 10.0
assert deadline_poll_interval_steps >= 1
assert dominance_pending_sets_max >= 1
assert cli_timeout_s_default > 0


class UnknownOutput(enum.Enum):
    """The type of `UNKNOWN_OUTPUT`: a one-member enum, so that mypy can narrow on it."""

    UNKNOWN_OUTPUT = "unknown-output"


# The output of an operation whose result nobody saw. A model must accept it and apply the effect.
UNKNOWN_OUTPUT: Final = UnknownOutput.UNKNOWN_OUTPUT


@attrs.frozen
class Operation:
    """One call of one client: `input` was called at `call` and returned `output` at `ret`.

    Times are integers from any clock shared by the whole history. `ret is None` is an unknown
    outcome (the client gave up, crashed, or the history ended first): the operation may have taken
    effect at any instant after `call`, or never, and its `output` is `UNKNOWN_OUTPUT`. A completed
    operation may also carry `UNKNOWN_OUTPUT` when it surely ended by `ret` but its result is
    unknown.
    """

    client_id: int
    input: Hashable
    call: int
    ret: int | None
    output: Any = UNKNOWN_OUTPUT

    def __attrs_post_init__(self) -> None:
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"operation returns at {self.ret}, before its call at {self.call}")
        if self.ret is None and self.output is not UNKNOWN_OUTPUT:
            raise ValueError("an operation with an unknown outcome (ret None) has UNKNOWN_OUTPUT")

    @property
    def pending(self) -> bool:
        """Whether the outcome is unknown: it may take effect after `call`, or never."""
        return self.ret is None


StateT = TypeVar("StateT", bound=Hashable)


class Model(abc.ABC, Generic[StateT]):
    """A sequential specification: the checker asks it whether each step of a sequence is legal.

    `step` must be a pure function, and states hashable (and equal exactly when they behave the
    same): the search remembers the (linearized operations, state) pairs it has seen, and the answer
    of `step` for each operation and state.
    """

    @abc.abstractmethod
    def init(self) -> StateT:
        """The state before any operation."""

    @abc.abstractmethod
    def step(self, state: StateT, input: Hashable, output: Any) -> tuple[bool, StateT]:
        """Whether `input` may return `output` in `state`, and the state after it.

        `output` is `UNKNOWN_OUTPUT` when nobody saw the result: accept it and apply the effect.
        """

    def partition(self, operations: Sequence[Operation]) -> list[list[Operation]]:
        """Split the history into independently checkable parts; by default, one part."""
        return [list(operations)]

    def describe_operation(self, operation: Operation) -> str:
        """One line about an operation, for failure reports."""
        output = "?" if operation.output is UNKNOWN_OUTPUT else repr(operation.output)
        return f"client {operation.client_id}: {operation.input!r} -> {output}"


class Verdict(enum.Enum):
    """The answer of `check`; the value is what the command line prints."""

    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not-linearizable"
    UNKNOWN = "unknown"  # The deadline passed before the search finished.


@attrs.frozen
class CheckResult:
    """The verdict and, unless linearizable, the partition that failed or timed out.

    `longest_prefix` is the longest sequence of that partition's operations the search managed to
    linearize: the operations just after it are where the history goes wrong.
    """

    verdict: Verdict
    partition_index: int | None = None
    partition: tuple[Operation, ...] = ()
    longest_prefix: tuple[Operation, ...] = ()

    @property
    def linearizable(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE

    def report(self, model: Model[Any]) -> str:
        """A human-readable account of the failure, one operation a line, in time order."""
        if self.verdict is Verdict.LINEARIZABLE:
            return "linearizable"
        lines = [
            f"{self.verdict.value}: partition {self.partition_index} "
            f"({len(self.partition)} operations); longest linearizable prefix "
            f"({len(self.longest_prefix)} operations):"
        ]
        lines += [f"  {_describe_timed(model, op)}" for op in self.longest_prefix]
        prefix = {id(op) for op in self.longest_prefix}
        rest = sorted((op for op in self.partition if id(op) not in prefix), key=lambda op: op.call)
        lines.append(f"not linearized ({len(rest)} operations):")
        lines += [f"  {_describe_timed(model, op)}" for op in rest]
        return "\n".join(lines)


def _describe_timed(model: Model[Any], operation: Operation) -> str:
    ret = "?" if operation.ret is None else operation.ret
    return f"[{operation.call}, {ret}] {model.describe_operation(operation)}"


# Returns True once the checker should give up and answer `Verdict.UNKNOWN`.
Deadline = Callable[[], bool]


def deadline_after(timeout_s: float, clock: Callable[[], float]) -> Deadline:
    """A deadline `timeout_s` seconds of `clock` from now (pass `time.monotonic` for real time)."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    expires_at_s = clock() + timeout_s
    return lambda: clock() >= expires_at_s


def check(
    model: Model[StateT], operations: Sequence[Operation], *, deadline: Deadline | None = None
) -> CheckResult:
    """Whether `operations` form a linearizable history of `model`. See the module docstring.

    Each part of `model.partition(operations)` is searched on its own. A part that is not
    linearizable settles the answer; a part that runs past `deadline` makes it UNKNOWN unless a
    later part is not linearizable.
    """
    partitions = model.partition(operations)
    assert sum(len(part) for part in partitions) == len(operations), "partition lost operations"
    timed_out: CheckResult | None = None
    for index, part in enumerate(partitions):
        verdict, longest = _search(model, part, deadline)
        if verdict is Verdict.LINEARIZABLE:
            continue
        result = CheckResult(verdict, index, tuple(part), tuple(part[i] for i in longest))
        if verdict is Verdict.NOT_LINEARIZABLE:
            return result
        if timed_out is None:
            timed_out = result
    return CheckResult(Verdict.LINEARIZABLE) if timed_out is None else timed_out


class _Entry:
    """A call or return event in the search's doubly linked list.

    `index` is the operation's position in its partition and `bit` its bit in the linearized set. A
    call's `match` is its return entry, or None for an unknown outcome. `outcomes` remembers
    `model.step` for this call by state: the search asks the same question many times, and a model
    is a pure function. The head sentinel has index -1 and is its own `previous`; `next` is None at
    the end of the list.
    """

    __slots__ = (
        "bit",
        "index",
        "input",
        "is_call",
        "match",
        "next",
        "outcomes",
        "output",
        "previous",
    )

    def __init__(self, index: int, operation: Operation | None, is_call: bool) -> None:
        self.index = index
        self.bit = 1 << index if index >= 0 else 0
        self.is_call = is_call
        self.input: Hashable = None if operation is None else operation.input
        self.output: Any = None if operation is None else operation.output
        self.outcomes: dict[Hashable, tuple[bool, Any]] = {}
        self.match: _Entry | None = None
        self.previous: _Entry = self
        self.next: _Entry | None = None


def _entry_list(operations: Sequence[Operation]) -> _Entry:
    """The head of the list of call and return entries in time order; calls first at equal times."""
    events: list[tuple[int, int, int]] = []  # (time, 0 for a call or 1 for a return, index)
    for index, operation in enumerate(operations):
        events.append((operation.call, 0, index))
        if operation.ret is not None:
            events.append((operation.ret, 1, index))
    events.sort()
    head = tail = _Entry(-1, None, is_call=False)
    calls: dict[int, _Entry] = {}
    for _time, kind, index in events:
        entry = _Entry(index, operations[index], is_call=kind == 0)
        if entry.is_call:
            calls[index] = entry
        else:
            calls[index].match = entry  # The call sorts first: call <= ret, and 0 < 1.
        entry.previous = tail
        tail.next = entry
        tail = entry
    return head


def _unlink(entry: _Entry) -> None:
    entry.previous.next = entry.next
    if entry.next is not None:
        entry.next.previous = entry.previous


def _relink(entry: _Entry) -> None:
    entry.previous.next = entry
    if entry.next is not None:
        entry.next.previous = entry


def _lift(call: _Entry) -> None:
    """Take an operation's entries out of the list; `_unlift` puts them back."""
    _unlink(call)
    if call.match is not None:
        _unlink(call.match)


def _unlift(call: _Entry) -> None:
    """Undo `_lift(call)`; valid only as the inverse of the latest lift still in effect."""
    if call.match is not None:
        _relink(call.match)
    _relink(call)


class _Visited:
    """The memo: whether the search has reached a (linearized set, state) pair, or a better one.

    Exact (Lowe): a pair reached before is skipped. Dominance: unknown outcomes are optional, so
    with the same completed operations linearized and the same state, linearizing more pending ones
    can only remove options (their calls leave the list, while the return entries, which set the
    obligations, stay the same). A pair whose linearized pending operations are a superset of an
    earlier pair's is therefore skipped as well. For that test each (completed set, state) keeps
    its minimal pending sets, at most `dominance_pending_sets_max` of them, so its cost stays
    bounded; pairs beyond that are still remembered exactly.
    """

    __slots__ = ("exact", "pending_mask", "pending_sets")

    def __init__(self, pending_mask: int) -> None:
        self.pending_mask = pending_mask
        self.exact: set[tuple[int, Hashable]] = set()
        self.pending_sets: dict[tuple[int, Hashable], list[int]] = {}

    def first_visit(self, linearized: int, state: Hashable) -> bool:
        """Record the pair and say whether it is new and not dominated by one seen before."""
        if (linearized, state) in self.exact:
            return False
        pending = linearized & self.pending_mask
        known = self.pending_sets.setdefault((linearized ^ pending, state), [])
        if any(seen & ~pending == 0 for seen in known):
            return False
        self.exact.add((linearized, state))
        if len(known) < dominance_pending_sets_max:
            # Keep an antichain: drop the sets that the new one dominates.
            known[:] = [seen for seen in known if pending & ~seen != 0]
            known.append(pending)
        return True


def _pending_mask(operations: Sequence[Operation]) -> int:
    return sum(1 << index for index, operation in enumerate(operations) if operation.pending)


def _search(
    model: Model[StateT], operations: Sequence[Operation], deadline: Deadline | None
) -> tuple[Verdict, list[int]]:
    """The search of the module docstring over one partition: the verdict and the longest
    linearization found (indexes into `operations`, in order).

    Each level scans its candidates in two passes, completed operations first and pending ones
    second (`pending_pass`): pending operations are then linearized only where something needs them.
    """
    head = _entry_list(operations)
    visited = _Visited(_pending_mask(operations))
    state = model.init()
    linearized = 0  # Bit i is set when operations[i] is on the stack.
    stack: list[tuple[_Entry, StateT, bool]] = []  # (call entry, state before it, pending_pass)
    longest: list[int] = []
    steps_until_poll = deadline_poll_interval_steps
    entry, pending_pass = head.next, False
    while entry is not None:
        steps_until_poll -= 1
        if steps_until_poll == 0:
            if deadline is not None and deadline():
                return Verdict.UNKNOWN, longest
            steps_until_poll = deadline_poll_interval_steps
        if not entry.is_call:  # The end of a pass: this level's candidates are all behind us.
            if not pending_pass:
                entry, pending_pass = head.next, True
            elif stack:
                entry, state, pending_pass = stack.pop()
                linearized ^= entry.bit
                _unlift(entry)
                entry = entry.next
            else:
                return Verdict.NOT_LINEARIZABLE, longest
            continue
        if (entry.match is None) is pending_pass:
            outcome = entry.outcomes.get(state)
            if outcome is None:
                outcome = entry.outcomes[state] = model.step(state, entry.input, entry.output)
            legal, next_state = outcome
            if legal and visited.first_visit(linearized | entry.bit, next_state):
                stack.append((entry, state, pending_pass))
                state, linearized = next_state, linearized | entry.bit
                _lift(entry)
                if len(stack) > len(longest):
                    longest = [call.index for call, _, _ in stack]
                entry, pending_pass = head.next, False
                continue
        entry = entry.next
    # No return entry is left in the list, so every completed operation is linearized.
    return Verdict.LINEARIZABLE, [call.index for call, _, _ in stack]


@attrs.frozen
class Read:
    """Read the register (at `key`); the output is its value, None if never written."""

    key: Hashable = None


@attrs.frozen
class Write:
    """Set the register (at `key`) to `value`; the output is None."""

    value: Hashable
    key: Hashable = None


@attrs.frozen
class CompareAndSet:
    """Set the register (at `key`) to `desired` if it holds `expected`; the output says whether."""

    expected: Hashable
    desired: Hashable
    key: Hashable = None


RegisterInput = Read | Write | CompareAndSet


class RegisterModel(Model[Hashable]):
    """One register, None until written: read, write, and compare-and-set. Keys are ignored."""

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, input: Hashable, output: Any) -> tuple[bool, Hashable]:
        if isinstance(input, Read):
            return output is UNKNOWN_OUTPUT or output == state, state
        if isinstance(input, Write):
            return True, input.value
        if isinstance(input, CompareAndSet):
            holds = state == input.expected
            return output is UNKNOWN_OUTPUT or output == holds, input.desired if holds else state
        raise TypeError(f"not a register operation: {input!r}")

    def describe_operation(self, operation: Operation) -> str:
        input = operation.input
        output = "?" if operation.output is UNKNOWN_OUTPUT else repr(operation.output)
        if isinstance(input, Read):
            text = f"read() -> {output}"
        elif isinstance(input, Write):
            text = f"write({input.value!r})"
        elif isinstance(input, CompareAndSet):
            text = f"cas({input.expected!r}, {input.desired!r}) -> {output}"
        else:
            text = f"{input!r} -> {output}"
        key = getattr(input, "key", None)
        where = "" if key is None else f" at {key!r}"
        return f"client {operation.client_id}: {text}{where}"


class KeyValueModel(RegisterModel):
    """A map of independent registers: the history is partitioned by key, one register per key.

    `step` sees one key's operations only, so a state is one register's value.
    """

    def partition(self, operations: Sequence[Operation]) -> list[list[Operation]]:
        # A dict keeps first-seen order, so the parts come out in the same order on every run.
        by_key: dict[Hashable, list[Operation]] = {}
        for operation in operations:
            key = getattr(operation.input, "key", None)
            by_key.setdefault(key, []).append(operation)
        return list(by_key.values())


class HistoryParseError(ValueError):
    """A line of a Jepsen log that does not say what the format allows."""

    def __init__(self, source: str, line_number: int, message: str) -> None:
        super().__init__(f"{source}:{line_number}: {message}")
        self.source = source
        self.line_number = line_number
        self.message = message


_EVENT = re.compile(
    r"^INFO\s+jepsen\.util\s+-\s+(?P<process>\d+)\s+:(?P<type>\S+)\s+:(?P<function>\S+)"
    r"(?:\s+(?P<value>.*?))?\s*$"
)
_INTEGER = re.compile(r"-?\d+")
_PAIR = re.compile(r"\[\s*(-?\d+)\s+(-?\d+)\s*\]")


@attrs.frozen
class _Call:
    line_number: int
    input: RegisterInput


def parse_jepsen_log(text: str, source: str = "<string>") -> list[Operation]:
    """The register operations of a Jepsen etcd log (the format of
    /work/shared/linearizability/README.md), in call order.

    Times are line numbers. `:info` events and lines that are not `jepsen.util` events are ignored.
    A call still open at the end of the text is an unknown outcome. `:fail :read :timed-out`
    completes a read whose output is unknown; `:fail :cas` is a cas that returned false (no effect).
    Any other `:invoke`, `:ok` or `:fail` event, and any return that does not match its process's
    open call, raises `HistoryParseError` naming the line.
    """
    open_calls: dict[int, _Call] = {}
    operations: list[Operation] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        event = _EVENT.match(line)
        if event is None or event["type"] not in ("invoke", "ok", "fail"):
            continue
        process = int(event["process"])
        function, value = event["function"], event["value"] or ""
        try:
            if event["type"] == "invoke":
                _open_call(open_calls, process, line_number, _parse_input(function, value))
            else:
                call = open_calls.pop(process, None)
                output = _parse_return(call, event["type"], function, value)
                assert call is not None  # _parse_return raises on a missing call.
                operations.append(
                    Operation(process, call.input, call.line_number, line_number, output)
                )
        except ValueError as error:
            raise HistoryParseError(source, line_number, str(error)) from None
    for process, call in open_calls.items():
        operations.append(Operation(process, call.input, call.line_number, None))
    return sorted(operations, key=lambda operation: operation.call)


def load_jepsen_log(path: str | Path) -> list[Operation]:
    """`parse_jepsen_log` of a file; errors name the path as given."""
    return parse_jepsen_log(Path(path).read_text(encoding="utf-8"), source=str(path))


def _open_call(
    open_calls: dict[int, _Call], process: int, line_number: int, input: RegisterInput
) -> None:
    if process in open_calls:
        opened = open_calls[process].line_number
        raise ValueError(f"process {process} calls again with its call of line {opened} open")
    open_calls[process] = _Call(line_number, input)


def _parse_value(text: str) -> int | None:
    if text == "nil":
        return None
    if _INTEGER.fullmatch(text) is None:
        raise ValueError(f"expected nil or an integer, got {text!r}")
    return int(text)


def _parse_pair(text: str) -> tuple[int, int]:
    pair = _PAIR.fullmatch(text)
    if pair is None:
        raise ValueError(f"expected [A B] with integers A and B, got {text!r}")
    return int(pair[1]), int(pair[2])


def _parse_input(function: str, value: str) -> RegisterInput:
    if function == "read":
        if value != "nil":
            raise ValueError(f"a read is invoked with nil, got {value!r}")
        return Read()
    if function == "write":
        written = _parse_value(value)
        if written is None:
            raise ValueError("a write is invoked with an integer, got nil")
        return Write(written)
    if function == "cas":
        return CompareAndSet(*_parse_pair(value))
    raise ValueError(f"unknown operation :{function}")


def _parse_return(call: _Call | None, kind: str, function: str, value: str) -> Any:
    """The output that an `:ok` or `:fail` event of `function` with `value` gives `call`."""
    if call is None:
        raise ValueError(f":{kind} :{function} without an open call of that process")
    input = call.input
    expected_function = {Read: "read", Write: "write", CompareAndSet: "cas"}[type(input)]
    if function != expected_function:
        raise ValueError(
            f":{kind} :{function} answers the :{expected_function} of line {call.line_number}"
        )
    if isinstance(input, Read):
        if kind == "fail":
            if value != ":timed-out":
                raise ValueError(f"a failed read says :timed-out, got {value!r}")
            return UNKNOWN_OUTPUT
        return _parse_value(value)
    if isinstance(input, Write):
        if kind == "fail":
            raise ValueError("a failed write is not part of the format")
        if _parse_value(value) != input.value:
            raise ValueError(f"write of {value} answers the write of {input.value}")
        return None
    if _parse_pair(value) != (input.expected, input.desired):
        raise ValueError(f"cas {value} answers a different cas")
    return kind == "ok"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m memora.sim.linearizability [--timeout-s S] [--explain] FILE...`.

    Prints `FILE linearizable`, `FILE not-linearizable` or `FILE unknown` (timed out) for each file.
    Exits 2 if the arguments or any file could not be read or parsed, else 1 if any history is not
    linearizable, else 3 if any check timed out, else 0.
    """
    # The one wall clock in memora/sim: the command line's timeout. check() takes a deadline.
    import time

    parser = argparse.ArgumentParser(
        prog="python -m memora.sim.linearizability",
        description="Check Jepsen etcd register histories for linearizability.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--timeout-s", type=float, default=cli_timeout_s_default)
    parser.add_argument("--explain", action="store_true", help="report failures on stderr")
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits on --help and on usage errors.
        return stop.code if isinstance(stop.code, int) else 2
    if arguments.timeout_s <= 0:
        print("error: --timeout-s must be positive", file=sys.stderr)
        return 2
    verdicts: set[Verdict | None] = set()
    model = RegisterModel()
    for file in arguments.files:
        try:
            operations = load_jepsen_log(file)
        except (HistoryParseError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            verdicts.add(None)
            continue
        result = check(
            model, operations, deadline=deadline_after(arguments.timeout_s, time.monotonic)
        )
        print(f"{file} {result.verdict.value}")
        if arguments.explain and not result.linearizable:
            print(f"{file}: {result.report(model)}", file=sys.stderr)
        verdicts.add(result.verdict)
    return _exit_code(verdicts)


def _exit_code(verdicts: set[Verdict | None]) -> int:
    """2 for a file that could not be checked (None), then 1, 3, 0 as `main` says."""
    if None in verdicts:
        return 2
    if Verdict.NOT_LINEARIZABLE in verdicts:
        return 1
    if Verdict.UNKNOWN in verdicts:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
