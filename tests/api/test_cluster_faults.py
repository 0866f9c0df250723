"""Three `memora serve` processes on loopback under faults, with four clients writing and reading
registers all along (issue 6).

The faults: kill -9 of the leader (restarted on its data directory), links cut one way or both,
delayed or dropping connections (a `LinkProxy` on every directed link), SIGSTOP and SIGCONT, and
a member removed, wiped and replaced through `memora cluster remove-node` and `add-node`. After
healing, every test checks that every acknowledged write is in every member's versions of its
register, that the history is linearizable by the simulator's checkers (and that the same check
rejects the history with one stale read added), and that every member reports the same state
hash at the same applied index. Each test prints a summary line for the CI log.

`MEMORA_FAULTS_SEED` picks the clients' choices and the proxies' drops (the timing of a run is
the machine's); a failure's message says which seed ran.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
from cluster_processes import call, memora_cluster, wait_s_max
from faulty_cluster import FaultyCluster, status_timeout_s
from history_checks import (
    linearizability_problem,
    missing_writes,
    real_time_order_problem,
    with_stale_read,
)
from link_proxy import LinkMode
from register_clients import (
    History,
    Record,
    RegisterClient,
    create_registers,
    operation_timeout_s,
    register_versions,
)

from memora.core import constants

SEED: Final = int(os.environ.get("MEMORA_FAULTS_SEED", "6"))
clients_count: Final = 4
kills_min: Final = 5
# Acknowledged writes each fault step waits for once it is over: the cluster serves again.
acks_between_faults_min: Final = 3
acks_after_healing_min: Final = 10
# A cut, delay or drop lasts `fault_s`, a SIGSTOP `pause_s`: each outlasts several election
# timeouts, so the members on the other side of it elect a leader, and the one cut off campaigns
# or finds itself deposed, while it lasts.
fault_s: Final = 1.0
pause_s: Final = 1.5
restart_after_s: Final = 0.3
link_delay_s: Final = 0.1
link_drop_chance: Final = 0.05
election_timeouts_per_fault_min: Final = 3
election_timeout_ms_max: Final = constants.election_timeout_ticks_max * constants.raft_tick_ms
assert restart_after_s < fault_s <= pause_s < wait_s_max
assert fault_s * 1000 >= election_timeouts_per_fault_min * election_timeout_ms_max


# -- The workload ---------------------------------------------------------------------------------


class Workload:
    """`clients_count` register clients, each on its own thread, over the cluster's members."""

    def __init__(self, cluster: FaultyCluster) -> None:
        self.history = History()
        self._stop = threading.Event()
        numbers = range(1, clients_count + 1)
        clients = [RegisterClient(number, cluster, self.history, SEED) for number in numbers]
        self._threads = [threading.Thread(target=each.run, args=(self._stop,)) for each in clients]
        self.cluster = cluster

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=operation_timeout_s + wait_s_max)
        assert not any(thread.is_alive() for thread in self._threads), "a client never returned"

    def wait_for_acks(self, count: int, after: str) -> None:
        target = self.history.acknowledged_writes() + count
        self.cluster.wait_for(
            f"{count} writes acknowledged after {after}",
            lambda: True if self.history.acknowledged_writes() >= target else None,
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultyCluster]:
    members = FaultyCluster(tmp_path, (1, 2, 3), SEED)
    try:
        yield members
    finally:
        members.close()


# -- The faults -----------------------------------------------------------------------------------


def kill_the_leader(cluster: FaultyCluster) -> str:
    leader = cluster.leader()
    cluster.kill(leader)
    time.sleep(restart_after_s)
    cluster.restart(leader)
    return f"kill -9 leader {leader}"


def others(cluster: FaultyCluster, node_id: int) -> list[int]:
    return [other for other in cluster.members if other != node_id]


def cut_the_leaders_outbound_links(cluster: FaultyCluster) -> str:
    leader = cluster.leader()
    links = [(leader, other) for other in others(cluster, leader)]
    cluster.set_links(links, LinkMode.CUT)
    time.sleep(fault_s)
    cluster.set_links(links, LinkMode.PASS)
    return f"cut {links}"


