"""Clients of a cluster's REST API that write and read registers, and the history they record.

A register is the property "value" of one node (`register_keys`). A write is PATCH
/api/v1/nodes/{key} with a client session: every retry reuses the write's sequence number, so the
cluster applies it at most once. A read is GET /api/v1/nodes/{key} at the default consistency,
which is linearizable on every member. Attempts go first to the client's own member, then to the
next ones in turn, so followers take requests too.

The history is honest about what a client saw. Each operation is recorded once, with the time of
its first call and of its final answer (microseconds of `time.monotonic_ns`, one clock for every
thread): ok with a value, or, for a write that may have reached a member but got no 2xx answer
(a timeout, a 503, a broken connection), unknown: no return time. Left out: a read with no answer
(it constrains nothing), and a write none of whose attempts reached a member (every connection
refused: it cannot have happened). Any other answer (4xx but a read's 404, 5xx but 503) is an
anomaly the test reports.

What must not live here: the faults (`faulty_cluster`) or the checks (`history_checks`).
"""

from __future__ import annotations

import collections
import enum
import random
import threading
import time
from collections.abc import Iterable
from typing import Any, Final, Protocol

import attrs
import httpx

register_keys: Final = tuple(range(101, 109))
initial_value: Final = 0
operation_timeout_s: Final = 10.0
attempt_timeout_s: Final = 3.0
retry_pause_s: Final = 0.05
think_time_s: Final = 0.01
write_chance: Final = 0.5
value_stride: Final = 1_000_000  # A write's value is client * stride + sequence: unique.
versions_page_max: Final = 1000
assert attempt_timeout_s < operation_timeout_s


def now_us() -> int:
    return time.monotonic_ns() // 1000


@attrs.frozen
class Record:
    """One logical operation. `index`: the write's commit index or the read's applied index."""

    client: int
    kind: str  # "write" or "read"
    key: int
    value: int | None  # Written, or read (None: the register's node was not found).
    call_us: int
    ret_us: int | None  # None: a write with an unknown outcome.
    index: int = 0
    member: int | None = None  # The member whose answer completed it.
    attempts: int = 1


