"""`FaultyCluster`: `memora serve` processes on 127.0.0.1 that a test kills, restarts, pauses,
wipes and cuts off from each other, with a `LinkProxy` on every directed link between members.

What lives here: the processes, their `--peers` strings, the proxies, the faults, and the waits
on the members' cluster status. What must not: the client workload or the checks of its history
(`register_clients`, `history_checks`).

Node i's `--peers` names its own real listener and, for every other member j, the proxy i->j,
which forwards to j's real listener: so each direction of each link can be broken on its own.
Every wait is bounded (`wait_s_max`); the status calls use `status_timeout_s`, so that a paused
member slows a wait down without stalling it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
import urllib.error
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, Final

from cluster_processes import SECRET, call, free_ports, wait_s_max
from link_proxy import LinkMode, LinkProxy
from memora_process import MemoraProcess

status_timeout_s: Final = 2.0
poll_s: Final = 0.05
output_tail_lines: Final = 40
assert status_timeout_s < wait_s_max


class FaultyCluster:
    """Members by node id; `members` are the ids the clients should use right now."""

    def __init__(self, root: Path, node_ids: Iterable[int], seed: int) -> None:
        self.root = root
        self.seed = seed
        self.members: list[int] = sorted(node_ids)
        self.listen_ports: dict[int, int] = {}
        self.proxies: dict[tuple[int, int], LinkProxy] = {}
        self.processes: dict[int, MemoraProcess] = {}
        self.paused: set[int] = set()
        # Stopped incarnations by node id, kept for their output.
        self.retired: list[tuple[int, MemoraProcess]] = []
        self._flags: dict[int, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        for node_id in self.members:
            self.add_listener(node_id)

    # -- Addresses and processes ------------------------------------------------------------------

    def add_listener(self, node_id: int) -> None:
        """Pick node_id's peer port and put a proxy on each link between it and the others."""
        (self.listen_ports[node_id],) = free_ports(1)
        for other in self.listen_ports:
            if other != node_id:
                self._add_proxy(node_id, other)
                self._add_proxy(other, node_id)

    def _add_proxy(self, source: int, target: int) -> None:
        seed = self.seed * 100 + source * 10 + target
        proxy = LinkProxy(self.listen_ports[target], f"proxy {source}->{target}", seed)
        self.proxies[(source, target)] = proxy

    def peers_flag(self, node_id: int, ids: Iterable[int]) -> str:
        def address(other: int) -> int:
            if other == node_id:
                return self.listen_ports[node_id]
            return self.proxies[(node_id, other)].port

        return ",".join(f"{other}=127.0.0.1:{address(other)}" for other in sorted(ids))

    def start(self, node_id: int, ids: Iterable[int], *flags: str) -> MemoraProcess:
        peers = self.peers_flag(node_id, ids)
        self._flags[node_id] = ("--node-id", str(node_id), "--peers", peers, *flags)
        return self._launch(node_id)

    def start_all(self) -> None:
        """Start every founding member at once (each start waits for its own health)."""
        errors: list[BaseException] = []

        def start_one(node_id: int) -> None:
            try:
                self.start(node_id, self.members)
            except BaseException as error:  # Reported by the caller's thread.
                errors.append(error)

        threads = [threading.Thread(target=start_one, args=(node,)) for node in self.members]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=wait_s_max)
        if errors:
            raise errors[0]
        assert set(self.processes) == set(self.members), "a member did not start in time"

    def _launch(self, node_id: int) -> MemoraProcess:
        environment = {"MEMORA_CLUSTER_SECRET": SECRET}
        process = MemoraProcess(self.data_dir(node_id), environment, self._flags[node_id])
        with self._lock:
            self.processes[node_id] = process
        return process

    def data_dir(self, node_id: int) -> Path:
        return self.root / f"n{node_id}"

    def url(self, node_id: int) -> str | None:
        """Where a client reaches the member now, or None while it is down."""
        with self._lock:
            process = self.processes.get(node_id)
        return None if process is None else process.url

    # -- Faults -----------------------------------------------------------------------------------

    def kill(self, node_id: int) -> None:
        """kill -9 (a paused process dies too)."""
        with self._lock:
            process = self.processes.pop(node_id)
        self.paused.discard(node_id)
        process.kill()
        self.retired.append((node_id, process))

    def restart(self, node_id: int) -> None:
        """Start the member again on its data directory, with the flags it had."""
        self._launch(node_id)

    def wipe(self, node_id: int) -> None:
        assert node_id not in self.processes, "wipe a member only once it is down"
        shutil.rmtree(self.data_dir(node_id))

    def pause(self, node_id: int) -> None:
        self.processes[node_id].process.send_signal(signal.SIGSTOP)
        self.paused.add(node_id)

    def resume(self, node_id: int) -> None:
        self.paused.discard(node_id)
        self.processes[node_id].process.send_signal(signal.SIGCONT)

    def set_links(self, links: Iterable[tuple[int, int]], mode: LinkMode, **options: float) -> None:
        for link in links:
            self.proxies[link].set_mode(mode, **options)

    def heal(self) -> None:
        """Every link passes bytes again and every paused member runs again."""
        self.set_links(self.proxies, LinkMode.PASS)
        for node_id in list(self.paused):
            self.resume(node_id)

    def stop_all(self) -> None:
        """SIGTERM to every member at once: each must drain and exit 0 in time."""
        with self._lock:
            stopping, self.processes = self.processes, {}
        errors: list[str] = []

        def stop(node_id: int, process: MemoraProcess) -> None:
            try:
                process.stop()
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                errors.append(f"node {node_id}: {error}")
                process.kill()

        threads = [threading.Thread(target=stop, args=item) for item in stopping.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()  # Each stop is bounded by memora_process.stop_timeout_s.
        self.retired += stopping.items()
        assert not errors, "\n".join(errors)

    def incarnations(self) -> list[tuple[int, MemoraProcess]]:
        """Every process started, by node id: those stopped, then those running."""
        with self._lock:
            return [*self.retired, *self.processes.items()]

    def crashes(self) -> list[str]:
        """The tracebacks any process printed, each with what followed it."""
        return [
            f"node {node_id}:\n" + "\n".join(process.lines[index:])
            for node_id, process in self.incarnations()
            for index, line in enumerate(process.lines)
            if line.startswith("Traceback")
        ]

    def close(self) -> None:
        """Kill what runs and close the proxies: the end of every test, passed or not."""
        for node_id in list(self.paused):
            self.resume(node_id)
        for node_id in list(self.processes):
            self.kill(node_id)
        for proxy in self.proxies.values():
            proxy.close()

    # -- Status -----------------------------------------------------------------------------------

    def status(self, node_id: int) -> dict[str, Any] | None:
        """The member's `GET /api/v1/cluster`, or None if it does not answer in time."""
        url = self.url(node_id)
        if url is None or node_id in self.paused:
            return None
        try:
            status: dict[str, Any] = call(f"{url}/api/v1/cluster", timeout_s=status_timeout_s)
        except (urllib.error.URLError, OSError):
            return None
        return status

    def statuses(self, ids: Iterable[int]) -> dict[int, dict[str, Any] | None]:
        return {node_id: self.status(node_id) for node_id in ids}

    def wait_for(self, what: str, found: Callable[[], Any]) -> Any:
        """Poll `found` until it returns something other than None, for at most `wait_s_max`."""
        deadline = time.monotonic() + wait_s_max
        while time.monotonic() < deadline:
            value = found()
            if value is not None:
                return value
            time.sleep(poll_s)
        raise AssertionError(f"{what} within {wait_s_max} s\n{self.output_tails()}")

    def leader(self, ids: Iterable[int] | None = None) -> int:
        """The leader every running, unpaused member among `ids` agrees on."""
        asked = [node for node in (ids or self.members) if node in self.processes]
        asked = [node for node in asked if node not in self.paused]

        def agreed() -> int | None:
            statuses = self.statuses(asked).values()
            leaders = {None if status is None else status["leader_id"] for status in statuses}
            return leaders.pop() if len(leaders) == 1 else None

        leader: int = self.wait_for(f"members {asked} agree on a leader", agreed)
        return leader

    def converged(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The statuses once every member among `ids` answers at the same applied index, with
        the same voters."""
        asked = list(ids)

        def same_index() -> dict[int, dict[str, Any]] | None:
            statuses = self.statuses(asked)
            if any(status is None for status in statuses.values()):
                return None
            answered = {node: status for node, status in statuses.items() if status is not None}
            indexes = {status["applied_index"] for status in answered.values()}
            voters = {tuple(status["voters"]) for status in answered.values()}
            return answered if len(indexes) == 1 and len(voters) == 1 else None

        converged: dict[int, dict[str, Any]] = self.wait_for(
            f"members {asked} apply the same index", same_index
        )
        return converged

    def links_off_the_proxies(self) -> list[str]:
        """Each link a member dials at another address than its proxy (the proxy would miss it)."""
        wrong = []
        for node_id in self.members:
            status = self.wait_for(f"node {node_id} answers", partial(self.status, node_id))
            for peer in status["peers"]:
                proxy = self.proxies[(node_id, peer["node_id"])]
                if peer["address"] != f"127.0.0.1:{proxy.port}":
                    wrong.append(f"{node_id} dials {peer['node_id']} at {peer['address']}")
        return wrong

    def proxy_counts(self) -> dict[str, int]:
        """Every proxy's counters, summed."""
        total: dict[str, int] = {}
        for proxy in self.proxies.values():
            for name, count in proxy.counters.items():
                total[name] = total.get(name, 0) + count
        return total

    def output_tails(self) -> str:
        """The last lines of every process's output, for a failure's message."""
        parts = []
        for node_id, process in self.incarnations():
            tail = process.lines[-output_tail_lines:]
            parts.append(f"--- node {node_id}, pid {process.process.pid}\n" + "\n".join(tail))
        return "\n".join(parts)
