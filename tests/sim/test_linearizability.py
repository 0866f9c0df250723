"""The linearizability checker: the Jepsen etcd corpus with its labels, small histories written by
hand, property tests against a brute-force checker and against histories of a real register, the
Jepsen log parser, and the command line."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memora.sim.linearizability import (
    UNKNOWN_OUTPUT,
    CheckResult,
    CompareAndSet,
    HistoryParseError,
    KeyValueModel,
    Operation,
    Read,
    RegisterModel,
    Verdict,
    Write,
    check,
    deadline_after,
    load_jepsen_log,
    main,
    parse_jepsen_log,
)

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "linearizability"
ETCD = CORPUS / "etcd"
# Each corpus history must be checked within this long, on a slow and busy machine. The checker
# needs well under a tenth of it.
check_s_max = 2.0
REGISTER = RegisterModel()
KEY_VALUE = KeyValueModel()


def corpus_labels() -> dict[str, str]:
    """File name -> expected label, from etcd/expected.txt; empty when the corpus is absent."""
    if not (ETCD / "expected.txt").is_file():
        return {}
    lines = (ETCD / "expected.txt").read_text().splitlines()
    return dict(line.split() for line in lines if line.strip())


LABELS = corpus_labels()
needs_corpus = pytest.mark.skipif(not LABELS, reason=f"the etcd corpus is not at {ETCD}")


def verdict(operations: list[Operation], model: RegisterModel = REGISTER) -> Verdict:
    return check(model, operations).verdict


def done(client: int, input: Hashable, call: int, ret: int, output: Any) -> Operation:
    return Operation(client, input, call, ret, output)


def pending(client: int, input: Hashable, call: int) -> Operation:
    return Operation(client, input, call, None)


# The corpus.


@needs_corpus
def test_the_labels_cover_the_corpus() -> None:
    assert sorted(LABELS) == sorted(path.name for path in ETCD.glob("*.log"))
    assert set(LABELS.values()) == {"linearizable", "not-linearizable"}


@needs_corpus
@pytest.mark.parametrize("name", sorted(LABELS))
def test_corpus_history_gets_its_label_in_time(name: str) -> None:
    operations = load_jepsen_log(ETCD / name)
    started_s = time.perf_counter()
    result = check(REGISTER, operations)
    elapsed_s = time.perf_counter() - started_s
    assert result.verdict.value == LABELS[name]
    assert elapsed_s < check_s_max, f"{name} took {elapsed_s:.2f} s"


@needs_corpus
def test_a_corpus_failure_reports_its_longest_linearizable_prefix() -> None:
    name = next(name for name, label in sorted(LABELS.items()) if label == "not-linearizable")
    operations = load_jepsen_log(ETCD / name)
    result = check(REGISTER, operations)
    assert result.partition == tuple(operations)
    assert 0 < len(result.longest_prefix) < len(operations)
    assert result.partition_index == 0
    report = result.report(REGISTER)
    assert report.startswith("not-linearizable: partition 0")
    assert len(report.splitlines()) == len(operations) + 2


# Small histories written by hand. Times are arbitrary integers; a ret equal to a call overlaps it.


def test_an_empty_history_is_linearizable() -> None:
    assert verdict([]) is Verdict.LINEARIZABLE


def test_a_stale_read_after_a_completed_write_is_not_linearizable() -> None:
    history = [done(1, Write(1), 0, 10, None), done(2, Read(), 20, 30, None)]
    assert verdict(history) is Verdict.NOT_LINEARIZABLE


def test_reads_concurrent_with_a_write_may_see_either_value() -> None:
    history = [
        done(1, Write(1), 0, 10, None),
        done(2, Read(), 5, 15, 1),
        done(3, Read(), 2, 8, None),
        done(4, Read(), 20, 30, 1),
    ]
    assert verdict(history) is Verdict.LINEARIZABLE


def test_once_a_read_sees_the_new_value_later_reads_cannot_see_the_old() -> None:
    history = [
        done(1, Write(1), 0, 100, None),
        done(2, Read(), 10, 20, 1),
        done(3, Read(), 30, 40, None),
    ]
    assert verdict(history) is Verdict.NOT_LINEARIZABLE


def test_equal_times_count_as_concurrent() -> None:
    history = [done(1, Write(1), 0, 10, None), done(2, Read(), 10, 20, None)]
    assert verdict(history) is Verdict.LINEARIZABLE


def test_an_unknown_write_must_be_assumed_to_have_happened() -> None:
    history = [pending(1, Write(1), 0), done(2, Read(), 10, 20, 1)]
    assert verdict(history) is Verdict.LINEARIZABLE


def test_an_unknown_write_cannot_take_effect_before_its_call() -> None:
    history = [done(2, Read(), 10, 20, 1), pending(1, Write(1), 30)]
    assert verdict(history) is Verdict.NOT_LINEARIZABLE


def test_an_unknown_write_must_be_assumed_not_to_have_happened() -> None:
    history = [
        done(1, Write(0), 0, 5, None),
        pending(2, Write(1), 6),
        done(3, Read(), 10, 20, 0),
        done(3, Read(), 30, 40, 0),
    ]
    assert verdict(history) is Verdict.LINEARIZABLE


def test_an_unknown_write_that_happened_cannot_unhappen() -> None:
    history = [
        done(1, Write(0), 0, 5, None),
        pending(2, Write(1), 6),
        done(3, Read(), 10, 20, 1),
        done(3, Read(), 30, 40, 0),
    ]
    assert verdict(history) is Verdict.NOT_LINEARIZABLE


def test_an_unknown_write_takes_effect_at_most_once() -> None:
    history = [
        pending(1, Write(1), 0),
        done(2, Read(), 10, 20, 1),
        done(3, Write(2), 30, 40, None),
        done(2, Read(), 50, 60, 1),
    ]
    assert verdict(history) is Verdict.NOT_LINEARIZABLE


def test_a_read_whose_result_is_unknown_fits_anywhere() -> None:
    history = [done(1, Write(1), 0, 10, None), done(2, Read(), 20, 30, UNKNOWN_OUTPUT)]
    assert verdict(history) is Verdict.LINEARIZABLE


def test_a_successful_cas_sets_the_register() -> None:
    history = [
        done(1, Write(0), 0, 5, None),
        done(2, CompareAndSet(0, 1), 10, 20, True),
        done(3, Read(), 30, 40, 1),
    ]
    assert verdict(history) is Verdict.LINEARIZABLE


def test_a_cas_cannot_fail_when_the_register_holds_its_expected_value() -> None:
    history = [done(1, Write(0), 0, 5, None), done(2, CompareAndSet(0, 1), 10, 20, False)]
    assert verdict(history) is Verdict.NOT_LINEARIZABLE


def test_a_failed_cas_has_no_effect() -> None:
    history = [
        done(1, Write(0), 0, 5, None),
        done(2, CompareAndSet(1, 2), 10, 20, False),
        done(3, Read(), 30, 40, 0),
    ]
    assert verdict(history) is Verdict.LINEARIZABLE


def test_two_concurrent_cas_from_the_same_value_cannot_both_succeed() -> None:
    history = [
        done(1, Write(0), 0, 5, None),
        done(2, CompareAndSet(0, 1), 10, 20, True),
        done(3, CompareAndSet(0, 2), 10, 20, True),
    ]
    assert verdict(history) is Verdict.NOT_LINEARIZABLE


def test_concurrent_cas_that_chain_can_both_succeed() -> None:
    history = [
        done(1, Write(0), 0, 5, None),
        done(2, CompareAndSet(1, 2), 10, 20, True),
        done(3, CompareAndSet(0, 1), 10, 20, True),
        done(4, Read(), 30, 40, 2),
    ]
    assert verdict(history) is Verdict.LINEARIZABLE


def test_an_unknown_cas_applies_only_where_it_would_succeed() -> None:
    set_then_read = [done(1, Write(0), 0, 5, None), pending(2, CompareAndSet(0, 1), 6)]
    assert verdict([*set_then_read, done(3, Read(), 10, 20, 1)]) is Verdict.LINEARIZABLE
    wrong_expected = [done(1, Write(0), 0, 5, None), pending(2, CompareAndSet(3, 1), 6)]
    assert verdict([*wrong_expected, done(3, Read(), 10, 20, 1)]) is Verdict.NOT_LINEARIZABLE


def test_an_unknown_cas_may_wait_for_an_unknown_write_called_after_it() -> None:
    # A search that tried the cas first, as a no-op, must still try it after the write.
    history = [
        pending(1, CompareAndSet(0, 1), 0),
        pending(2, Write(0), 15),
        done(3, Read(), 19, 25, 1),
    ]
    assert verdict(history) is Verdict.LINEARIZABLE


def key_a_fine_key_b_stale() -> list[Operation]:
    return [
        done(1, Write(1, key="a"), 0, 10, None),
        done(2, Write(2, key="b"), 0, 10, None),
        done(1, Read(key="a"), 20, 30, 1),
        done(2, Read(key="b"), 20, 30, None),
    ]


def test_each_key_is_checked_on_its_own() -> None:
    history = key_a_fine_key_b_stale()
    assert KEY_VALUE.partition(history) == [history[0::2], history[1::2]]
    result = check(KEY_VALUE, history)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.partition_index == 1
    assert result.partition == tuple(history[1::2])
    assert check(KEY_VALUE, history[0::2]).verdict is Verdict.LINEARIZABLE


def test_keys_do_not_see_each_others_writes() -> None:
    history = [done(1, Write(1, key="a"), 0, 10, None), done(2, Read(key="b"), 20, 30, 1)]
    assert verdict(history, KEY_VALUE) is Verdict.NOT_LINEARIZABLE
    # The register model ignores keys: to it, this is one register.
    assert verdict(history, REGISTER) is Verdict.LINEARIZABLE


def concurrent_writes_then_a_bad_read(writes: int, key: str | None = None) -> list[Operation]:
    """Not linearizable, but only an exhaustive search over the write orders can tell."""
    history = [done(client, Write(client, key=key), 0, 100, None) for client in range(writes)]
    return [*history, done(writes, Read(key=key), 200, 300, 99)]


def test_a_passed_deadline_gives_unknown() -> None:
    result = check(REGISTER, concurrent_writes_then_a_bad_read(12), deadline=lambda: True)
    assert result.verdict is Verdict.UNKNOWN
    assert result.partition_index == 0


def test_a_deadline_that_does_not_pass_changes_nothing() -> None:
    ticks: list[float] = []

    def clock() -> float:
        ticks.append(0.0)
        return 0.0

    history = concurrent_writes_then_a_bad_read(8)
    result = check(REGISTER, history, deadline=deadline_after(1.0, clock))
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert len(ticks) > 1  # The search asked the clock while it ran.


def test_a_failing_key_beats_a_timed_out_one() -> None:
    history = [*concurrent_writes_then_a_bad_read(12, key="a"), *key_a_fine_key_b_stale()[1::2]]
    result = check(KEY_VALUE, history, deadline=lambda: True)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.partition_index == 1


def test_a_deadline_needs_a_positive_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        deadline_after(0.0, lambda: 0.0)


def test_an_operation_cannot_return_before_its_call() -> None:
    with pytest.raises(ValueError, match="before its call"):
        Operation(1, Read(), 10, 5, None)


def test_an_operation_with_an_unknown_outcome_has_an_unknown_output() -> None:
    with pytest.raises(ValueError, match="UNKNOWN_OUTPUT"):
        Operation(1, Read(), 10, None, 3)
    assert pending(1, Read(), 10).pending


def test_a_linearizable_result_reports_so() -> None:
    assert check(REGISTER, []) == CheckResult(Verdict.LINEARIZABLE)
    assert CheckResult(Verdict.LINEARIZABLE).report(REGISTER) == "linearizable"


# Property tests.

VALUES = st.integers(min_value=0, max_value=3)
INPUTS = st.one_of(
    st.builds(Read),
    st.builds(Write, VALUES),
    st.builds(CompareAndSet, VALUES, VALUES),
)


def sequential_output(state: Hashable, input: Hashable) -> Any:
    """What a real register holding `state` answers to `input`."""
    if isinstance(input, Read):
        return state
    if isinstance(input, CompareAndSet):
        return state == input.expected
    return None


@st.composite
def register_runs(draw: st.DrawFn) -> list[Operation]:
    """Operations applied one by one to a real register at instants 100, 200, ...; each is called
    some time before its instant and returns some time after it, or never (a write or cas only)."""
    operations: list[Operation] = []
    state: Hashable = None
    for index, input in enumerate(draw(st.lists(INPUTS, min_size=1, max_size=14))):
        output = sequential_output(state, input)
        state = REGISTER.step(state, input, output)[1]
        instant = 100 * (index + 1)
        call = instant - draw(st.integers(min_value=0, max_value=250))
        ret = instant + draw(st.integers(min_value=0, max_value=250))
        if not isinstance(input, Read) and draw(st.integers(min_value=0, max_value=5)) == 0:
            operations.append(Operation(index, input, call, None))
        else:
            operations.append(Operation(index, input, call, ret, output))
    return operations


@settings(max_examples=300, deadline=None)
@given(register_runs())
def test_histories_of_a_real_register_are_linearizable(history: list[Operation]) -> None:
    assert verdict(history) is Verdict.LINEARIZABLE


@settings(max_examples=300, deadline=None)
@given(register_runs(), st.data())
def test_a_read_of_a_value_never_written_is_not_linearizable(
    history: list[Operation], data: st.DataObject
) -> None:
    reads = [i for i, op in enumerate(history) if isinstance(op.input, Read)]
    if not reads:
        history = [*history, done(99, Read(), 0, 10_000, None)]
        reads = [len(history) - 1]
    index = data.draw(st.sampled_from(reads))
    history[index] = attrs.evolve(history[index], output=99)
    assert verdict(history) is Verdict.NOT_LINEARIZABLE


def brute_force_linearizable(operations: list[Operation]) -> bool:
    """Try every order of the operations and every subset of the pending ones: no linked list, no
    dominance, and the state is the whole map as a sorted tuple of (key, value): no partitions."""

    def step(state: tuple[tuple[Any, Any], ...], operation: Operation) -> tuple[bool, Any]:
        values = dict(state)
        key = operation.input.key  # type: ignore[attr-defined]
        legal, values[key] = REGISTER.step(values.get(key), operation.input, operation.output)
        return legal, tuple(sorted(values.items()))

    @functools.cache
    def search(remaining: frozenset[int], state: tuple[tuple[Any, Any], ...]) -> bool:
        returns = [ret for j in remaining if (ret := operations[j].ret) is not None]
        if not returns:
            return True  # Only pending operations remain, and they may never take effect.
        for i in remaining:
            if min(returns) < operations[i].call:
                continue  # Some remaining operation returned before this one was called.
            legal, next_state = step(state, operations[i])
            if legal and search(remaining - {i}, next_state):
                return True
        return False

    return search(frozenset(range(len(operations))), ())


def keyed_inputs(keys: list[str], values: int) -> st.SearchStrategy[Hashable]:
    key = st.sampled_from(keys)
    value = st.integers(min_value=0, max_value=values - 1)
    return st.one_of(
        st.builds(Read, key=key),
        st.builds(Write, value, key=key),
        st.builds(CompareAndSet, value, value, key=key),
    )


@st.composite
def random_histories(
    draw: st.DrawFn, inputs: st.SearchStrategy[Hashable], operations_max: int
) -> list[Operation]:
    """Operations with arbitrary times and outputs, two in five of them pending."""
    operations = []
    for client, input in enumerate(draw(st.lists(inputs, max_size=operations_max))):
        call = draw(st.integers(min_value=0, max_value=30))
        if draw(st.integers(min_value=0, max_value=4)) < 2:
            operations.append(Operation(client, input, call, None))
            continue
        ret = call + draw(st.integers(min_value=0, max_value=15))
        output: Any = None
        if isinstance(input, Read):
            output = draw(st.sampled_from([None, 0, 1, UNKNOWN_OUTPUT]))
        elif isinstance(input, CompareAndSet):
            output = draw(st.booleans())
        operations.append(Operation(client, input, call, ret, output))
    return operations


def agrees_with_brute_force(history: list[Operation]) -> None:
    linearizable = brute_force_linearizable(history)
    expected = Verdict.LINEARIZABLE if linearizable else Verdict.NOT_LINEARIZABLE
    assert check(KEY_VALUE, history).verdict is expected


@settings(max_examples=300, deadline=None)
@given(random_histories(keyed_inputs(["a", "b"], values=4), operations_max=9))
def test_the_checker_agrees_with_a_brute_force_search_on_two_keys(
    history: list[Operation],
) -> None:
    agrees_with_brute_force(history)


# Few values and many pending writes on one key: the memo's dominance test gets much to do.
@settings(max_examples=600, deadline=None)
@given(random_histories(keyed_inputs(["a"], values=2), operations_max=10))
def test_the_checker_agrees_with_a_brute_force_search_on_one_busy_key(
    history: list[Operation],
) -> None:
    agrees_with_brute_force(history)


# The Jepsen log parser.

LOG = """\
INFO  jepsen.util - 0\t:invoke\t:write\t3
INFO  jepsen.util - 1   :invoke :read   nil
some other logger line
INFO  jepsen.util - 0\t:ok\t:write\t3
INFO  jepsen.util - 2\t:invoke\t:cas\t[3 4]
INFO  jepsen.util - 1   :ok     :read   3
INFO  jepsen.util - 3\t:invoke\t:write\t1
INFO  jepsen.util - 2\t:fail\t:cas\t[3 4]
INFO  jepsen.util - 3\t:info\t:write\t:timed-out
INFO  jepsen.util - 4\t:invoke\t:read\tnil

