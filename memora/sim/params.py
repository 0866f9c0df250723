"""Everything a run does is derived from its seed: `SimParams.from_seed(seed)`.

This is swarm testing: each seed draws its own fault mix, and switches some kinds of fault off
entirely, because a fault that is always on hides the bugs that only show without it (a lossy
network never lets a long pipeline build up; constant partitions never let a big log form).
"""

from __future__ import annotations

import attrs

from memora.core import constants
from memora.core.raft import InjectedBug
from memora.sim.rng import SimRandom

MS = 1_000
SECOND = 1_000_000


@attrs.frozen
class NetworkParams:
    delay_min_us: int
    delay_mean_us: int  # Exponentially distributed on top of the minimum: messages reorder.
    loss: float
    duplicate: float
    replay: float  # Chance per send of also delivering an old message again, restarts included.
    replay_on_restart: bool  # A restarted node gets again what it received just before dying.
    path_capacity: int  # Messages in flight on one path; more are dropped.
    clog_per_second: float  # Chance per second that some path clogs (a long extra delay).
    partition_per_second: float
    partition_min_us: int
    partition_max_us: int


@attrs.frozen
class DiskParams:
    sync_latency_min_us: int
    sync_latency_mean_us: int
    corrupting_nodes: int  # How many nodes (a minority) may suffer bit flips and misdirection.
    torn_write: float
    write_bitflip: float
    read_bitflip: float
    misdirect: float


@attrs.frozen
class RaftParams:
    pre_vote: bool
    check_quorum: bool  # Lease reads need it, so they are off without it.
    # Small appends make entries trickle to followers one message at a time, so a leader's
    # entries of earlier terms can reach a quorum before its own no-op does (Raft's Figure 8).
    append_bytes_max: int
    inflight_messages_max: int


@attrs.frozen
class ProcessParams:
    crash_per_second: float
    leader_crash_per_second: float  # Leaders die more: elections with uncommitted tails.
    # Chance a new leader dies within ms (half of them before sending anything, their no-op on
    # their disk alone): short terms, divergent uncommitted tails, Raft's Figure 8.
    new_leader_crash: float
    crash_pending_factor: float  # Crashes are this much likelier while a sync is pending.
    vote_crash: float  # Chance a node dies just after granting a vote, back within a few ms.
    restart_min_us: int
    restart_max_us: int
    pause_per_second: float
    pause_max_us: int
    cluster_restart: bool  # Once in the run, every node crashes at the same instant.
    wipe_rejoin: bool  # Once in the run, a node loses its disk and rejoins under a new id.
    membership_per_second: float  # Learner added then promoted, or a voter removed and re-added.
    transfer_per_second: float
    compact_every_entries: int


@attrs.frozen
class ClockParams:
    drift_max: float  # Each node's clock runs at 1 +- up to this (within the lease bound).
    jitter_us: int  # Each tick lands up to this late.
    wall_jumps: bool  # Wall clocks (timestamps) jump, backwards too.
    monotonic_jumps: bool  # Only with lease reads off: a jump breaks any lease, by definition.


@attrs.frozen
class WorkloadParams:
    clients: int
    think_min_us: int
    think_max_us: int
    request_timeout_us: int
    read_fraction: float
    lease_reads: bool
    registers: int  # Keys of the register workload checked by the linearizability search.
    spread: float  # Chance a request goes to a random node rather than the leader last heard of.


@attrs.frozen
class SimParams:
    seed: int
    replicas: int
    fault_us: int  # Length of the fault phase; the liveness phase follows.
    liveness_ticks: int  # After healing, the cluster must converge within this many ticks.
    raft: RaftParams
    network: NetworkParams
    disk: DiskParams
    process: ProcessParams
    clock: ClockParams
    workload: WorkloadParams
    bugs: frozenset[InjectedBug] = frozenset()

    @classmethod
    def from_seed(cls, seed: int, bugs: frozenset[InjectedBug] = frozenset()) -> SimParams:
        draw = SimRandom(seed ^ 0x5EED_5EED_5EED_5EED)
        replicas = draw.choice((3, 3, 5))
        raft = RaftParams(
            pre_vote=draw.chance(0.6),
            check_quorum=draw.chance(0.6),
            append_bytes_max=draw.choice((1, 256, 4_096, constants.raft_append_bytes_max)),
            inflight_messages_max=draw.choice((1, 4, constants.raft_inflight_messages_max)),
        )
        lease_reads = raft.check_quorum and draw.chance(0.4)
        return cls(
            seed=seed,
            replicas=replicas,
            fault_us=draw.randint(3, 12) * SECOND,
            liveness_ticks=3_000,
            raft=raft,
            network=_network(draw),
            disk=_disk(draw, replicas),
            process=_process(draw),
            clock=_clock(draw, lease_reads),
            workload=_workload(draw, lease_reads),
            bugs=bugs,
        )

    def describe(self) -> str:
        """Every parameter, one group a line, for the top of a run's output."""
        lines = [f"seed={self.seed} replicas={self.replicas} fault_ms={self.fault_us // MS}"]
        if self.bugs:
            lines.append("injected bugs: " + ", ".join(sorted(bug.value for bug in self.bugs)))
        for group in (self.raft, self.network, self.disk, self.process, self.clock, self.workload):
            fields = ", ".join(
                f"{name}={_short(value)}" for name, value in attrs.asdict(group).items()
            )
            lines.append(f"{type(group).__name__.removesuffix('Params').lower()}: {fields}")
        return "\n".join(lines)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _maybe(draw: SimRandom, on: float, low: float, high: float) -> float:
    """Swarm: with probability 1 - `on` the fault is off for the whole run."""
    return draw.between(low, high) if draw.chance(on) else 0.0


