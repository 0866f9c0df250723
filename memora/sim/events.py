"""The simulator's event loop: one thread, one heap of timed callbacks, no real clock.

Time is an integer count of simulated microseconds. Events due at the same instant run in the
order they were scheduled (a sequence number breaks ties), so a run depends on nothing but its
seed. trio is not used here on purpose: its scheduler randomises task order.

Every message, disk sync and tick of a run passes through `after` and `run_until`: `after`
pushes onto the heap itself rather than through `at`, one call less per event.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

Callback = Callable[[], None]


class EventLoop:
    """A discrete-event scheduler. `run_until(t)` runs every event due at or before `t`."""

    def __init__(self) -> None:
        self.now_us = 0
        self.events_run = 0
        self._heap: list[tuple[int, int, Callback]] = []
        self._sequence = itertools.count(1)

    def at(self, time_us: int, callback: Callback) -> None:
        """Run `callback` at simulated time `time_us` (never in the past)."""
        assert time_us >= self.now_us, (time_us, self.now_us)
        heapq.heappush(self._heap, (time_us, next(self._sequence), callback))

    def after(self, delay_us: int, callback: Callback) -> None:
        assert delay_us >= 0, delay_us
        heapq.heappush(self._heap, (self.now_us + delay_us, next(self._sequence), callback))

    def run_until(self, end_us: int, stop: Callable[[], bool] | None = None) -> bool:
        """Run events up to `end_us` (or until `stop()` holds after an event). Returns whether
        `stop` ended the run early."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= end_us:
            time_us, _, callback = pop(heap)
            self.now_us = time_us
            self.events_run += 1
            callback()
            if stop is not None and stop():
                return True
        self.now_us = max(self.now_us, end_us)
        return False
