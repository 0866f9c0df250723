"""The reads and queries of `memora.Client` and `memora.AsyncClient`, as sans-I/O exchanges.

What lives here: one generator function per read, with the embedded `memora.Memora`'s signature
plus the read options `consistency` (None: the client's default) and `min_commit_index`, and the
reads only REST has (health, metrics, namespaces, an observation by id, hybrid by text). Each
yields its request(s) and returns what the embedded store returns: a getter answers `None` when
the server says the record does not exist, and `node_history` follows the pages to the end.
What must not: I/O, retries, or checks only the server can make.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from memora.client import arguments, records
from memora.client.arguments import EDGES_PATH, NODES_PATH, OBSERVATIONS_PATH
from memora.client.protocol import Consistency, Exchange, Json, ReadOptions, Request
from memora.core import constants
from memora.core.errors import NotFoundError, ValidationError
from memora.core.types import (
    Direction,
    Edge,
    HybridHit,
    Namespace,
    Node,
    Observation,
    RelatedNode,
    SimilarHit,
)

_HYBRID = "/api/v1/query/hybrid"
R = TypeVar("R")


# -- Records --------------------------------------------------------------------------------------


def _get_record(
    path: str,
    kind: str,
    reader: Callable[[Json], R],
    options: ReadOptions,
    namespace: str | None,
) -> Exchange[R | None]:
    """The record of `kind` at `path`, or None when the server says there is none; any other
    refusal is raised (a namespace that does not exist too, as in the embedded store)."""
    try:
        answer = yield arguments.read(path, options, namespace=namespace)
    except NotFoundError as error:
        if error.field != f"{kind}_id":
            raise
        return None
    return reader(answer[kind])


def get_node(
    id: int,
    *,
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[Node | None]:
    path = arguments.record_path(NODES_PATH, id, "id")
    options = ReadOptions(consistency, min_commit_index, as_of)
    return (yield from _get_record(path, "node", records.node, options, namespace))


def get_edge(
    id: int,
    *,
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[Edge | None]:
    path = arguments.record_path(EDGES_PATH, id, "id")
    options = ReadOptions(consistency, min_commit_index, as_of)
    return (yield from _get_record(path, "edge", records.edge, options, namespace))


def get_observation(
    id: int,
    *,
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[Observation | None]:
    """An observation by its id (REST only), or None."""
    path = arguments.record_path(OBSERVATIONS_PATH, id, "id")
    options = ReadOptions(consistency, min_commit_index, as_of)
    return (yield from _get_record(path, "observation", records.observation, options, namespace))


def node_history(
    id: int,
    *,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[list[Node]]:
    """Every version of a node, oldest first (all pages of the history endpoint)."""
    path = arguments.record_path(NODES_PATH, id, "id", "history")
    options = ReadOptions(consistency, min_commit_index)
    versions: list[Node] = []
    after_version = 0
    while True:
        query = arguments.query_string(after_version=after_version, limit=constants.list_limit_max)
        answer = yield arguments.read(path, options, query, namespace)
        versions.extend(records.node(item) for item in answer["versions"])
        following = answer["next_after_version"]
        if following is None:
            return versions
        _check_cursor(after_version, following, "next_after_version")
        after_version = following


def _check_cursor(before: int, after: int, field: str) -> None:
    """A cursor must move forward, or following pages would never end."""
    if not isinstance(after, int) or after <= before:
        raise ValueError(f"the server's {field} {after!r} does not follow {before}")


def edges_of(
    node_id: int,
    *,
    direction: Direction = "both",
    kinds: Iterable[str] | None = None,
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[list[Edge]]:
    path = arguments.record_path(NODES_PATH, node_id, "node_id", "edges")
    query = arguments.query_string(direction=direction, kinds=arguments.kinds_query(kinds))
    options = ReadOptions(consistency, min_commit_index, as_of)
    answer = yield arguments.read(path, options, query, namespace)
    return [records.edge(item) for item in answer["edges"]]


def observations_of(
    node_id: int,
    *,
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[list[Observation]]:
    path = arguments.record_path(NODES_PATH, node_id, "node_id", "observations")
    options = ReadOptions(consistency, min_commit_index, as_of)
    answer = yield arguments.read(path, options, namespace=namespace)
    return [records.observation(item) for item in answer["observations"]]


def list_nodes(
    *,
    label: str | None = None,
    after_id: int = 0,
    limit: int = 100,
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[list[Node]]:
    """Up to `limit` nodes with ids after `after_id`, by id: pass the last id for the next."""
    query = arguments.query_string(label=label, after=after_id, limit=limit)
    options = ReadOptions(consistency, min_commit_index, as_of)
    answer = yield arguments.read(NODES_PATH, options, query, namespace)
    return [records.node(item) for item in answer["nodes"]]


# -- Graph and vector queries ---------------------------------------------------------------------


def _related(
    node_id: int,
    depth: int,
    kinds: Iterable[str] | None,
    direction: Direction,
    limit: int,
    options: ReadOptions,
    namespace: str | None,
) -> Exchange[list[RelatedNode]]:
    path = arguments.record_path(NODES_PATH, node_id, "node_id", "related")
    kinds_text = arguments.kinds_query(kinds)
    query = arguments.query_string(depth=depth, kinds=kinds_text, direction=direction, limit=limit)
    answer = yield arguments.read(path, options, query, namespace)
    return [records.related(item) for item in answer["related"]]


def query_related(
    node_id: int,
    depth: int = 1,
    *,
    kinds: Iterable[str] | None = None,
    direction: Direction = "both",
    as_of: int | None = None,
    limit: int = constants.list_limit_max,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[dict[int, int]]:
    """Node id -> hops for every node within `depth` hops (not the start), in BFS order."""
    options = ReadOptions(consistency, min_commit_index, as_of)
    found = yield from _related(node_id, depth, kinds, direction, limit, options, namespace)
    return {node.id: hops for node, hops in found}


def query_related_nodes(
    node_id: int,
    depth: int = 1,
    *,
    kinds: Iterable[str] | None = None,
    direction: Direction = "both",
    as_of: int | None = None,
    limit: int = constants.list_limit_max,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[list[RelatedNode]]:
    """`(node, hops)` for every node within `depth` hops (not the start), in BFS order."""
    options = ReadOptions(consistency, min_commit_index, as_of)
    return (yield from _related(node_id, depth, kinds, direction, limit, options, namespace))


def query_similar(
    vector_or_node_id: Any,
    top_k: int = 10,
    *,
    label: str | None = None,
    exact: bool = False,
    ef: int | None = None,
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[list[SimilarHit]]:
    """Nearest nodes to a vector, or to a node's own vector (the node itself excluded).

    By node id this is the similar endpoint. REST has no similar-by-vector endpoint, so by
    vector it is the hybrid query by vector at depth 1 with the neighbours dropped (the same
    hits; `ef` cannot be given that way)."""
    options = ReadOptions(consistency, min_commit_index, as_of)
    if isinstance(vector_or_node_id, int) and not isinstance(vector_or_node_id, bool):
        node_id = arguments.record_id(vector_or_node_id, "vector_or_node_id")
        query = arguments.query_string(top_k=top_k, label=label, exact=exact, ef=ef)
        path = f"/api/v1/vectors/{node_id}/similar"
        answer = yield arguments.read(path, options, query, namespace)
        return [records.similar(item) for item in answer["hits"]]
    if ef is not None:
        raise ValidationError("ef applies only to a query by node id over REST", "ef")
    vector = records.vector_json(vector_or_node_id, "vector_or_node_id")
    fields = {"vector": vector, "top_k": top_k, "depth": 1, "label": label, "exact": exact}
    answer = yield _hybrid(fields, options, namespace)
    return [(records.node(item["node"]), item["distance"]) for item in answer["hits"]]


def _hybrid(fields: Json, options: ReadOptions, namespace: str | None) -> Request:
    body = records.without_nulls(fields)
    return Request("POST", _HYBRID, body=body, namespace=namespace, read=options, read_in_body=True)


def query_hybrid(
    node_id: int,
    depth: int = 1,
    top_k: int = 10,
    *,
    vector: Any = None,
    kinds: Iterable[str] | None = None,
    direction: Direction = "both",
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[list[SimilarHit]]:
    """The node's neighbourhood within `depth` hops, ranked by similarity to `vector` (or to
    the node's own vector): `(node, distance)` pairs, nearest first."""
    fields = {
        "node_id": arguments.record_id(node_id, "node_id"),
        "depth": depth,
        "top_k": top_k,
        "vector": records.optional_vector_json(vector),
        "kinds": arguments.kind_list(kinds),
        "direction": direction,
    }
    options = ReadOptions(consistency, min_commit_index, as_of)
    answer = yield _hybrid(fields, options, namespace)
    return [records.similar(item) for item in answer["hits"]]


