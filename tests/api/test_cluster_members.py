"""Three `memora serve` processes form a cluster as a user starts one, and `memora cluster` acts
on it: any member takes writes and serves linearizable reads, a fourth node joins, catches up and
is removed, leadership moves on request, and a process without the secret is kept out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_processes import SECRET, call, free_ports, memora_cluster, wait_s_max
from memora_process import MemoraProcess


class Members:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.peer_ports = dict(zip((1, 2, 3, 4), free_ports(4), strict=True))
        self.processes: dict[int, MemoraProcess] = {}

    def peers(self, ids: tuple[int, ...]) -> str:
        return ",".join(f"{node}=127.0.0.1:{self.peer_ports[node]}" for node in ids)

    def start(self, node_id: int, ids: tuple[int, ...] = (1, 2, 3), *flags: str) -> MemoraProcess:
        member_flags = ("--node-id", str(node_id), "--peers", self.peers(ids), *flags)
        environment = {"MEMORA_CLUSTER_SECRET": SECRET}
        process = MemoraProcess(self.root / f"n{node_id}", environment, member_flags)
        self.processes[node_id] = process
        return process

    def status(self, node_id: int) -> Any:
        return call(f"{self.processes[node_id].url}/api/v1/cluster")

    def leader(self) -> int:
        deadline = time.monotonic() + wait_s_max
        while time.monotonic() < deadline:
            leaders = {self.status(node)["leader_id"] for node in self.processes}
            if len(leaders) == 1 and None not in leaders:
                return int(leaders.pop())
            time.sleep(0.05)
        raise AssertionError("the members never agreed on a leader")

    def converged(self) -> set[str]:
        """The members' state hashes once they applied the same index."""
        deadline = time.monotonic() + wait_s_max
        while time.monotonic() < deadline:
            statuses = [self.status(node) for node in self.processes]
            if len({status["applied_index"] for status in statuses}) == 1:
                return {status["state_hash"] for status in statuses}
            time.sleep(0.05)
        raise AssertionError("the members never applied the same index")


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Members]:
    cluster = Members(tmp_path)
    try:
        yield cluster
    finally:
        for process in cluster.processes.values():
            process.kill()


def test_three_processes_serve_as_one_and_a_fourth_joins_and_leaves(members: Members) -> None:
    for node_id in (1, 2, 3):
        members.start(node_id)
    leader = members.leader()
    follower = next(node for node in (1, 2, 3) if node != leader)
    url = members.processes[follower].url
    written = call(f"{url}/api/v1/nodes", "POST", {"id": 100, "label": "UserPreference"})
    for node_id in (1, 2, 3):
        got = call(f"{members.processes[node_id].url}/api/v1/nodes/100")
        assert got["node"]["label"] == "UserPreference"
        assert got["applied_index"] >= written["commit_index"]

    members.start(4, (1, 2, 3, 4), "--join")
    added = memora_cluster("--server", url, "add-node", "4", f"127.0.0.1:{members.peer_ports[4]}")
    assert added.returncode == 0, added.stderr
    assert "voters [1, 2, 3, 4]" in added.stdout
    assert len(members.converged()) == 1
    got = call(f"{members.processes[4].url}/api/v1/nodes/100?consistency=follower")
    assert got["node"]["id"] == 100

    moved = memora_cluster("--server", url, "transfer-leader", "4")
    assert moved.returncode == 0 and moved.stdout.strip() == "node 4 leads", moved.stderr
    status = memora_cluster("--server", members.processes[4].url, "status")
    assert status.returncode == 0 and "leader 4" in status.stdout, status.stdout
    removed = memora_cluster("--server", url, "remove-node", "4")
    assert removed.returncode == 0 and "voters [1, 2, 3]" in removed.stdout, removed.stderr
    members.processes.pop(4).kill()
    assert len(members.converged()) == 1
    refused = memora_cluster("--server", url, "transfer-leader", "4")
    assert refused.returncode == 1 and "422" in refused.stderr, refused.stderr


def test_a_process_without_the_secret_cannot_join(members: Members, tmp_path: Path) -> None:
    for node_id in (1, 2, 3):
        members.start(node_id)
    leader = members.leader()
    flags = ("--node-id", "4", "--peers", members.peers((1, 2, 3, 4)), "--join")
    environment = {"MEMORA_CLUSTER_SECRET": "not-the-cluster-secret"}
    intruder = MemoraProcess(tmp_path / "intruder", environment, flags)
    members.processes[4] = intruder
    url = members.processes[leader].url
    deadline = time.monotonic() + wait_s_max
    while call(f"{url}/api/v1/metrics")["metrics"]["peer_handshakes_rejected_total"] == 0:
        assert time.monotonic() < deadline, "the intruder's handshakes were never refused"
        time.sleep(0.05)
    assert members.status(4)["voters"] == []  # It never heard from the cluster.
    assert members.status(leader)["voters"] == [1, 2, 3]
