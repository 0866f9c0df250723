"""Reads of one namespace: get, related (BFS), similar (ANN or exact), hybrid, lists and history.

Every read takes an optional `as_of` commit index. Without it, reads use the live indexes kept by
`NamespaceState` (adjacency maps, labels, the segmented HNSW). With it, they look at the version of
each record that was current at that index; vector reads in the past are exact (brute force over
the vectors that were live then), since the ANN indexes only know the present.

Orders are deterministic and depend only on the records, never on how an index was built: BFS
visits each node's outgoing edges by edge id, then its incoming ones; hits are sorted by
(distance, id); lists by id. Results are plain tuples, `(node, hops)` and `(node, distance)`,
cheap enough to build by the thousand. Nothing here changes state.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import numpy as np

from memora.core import constants, validate
from memora.core.errors import LimitError, NotFoundError, ValidationError
from memora.core.namespace import Adjacency, NamespaceState
from memora.core.types import (
    VECTOR_DTYPE,
    Direction,
    Edge,
    FloatArray,
    HybridHit,
    Node,
    Observation,
    RelatedNode,
    SimilarHit,
    vector_from_bytes,
)
from memora.core.vectors import distances

RecordT = TypeVar("RecordT", Node, Edge, Observation)
DIRECTIONS = ("out", "in", "both")
# A query vector whose squared norm (summed in float32) is at most this has every component
# within vector_component_abs_max. The margin covers float32 rounding of a sum over
# dimension_max squares (relative error below dimension_max * 2**-24, about 2.4e-4).
QUERY_NORM_SQUARED_CHECKED_MAX: Final = constants.vector_component_abs_max**2 * (1 - 1e-3)
assert constants.dimension_max * 2.0**-24 < 1e-3


# -- Arguments ------------------------------------------------------------------------------------


def check_as_of(as_of: int | None, applied_index: int) -> None:
    if as_of is None:
        return
    if not isinstance(as_of, int) or isinstance(as_of, bool) or as_of < 0:
        raise ValidationError("as_of must be a commit index (an integer >= 0)", "as_of")
    if as_of > applied_index:
        raise ValidationError(
            f"as_of {as_of} is after the last applied index {applied_index}", "as_of"
        )


def query_vector(ns: NamespaceState, vector: Any) -> FloatArray:
    """A query vector from any array-like, checked for dimension and finiteness."""
    try:
        array = np.asarray(vector, dtype=VECTOR_DTYPE)
    except (TypeError, ValueError) as error:
        raise ValidationError(f"vector must be a list of numbers: {error}", "vector") from error
    # One dot product instead of a pass per check: NaN and infinity make it fail the comparison,
    # and a norm within the bound keeps every component within it too.
    if (
        array.ndim == 1
        and array.shape[0] == ns.info.dimension
        and float(np.dot(array, array)) <= QUERY_NORM_SQUARED_CHECKED_MAX
    ):
        return array
    return validate.vector_values(array, ns.info.dimension)


def _check_count(value: object, field: str, minimum: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{field} must be an integer", field)
    if value < minimum:
        raise ValidationError(f"{field} must be at least {minimum}", field)
    if value > maximum:
        raise LimitError(f"{field} must be at most {maximum}", field)
    return value


def _check_direction(direction: object) -> Direction:
    if direction == "out":
        return "out"
    if direction == "in":
        return "in"
    if direction == "both":
        return "both"
    raise ValidationError("direction must be one of out, in, both", "direction")


# -- Versions -------------------------------------------------------------------------------------


def version_at(versions: list[RecordT], as_of: int | None) -> RecordT | None:
    """The version current at `as_of` (the latest with no `as_of`), or None if it was absent."""
    if as_of is None:
        record = versions[-1]
    else:
        position = bisect.bisect_right(versions, as_of, key=lambda v: v.updated.index)
        if position == 0:
            return None
        record = versions[position - 1]
    return None if record.deleted else record


def get_node(ns: NamespaceState, node_id: int, as_of: int | None = None) -> Node | None:
    versions = ns.nodes.get(node_id)
    return None if versions is None else version_at(versions, as_of)


def get_edge(ns: NamespaceState, edge_id: int, as_of: int | None = None) -> Edge | None:
    versions = ns.edges.get(edge_id)
    return None if versions is None else version_at(versions, as_of)


def get_observation(
    ns: NamespaceState, observation_id: int, as_of: int | None = None
) -> Observation | None:
    versions = ns.observations.get(observation_id)
    return None if versions is None else version_at(versions, as_of)


def node_by_name(ns: NamespaceState, name: str) -> Node | None:
    node_id = ns.names.get(name)
    return None if node_id is None else ns.live_node(node_id)


def require_node(ns: NamespaceState, node_id: int, as_of: int | None, field: str) -> Node:
    node = get_node(ns, node_id, as_of)
    if node is None:
        raise NotFoundError(f"node {node_id} does not exist", field)
    return node


# -- Graph ----------------------------------------------------------------------------------------


def related(
    ns: NamespaceState,
    node_id: int,
    depth: int = 1,
    kinds: frozenset[str] | None = None,
    direction: Direction = "both",
    as_of: int | None = None,
    limit: int = constants.related_nodes_max,
) -> list[RelatedNode]:
    """(node, hops) for nodes within `depth` hops of `node_id` (not itself), in BFS order."""
    depths = related_depths(ns, node_id, depth, kinds, direction, as_of, limit)
    if as_of is None:
        nodes = ns.nodes
        # Plain tuples made by zip: this runs once per node reached, and is most of the cost of
        # a wide BFS when each result is a class instance.
        return list(zip([nodes[other][-1] for other in depths], depths.values(), strict=True))
    found = []
    for other, hops in depths.items():
        node = get_node(ns, other, as_of)
        assert node is not None, other
        found.append((node, hops))
    return found


def related_depths(
    ns: NamespaceState,
    node_id: int,
    depth: int,
    kinds: frozenset[str] | None,
    direction: Direction,
    as_of: int | None,
    limit: int,
) -> dict[int, int]:
    """BFS from `node_id`: every node reached (not the start) and its hop count, in BFS order.

    Each node's neighbours are visited through its outgoing edges by edge id, then its incoming
    edges by edge id. The walk stops as soon as `limit` nodes are reached.
    """
    _check_count(depth, "depth", 1, constants.depth_max)
    _check_count(limit, "limit", 1, constants.related_nodes_max)
    require_node(ns, node_id, as_of, "node_id")
    direction = _check_direction(direction)
    if as_of is None:
        maps = _live_maps(ns, direction)
        if kinds is None:
            return _breadth_first_live(maps, node_id, depth, limit)
        edges = ns.edges
        neighbours: Callable[[int], Iterator[int]] = lambda current: (  # noqa: E731
            other
            for adjacency in maps
            for edge_id, other in adjacency.get(current, {}).items()
            if edges[edge_id][-1].kind in kinds
        )
    else:
        neighbours = lambda current: _historical_neighbours(  # noqa: E731
            ns, current, kinds, direction, as_of
        )
    return dict(itertools.islice(_breadth_first(node_id, depth, neighbours), limit))


def _live_maps(ns: NamespaceState, direction: Direction) -> tuple[Adjacency, ...]:
    if direction == "out":
        return (ns.out_live,)
    if direction == "in":
        return (ns.in_live,)
    return (ns.out_live, ns.in_live)


def _breadth_first_live(
    maps: tuple[Adjacency, ...], start: int, depth: int, limit: int
) -> dict[int, int]:
    """The hot path of `related_depths` (live, every edge kind), as a plain loop over maps that
    are already in edge id order."""
    reached = {start: 0}
    remaining = limit
    frontier = [start]
    for hops in range(1, depth + 1):
        following: list[int] = []
        for current in frontier:
            for adjacency in maps:
                targets = adjacency.get(current)
                if not targets:
                    continue
                for other in targets.values():
                    if other not in reached:
                        reached[other] = hops
                        following.append(other)
                        remaining -= 1
                        if remaining == 0:
                            del reached[start]
                            return reached
        if not following:
            break
        frontier = following
    del reached[start]
    return reached


def _breadth_first(
    start: int, depth: int, neighbours: Callable[[int], Iterator[int]]
) -> Iterator[tuple[int, int]]:
    """(node, hops) for every node within `depth` hops of `start` (not itself), in BFS order."""
    reached = {start}  # Only asked for membership, never iterated: order cannot leak from it.
    frontier = [start]
    for hops in range(1, depth + 1):
        following = []
        for current in frontier:
            for other in neighbours(current):
                if other not in reached:
                    reached.add(other)
                    following.append(other)
                    yield other, hops
        if not following:
            return
        frontier = following


def _historical_neighbours(
    ns: NamespaceState, node_id: int, kinds: frozenset[str] | None, direction: Direction, as_of: int
) -> Iterator[int]:
    """The neighbours a live walk would have seen at `as_of`: out by edge id, then in."""
    edges = list(_edges_touching(ns, node_id, kinds, direction, as_of))
    if direction != "in":
        yield from (edge.target for edge in edges if edge.source == node_id)
    if direction != "out":
        yield from (edge.source for edge in edges if edge.target == node_id)


def _edges_touching(
    ns: NamespaceState,
    node_id: int,
    kinds: frozenset[str] | None,
    direction: Direction,
    as_of: int | None,
) -> Iterator[Edge]:
    for edge_id in sorted(ns.edges_ever.get(node_id, ())):
        edge = get_edge(ns, edge_id, as_of)
        if edge is None or (kinds is not None and edge.kind not in kinds):
            continue
        outgoing = edge.source == node_id
        incoming = edge.target == node_id
        if (direction != "in" and outgoing) or (direction != "out" and incoming):
            yield edge


def edges_of(
    ns: NamespaceState,
    node_id: int,
    direction: Direction = "both",
    kinds: frozenset[str] | None = None,
    as_of: int | None = None,
) -> list[Edge]:
    """Edges that touch `node_id`, by edge id."""
    require_node(ns, node_id, as_of, "node_id")
    return list(_edges_touching(ns, node_id, kinds, _check_direction(direction), as_of))


def observations_of(
    ns: NamespaceState, node_id: int, as_of: int | None = None
) -> list[Observation]:
    require_node(ns, node_id, as_of, "node_id")
    found = (get_observation(ns, oid, as_of) for oid in ns.observations_ever.get(node_id, ()))
    return [observation for observation in found if observation is not None]


def list_nodes(
    ns: NamespaceState,
    label: str | None = None,
    after_id: int = 0,
    limit: int = 100,
    as_of: int | None = None,
) -> list[Node]:
    """A page of nodes ordered by id, optionally of one label, starting after `after_id`."""
    _check_count(limit, "limit", 1, constants.list_limit_max)
    _check_count(after_id, "after_id", 0, constants.record_id_max)
    if as_of is None:
        # Live nodes are exactly those in the sorted per-label lists: merge them from `after_id`.
        lists = list(ns.labels.values()) if label is None else [ns.labels.get(label, [])]
        merged = heapq.merge(*(_ids_after(ids, after_id) for ids in lists))
        return [ns.nodes[node_id][-1] for node_id in itertools.islice(merged, limit)]
    page = []
    for node_id in sorted(ns.nodes):
        if node_id <= after_id:
            continue
        node = get_node(ns, node_id, as_of)
        if node is not None and (label is None or node.label == label):
            page.append(node)
            if len(page) == limit:
                break
    return page


def _ids_after(ids: list[int], after_id: int) -> Iterator[int]:
    start = bisect.bisect_right(ids, after_id)
    return (ids[position] for position in range(start, len(ids)))


# -- Vectors --------------------------------------------------------------------------------------


def similar(
    ns: NamespaceState,
    vector: FloatArray,
    top_k: int,
    label: str | None = None,
    exact: bool = False,
    ef: int | None = None,
    as_of: int | None = None,
    exclude: int | None = None,
) -> list[SimilarHit]:
    """The `top_k` live nodes nearest to `vector`, optionally of one label, nearest first."""
    if type(top_k) is not int or not 1 <= top_k <= constants.top_k_max:
        _check_count(top_k, "top_k", 1, constants.top_k_max)  # Raises the error that fits.
    if ef is not None:
        _check_count(ef, "ef", 1, constants.hnsw_ef_search_max)
    if as_of is not None:
        candidates = [
            node
            for versions in ns.nodes.values()
            if (node := version_at(versions, as_of)) is not None
            and node.vector is not None
            and node.id != exclude
            and (label is None or node.label == label)
        ]
        return rank(ns, candidates, vector, top_k)
    allowed = None
    if label is not None:
        nodes = ns.nodes
        allowed = lambda key: nodes[key][-1].label == label  # noqa: E731
    wanted = top_k + (1 if exclude is not None else 0)
    hits = ns.node_vectors.search(vector, wanted, ef=ef, allowed=allowed, exact=exact)
    nodes = ns.nodes
    if exclude is None:
        return [(nodes[key][-1], distance) for key, distance in hits]
    found = [(nodes[key][-1], distance) for key, distance in hits if key != exclude]
    return found[:top_k]


def rank(
    ns: NamespaceState, candidates: list[Node], vector: FloatArray, top_k: int
) -> list[SimilarHit]:
    """Exact ranking of candidate nodes (those with vectors) by distance, then id."""
    with_vectors = [node for node in candidates if node.vector is not None]
    if not with_vectors:
        return []
    matrix = np.stack([vector_from_bytes(node.vector) for node in with_vectors if node.vector])
    scores = distances(matrix, vector, ns.info.metric)
    order = sorted(range(len(with_vectors)), key=lambda i: (float(scores[i]), with_vectors[i].id))
    return [(with_vectors[i], float(scores[i])) for i in order[:top_k]]


def own_vector(node: Node) -> FloatArray:
    if node.vector is None:
        raise ValidationError(f"node {node.id} has no vector; pass a query vector", "vector")
    return vector_from_bytes(node.vector)


def hybrid_around_node(
    ns: NamespaceState,
    node_id: int,
    depth: int,
    top_k: int,
    vector: FloatArray | None = None,
    kinds: frozenset[str] | None = None,
    direction: Direction = "both",
    as_of: int | None = None,
) -> list[SimilarHit]:
    """The graph neighbourhood of a node, ranked by similarity to `vector` (or the node's own)."""
    _check_count(top_k, "top_k", 1, constants.top_k_max)
    centre = require_node(ns, node_id, as_of, "node_id")
    reference = own_vector(centre) if vector is None else vector
    neighbourhood = related(
        ns, node_id, depth, kinds, direction, as_of, constants.hybrid_expand_nodes_max
    )
    return rank(ns, [node for node, _ in neighbourhood], reference, top_k)


def hybrid_from_vector(
    ns: NamespaceState,
    vector: FloatArray,
    top_k: int,
    depth: int,
    label: str | None = None,
    kinds: frozenset[str] | None = None,
    direction: Direction = "both",
    exact: bool = False,
    as_of: int | None = None,
) -> list[HybridHit]:
    """Vector hits, each expanded through the graph to `depth` hops."""
    hits = similar(ns, vector, top_k, label=label, exact=exact, as_of=as_of)
    per_hit_limit = max(1, constants.hybrid_expand_nodes_max // max(1, len(hits)))
    return [
        HybridHit(
            node,
            distance,
            tuple(related(ns, node.id, depth, kinds, direction, as_of, per_hit_limit)),
        )
        for node, distance in hits
    ]
