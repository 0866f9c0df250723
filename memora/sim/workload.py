"""Simulated clients: the full command mix, sessions, retries, and the recorded history.

Each client runs one operation at a time. A write carries the client's session (a client id and
a sequence number); every retry of it (after a timeout, a `retry` or a `not_leader` reply) reuses
that number, so the replica applies it exactly once. The history records each logical
operation's first call and final return, in simulated microseconds; an operation still open when
the run ends has an unknown outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from memora.core.types import (
    AddObservation,
    Batch,
    Command,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    Edge,
    InsertEdge,
    InsertNode,
    Node,
    SetVector,
    UpdateNode,
)
from memora.sim.protocol import DIMENSION, Query, QueryKind, ReadRequest, Reply, WriteRequest
from memora.sim.rng import SimRandom

if TYPE_CHECKING:
    from memora.sim.world import World

REGISTER_BASE = 900_000
LABELS = ("person", "place", "fact")
EDGE_KINDS = ("owns", "links", "related", "child_of", "similar_to", "knows")
RETRY_BACKOFF_US = 5_000


@attrs.define
class Operation:
    """One logical client operation, across all its attempts."""

    client: int
    kind: str  # "write" or "read"
    payload: Command | Query
    call_us: int
    ret_us: int | None = None
    value: Any = None
    index: int = 0  # Write: the entry's log index. Read: the applied index it was served at.
    as_of: int | None = None
    register: int | None = None  # For register reads and writes: the key.
    written: str | None = None  # For register writes: the value.
    attempts: int = 0


def register_id(key: int) -> int:
    return REGISTER_BASE + key


def setup_commands(registers: int) -> list[Command]:
    """What runs before any fault: the namespace, then the registers as nodes."""
    nodes = tuple(InsertNode("register", id=register_id(key)) for key in range(registers))
    return [CreateNamespace(DIMENSION, "cosine"), Batch(nodes)]


class Client:
    """A client endpoint that runs a script (the setup) or the random workload."""

    def __init__(
        self,
        world: World,
        endpoint: int,
        random: SimRandom,
        script: list[Command] | None = None,
    ) -> None:
        self.world = world
        self.endpoint = endpoint
        self.random = random
        self.client_id = f"client-{endpoint}"
        self.script = script
        self.sequence = 0
        self.target = self.random.choice(world.node_ids())
        self.current: Operation | None = None
        self._request: WriteRequest | ReadRequest | None = None
        self._attempt = 0
        self.stopped = False
        self.known_nodes: list[int] = []
        self.known_edges: list[int] = []
        self.completed = 0

    # -- Driving. -------------------------------------------------------------------------------

    def start(self) -> None:
        self._next()

    def stop(self) -> None:
        """No new operations; the one in flight keeps retrying until it completes."""
        self.stopped = True

    def idle(self) -> bool:
        return self.current is None

    def _next(self) -> None:
        if self.stopped:
            return
        if self.script is not None:
            if not self.script:
                self.stopped = True
                return
            self._begin_write(self.script.pop(0))
            return
        params = self.world.params.workload
        think = self.random.randint(params.think_min_us, params.think_max_us)
        self.world.loop.after(think, self._begin_random)

    def _begin_random(self) -> None:
        if self.stopped or self.current is not None:
            return
        if self.random.chance(self.world.params.workload.read_fraction):
            self._begin_read()
        else:
            self._begin_write(self._random_command())

    def _begin_write(self, command: Command, register: int | None = None) -> None:
        self.sequence += 1
        operation = Operation(self.endpoint, "write", command, self.world.loop.now_us)
        if register is None and isinstance(command, UpdateNode):
            key = command.id - REGISTER_BASE
            if 0 <= key < self.world.params.workload.registers and command.properties:
                operation.register = key
                operation.written = command.properties.get("v")
        self.current = operation
        self._request = WriteRequest(0, self.client_id, self.sequence, command)
        self.world.history.append(operation)
        self._send()

    def _begin_read(self) -> None:
        query = self._random_query()
        operation = Operation(self.endpoint, "read", query, self.world.loop.now_us)
        if query.kind == "get" and query.as_of_back is None:
            key = query.node_id - REGISTER_BASE
            if 0 <= key < self.world.params.workload.registers:
                operation.register = key
        params = self.world.params.workload
        lease = params.lease_reads and self.random.chance(0.5)
        self.current = operation
        self._request = ReadRequest(0, query, "lease" if lease else "linearizable")
        self.world.history.append(operation)
        self._send()

    def _send(self) -> None:
        assert self.current is not None and self._request is not None
        self._attempt += 1
        self.current.attempts += 1
        request = attrs.evolve(self._request, request_id=self._attempt)
        target = self.target
        if self.random.chance(self.world.params.workload.spread):
            target = self.random.choice(self.world.node_ids())  # Not sticking to the leader.
        self.world.network.send(self.endpoint, target, request)
        attempt = self._attempt
        timeout = self.world.params.workload.request_timeout_us
        self.world.loop.after(timeout, lambda: self._on_timeout(attempt))

    def _on_timeout(self, attempt: int) -> None:
        if self.current is None or attempt != self._attempt:
            return
        self.target = self.random.choice(self.world.node_ids())
        self._send()

    def receive(self, reply: Reply) -> None:
        if self.current is None or reply.request_id != self._attempt:
            return  # A late or replayed answer to an attempt already given up on.
        if reply.outcome != "ok":
            self._redirect(reply.leader_hint)
            self._attempt += 1  # Late replies to the abandoned attempt are ignored.
            attempt = self._attempt
            self.world.loop.after(RETRY_BACKOFF_US, lambda: self._resend(attempt))
            return
        operation = self.current
        operation.ret_us = self.world.loop.now_us
        operation.value = reply.value
        operation.index = reply.index
        operation.as_of = reply.as_of
        self._learn(operation)
        self.current = None
        self._request = None
        self.completed += 1
        self.world.checker.on_reply(operation)
        self._next()

    def _resend(self, attempt: int) -> None:
        if self.current is not None and attempt == self._attempt:
            self._send()

    def _redirect(self, hint: int | None) -> None:
        nodes = self.world.node_ids()
        if hint is not None and hint in nodes and hint != self.target:
            self.target = hint
        else:
            self.target = self.random.choice(nodes)

    def _learn(self, operation: Operation) -> None:
        value = operation.value
        if (
            isinstance(value, Node)
            and value.label != "register"
            and value.id not in self.known_nodes
        ):
            self.known_nodes.append(value.id)
        elif isinstance(value, Edge) and value.id not in self.known_edges:
            self.known_edges.append(value.id)
        del self.known_nodes[:-64]
        del self.known_edges[:-64]

    # -- The mix. -------------------------------------------------------------------------------

    def _vector(self) -> bytes:
        values = [self.random.between(-1.0, 1.0) for _ in range(DIMENSION)]
        return np.asarray(values, dtype=np.float32).tobytes()

    def _plain_node(self) -> int | None:
        """A node this client made (never a register: their properties are the registers')."""
        return self.random.choice(self.known_nodes) if self.known_nodes else None

    def _some_node(self) -> int:
        registers = self.world.params.workload.registers
        if self.known_nodes and self.random.chance(0.8):
            return self.random.choice(self.known_nodes)
        return register_id(self.random.randint(0, registers - 1))

    def _random_command(self) -> Command:
        roll = self.random.randint(0, 99)
        if roll < 25:
            key = self.random.randint(0, self.world.params.workload.registers - 1)
            value = f"{self.client_id}:{self.sequence + 1}"
            return UpdateNode(register_id(key), properties={"v": value})
        if roll < 80:
            command: Command = self._simple_command()
            return command
        count = self.random.randint(2, 4)
        return Batch(tuple(self._simple_command() for _ in range(count)))

    def _simple_command(self) -> Any:
        roll = self.random.randint(0, 99)
        if roll < 35:
            label = self.random.choice(LABELS)
            vector = self._vector() if self.random.chance(0.8) else None
            return InsertNode(label, properties={"n": self.random.randint(0, 9)}, vector=vector)
        if roll < 55:
            kind = self.random.choice(EDGE_KINDS)
            return InsertEdge(self._some_node(), self._some_node(), kind)
        if roll < 65:
            return AddObservation(self._some_node(), f"seen {self.random.randint(0, 999)}")
        if roll < 75:
            return SetVector(self._some_node(), self._vector())
        plain = self._plain_node()
        if roll < 85 and plain is not None:
            return UpdateNode(plain, properties={"n": self.random.randint(0, 9)})
        if roll < 93 and self.known_edges:
            return DeleteEdge(self.random.choice(self.known_edges))
        if plain is not None:
            return DeleteNode(plain)
        return InsertNode(self.random.choice(LABELS))

    def _random_query(self) -> Query:
        roll = self.random.randint(0, 99)
        registers = self.world.params.workload.registers
        if roll < 40:
            return Query("get", node_id=register_id(self.random.randint(0, registers - 1)))
        as_of_back = self.random.randint(0, 20) if self.random.chance(0.2) else None
        node = self._some_node()
        if roll < 50:
            return Query("get", node_id=node, as_of_back=as_of_back)
        if roll < 62:
            return Query(
                "related", node_id=node, depth=self.random.randint(1, 2), as_of_back=as_of_back
            )
        if roll < 76:
            vector = tuple(self.random.between(-1.0, 1.0) for _ in range(DIMENSION))
            kind: QueryKind = "similar_exact" if self.random.chance(0.3) else "similar"
            label = self.random.choice(LABELS) if self.random.chance(0.3) else None
            return Query(kind, vector=vector, label=label, as_of_back=as_of_back)
        if roll < 84:
            return Query("edges", node_id=node, as_of_back=as_of_back)
        if roll < 92:
            return Query("observations", node_id=node, as_of_back=as_of_back)
        return Query("list", label=self.random.choice(LABELS), as_of_back=as_of_back)
