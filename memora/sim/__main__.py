"""`python -m memora.sim`: one seed (`--seed N`), or a sweep (`--seeds K --jobs J`).

Exit codes: 0 every run passed; 1 a correctness violation; 3 a liveness failure; 4 a crash (an
exception or a failed assertion inside the code under test); 2 bad arguments. A sweep exits with
the worst code seen (correctness before liveness before crash).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence

from memora.core.raft import InjectedBug
from memora.sim.params import SECOND, SimParams
from memora.sim.run import RunResult, reproduce_command, run_seed, sweep_one

EXIT_CODES = {"ok": 0, "correctness": 1, "liveness": 3, "crash": 4}
SEVERITY = ("correctness", "liveness", "crash")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memora.sim", description=__doc__)
    parser.add_argument("--seed", type=int, help="run this one seed, verbosely")
    parser.add_argument("--seeds", type=int, help="sweep this many seeds")
    parser.add_argument("--first-seed", type=int, default=1, help="the sweep's first seed")
    parser.add_argument("--jobs", type=int, default=1, help="processes for a sweep")
    parser.add_argument(
        "--inject-bug",
        action="append",
        default=[],
        choices=[bug.value for bug in InjectedBug],
        help="plant a known bug (repeatable); the run should then fail",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    bugs = frozenset(InjectedBug(name) for name in args.inject_bug)
    if (args.seed is None) == (args.seeds is None):
        _parser().error("give exactly one of --seed N and --seeds K")
    if args.seed is not None:
        return _run_one(args.seed, bugs)
    if args.seeds < 1 or args.jobs < 1:
        _parser().error("--seeds and --jobs must be at least 1")
    return _sweep(range(args.first_seed, args.first_seed + args.seeds), args.jobs, bugs)


def _run_one(seed: int, bugs: frozenset[InjectedBug]) -> int:
    print(SimParams.from_seed(seed, bugs).describe(), flush=True)
    started = time.perf_counter()
    result = run_seed(seed, bugs)
    elapsed = time.perf_counter() - started
    print(_summary_line(result, elapsed))
    print("faults: " + _counts(result.faults))
    print("counters: " + _counts(result.counters))
    print(f"trace hash: {result.trace_hash}")
    if result.status != "ok":
        print(f"FAILED ({result.status}): {result.message}")
        print(f"reproduce: {reproduce_command(seed, bugs)}")
    return EXIT_CODES[result.status]


def _summary_line(result: RunResult, elapsed_s: float) -> str:
    simulated_s = result.simulated_us / SECOND
    speed = simulated_s / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"seed {result.seed}: {result.status}; {result.committed} entries committed, "
        f"{result.events} events, {simulated_s:.1f} s simulated in {elapsed_s:.2f} s "
        f"({speed:.0f}x real time)"
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}={count}" for name, count in counts.items()) or "none"


class _Speeds:
    """Simulated and run time per cluster size: how much faster than real time runs go."""

    def __init__(self) -> None:
        self._simulated_us: Counter[int] = Counter()
        self._busy_s: dict[int, float] = {}
        self._speeds: dict[int, list[float]] = {}

    def add(self, result: RunResult, elapsed_s: float) -> None:
        assert elapsed_s > 0.0, elapsed_s
        replicas = result.replicas
        self._simulated_us[replicas] += result.simulated_us
        self._busy_s[replicas] = self._busy_s.get(replicas, 0.0) + elapsed_s
        self._speeds.setdefault(replicas, []).append(result.simulated_us / SECOND / elapsed_s)

    def lines(self) -> list[str]:
        """One line per cluster size: simulated seconds per second of run time over all its
        seeds (each run timed in its own process), and the median seed's."""
        return [
            f"{replicas} replicas: {len(speeds)} seeds, {self._simulated_us[replicas] / SECOND:.0f}"
            f" s simulated in {self._busy_s[replicas]:.1f} s of run time: "
            f"{self._simulated_us[replicas] / SECOND / self._busy_s[replicas]:.1f}x real time "
            f"(median seed {statistics.median(speeds):.1f}x, slowest {min(speeds):.1f}x)"
            for replicas, speeds in sorted(self._speeds.items())
        ]


def _sweep(seeds: range, jobs: int, bugs: frozenset[InjectedBug]) -> int:
    tasks = [(seed, bugs) for seed in seeds]
    faults: Counter[str] = Counter()
    failures: list[RunResult] = []
    committed = events = 0
    simulated_us = 0
    busy_s = 0.0
    speeds = _Speeds()
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for done, (result, elapsed) in enumerate(pool.imap_unordered(sweep_one, tasks), 1):
            faults.update(result.faults)
            committed += result.committed
            events += result.events
            simulated_us += result.simulated_us
            busy_s += elapsed
            speeds.add(result, elapsed)
            if result.status != "ok":
                failures.append(result)
            _progress(done, len(tasks), len(failures), started)
    sys.stderr.write("\n")
    wall_s = time.perf_counter() - started
    print(
        f"seeds {seeds.start}..{seeds.stop - 1}: {len(tasks) - len(failures)} passed, "
        f"{len(failures)} failed, in {wall_s:.1f} s with {jobs} jobs"
    )
    print(
        f"requests committed: {committed}; events: {events}; simulated "
        f"{simulated_us / SECOND:.0f} s, {simulated_us / SECOND / busy_s:.0f}x real time per "
        "process"
    )
    for line in speeds.lines():
        print(line)
    print("faults injected: " + _counts(dict(sorted(faults.items()))))
    for result in sorted(failures, key=lambda result: result.seed):
        first_line = result.message.strip().splitlines()[-1] if result.message else ""
        print(f"  seed {result.seed} {result.status}: {first_line}")
        print(f"    reproduce: {reproduce_command(result.seed, bugs)}")
    worst = [status for status in SEVERITY if any(r.status == status for r in failures)]
    return EXIT_CODES[worst[0]] if worst else 0


def _progress(done: int, total: int, failed: int, started: float) -> None:
    width = 30
    filled = width * done // total
    elapsed = time.perf_counter() - started
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} seeds, {failed} failed, "
        f"{elapsed:.0f} s"
    )
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
