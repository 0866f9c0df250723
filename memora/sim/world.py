"""One simulation run: the cluster, its clients, the fault schedule and the three phases.

1. Setup, with no faults: the namespace and the registers are created.
2. Faults, for `params.fault_us`: clients run the full mix while the schedule crashes, pauses,
   partitions, clogs, corrupts, jumps clocks, restarts the whole cluster, changes membership,
   transfers leadership, and nodes compact their logs.
3. Liveness: a random core of at least a quorum of voters is healed (restarted, resumed, its
   paths made reliable) and faults stop. A node recovering from a disk that lost entries it had
   acknowledged refuses votes, so the core grows until its other voters hold a quorum. Within
   `params.liveness_ticks` ticks every open client operation must complete, and every core node
   must apply the leader's whole log.

Every event is folded into `trace_hash`, so two runs of one seed can be compared exactly.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import attrs

from memora.core.raft import (
    Configuration,
    ConfigurationChange,
    ConfigurationChangeError,
    ConfigurationChangeKind,
    NotLeaderError,
    ProposalDroppedError,
    RaftOptions,
    Role,
)
from memora.sim.checker import Checker, Violation
from memora.sim.clock import TICK_US, NodeClock
from memora.sim.disk import DiskFaults, EntryCodec, SimDisk
from memora.sim.events import EventLoop
from memora.sim.history import check_history
from memora.sim.network import CLIENT_BASE, Network
from memora.sim.node import SimNode
from memora.sim.params import MS, SECOND, SimParams
from memora.sim.protocol import Reply
from memora.sim.rng import SimRandom
from memora.sim.workload import Client, Operation, setup_commands

FAULT_STEP_US = 100 * MS
SETUP_LIMIT_US = 30 * SECOND
OPERATOR_RETRY_US = 200 * MS
NEW_LEADER_SILENT_DEATH_FRACTION = 0.5  # Of new leaders that die soon: before sending a thing.
NEW_NODE_ID_BASE = 100
TRACE_BATCH = 256  # Trace lines hashed per call (the digest does not depend on it).


class LivenessFailure(Exception):
    """The cluster did not converge within the bound after healing."""


@attrs.frozen
class RunResult:
    seed: int
    replicas: int  # Voters the cluster started with (3 or 5).
    status: str  # "ok", "correctness", "liveness" or "crash"
    message: str
    trace_hash: str
    simulated_us: int
    events: int
    faults: dict[str, int]
    counters: dict[str, int]
    committed: int


class World:
    def __init__(self, params: SimParams) -> None:
        self.params = params
        self.random = SimRandom(params.seed)
        self.loop = EventLoop()
        self.raft_options = RaftOptions(
            pre_vote=params.raft.pre_vote,
            check_quorum=params.raft.check_quorum,
            append_bytes_max=params.raft.append_bytes_max,
            inflight_messages_max=params.raft.inflight_messages_max,
            injected_bugs=params.bugs,
        )
        self.checker = Checker()
        self.history: list[Operation] = []
        self.faults: Counter[str] = Counter()
        self._trace = hashlib.blake2b(digest_size=16)
        # Trace lines wait here and are hashed TRACE_BATCH at a time: hashing the concatenation
        # gives the same digest as hashing each line, at a fraction of the calls.
        self._trace_pending: list[str] = []
        self._fault_random = self.random.fork()
        self._disk_random = self.random.fork()
        self._entry_codec = EntryCodec()  # Shared: every disk writes the same entries.
        self.network = Network(self.loop, self.random.fork(), params.network, self._deliver)
        self.nodes: dict[int, SimNode] = {}
        self.clients: dict[int, Client] = {}
        self._core: list[int] | None = None
        self._faulting = False
        self._operator_busy = False
        self._next_node_id = NEW_NODE_ID_BASE
        voters = list(range(1, params.replicas + 1))
        corrupting = set(self._fault_random.sample(voters, params.disk.corrupting_nodes))
        for node_id in voters:
            self._add_node(node_id, corrupting=node_id in corrupting)
        for node_id in voters:
            self.nodes[node_id].bootstrap(Configuration(voters=tuple(voters)))

    # -- Plumbing. --------------------------------------------------------------------------------

    def _add_node(self, node_id: int, corrupting: bool) -> SimNode:
        disk_params = self.params.disk
        faults = DiskFaults(
            torn_write_probability=disk_params.torn_write,
            write_bitflip_probability=disk_params.write_bitflip if corrupting else 0.0,
            read_bitflip_probability=disk_params.read_bitflip if corrupting else 0.0,
            misdirect_probability=disk_params.misdirect if corrupting else 0.0,
        )
        disk = SimDisk(self._disk_random.prng.fork(), faults, self._entry_codec)
        clock = NodeClock.draw(self._fault_random, self.params.clock)
        node = SimNode(self, node_id, disk, clock, self.random.fork())
        self.nodes[node_id] = node
        return node

    def node_ids(self) -> list[int]:
        """Where clients may send requests: the healed core in the liveness phase."""
        if self._core is not None:
            return self._core
        return [node_id for node_id, node in self.nodes.items() if not node.retired]

    def disk_latency_us(self) -> int:
        disk = self.params.disk
        return disk.sync_latency_min_us + int(
            self._disk_random.exponential(disk.sync_latency_mean_us)
        )

    def trace(self, event: str) -> None:
        pending = self._trace_pending
        pending.append(f"{self.loop.now_us}|{event};")
        if len(pending) >= TRACE_BATCH:
            self._flush_trace()

    def _flush_trace(self) -> None:
        self._trace.update("".join(self._trace_pending).encode())
        self._trace_pending.clear()

    def _deliver(self, source: int, target: int, payload: object) -> None:
        self.trace(f"{source}>{target}:{type(payload).__name__}")
        if target >= CLIENT_BASE:
            client = self.clients.get(target)
            if client is not None and isinstance(payload, Reply):
                client.receive(payload)
            return
        node = self.nodes.get(target)
        if node is not None and not node.retired:
            node.receive(source, payload)

    def _fault(self, kind: str, detail: str = "") -> None:
        self.faults[kind] += 1
        self.trace(f"fault:{kind}:{detail}")

    # -- The run. -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        try:
            self._setup()
            self._fault_phase()
            self._liveness_phase()
            self._final_checks()
        except Violation as violation:
            return self.result("correctness", str(violation))
        except LivenessFailure as failure:
            return self.result("liveness", str(failure))
        return self.result("ok", "")

    def result(self, status: str, message: str) -> RunResult:
        faults = Counter(self.faults)
        faults.update(self.network.faults)
        for node in self.nodes.values():
            faults.update(node.disk.faults_injected)
        counters = Counter(self.checker.counters)
        counters["messages_sent"] = self.network.sent
        counters["client_operations"] = sum(1 for op in self.history if op.ret_us is not None)
        self._flush_trace()
        self._trace.update(self.checker.chain_hash)
        return RunResult(
            seed=self.params.seed,
            replicas=self.params.replicas,
            status=status,
            message=message,
            trace_hash=self._trace.hexdigest(),
            simulated_us=self.loop.now_us,
            events=self.loop.events_run,
            faults=dict(sorted(faults.items())),
            counters=dict(sorted(counters.items())),
            committed=self.checker.canonical_index,
        )

    def _setup(self) -> None:
        self.network.make_healthy(self.nodes)
        client = Client(
            self, CLIENT_BASE, self.random.fork(), setup_commands(self.params.workload.registers)
        )
        self.clients[CLIENT_BASE] = client
        client.start()
        done = self.loop.run_until(SETUP_LIMIT_US, lambda: client.stopped and client.idle())
        if not done:
            raise LivenessFailure("the fault-free setup did not commit within 30 s")

    def _fault_phase(self) -> None:
        self.network.make_healthy(())
        self._faulting = True
        for number in range(1, self.params.workload.clients + 1):
            endpoint = CLIENT_BASE + number
            self.clients[endpoint] = Client(self, endpoint, self.random.fork())
            self.clients[endpoint].start()
        end = self.loop.now_us + self.params.fault_us
        self._schedule_one_offs(end)
        self.loop.after(FAULT_STEP_US, self._fault_step)
        self.loop.run_until(end)
        self._faulting = False

    def _liveness_phase(self) -> None:
        for client in self.clients.values():
            client.stop()
        core = self._choose_core()
        self._heal(core)
        while (voter := self._voter_to_add(core)) is not None:
            core = sorted([*core, voter])
            self._heal(core)
        deadline = self.loop.now_us + self.params.liveness_ticks * TICK_US
        if not self.loop.run_until(deadline, self._converged):
            raise LivenessFailure(self._stuck(core))

    def _heal(self, core: list[int]) -> None:
        """Make `core` the healed core: reliable paths among it, cut off from the rest, every
        core node up and running."""
        self._core = core
        self.trace(f"heal:{core}")
        others = [node_id for node_id in self.nodes if node_id not in core]
        self.network.make_healthy(core, others)
        for node_id in core:
            node = self.nodes[node_id]
            if not node.up:
                node.restart()
            elif node.paused:
                node.resume(0)

    def _configurations_in_use(self) -> list[Configuration]:
        """Every configuration some live node is using (a configuration change may be half-way
        through: the committed one and the newer one both decide elections somewhere)."""
        return sorted(
            {node.raft.configuration for node in self.nodes.values() if not node.retired},
            key=lambda configuration: configuration.voters,
        )

    def _choose_core(self) -> list[int]:
        """A random set of voters that holds a quorum of every configuration in use."""
        configurations = self._configurations_in_use()
        draw = self._fault_random
        core: set[int] = set()
        for configuration in configurations:
            voters = [voter for voter in configuration.voters if not self.nodes[voter].retired]
            missing = configuration.quorum() - len(core.intersection(voters))
            candidates = [voter for voter in voters if voter not in core]
            core.update(draw.sample(candidates, max(0, min(missing, len(candidates)))))
        spare = sorted(
            {voter for c in configurations for voter in c.voters if voter not in core}
            - {node_id for node_id, node in self.nodes.items() if node.retired}
        )
        core.update(draw.sample(spare, draw.randint(0, len(spare))))
        return sorted(core)

    def _voter_to_add(self, core: list[int]) -> int | None:
        """A voter to add to the healed core if its voters that can vote fall short of a quorum
        of some configuration in use, else None. A node whose disk lost entries it had
        acknowledged refuses every vote until a leader has caught it up (Raft's recovering
        mode), so a core that needs its vote could never elect anyone."""
        for configuration in self._configurations_in_use():
            voters = [voter for voter in configuration.voters if not self.nodes[voter].retired]
            able = [
                voter
                for voter in voters
                if voter in core and self.nodes[voter].raft.recovering_to is None
            ]
            spare = [voter for voter in voters if voter not in core]
            if len(able) < configuration.quorum() and spare:
                return self._fault_random.choice(spare)
        return None

    def _converged(self) -> bool:
        if any(not client.idle() for client in self.clients.values()):
            return False
        assert self._core is not None
        leaders = [
            self.nodes[node_id]
            for node_id in self._core
            if self.nodes[node_id].up and self.nodes[node_id].raft.role is Role.LEADER
        ]
        if len(leaders) != 1:
            return False
        leader = leaders[0].raft
        target = leader.log.last_index()
        # A core node the cluster removed (it may not know yet) is not owed the log.
        return all(
            self.nodes[node_id].up and self.nodes[node_id].replica.applied_index >= target
            for node_id in self._core
            if leader.configuration.is_member(node_id)
        )

    def _stuck(self, core: list[int]) -> str:
        open_operations = sum(1 for client in self.clients.values() if not client.idle())
        states = ", ".join(
            f"{node_id}:{'up' if self.nodes[node_id].up else 'down'}/"
            f"{self.nodes[node_id].raft.role.value}/t{self.nodes[node_id].raft.term}/"
            f"applied {self.nodes[node_id].replica.applied_index}/"
            f"last {self.nodes[node_id].raft.log.last_index()}"
            for node_id in core
        )
        return (
            f"no convergence within {self.params.liveness_ticks} ticks after healing core "
            f"{core}: {open_operations} client operations open; {states}"
        )

    def _final_checks(self) -> None:
        self._check_logs_match()
        problem = check_history(self.history, self.params.workload.registers)
        if problem is not None:
            raise Violation("linearizability", problem)

    def _check_logs_match(self) -> None:
        """Log matching across every pair of live nodes: equal (index, term) means equal
        prefixes, checked on the entries both still hold."""
        live = [node for node in self.nodes.values() if node.up]
        for first in live:
            for second in live:
                if first.node_id >= second.node_id:
                    continue
                log_a, log_b = first.raft.log, second.raft.log
                low = max(log_a.snapshot_index, log_b.snapshot_index) + 1
                high = min(log_a.last_index(), log_b.last_index())
                agreed = False
                for index in range(high, low - 1, -1):
                    same = log_a.entry(index) == log_b.entry(index)
                    if agreed and not same:
                        raise Violation(
                            "log_matching",
                            f"nodes {first.node_id} and {second.node_id} agree at a later "
                            f"index but differ at {index}",
                        )
                    agreed = agreed or same

    # -- Faults. ----------------------------------------------------------------------------------

    def _fault_step(self) -> None:
        if not self._faulting:
            return
        draw = self._fault_random
        process = self.params.process
        step = FAULT_STEP_US / SECOND
        for node in list(self.nodes.values()):
            if not node.up or node.retired:
                continue
            rate = process.crash_per_second * step
            if node.raft.role is Role.LEADER:
                rate += process.leader_crash_per_second * step
            if node.saving:
                rate *= process.crash_pending_factor
            if draw.chance(rate):
                self._crash(node)
            elif not node.paused and draw.chance(process.pause_per_second * step):
                self._pause(node)
            self._maybe_jump_clocks(node)
        self._maybe_partition(step)
        if draw.chance(self.params.network.clog_per_second * step):
            self._clog()
        if draw.chance(process.membership_per_second * step):
            self._membership_change()
        if draw.chance(process.transfer_per_second * step):
            self._transfer_leadership()
        self.loop.after(FAULT_STEP_US, self._fault_step)

    def _schedule_one_offs(self, end: int) -> None:
        draw = self._fault_random
        now = self.loop.now_us
        if self.params.process.cluster_restart:
            self.loop.at(draw.randint(now, end), self._restart_cluster)
        if self.params.process.wipe_rejoin:
            self.loop.at(draw.randint(now, end), self._wipe_and_rejoin)

    def _crash(
        self,
        node: SimNode,
        restart: bool = True,
        kind: str = "crash",
        restart_us: tuple[int, int] | None = None,
    ) -> None:
        """Crash `node` now and, unless told not to, restart it after a delay drawn from
        `restart_us` (by default the run's restart range)."""
        self._fault(kind, str(node.node_id))
        node.crash()
        if restart:
            process = self.params.process
            low, high = restart_us or (process.restart_min_us, process.restart_max_us)
            delay = self._fault_random.randint(low, high)
            self.loop.after(delay, lambda: self._restart(node))

    def _crash_later(
        self, node: SimNode, delay_us: int, kind: str, restart_us: tuple[int, int] | None = None
    ) -> None:
        """`_crash` after `delay_us`, unless the node has died or restarted meanwhile, or the
        faults are over (a healed node that crashed would never be restarted)."""
        incarnation = node.incarnation

        def crash() -> None:
            if self._faulting and node.up and node.incarnation == incarnation:
                self._crash(node, kind=kind, restart_us=restart_us)

        self.loop.after(delay_us, crash)

    def _restart(self, node: SimNode) -> None:
        if not node.up and not node.retired and (self._faulting or self._core is None):
            self.trace(f"restart:{node.node_id}")
            node.restart()
            self.network.replay_recent(node.node_id)

    def on_elected(self, node: SimNode) -> bool:
        """A node just became leader and is saving its no-op: sometimes it dies soon. Half of
        those die the moment that save is durable, before any message leaves (killed between
        fsync and send): the no-op of their term is on their disk alone, as in Figure 8 of the
        Raft paper, where S5 is elected, appends an entry and crashes before replicating it.
        The others die within a few ms, having replicated part of their first entries. Runs of
        such short terms leave divergent uncommitted tails, the ground of Figure 8. Returns
        whether the node is to die before sending."""
        draw = self._fault_random
        if not self._faulting or not draw.chance(self.params.process.new_leader_crash):
            return False
        if draw.chance(NEW_LEADER_SILENT_DEATH_FRACTION):
            return True
        self._crash_later(node, draw.randint(100, 30 * MS), "crash")
        return False

    def crash_before_sending(self, node: SimNode) -> bool:
        """`on_elected` chose this death; it happens unless the faults are over meanwhile."""
        if not self._faulting:
            return False
        self._crash(node, kind="new_leader_silent_crash")
        return True

    def on_vote_granted(self, node: SimNode) -> None:
        """A node just granted a vote: sometimes it dies at once and is back within a few ms,
        while the election is still running, and hears from a rival candidate only then (what
        an unpersisted vote would break)."""
        if not self._faulting or not self._fault_random.chance(self.params.process.vote_crash):
            return
        self._crash_later(node, 1, "vote_crash", restart_us=(100, 5 * MS))

    def _restart_cluster(self) -> None:
        if not self._faulting:
            return
        self._fault("cluster_restart")
        for node in self.nodes.values():
            if node.up and not node.retired:
                self._crash(node)

    def _pause(self, node: SimNode) -> None:
        self._fault("pause", str(node.node_id))
        node.pause()
        duration = self._fault_random.randint(10 * MS, self.params.process.pause_max_us)
        incarnation = node.incarnation
        self.loop.after(duration, lambda: self._resume(node, incarnation, duration))

    def _resume(self, node: SimNode, incarnation: int, duration: int) -> None:
        if node.incarnation == incarnation:
            node.resume(duration)

    def _maybe_jump_clocks(self, node: SimNode) -> None:
        draw, clock = self._fault_random, self.params.clock
        if clock.wall_jumps and draw.chance(0.01):
            node.clock.wall_offset_ms += draw.randint(-60_000, 60_000)
            self._fault("wall_clock_jump", str(node.node_id))
        if clock.monotonic_jumps and draw.chance(0.005):
            self._fault("monotonic_clock_jump", str(node.node_id))
            node.jump_clock(draw.randint(10 * MS, 1_000 * MS))

    def _maybe_partition(self, step: float) -> None:
        network, draw = self.params.network, self._fault_random
        if not draw.chance(network.partition_per_second * step):
            return
        ids = [node_id for node_id, node in self.nodes.items() if not node.retired]
        mode = draw.choice(("uniform", "isolate", "isolate_leader", "symmetric", "asymmetric"))
        leader = self._leader()
        if mode == "isolate_leader" and leader is None:
            mode = "isolate"
        if mode == "uniform":
            groups: list[list[int]] = [[], []]
            for node_id in ids:
                groups[draw.randint(0, 1)].append(node_id)
            self.network.partition(groups, ids)
        elif mode in ("isolate", "isolate_leader"):
            alone = leader.node_id if mode == "isolate_leader" and leader else draw.choice(ids)
            self.network.partition([[alone], [i for i in ids if i != alone]], ids)
        elif mode == "symmetric":
            shuffled = draw.sample(ids, len(ids))
            half = len(ids) // 2
            self.network.partition([shuffled[:half], shuffled[half:]], ids)
        else:
            pairs = [(a, b) for a in ids for b in ids if a != b and draw.chance(0.3)]
            self.network.cut_one_way(pairs)
        self._fault("partition", mode)
        duration = draw.randint(network.partition_min_us, network.partition_max_us)
        self.loop.after(duration, self._heal_partition)

    def _heal_partition(self) -> None:
        if self._faulting:
            self.network.heal_partitions()
            self.trace("partition_healed")

    def _clog(self) -> None:
        ids = [node_id for node_id, node in self.nodes.items() if not node.retired]
        source, target = self._fault_random.sample(ids, 2)
        until = self.loop.now_us + self._fault_random.randint(100 * MS, 2 * SECOND)
        self.network.clog(source, target, until)
        self._fault("clog", f"{source}>{target}")

    # -- The operator: membership changes and leadership transfers. -----------------------------

    def _leader(self) -> SimNode | None:
        leaders = [
            node
            for node in self.nodes.values()
            if node.up and not node.paused and node.raft.role is Role.LEADER
        ]
        return max(leaders, key=lambda node: node.raft.term) if leaders else None

    def _transfer_leadership(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        voters = [v for v in leader.raft.configuration.voters if v != leader.node_id]
        if voters:
            target = self._fault_random.choice(voters)
            self._fault("transfer_leadership", f"{leader.node_id}>{target}")
            leader.raft.transfer_leadership(target)
            leader.pump()

    def _membership_change(self) -> None:
        """Remove a voter and add it back (as a learner, then promoted), or add a new learner
        and promote it; one change at a time, each retried until its entry commits."""
        if self._operator_busy:
            return
        leader = self._leader()
        if leader is None:
            return
        voters = leader.raft.configuration.voters
        if len(voters) > 2 and self._fault_random.chance(0.5):
            node_id = self._fault_random.choice(voters)
            steps = [
                (ConfigurationChangeKind.REMOVE_NODE, node_id),
                (ConfigurationChangeKind.ADD_LEARNER, node_id),
                (ConfigurationChangeKind.PROMOTE_LEARNER, node_id),
            ]
        else:
            node_id = self._new_node_id()
            self._add_node(node_id, corrupting=False).bootstrap(None)
            steps = [
                (ConfigurationChangeKind.ADD_LEARNER, node_id),
                (ConfigurationChangeKind.PROMOTE_LEARNER, node_id),
            ]
        self._fault("membership_change", str(node_id))
        self._run_operator(steps)

    def _wipe_and_rejoin(self) -> None:
        """A node loses its disk for good; an operator removes it and adds a fresh one."""
        if not self._faulting or self._operator_busy:
            return
        candidates = [node for node in self.nodes.values() if node.up and not node.retired]
        leader = self._leader()
        if leader is None or len(leader.raft.configuration.voters) < 3:
            return
        victim = self._fault_random.choice(
            [node for node in candidates if node.node_id in leader.raft.configuration.voters]
            or candidates
        )
        self._fault("wipe_rejoin", str(victim.node_id))
        self._crash(victim, restart=False)
        victim.retired = True
        new_id = self._new_node_id()
        self._add_node(new_id, corrupting=False).bootstrap(None)
        self._run_operator(
            [
                (ConfigurationChangeKind.REMOVE_NODE, victim.node_id),
                (ConfigurationChangeKind.ADD_LEARNER, new_id),
                (ConfigurationChangeKind.PROMOTE_LEARNER, new_id),
            ]
        )

    def _new_node_id(self) -> int:
        self._next_node_id += 1
        return self._next_node_id

    def _run_operator(self, steps: list[tuple[ConfigurationChangeKind, int]]) -> None:
        self._operator_busy = True
        self._operator_step(steps)

    def _operator_step(self, steps: list[tuple[ConfigurationChangeKind, int]]) -> None:
        if not steps or not self._faulting:
            self._operator_busy = False
            return
        kind, node_id = steps[0]
        leader = self._leader()
        if leader is not None:
            if _change_done(leader, kind, node_id):
                self.trace(f"operator:{kind.name}:{node_id}")
                steps = steps[1:]
            elif not (
                kind is ConfigurationChangeKind.PROMOTE_LEARNER and _lagging(leader, node_id)
            ):
                try:
                    leader.raft.propose_configuration_change(ConfigurationChange(kind, node_id))
                    leader.pump()
                except (NotLeaderError, ProposalDroppedError, ConfigurationChangeError):
                    pass
        self.loop.after(OPERATOR_RETRY_US, lambda: self._operator_step(steps))


def _change_done(leader: SimNode, kind: ConfigurationChangeKind, node_id: int) -> bool:
    """Whether the leader's committed configuration already reflects the change."""
    configuration = leader.raft.configuration
    if leader.raft.configuration_pending():
        return False
    if kind is ConfigurationChangeKind.REMOVE_NODE:
        return not configuration.is_member(node_id)
    if kind is ConfigurationChangeKind.ADD_LEARNER:
        return configuration.is_member(node_id)
    return configuration.is_voter(node_id)


def _lagging(leader: SimNode, node_id: int) -> bool:
    progress = leader.raft.progress(node_id)
    return progress is None or progress.match < leader.raft.log.committed