class History:
    """What every client recorded, and counts of what happened to attempts; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[Record] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self.anomalies: list[str] = []

    def add(self, record: Record) -> None:
        outcome = "unknown" if record.ret_us is None else "ok"
        with self._lock:
            self.records.append(record)
            self.counters[f"{record.kind}s_{outcome}"] += 1

    def count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def anomaly(self, text: str) -> None:
        with self._lock:
            self.anomalies.append(text)

    def acknowledged_writes(self) -> int:
        with self._lock:
            return self.counters["writes_ok"]

    def copy(self) -> list[Record]:
        with self._lock:
            return list(self.records)


class Members(Protocol):
    """Who the clients may ask (`members`, ids) and where each is now (`url`, None if down)."""

    members: list[int]

    def url(self, node_id: int) -> str | None: ...


class Attempt(enum.Enum):
    ANSWERED = "answered"  # 2xx, or a read's 404.
    NOT_SENT = "not_sent"  # Nothing reached a member.
    UNKNOWN = "unknown"  # It may have reached one; no usable answer came back.
    ANOMALY = "anomaly"


_NOT_SENT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class RegisterClient:
    """One client: one operation at a time until `stop` is set, each recorded in `history`."""

    def __init__(self, number: int, cluster: Members, history: History, seed: int) -> None:
        assert number >= 1, "client 0 is the setup's"
        self.number = number
        self.cluster = cluster
        self.history = history
        self.sequence = 0
        self._random = random.Random(seed * 1000 + number)
        self._http = httpx.Client(timeout=attempt_timeout_s)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                key = self._random.choice(register_keys)
                if self._random.random() < write_chance:
                    self._write(key)
                else:
                    self._read(key)
                stop.wait(think_time_s)
        finally:
            self._http.close()

    def _write(self, key: int) -> None:
        self.sequence += 1
        value = self.number * value_stride + self.sequence
        headers = {"X-Memora-Client-Id": f"client-{self.number}"}
        headers["X-Memora-Sequence"] = str(self.sequence)
        body = {"properties": {"value": value}}
        call_us, reached = now_us(), False
        deadline_s = time.monotonic() + operation_timeout_s
        for attempts, member in enumerate(self._members_until(deadline_s), start=1):
            path = f"/api/v1/nodes/{key}"
            kind, answer = self._attempt(member, "PATCH", path, json=body, headers=headers)
            reached = reached or kind is not Attempt.NOT_SENT
            if kind is Attempt.ANSWERED:
                assert answer is not None
                index = answer["commit_index"]
                record = Record(self.number, "write", key, value, call_us, now_us(), index, member)
                self.history.add(attrs.evolve(record, attempts=attempts))
                return
            if kind is Attempt.ANOMALY:
                break
        if reached:
            self.history.add(Record(self.number, "write", key, value, call_us, None, 0, None))
        else:
            self.history.count("writes_never_sent")

    def _read(self, key: int) -> None:
        call_us = now_us()
        deadline_s = time.monotonic() + operation_timeout_s
        for attempts, member in enumerate(self._members_until(deadline_s), start=1):
            kind, answer = self._attempt(member, "GET", f"/api/v1/nodes/{key}")
            if kind is Attempt.ANSWERED:
                assert answer is not None
                value = answer["node"]["properties"].get("value") if "node" in answer else None
                index = answer.get("applied_index", 0)
                record = Record(self.number, "read", key, value, call_us, now_us(), index, member)
                self.history.add(attrs.evolve(record, attempts=attempts))
                return
            if kind is Attempt.ANOMALY:
                break
        self.history.count("reads_unanswered")

    def _members_until(self, deadline_s: float) -> Iterable[int]:
        """The member of each attempt: this client's own first, then the next ones in turn,
        with a pause between attempts, until the deadline."""
        turn = 0
        while time.monotonic() < deadline_s:
            members = list(self.cluster.members)
            yield members[(self.number + turn) % len(members)]
            turn += 1
            time.sleep(retry_pause_s)

    def _attempt(
        self, member: int, method: str, path: str, **options: Any
    ) -> tuple[Attempt, dict[str, Any] | None]:
        url = self.cluster.url(member)
        if url is None:
            return Attempt.NOT_SENT, None
        try:
            response = self._http.request(method, f"{url}{path}", **options)
        except _NOT_SENT_ERRORS:
            return Attempt.NOT_SENT, None
        except httpx.HTTPError:
            self.history.count("attempts_unanswered")
            return Attempt.UNKNOWN, None
        if response.is_success or (method == "GET" and response.status_code == 404):
            body: dict[str, Any] = response.json()
            return Attempt.ANSWERED, body
        if response.status_code == 503:
            self.history.count("attempts_unavailable")
            return Attempt.UNKNOWN, None
        status = response.status_code
        self.history.anomaly(f"{method} {path} at node {member}: {status} {response.text}")
        return Attempt.ANOMALY, None


def create_registers(url: str, history: History) -> None:
    """Create every register's node with `initial_value`, recorded as writes of client 0."""
    with httpx.Client(timeout=attempt_timeout_s * 3) as http:
        for key in register_keys:
            body = {"id": key, "label": "register", "properties": {"value": initial_value}}
            call_us = now_us()
            answer = http.post(f"{url}/api/v1/nodes", json=body)
            assert answer.status_code == 201, answer.text
            index = answer.json()["commit_index"]
            history.add(Record(0, "write", key, initial_value, call_us, now_us(), index))


def register_versions(url: str) -> dict[int, list[Any]]:
    """Every value each register ever held, as the member at `url` keeps its nodes' versions.
    One client for them all: making an httpx.Client takes about 65 ms (its TLS context)."""
    with httpx.Client(timeout=attempt_timeout_s * 3) as http:
        return {key: _register_versions(http, url, key) for key in register_keys}


def _register_versions(http: httpx.Client, url: str, key: int) -> list[Any]:
    values: list[Any] = []
    after: int | None = 0
    while after is not None:
        query = {"after_version": after, "limit": versions_page_max}
        answer = http.get(f"{url}/api/v1/nodes/{key}/history", params=query)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        values += [version["properties"].get("value") for version in page["versions"]]
        after = page["next_after_version"]
    return values