def _hybrid_hits(
    reference: Json,
    top_k: int,
    depth: int,
    label: str | None,
    kinds: Iterable[str] | None,
    direction: Direction,
    exact: bool,
    options: ReadOptions,
    namespace: str | None,
) -> Exchange[list[HybridHit]]:
    fields = {
        **reference,
        "top_k": top_k,
        "depth": depth,
        "label": label,
        "kinds": arguments.kind_list(kinds),
        "direction": direction,
        "exact": exact,
    }
    answer = yield _hybrid(fields, options, namespace)
    return [records.hybrid_hit(item) for item in answer["hits"]]


def query_hybrid_by_vector(
    vector: Any,
    top_k: int = 10,
    depth: int = 1,
    *,
    label: str | None = None,
    kinds: Iterable[str] | None = None,
    direction: Direction = "both",
    exact: bool = False,
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[list[HybridHit]]:
    """The `top_k` nearest nodes to `vector`, each with its neighbourhood within `depth`."""
    reference = {"vector": records.vector_json(vector)}
    options = ReadOptions(consistency, min_commit_index, as_of)
    return (
        yield from _hybrid_hits(
            reference, top_k, depth, label, kinds, direction, exact, options, namespace
        )
    )


def query_hybrid_by_text(
    text: str,
    top_k: int = 10,
    depth: int = 1,
    *,
    label: str | None = None,
    kinds: Iterable[str] | None = None,
    direction: Direction = "both",
    exact: bool = False,
    as_of: int | None = None,
    namespace: str | None = None,
    consistency: Consistency | None = None,
    min_commit_index: int | None = None,
) -> Exchange[list[HybridHit]]:
    """As `query_hybrid_by_vector`, by the embedding of `text` that the server computes with
    the namespace's text embedder (REST only; the one `embed=True` writes use)."""
    options = ReadOptions(consistency, min_commit_index, as_of)
    return (
        yield from _hybrid_hits(
            {"text": text}, top_k, depth, label, kinds, direction, exact, options, namespace
        )
    )


# -- The server -----------------------------------------------------------------------------------


def get_namespace(
    name: str, *, consistency: Consistency | None = None, min_commit_index: int | None = None
) -> Exchange[Namespace]:
    """A namespace's name, dimension and metric (REST only)."""
    if not isinstance(name, str) or not name or "/" in name or "?" in name:
        raise ValidationError("name must be a namespace name", "name")
    options = ReadOptions(consistency, min_commit_index)
    request = Request("GET", f"/api/v1/namespaces/{name}", namespaced=False, read=options)
    answer = yield request
    return records.namespace(answer["namespace"])


def list_namespaces(
    *, consistency: Consistency | None = None, min_commit_index: int | None = None
) -> Exchange[list[Namespace]]:
    """The namespaces the client's token may see (REST only)."""
    options = ReadOptions(consistency, min_commit_index)
    answer = yield Request("GET", "/api/v1/namespaces", namespaced=False, read=options)
    return [records.namespace(item) for item in answer["namespaces"]]


def health() -> Exchange[dict[str, Any]]:
    """The node's health as the server reports it: role, term, indexes, leader, peers."""
    answer = yield Request("GET", "/api/v1/health", namespaced=False)
    return answer


def metrics() -> Exchange[dict[str, float]]:
    """The node's counters and gauges, as a flat map."""
    answer = yield Request("GET", "/api/v1/metrics", namespaced=False)
    metrics: dict[str, float] = answer["metrics"]
    return metrics


def snapshot() -> Exchange[int]:
    """Snapshot the server node's state and compact its log; returns the snapshot's index."""
    answer = yield Request("POST", "/api/v1/snapshot", namespaced=False)
    index: int = answer["snapshot_index"]
    return index