INFO  jepsen.util - 4\t:fail\t:read\t:timed-out
INFO  jepsen.util - 5\t:invoke\t:cas\t[1 2]
INFO  jepsen.util - 5\t:ok\t:cas\t[1 2]
INFO  jepsen.util - 6\t:invoke\t:read\tnil
INFO  jepsen.util - 6\t:ok\t:read\tnil
"""


def test_the_parser_reads_every_documented_form() -> None:
    assert parse_jepsen_log(LOG) == [
        Operation(0, Write(3), 1, 4, None),
        Operation(1, Read(), 2, 6, 3),
        Operation(2, CompareAndSet(3, 4), 5, 8, False),
        Operation(3, Write(1), 7, None),  # Only :info came back: an unknown outcome.
        Operation(4, Read(), 10, 12, UNKNOWN_OUTPUT),
        Operation(5, CompareAndSet(1, 2), 13, 14, True),
        Operation(6, Read(), 15, 16, None),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("INFO  jepsen.util - 1\t:ok\t:read\t3", "without an open call"),
        ("INFO  jepsen.util - 0\t:invoke\t:read\tnil", "calls again"),
        ("INFO  jepsen.util - 1\t:invoke\t:append\t3", "unknown operation"),
        ("INFO  jepsen.util - 1\t:invoke\t:write\tthree", "expected nil or an integer"),
        ("INFO  jepsen.util - 1\t:invoke\t:write\tnil", "invoked with an integer"),
        ("INFO  jepsen.util - 1\t:invoke\t:cas\t[1]", r"expected \[A B\]"),
        ("INFO  jepsen.util - 0\t:ok\t:read\t3", "answers the :write"),
        ("INFO  jepsen.util - 0\t:ok\t:write\t4", "answers the write of 3"),
        ("INFO  jepsen.util - 0\t:fail\t:write\t3", "failed write"),
    ],
)
def test_the_parser_names_the_line_of_a_malformed_event(line: str, message: str) -> None:
    text = (
        f"INFO  jepsen.util - 0\t:invoke\t:write\t3\nINFO  jepsen.util - 2\t:info\t:x\t1\n{line}\n"
    )
    with pytest.raises(HistoryParseError, match=message) as error:
        parse_jepsen_log(text, source="bad.log")
    assert error.value.line_number == 3
    assert str(error.value).startswith("bad.log:3: ")


def test_the_parser_rejects_a_cas_answer_for_another_cas() -> None:
    text = "INFO  jepsen.util - 0\t:invoke\t:cas\t[1 2]\nINFO  jepsen.util - 0\t:ok\t:cas\t[1 3]\n"
    with pytest.raises(HistoryParseError, match="different cas"):
        parse_jepsen_log(text)


def test_a_failed_read_must_have_timed_out() -> None:
    text = "INFO  jepsen.util - 0\t:invoke\t:read\tnil\nINFO  jepsen.util - 0\t:fail\t:read\t3\n"
    with pytest.raises(HistoryParseError, match="timed-out"):
        parse_jepsen_log(text)


# The command line.


@needs_corpus
def test_the_command_line_labels_every_corpus_file(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(ETCD / name) for name in sorted(LABELS)]
    assert main(paths) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{ETCD / name} {LABELS[name]}" for name in sorted(LABELS)]


@needs_corpus
def test_the_command_line_exits_0_when_all_are_linearizable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = [str(ETCD / name) for name, label in sorted(LABELS.items()) if label == "linearizable"]
    assert main(paths) == 0
    assert capsys.readouterr().out == "".join(f"{path} linearizable\n" for path in paths)


@needs_corpus
def test_the_command_line_explains_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    name = next(name for name, label in sorted(LABELS.items()) if label == "not-linearizable")
    assert main(["--explain", str(ETCD / name)]) == 1
    assert "longest linearizable prefix" in capsys.readouterr().err


def test_the_command_line_needs_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "FILE" in capsys.readouterr().err


def test_the_command_line_needs_a_positive_timeout(tmp_path: Path) -> None:
    path = tmp_path / "empty.log"
    path.write_text("")
    assert main(["--timeout-s", "0", str(path)]) == 2


def test_the_command_line_names_the_line_of_a_parse_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.log", tmp_path / "bad.log"
    good.write_text("INFO  jepsen.util - 0\t:invoke\t:read\tnil\n")
    bad.write_text("\nINFO  jepsen.util - 0\t:ok\t:read\tnil\n")
    assert main([str(good), str(bad), str(tmp_path / "missing.log")]) == 2
    captured = capsys.readouterr()
    assert captured.out == f"{good} linearizable\n"
    assert f"{bad}:2: " in captured.err
    assert "missing.log" in captured.err


def test_the_command_line_says_unknown_on_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hard.log"
    invokes = [f"INFO  jepsen.util - {p}\t:invoke\t:write\t{p}" for p in range(12)]
    oks = [f"INFO  jepsen.util - {p}\t:ok\t:write\t{p}" for p in range(12)]
    read = ["INFO  jepsen.util - 12\t:invoke\t:read\tnil", "INFO  jepsen.util - 12\t:ok\t:read\t99"]
    path.write_text("\n".join([*invokes, *oks, *read]) + "\n")
    assert main(["--timeout-s", "1e-9", str(path)]) == 3
    assert capsys.readouterr().out == f"{path} unknown\n"
    assert main([str(path)]) == 1


def test_the_module_runs_as_a_program(tmp_path: Path) -> None:
    path = tmp_path / "stale.log"
    path.write_text(
        "INFO  jepsen.util - 0\t:invoke\t:write\t1\nINFO  jepsen.util - 0\t:ok\t:write\t1\n"
        "INFO  jepsen.util - 1\t:invoke\t:read\tnil\nINFO  jepsen.util - 1\t:ok\t:read\tnil\n"
    )
    completed = subprocess.run(
        [sys.executable, "-m", "memora.sim.linearizability", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (completed.returncode, completed.stdout) == (1, f"{path} not-linearizable\n")