def isolate_a_follower(cluster: FaultyCluster) -> str:
    follower = others(cluster, cluster.leader())[0]
    links = [(follower, other) for other in others(cluster, follower)]
    links += [(other, follower) for other in others(cluster, follower)]
    cluster.set_links(links, LinkMode.CUT)
    time.sleep(fault_s)
    cluster.set_links(links, LinkMode.PASS)
    return f"cut {links}"


def delay_every_link(cluster: FaultyCluster) -> str:
    cluster.set_links(cluster.proxies, LinkMode.DELAY, delay_s=link_delay_s)
    time.sleep(fault_s)
    cluster.set_links(cluster.proxies, LinkMode.PASS)
    return f"delay every link {link_delay_s} s"


def drop_on_every_link(cluster: FaultyCluster) -> str:
    cluster.set_links(cluster.proxies, LinkMode.DROP, drop_chance=link_drop_chance)
    time.sleep(fault_s)
    cluster.set_links(cluster.proxies, LinkMode.PASS)
    return f"drop connections on every link, chance {link_drop_chance} a chunk"


def pause_the_leader(cluster: FaultyCluster) -> str:
    return _pause(cluster, cluster.leader(), "leader")


def pause_a_follower(cluster: FaultyCluster) -> str:
    return _pause(cluster, others(cluster, cluster.leader())[0], "follower")


def _pause(cluster: FaultyCluster, node_id: int, role: str) -> str:
    cluster.pause(node_id)
    time.sleep(pause_s)
    cluster.resume(node_id)
    return f"SIGSTOP {role} {node_id} for {pause_s} s, then SIGCONT"


Fault = Callable[[FaultyCluster], str]
SCHEDULE: Final[tuple[Fault, ...]] = (
    kill_the_leader,
    cut_the_leaders_outbound_links,
    kill_the_leader,
    delay_every_link,
    pause_the_leader,
    kill_the_leader,
    isolate_a_follower,
    kill_the_leader,
    drop_on_every_link,
    pause_a_follower,
    kill_the_leader,
)
assert sum(fault is kill_the_leader for fault in SCHEDULE) >= kills_min


def run_schedule(cluster: FaultyCluster, workload: Workload, schedule: tuple[Fault, ...]) -> None:
    for fault in schedule:
        what = fault(cluster)
        workload.wait_for_acks(acks_between_faults_min, what)


# -- The checks -----------------------------------------------------------------------------------


def check_the_outcome(cluster: FaultyCluster, workload: Workload) -> dict[str, Any]:
    """Heal, let the clients go on a while, stop them, run the three checks, and stop every
    member cleanly (SIGTERM, exit 0, no traceback printed); returns what the summary prints."""
    cluster.heal()
    workload.wait_for_acks(acks_after_healing_min, "healing")
    workload.stop()
    records = workload.history.copy()
    assert not workload.history.anomalies, "\n".join(workload.history.anomalies)
    statuses = cluster.converged(cluster.members)
    hashes = {node: status["state_hash"] for node, status in statuses.items()}
    assert len(set(hashes.values())) == 1, f"state hashes differ: {statuses}"
    check_every_acknowledged_write_is_kept(cluster, records)
    checked_s = check_linearizable(records)
    applied_index = next(iter(statuses.values()))["applied_index"]
    cluster.stop_all()
    assert not cluster.crashes(), "\n".join(cluster.crashes())
    return {"applied_index": applied_index, "check_s": round(checked_s, 1)}


def check_every_acknowledged_write_is_kept(cluster: FaultyCluster, records: list[Record]) -> None:
    versions = {}
    for node_id in cluster.members:
        url = cluster.url(node_id)
        assert url is not None, f"node {node_id} is down after healing"
        versions[node_id] = register_versions(url)
    missing = missing_writes(records, versions)
    assert not missing, "acknowledged writes lost:\n" + "\n".join(missing[:20])


def check_linearizable(records: list[Record]) -> float:
    """Both checks of the simulator, and the same search failing a doctored copy; seconds."""
    started_s = time.monotonic()
    problem = real_time_order_problem(records)
    assert problem is None, f"seed {SEED}: {problem}"
    problem = linearizability_problem(records)
    assert problem is None, f"seed {SEED}: {problem}"
    key, doctored = with_stale_read(records)
    assert linearizability_problem(doctored) is not None, f"a stale read at {key} passed"
    return time.monotonic() - started_s