def _network(draw: SimRandom) -> NetworkParams:
    partition_min = draw.randint(100, 1_000) * MS
    return NetworkParams(
        delay_min_us=draw.randint(20, 300),
        delay_mean_us=draw.randint(100, 5_000),
        loss=_maybe(draw, 0.6, 0.0, 0.30),
        duplicate=_maybe(draw, 0.5, 0.0, 0.50),
        replay=_maybe(draw, 0.4, 0.0, 0.05),
        replay_on_restart=draw.chance(0.6),
        path_capacity=draw.choice((8, 32, 128, 1_024)),
        clog_per_second=_maybe(draw, 0.4, 0.0, 1.0),
        partition_per_second=_maybe(draw, 0.7, 0.05, 1.0),
        partition_min_us=partition_min,
        partition_max_us=partition_min + draw.randint(0, 3_000) * MS,
    )


def _disk(draw: SimRandom, replicas: int) -> DiskParams:
    corrupting = draw.randint(0, (replicas - 1) // 2) if draw.chance(0.5) else 0
    return DiskParams(
        sync_latency_min_us=draw.randint(20, 500),
        sync_latency_mean_us=draw.randint(50, 3_000),
        corrupting_nodes=corrupting,
        torn_write=_maybe(draw, 0.6, 0.1, 1.0),
        write_bitflip=_maybe(draw, 0.7, 0.0, 0.01) if corrupting else 0.0,
        read_bitflip=_maybe(draw, 0.7, 0.0, 0.01) if corrupting else 0.0,
        misdirect=_maybe(draw, 0.7, 0.0, 0.005) if corrupting else 0.0,
    )


def _process(draw: SimRandom) -> ProcessParams:
    restart_min = draw.randint(10, 500) * MS
    return ProcessParams(
        crash_per_second=_maybe(draw, 0.7, 0.02, 0.3),
        leader_crash_per_second=_maybe(draw, 0.5, 0.1, 1.0),
        new_leader_crash=_maybe(draw, 0.4, 0.1, 0.6),
        crash_pending_factor=draw.between(1.0, 4.0),
        vote_crash=_maybe(draw, 0.5, 0.3, 1.0),
        restart_min_us=restart_min,
        restart_max_us=restart_min + draw.randint(0, 2_000) * MS,
        pause_per_second=_maybe(draw, 0.4, 0.02, 0.3),
        pause_max_us=draw.randint(50, 1_000) * MS,
        cluster_restart=draw.chance(0.2),
        wipe_rejoin=draw.chance(0.3),
        membership_per_second=_maybe(draw, 0.4, 0.05, 0.4),
        transfer_per_second=_maybe(draw, 0.4, 0.05, 0.5),
        compact_every_entries=draw.choice((8, 32, 128, 512)),
    )


def _clock(draw: SimRandom, lease_reads: bool) -> ClockParams:
    return ClockParams(
        drift_max=_maybe(draw, 0.8, 0.0, 0.07),
        jitter_us=draw.choice((0, 500, 2_000)),
        wall_jumps=draw.chance(0.5),
        monotonic_jumps=not lease_reads and draw.chance(0.5),
    )


def _workload(draw: SimRandom, lease_reads: bool) -> WorkloadParams:
    think_min = draw.randint(0, 10) * MS
    return WorkloadParams(
        clients=draw.randint(2, 8),
        think_min_us=think_min,
        think_max_us=think_min + draw.randint(1, 40) * MS,
        request_timeout_us=draw.randint(200, 1_500) * MS,
        read_fraction=draw.between(0.2, 0.6),
        lease_reads=lease_reads,
        registers=draw.randint(1, 4),
        spread=_maybe(draw, 0.5, 0.05, 0.6),
    )
