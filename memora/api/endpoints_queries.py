"""Endpoints that query the graph and the vectors: related nodes, similar nodes, hybrid queries.

What lives here: the handlers, which read their options, take one read barrier and run one
`memora.core.queries` function, and their `Endpoint` declarations in `ENDPOINTS`. A hybrid query
goes by a node (its neighbourhood ranked by similarity), by a vector, or by a text embedded with
the namespace's text embedder (hits, each with its neighbourhood). What must not: writes.
"""

from __future__ import annotations

from typing import Final

from memora.api import parameters
from memora.api.arguments import Arguments
from memora.api.errors import UnprocessableError
from memora.api.representation import hybrid_hit_json, related_json, similar_json
from memora.api.routing import (
    Answer,
    Call,
    Endpoint,
    Parameter,
    as_of,
    reader,
    refusals_as_unprocessable,
)
from memora.api.settings import Role
from memora.core import constants, queries
from memora.core.namespace import NamespaceState
from memora.core.types import FloatArray
from memora.service.arguments import kinds_set, similarity_target, text_embedder

_DIRECTIONS: Final = ("out", "in", "both")


async def related(call: Call) -> Answer:
    node_id = parameters.path_id(call, "node_id")
    depth = call.query.integer("depth", 1, constants.depth_max, 1)
    kinds = call.query.text_list("kinds", constants.edge_kind_bytes_max, constants.top_k_max)
    direction = call.query.choice("direction", _DIRECTIONS, "both")
    limit = call.query.integer("limit", 1, constants.list_limit_max, constants.list_limit_max)
    replica = await call.read(call.query)
    at = as_of(call.query)
    ns = reader(call, replica, at)
    found = queries.related(ns, node_id, depth, kinds_set(kinds), direction, at, limit)
    body = {
        "related": [related_json(item) for item in found],
        "applied_index": replica.applied_index,
    }
    return Answer(200, body)


async def similar(call: Call) -> Answer:
    node_id = parameters.path_id(call, "node_id")
    top_k = call.query.integer("top_k", 1, constants.top_k_max, 10)
    label = call.query.text("label", constants.label_bytes_max, None, empty_ok=False)
    exact = call.query.boolean("exact", False)
    ef = call.query.integer("ef", 1, constants.hnsw_ef_search_max, None)
    replica = await call.read(call.query)
    at = as_of(call.query)
    ns = reader(call, replica, at)
    with refusals_as_unprocessable():  # The node may have no vector.
        vector, exclude = similarity_target(ns, node_id, at)
    hits = queries.similar(ns, vector, top_k, label, exact, ef, at, exclude)
    body = {"hits": [similar_json(hit) for hit in hits], "applied_index": replica.applied_index}
    return Answer(200, body)


async def hybrid(call: Call) -> Answer:
    """Around `node_id` (ranked by its own vector, or by `vector` or `text` if given), or by
    `vector` or `text` alone."""
    body = call.json_body()
    references = [name for name in ("vector", "text") if body.given(name)]
    if len(references) > 1 or not (references or body.given("node_id")):
        raise UnprocessableError("give node_id, or one of vector and text, or both", "node_id")
    depth = body.integer("depth", 1, constants.depth_max, 1)
    top_k = body.integer("top_k", 1, constants.top_k_max, 10)
    kinds = kinds_set(body.text_list("kinds", constants.edge_kind_bytes_max, constants.top_k_max))
    direction = body.choice("direction", _DIRECTIONS, "both")
    replica = await call.read(body)
    at = as_of(body)
    ns = reader(call, replica, at)
    vector = _query_vector(ns, body) if references else None
    if body.given("node_id"):
        _refuse_vector_options(body)
        node_id = body.integer("node_id", constants.record_id_min, constants.record_id_max)
        with refusals_as_unprocessable():  # Without vector or text, the node must have a vector.
            ranked = queries.hybrid_around_node(
                ns, node_id, depth, top_k, vector, kinds, direction, at
            )
        hits = [similar_json(hit) for hit in ranked]
        mode = "node"
    else:
        assert vector is not None
        label = body.text("label", constants.label_bytes_max, None, empty_ok=False)
        exact = body.boolean("exact", False)
        found = queries.hybrid_from_vector(
            ns, vector, top_k, depth, label, kinds, direction, exact, at
        )
        hits = [hybrid_hit_json(hit) for hit in found]
        mode = references[0]
    return Answer(200, {"mode": mode, "hits": hits, "applied_index": replica.applied_index})


def _refuse_vector_options(body: Arguments) -> None:
    for name in ("label", "exact"):
        if body.given(name):
            raise UnprocessableError(f"{name} applies to a query without node_id", name)


def _query_vector(ns: NamespaceState, body: Arguments) -> FloatArray:
    if body.given("vector"):
        return queries.query_vector(ns, body.vector("vector"))
    text = body.text("text", constants.text_bytes_max)
    return text_embedder(ns.info.dimension).embed(text)


# -- Declarations ---------------------------------------------------------------------------------

_READ: Final = (parameters.NAMESPACE, *parameters.READ_OPTIONS)


def _integer(name: str, minimum: int, maximum: int, default: int, description: str) -> Parameter:
    schema = {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default}
    return Parameter(name, "query", schema, description)


ENDPOINTS: Final = (
    Endpoint(
        "GET", "/api/v1/nodes/{node_id}/related", "related",
        "Nodes within depth hops of a node, in breadth-first order", Role.READ, related,
        "RelatedList",
        parameters=(
            parameters.NODE_ID,
            _integer("depth", 1, constants.depth_max, 1, "Hops to walk."),
            parameters.KINDS_FILTER,
            Parameter("direction", "query", {"type": "string", "enum": list(_DIRECTIONS)},
                      "Follow edges out of, into, or both ways (the default)."),
            _integer("limit", 1, constants.list_limit_max, constants.list_limit_max,
                     "Stop after this many nodes."),
            *_READ,
        ),
    ),
    Endpoint(
        "GET", "/api/v1/vectors/{node_id}/similar", "similar",
        "The nodes nearest to a node's vector (the node itself excluded)", Role.READ, similar,
        "SimilarList",
        parameters=(
            parameters.NODE_ID,
            _integer("top_k", 1, constants.top_k_max, 10, "How many hits."),
            parameters.LABEL_FILTER,
            Parameter("exact", "query", {"type": "boolean", "default": False},
                      "Brute force instead of the HNSW index."),
            Parameter("ef", "query",
                      {"type": "integer", "minimum": 1, "maximum": constants.hnsw_ef_search_max},
                      "HNSW search breadth."),
            *_READ,
        ),
    ),
    Endpoint(
        "POST", "/api/v1/query/hybrid", "hybrid",
        "Graph and vector together: by node, by vector or by text", Role.READ, hybrid,
        "HybridAnswer", parameters=(parameters.NAMESPACE,), body="HybridQuery",
        description="With node_id: the node's neighbourhood within depth hops, ranked by "
        "similarity to the node's own vector, or to vector or text when given (hits without "
        "neighbours). With vector or text alone: the top_k nearest nodes, each with its "
        "neighbours within depth hops. Read options (consistency, min_commit_index, as_of) go "
        "in the body.",
    ),
)  # fmt: skip