def print_summary(
    capsys: pytest.CaptureFixture[str], name: str, workload: Workload, facts: dict[str, Any]
) -> None:
    counters = workload.history.counters
    counted = ("writes_ok", "writes_unknown", "writes_never_sent", "reads_ok", "reads_unanswered")
    numbers = {name: counters[name] for name in counted}
    line = {"seed": SEED, **facts, **numbers, "history": len(workload.history.records)}
    with capsys.disabled():
        print(f"\n{name}: " + ", ".join(f"{key} {value}" for key, value in line.items()))


# -- The tests ------------------------------------------------------------------------------------


def test_the_checks_fail_a_stale_read_a_lost_write_and_an_index_out_of_order() -> None:
    """The checks the fault tests rely on are not vacuous: a small history passes, and each
    doctored copy of it fails the check meant to catch it."""
    history = [
        Record(0, "write", 101, 0, 0, 10, index=1),
        Record(1, "write", 101, 1_000_001, 20, 30, index=5),
        Record(2, "write", 101, 2_000_001, 25, None),  # Unknown: it may or may not have happened.
        Record(2, "read", 101, 1_000_001, 40, 50, index=6),
        Record(1, "read", 101, 2_000_001, 60, 70, index=7),  # The unknown write did happen.
    ]
    assert linearizability_problem(history) is None
    assert real_time_order_problem(history) is None
    key, doctored = with_stale_read(history)
    assert key == 101 and linearizability_problem(doctored) is not None
    reread = Record(1, "read", 101, 1_000_001, 80, 90, index=7)  # Back to an older value.
    assert linearizability_problem([*history, reread]) is not None
    behind = Record(1, "read", 101, 2_000_001, 80, 90, index=5)  # Served below a seen index.
    assert real_time_order_problem([*history, behind]) is not None
    versions = {1: {101: [0, 1_000_001, 2_000_001]}, 2: {101: [0, 2_000_001]}}
    assert missing_writes(history, versions) == [f"node 2 lacks {history[1]} (acknowledged)"]


def start_with_workload(cluster: FaultyCluster) -> Workload:
    """Start the members, check that they dial each other through the proxies, create the
    registers and start the clients."""
    cluster.start_all()
    leader = cluster.leader()
    assert not cluster.links_off_the_proxies(), cluster.links_off_the_proxies()
    url = cluster.url(leader)
    assert url is not None
    workload = Workload(cluster)
    create_registers(url, workload.history)
    workload.start()
    return workload


