"""A tiny deterministic pseudo-random number generator for the pure core.

The core may not import `random`: its randomness (election timeouts) must come from a generator
that is passed in and seeded explicitly, so that a simulator run replays exactly from its seed.
This is SplitMix64 (Steele, Lea and Flood, 2014): 64 bits of state, a fixed increment and an
output mix. It is fast, passes BigCrush, and is not cryptographic. Nothing here reads a clock, the
OS or global state.
"""

from __future__ import annotations

from typing import Final

from memora.core import constants

_MASK_64: Final = (1 << 64) - 1
_GOLDEN_GAMMA: Final = 0x9E3779B97F4A7C15


class Prng:
    """SplitMix64. The same seed always yields the same sequence, on every platform."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        assert isinstance(seed, int) and not isinstance(seed, bool), seed
        self._state = seed & _MASK_64

    def next_u64(self) -> int:
        """The next 64-bit output, uniform in [0, 2**64)."""
        self._state = (self._state + _GOLDEN_GAMMA) & _MASK_64
        mixed = self._state
        mixed = ((mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
        mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & _MASK_64
        return mixed ^ (mixed >> 31)

    def randint(self, low: int, high: int) -> int:
        """A uniform integer in [low, high], both ends included, without modulo bias."""
        assert low <= high, (low, high)
        span = high - low + 1
        assert span <= 1 << 64, span
        # Reject the top partial block of outputs so that every residue is equally likely.
        limit = (1 << 64) - ((1 << 64) % span)
        for _ in range(constants.prng_rejection_rounds_max):
            value = self.next_u64()
            if value < limit:
                return low + value % span
        raise AssertionError("SplitMix64 rejected every sample: the generator is broken")

    def fork(self) -> Prng:
        """An independent generator seeded from this one (for giving each node its own stream)."""
        return Prng(self.next_u64())
