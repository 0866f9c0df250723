"""Replays every seed in sim_runs/regressions.txt (see sim_runs/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memora.core.raft import InjectedBug
from memora.sim.run import reproduce_command, run_seed

REGRESSIONS = Path(__file__).resolve().parents[2] / "sim_runs" / "regressions.txt"


def _lines() -> list[tuple[int, frozenset[InjectedBug], str]]:
    found = []
    for line in REGRESSIONS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        seed, bugs, what, _fixed_in = line.split("\t")
        names = [] if bugs == "-" else bugs.split(",")
        found.append((int(seed), frozenset(InjectedBug(name) for name in names), what))
    return found


def test_the_list_is_not_empty() -> None:
    assert _lines()


@pytest.mark.parametrize(("seed", "bugs", "what"), _lines())
def test_seed_replays(seed: int, bugs: frozenset[InjectedBug], what: str) -> None:
    result = run_seed(seed, bugs)
    command = reproduce_command(seed, bugs)
    if bugs:
        assert result.status in ("correctness", "crash"), f"{command}: planted bug not caught"
    else:
        assert result.status == "ok", f"{command} (once: {what})\n{result.message}"