def test_the_cluster_survives_kills_partitions_and_pauses(
    cluster: FaultyCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    started_s = time.monotonic()
    workload = start_with_workload(cluster)
    workload.wait_for_acks(acks_between_faults_min, "the start")
    run_schedule(cluster, workload, SCHEDULE)
    assert not cluster.links_off_the_proxies(), cluster.links_off_the_proxies()
    links = cluster.proxy_counts()
    facts: dict[str, Any] = {
        "kills": sum(fault is kill_the_leader for fault in SCHEDULE),
        "pauses": sum(fault in (pause_the_leader, pause_a_follower) for fault in SCHEDULE),
        "connections_cut": links.get("connections_cut", 0),
        "connections_refused": links.get("connections_refused", 0),
        "connections_dropped": links.get("connections_dropped", 0),
    }
    facts |= check_the_outcome(cluster, workload)
    assert facts["kills"] >= kills_min
    assert facts["connections_cut"] > 0 and facts["connections_dropped"] > 0, facts
    assert workload.history.counters["writes_ok"] >= len(SCHEDULE) * acks_between_faults_min
    facts["wall_s"] = round(time.monotonic() - started_s, 1)
    print_summary(capsys, "kills, partitions and pauses", workload, facts)


def test_a_wiped_node_is_replaced_through_membership(
    cluster: FaultyCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    started_s = time.monotonic()
    workload = start_with_workload(cluster)
    workload.wait_for_acks(acks_between_faults_min, "the start")
    removed = cluster.leader()  # It must hand over its leadership as it leaves.
    survivors = others(cluster, removed)
    replace_a_member(cluster, removed, survivors, new_id=4)
    workload.wait_for_acks(acks_between_faults_min, "the replacement")
    run_schedule(cluster, workload, (kill_the_leader, pause_a_follower))
    facts: dict[str, Any] = {"removed": removed, "added": 4, "voters": cluster.members, "kills": 1}
    facts |= check_the_outcome(cluster, workload)
    facts["wall_s"] = round(time.monotonic() - started_s, 1)
    print_summary(capsys, "a wiped node replaced", workload, facts)


def replace_a_member(
    cluster: FaultyCluster, removed: int, survivors: list[int], new_id: int
) -> None:
    """remove-node, kill -9, wipe, then start the machine as `new_id` with --join and add-node:
    a wiped node comes back under a new id, so that no vote it forgot can be cast twice."""
    servers = [arg for node in survivors for arg in ("--server", cluster.url(node) or "")]
    done = memora_cluster(*servers, "remove-node", str(removed))
    assert done.returncode == 0, done.stderr
    assert f"voters {survivors}" in done.stdout, done.stdout
    cluster.members = survivors
    cluster.kill(removed)
    cluster.wipe(removed)
    cluster.add_listener(new_id)
    cluster.start(new_id, [*survivors, new_id], "--join")
    address = f"127.0.0.1:{cluster.listen_ports[new_id]}"
    done = memora_cluster(*servers, "add-node", str(new_id), address)
    assert done.returncode == 0, done.stderr
    assert f"voters {[*survivors, new_id]}" in done.stdout, done.stdout
    cluster.members = [*survivors, new_id]


def test_a_wiped_voter_restarted_as_a_founder_cannot_lose_an_acknowledged_write(
    cluster: FaultyCluster,
) -> None:
    """The operator's mistake the replacement test avoids: node W is wiped and started again
    with the flags it founded the cluster with. A write acknowledged by the leader and W only
    (the third member cut off) must survive the leader's crash all the same: W comes back with
    another incarnation, which the members that knew it refuse, so it cannot vote the lagging
    member in."""
    cluster.start_all()
    leader = cluster.leader()
    wiped, isolated = others(cluster, leader)
    url = cluster.url(leader)
    assert url is not None
    cluster.wait_for("the default namespace", partial(namespace_exists, url))
    call(f"{url}/api/v1/nodes", "POST", {"id": 7, "label": "register", "properties": {"v": 0}})
    cut_off = [(isolated, other) for other in others(cluster, isolated)]
    cut_off += [(other, isolated) for other in others(cluster, isolated)]
    cluster.set_links(cut_off, LinkMode.CUT)
    call(f"{url}/api/v1/nodes/7", "PATCH", {"properties": {"v": 1}})  # Kept by leader and W.
    cluster.kill(leader)
    cluster.kill(wiped)
    cluster.wipe(wiped)
    with contextlib.suppress(RuntimeError):  # A product that refuses the wiped founder is right.
        cluster.restart(wiped)
    cluster.set_links(cut_off, LinkMode.PASS)
    cluster.restart(leader)
    assert (
        cluster.wait_for("node 7 is read on the old leader", partial(read_v, cluster, leader)) == 1
    )
    refused = [
        call(f"{cluster.url(node)}/api/v1/metrics")["metrics"]["peer_incarnations_refused_total"]
        for node in (leader, isolated)
    ]
    assert sum(refused) > 0, refused


def namespace_exists(url: str) -> bool | None:
    try:
        call(f"{url}/api/v1/namespaces/default", timeout_s=status_timeout_s)
    except (urllib.error.URLError, OSError):
        return None
    return True


def read_v(cluster: FaultyCluster, node_id: int) -> int | None:
    url = cluster.url(node_id)
    try:
        answer = call(f"{url}/api/v1/nodes/7", timeout_s=status_timeout_s)
    except (urllib.error.URLError, OSError):
        return None  # No leader yet: reads wait for one.
    value: int = answer["node"]["properties"]["v"]
    return value
