"""What simulated clients and nodes say to each other, and the reads a client can ask for.

A `Query` runs against a replica's state machine through the same `memora.core.queries` functions
the servers use, so the simulator checks the real read path. `run_query` is pure: given a
replica and a query, the answer depends on nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import numpy as np

from memora.core import queries
from memora.core.errors import MemoraError
from memora.core.replica import Replica
from memora.core.types import Command, Node

QueryKind = Literal["get", "related", "similar", "similar_exact", "edges", "observations", "list"]
Consistency = Literal["linearizable", "lease"]
NAMESPACE = "sim"
DIMENSION = 8


@attrs.frozen
class Query:
    kind: QueryKind
    node_id: int = 0
    depth: int = 1
    vector: tuple[float, ...] = ()
    top_k: int = 5
    label: str | None = None
    as_of_back: int | None = None  # Read as of this many entries before the applied index.


@attrs.frozen
class WriteRequest:
    request_id: int
    client_id: str
    sequence: int
    command: Command


@attrs.frozen
class ReadRequest:
    request_id: int
    query: Query
    consistency: Consistency


Outcome = Literal["ok", "not_leader", "retry"]


@attrs.frozen
class Reply:
    """`index` is the log index of a write's entry, or the applied index a read was served at."""

    request_id: int
    outcome: Outcome
    value: Any = None
    index: int = 0
    as_of: int | None = None
    leader_hint: int | None = None


def run_query(replica: Replica, query: Query, as_of: int | None) -> Any:
    """The answer to `query` on `replica` at `as_of` (None: now), as plain comparable values.

    Errors are answers too (a node that does not exist): they come back as (code, field).
    """
    try:
        ns = replica.machine.reader(NAMESPACE, as_of)
        return _answer(ns, query, as_of)
    except MemoraError as error:
        return ("error", type(error).__name__, error.field)


def _answer(ns: Any, query: Query, as_of: int | None) -> Any:
    kind = query.kind
    if kind == "get":
        node = queries.get_node(ns, query.node_id, as_of)
        return None if node is None else _node_summary(node)
    if kind == "related":
        found = queries.related(ns, query.node_id, query.depth, None, "both", as_of)
        return [(node.id, hops) for node, hops in found]
    if kind in ("similar", "similar_exact"):
        vector = np.asarray(query.vector, dtype=np.float32)
        hits = queries.similar(
            ns, vector, query.top_k, query.label, kind == "similar_exact", None, as_of
        )
        return [(node.id, round(distance, 5)) for node, distance in hits]
    if kind == "edges":
        return [(edge.id, edge.source, edge.target, edge.kind) for edge in _edges(ns, query, as_of)]
    if kind == "observations":
        observations = queries.observations_of(ns, query.node_id, as_of)
        return [(observation.id, observation.text) for observation in observations]
    assert kind == "list", kind
    page = queries.list_nodes(ns, query.label, 0, 20, as_of)
    return [node.id for node in page]


def _edges(ns: Any, query: Query, as_of: int | None) -> list[Any]:
    return list(queries.edges_of(ns, query.node_id, "both", None, as_of))


def _node_summary(node: Node) -> tuple[Any, ...]:
    return (node.id, node.version, node.label, node.name, tuple(sorted(node.properties.items())))


def register_value(answer: Any) -> Any:
    """The value of a register node read with a `get` query (None if unset or absent)."""
    if not isinstance(answer, tuple) or answer[0] == "error":
        return None
    return dict(answer[4]).get("v")
