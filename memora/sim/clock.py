"""Per-node clocks: drift, jitter and jumps, on top of the simulator's true time.

A node's monotonic clock runs at `rate` (1 +- drift) and drives its Raft ticks; a forward jump
makes the driver catch up the ticks it missed at once, as a real driver that ticks by elapsed
monotonic time does after a stall. The wall clock (proposal timestamps) can also jump backwards;
the replica clamps timestamps so records never go back in time.
"""

from __future__ import annotations

import attrs

from memora.core import constants
from memora.sim.params import MS, ClockParams
from memora.sim.rng import SimRandom

TICK_US = constants.raft_tick_ms * MS
WALL_EPOCH_MS = 1_767_225_600_000  # 2026-01-01, so timestamps look like real ones.


@attrs.define
class NodeClock:
    rate: float = attrs.field(on_setattr=attrs.setters.frozen)
    jitter_us: int
    wall_offset_ms: int = 0
    # True microseconds per tick at this rate, before jitter: worked out once, not per tick.
    _tick_us: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        assert self.rate > 0.0, self.rate
        self._tick_us = int(TICK_US / self.rate)

    @classmethod
    def draw(cls, random: SimRandom, params: ClockParams) -> NodeClock:
        rate = 1.0 + random.between(-params.drift_max, params.drift_max)
        return cls(rate=rate, jitter_us=params.jitter_us)

    def next_tick_delay_us(self, random: SimRandom) -> int:
        """True microseconds until this node's clock has advanced by one tick."""
        jitter = random.randint(0, self.jitter_us) if self.jitter_us else 0
        return max(1, self._tick_us + jitter)

    def ticks_in(self, true_us: int) -> int:
        """Whole ticks this clock counts in `true_us` of true time (catching up after a pause)."""
        return int(true_us * self.rate) // TICK_US

    def wall_ms(self, true_us: int) -> int:
        return WALL_EPOCH_MS + int(true_us * self.rate) // MS + self.wall_offset_ms
