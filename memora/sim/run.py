"""Running seeds: one to the end (`run_seed`), or as a sweep's unit of work (`sweep_one`).

This lives apart from `__main__` so that sweep worker processes can import it.
"""

from __future__ import annotations

import time
import traceback

from memora.core.raft import InjectedBug
from memora.sim.params import SimParams
from memora.sim.world import RunResult, World

__all__ = ["RunResult", "reproduce_command", "run_seed", "sweep_one"]


def run_seed(seed: int, bugs: frozenset[InjectedBug] = frozenset()) -> RunResult:
    """Run one seed to the end; exceptions from the code under test become a `crash` result."""
    params = SimParams.from_seed(seed, bugs)
    world = World(params)
    try:
        return world.run()
    except Exception:
        result = world.result("crash", traceback.format_exc())
        return result


def reproduce_command(seed: int, bugs: frozenset[InjectedBug]) -> str:
    flags = "".join(f" --inject-bug {bug.value}" for bug in sorted(bugs, key=lambda b: b.value))
    return f"python -m memora.sim --seed {seed}{flags}"


def sweep_one(task: tuple[int, frozenset[InjectedBug]]) -> tuple[RunResult, float]:
    started = time.perf_counter()
    result = run_seed(*task)
    return result, time.perf_counter() - started
