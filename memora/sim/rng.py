"""Seeded randomness for the simulator: `SimRandom` wraps the core's SplitMix64 `Prng`.

Every random choice in a simulation comes from one of these, each forked from the run's seed, so a
run replays exactly. Python's `random` is never used: its algorithm is not ours to pin down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from memora.core.prng import Prng

T = TypeVar("T")

_UNIT: float = 1.0 / (1 << 53)


class SimRandom:
    """Floats, coin flips, exponential delays and choices drawn from a `Prng`."""

    __slots__ = ("prng",)

    def __init__(self, seed_or_prng: int | Prng) -> None:
        self.prng = seed_or_prng if isinstance(seed_or_prng, Prng) else Prng(seed_or_prng)

    def fork(self) -> SimRandom:
        """An independent stream (each node, path and client gets its own)."""
        return SimRandom(self.prng.fork())

    def uniform(self) -> float:
        """A float in [0, 1), with 53 random bits."""
        return (self.prng.next_u64() >> 11) * _UNIT

    def chance(self, probability: float) -> bool:
        """True with `probability` (no draw at all when it is 0, so switched-off faults cost
        nothing and do not shift the stream)."""
        if probability <= 0.0:
            return False
        return (self.prng.next_u64() >> 11) * _UNIT < probability  # uniform(), inlined: hot.

    def randint(self, low: int, high: int) -> int:
        return self.prng.randint(low, high)

    def between(self, low: float, high: float) -> float:
        return low + (high - low) * self.uniform()

    def exponential(self, mean: float) -> float:
        """An exponentially distributed value with this mean (so deliveries reorder)."""
        return -mean * math.log(1.0 - (self.prng.next_u64() >> 11) * _UNIT)  # As chance().

    def choice(self, items: Sequence[T]) -> T:
        assert items, "choice from an empty sequence"
        return items[self.prng.randint(0, len(items) - 1)]

    def sample(self, items: Sequence[T], count: int) -> list[T]:
        """`count` distinct items, in a random order."""
        pool = list(items)
        assert 0 <= count <= len(pool), (count, len(pool))
        for position in range(count):
            other = self.prng.randint(position, len(pool) - 1)
            pool[position], pool[other] = pool[other], pool[position]
        return pool[:count]
