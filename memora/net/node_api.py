"""What the REST and MCP layers need from a running node, and nothing more.

The trio driver (`memora.net.driver.NodeDriver`) implements `NodeApi`; `memora.api` codes against
this protocol only, so the single node of issue 5 and the cluster of issue 6 serve the same API.

Everything runs on the trio thread: after `await node.read_barrier(...)` returns a replica, the
caller reads it synchronously (no `await` in between), so what it sees is one consistent state at
or after the barrier's index.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import attrs

from memora.core.errors import MemoraError
from memora.core.replica import Replica
from memora.core.types import Proposal


class Consistency(enum.StrEnum):
    """How fresh a read must be.

    - LINEARIZABLE (the default): ReadIndex; the read sees every write acknowledged before it began.
    - LEASE: the leader's lease, no round trip; correct while clocks drift within the bound.
    - FOLLOWER: whatever this node has applied; may be stale. `min_commit_index` bounds how stale.
    """

    LINEARIZABLE = "linearizable"
    LEASE = "lease"
    FOLLOWER = "follower"


@attrs.frozen
class WriteOutcome:
    """A write that was committed and applied: the record(s) it wrote and its log index.

    `commit_index` is usable as `min_commit_index` on a later read, on any node."""

    value: Any
    commit_index: int


class UnavailableError(MemoraError):
    """The node cannot serve the request now: shutting down, no leader, or the deadline passed.

    The outcome of a write that raised this is unknown: retry it with the same client session and
    sequence number to apply it exactly once."""

    code = "unavailable"


class NotLeaderError(MemoraError):
    """This node is not the leader and cannot forward the request.

    `leader_id` is the node believed to lead, if any."""

    code = "not_leader"

    def __init__(self, message: str, leader_id: int | None = None) -> None:
        super().__init__(message, None)
        self.leader_id = leader_id


class NodeApi(Protocol):
    """A running node, as the API layers see it."""

    async def write(self, proposal: Proposal) -> WriteOutcome:
        """Propose, wait until committed and applied, and return the reply.

        The node stamps `timestamp_ms` with its own clock (never going backwards); the value the
        caller put there is ignored. `client_id` and `sequence`, if set, make the write
        exactly-once across retries.

        Raises the command's typed error (`ValidationError`, `NotFoundError`, ...) if the state
        machine rejected it, `LimitError` if it encodes too large, `UnavailableError` if it could
        not be committed in time (outcome unknown)."""
        ...

    async def read_barrier(
        self, consistency: Consistency, min_commit_index: int | None = None
    ) -> Replica:
        """Wait until this node may serve a read at `consistency` that also reflects every entry
        up to `min_commit_index`, then return the replica to read synchronously."""
        ...

    async def snapshot(self) -> int:
        """Snapshot the replica at its applied index, compact the log; return that index."""
        ...

    def health(self) -> dict[str, Any]:
        """Role, term, commit and applied index, leader, peers and their lag (JSON-ready)."""
        ...

    def metrics(self) -> dict[str, float | int]:
        """Counters and gauges, flat `name -> number` (JSON-ready, and Prometheus by name)."""
        ...

    def cluster_status(self) -> dict[str, Any]:
        """The cluster id, this node, the leader, voters, learners and every peer with its role,
        address, link state and lag (JSON-ready)."""
        ...

    async def add_member(self, node_id: int, address: str | None) -> int:
        """Add `node_id` (reachable at `address`, `host:port`) as a learner, wait until it
        caught up, then make it a voter; returns the index of that configuration. Done at the
        leader wherever it is asked; asking again does what is left to do."""
        ...

    async def remove_member(self, node_id: int) -> int:
        """Remove `node_id` from the configuration; returns the index of the new one."""
        ...

    async def transfer_leadership(self, node_id: int) -> None:
        """Make the voter `node_id` the leader; returns once it leads."""
        ...
