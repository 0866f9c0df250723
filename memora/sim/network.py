"""The simulated network: delay, reordering, loss, duplication, replay, capacity, clogs, partitions.

Endpoints are integers: Raft node ids, and client ids (`CLIENT_BASE` and up). Partitions cut
paths between nodes only; clients reach every node they can, through the same lossy, slow and
duplicating paths. A message is a Python value handed over as is: the codec is tested on its own,
and skipping it here buys the simulator the speed to run many more seeds.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable

from memora.sim.events import EventLoop
from memora.sim.params import NetworkParams
from memora.sim.rng import SimRandom

CLIENT_BASE = 1_000_000
REPLAY_BUFFER = 64
RECENT_BUFFER = 16  # Per node: what it received last, replayed to it when it restarts.
CLOG_DELAY_FACTOR = 20
Deliver = Callable[[int, int, object], None]


class Network:
    """Delivers `send(source, target, payload)` to `deliver(source, target, payload)` later, or
    never. Faults are counted by kind in `faults`."""

    def __init__(
        self, loop: EventLoop, random: SimRandom, params: NetworkParams, deliver: Deliver
    ) -> None:
        self._loop = loop
        self._random = random
        self.params = params
        self._deliver = deliver
        self.faults: Counter[str] = Counter()
        self.sent = 0
        self.faulty = True  # The liveness phase turns faults off on healed paths.
        self._blocked: set[tuple[int, int]] = set()  # Directed node-to-node cuts.
        self._clogged_until: dict[tuple[int, int], int] = {}
        self._in_flight: Counter[tuple[int, int]] = Counter()
        self._replay: deque[tuple[int, int, object]] = deque(maxlen=REPLAY_BUFFER)
        self._recent: dict[int, deque[tuple[int, object]]] = {}  # Node -> (source, payload).
        self._healthy: frozenset[int] = frozenset()  # After healing: no faults among these.

    # -- Partitions and clogs (the fault schedule calls these). -------------------------------

    def partition(self, groups: Iterable[Iterable[int]], nodes: Iterable[int]) -> None:
        """Cut every path between different groups, both ways; nodes in no group are isolated."""
        group_of = {node: number for number, group in enumerate(groups) for node in group}
        everyone = list(nodes)
        self._blocked = {
            (a, b)
            for a in everyone
            for b in everyone
            if a != b and group_of.get(a, -1 - a) != group_of.get(b, -1 - b)
        }
        self.faults["partition"] += 1

    def cut_one_way(self, pairs: Iterable[tuple[int, int]]) -> None:
        """An asymmetric partition: these directed paths lose everything."""
        self._blocked = set(pairs)
        self.faults["partition_asymmetric"] += 1

    def heal_partitions(self) -> None:
        self._blocked = set()

    def clog(self, source: int, target: int, until_us: int) -> None:
        self._clogged_until[(source, target)] = until_us
        self.faults["clog"] += 1

    def make_healthy(self, nodes: Iterable[int], others: Iterable[int] = ()) -> None:
        """From now on, paths among `nodes` (and between them and clients) lose nothing, duplicate
        nothing and are never cut: the liveness phase's healed core. Paths between the core and
        `others` are cut both ways, so the core must make progress on its own."""
        self._healthy = frozenset(nodes)
        outside = list(others)
        self._blocked = {
            (a, b) for a, b in self._blocked if not (a in self._healthy and b in self._healthy)
        }
        for inside in self._healthy:
            for other in outside:
                self._blocked.update(((inside, other), (other, inside)))
        self._clogged_until.clear()

    def replay_recent(self, target: int) -> None:
        """Deliver again what `target` received just before it died: stale messages that were
        in flight (or sitting in a socket buffer) across its restart."""
        for source, payload in self._recent.pop(target, ()):
            if (source, target) not in self._blocked:
                self.faults["replayed_after_restart"] += 1
                self._schedule(source, target, payload, False)

    # -- Sending. -------------------------------------------------------------------------------

    def send(self, source: int, target: int, payload: object) -> None:
        self.sent += 1
        path = (source, target)
        healthy = self._is_healthy(source, target)
        if path in self._blocked:
            self.faults["dropped_partition"] += 1
            return
        if not healthy:
            if self._random.chance(self.params.loss):
                self.faults["lost"] += 1
                return
            if self._in_flight[path] >= self.params.path_capacity:
                self.faults["dropped_capacity"] += 1
                return
            if self._random.chance(self.params.duplicate):
                self.faults["duplicated"] += 1
                self._schedule(source, target, payload, healthy)
            if self._replay and self._random.chance(self.params.replay):
                self.faults["replayed"] += 1
                old_source, old_target, old_payload = self._random.choice(self._replay)
                self._schedule(old_source, old_target, old_payload, False)
            self._replay.append((source, target, payload))
        self._schedule(source, target, payload, healthy)

    def _is_healthy(self, source: int, target: int) -> bool:
        healthy = self._healthy
        if not healthy:
            return False
        return (source in healthy or source >= CLIENT_BASE) and (
            target in healthy or target >= CLIENT_BASE
        )

    def _schedule(self, source: int, target: int, payload: object, healthy: bool) -> None:
        params = self.params
        delay = params.delay_min_us + int(self._random.exponential(params.delay_mean_us))
        path = (source, target)
        if not healthy and self._clogged_until.get(path, -1) > self._loop.now_us:
            delay *= CLOG_DELAY_FACTOR
        self._in_flight[path] += 1

        def arrive() -> None:
            self._in_flight[path] -= 1
            if path in self._blocked:
                self.faults["dropped_partition"] += 1
                return
            if self.params.replay_on_restart and target < CLIENT_BASE and not healthy:
                recent = self._recent.get(target)
                if recent is None:  # Not setdefault: that would build a deque per message.
                    recent = self._recent[target] = deque(maxlen=RECENT_BUFFER)
                recent.append((source, payload))
            self._deliver(source, target, payload)

        self._loop.after(delay, arrive)
