"""Endpoints that read and write single records: nodes, edges, observations, vectors, batches.

What lives here: the handlers (a body or path in, one command or one read out) and their
`Endpoint` declarations in `ENDPOINTS`. What must not: graph or vector queries
(`memora.api.endpoints_queries`), node administration (`memora.api.endpoints_node`), or any
check the state machine already makes on a command.
"""

from __future__ import annotations

from typing import Any, Final

from memora.api import commands, parameters, schemas
from memora.api.representation import (
    edge_json,
    node_json,
    observation_json,
    record_json,
)
from memora.api.routing import Answer, Call, Endpoint, Parameter, as_of, reader
from memora.api.settings import Role
from memora.core import constants, queries
from memora.core.errors import NotFoundError
from memora.core.types import Batch, DeleteEdge, DeleteNode, DeleteObservation
from memora.service.arguments import kinds_set

# -- Nodes ----------------------------------------------------------------------------------------


async def _embed_if_asked(call: Call) -> commands.Embed | None:
    return await call.embedder() if commands.asks_for_embedding(call.json_body()) else None


async def insert_node(call: Call) -> Answer:
    command = commands.insert_node(call.json_body(), await _embed_if_asked(call))
    outcome = await call.write(command)
    return Answer(201, {"node": node_json(outcome.value), "commit_index": outcome.commit_index})


async def get_node(call: Call) -> Answer:
    node_id = parameters.path_id(call, "node_id")
    replica = await call.read(call.query)
    at = as_of(call.query)
    node = queries.require_node(reader(call, replica, at), node_id, at, "node_id")
    return Answer(200, {"node": node_json(node), "applied_index": replica.applied_index})


async def update_node(call: Call) -> Answer:
    node_id = parameters.path_id(call, "node_id")
    command = commands.update_node(call.json_body(), node_id, await _embed_if_asked(call))
    outcome = await call.write(command)
    return Answer(200, {"node": node_json(outcome.value), "commit_index": outcome.commit_index})


async def delete_node(call: Call) -> Answer:
    outcome = await call.write(DeleteNode(parameters.path_id(call, "node_id")))
    return Answer(200, {"node": node_json(outcome.value), "commit_index": outcome.commit_index})


async def list_nodes(call: Call) -> Answer:
    label = call.query.text("label", constants.label_bytes_max, None, empty_ok=False)
    after = call.query.integer("after", 0, constants.record_id_max, 0)
    limit = call.query.integer("limit", 1, constants.list_limit_max, 100)
    replica = await call.read(call.query)
    at = as_of(call.query)
    page = queries.list_nodes(reader(call, replica, at), label, after, limit, at)
    next_after = page[-1].id if len(page) == limit else None
    return Answer(
        200,
        {
            "nodes": [node_json(node) for node in page],
            "next_after": next_after,
            "applied_index": replica.applied_index,
        },
    )


async def node_history(call: Call) -> Answer:
    node_id = parameters.path_id(call, "node_id")
    after_version = call.query.integer("after_version", 0, constants.record_id_max, 0)
    limit = call.query.integer("limit", 1, constants.list_limit_max, 100)
    replica = await call.read(call.query)
    at = as_of(call.query)
    versions = reader(call, replica, at).nodes.get(node_id)
    if versions is None or (at is not None and versions[0].created.index > at):
        raise NotFoundError(f"node {node_id} does not exist", "node_id")
    seen = [
        version
        for version in versions
        if version.version > after_version and (at is None or version.updated.index <= at)
    ]
    page = seen[:limit]
    next_after = page[-1].version if len(seen) > limit else None
    return Answer(
        200,
        {
            "versions": [node_json(version) for version in page],
            "next_after_version": next_after,
            "applied_index": replica.applied_index,
        },
    )


async def node_edges(call: Call) -> Answer:
    node_id = parameters.path_id(call, "node_id")
    direction = call.query.choice("direction", ("out", "in", "both"), "both")
    kinds = call.query.text_list("kinds", constants.edge_kind_bytes_max, constants.top_k_max)
    replica = await call.read(call.query)
    at = as_of(call.query)
    edges = queries.edges_of(reader(call, replica, at), node_id, direction, kinds_set(kinds), at)
    return Answer(
        200, {"edges": [edge_json(edge) for edge in edges], "applied_index": replica.applied_index}
    )


# -- Observations ---------------------------------------------------------------------------------


async def add_observation(call: Call) -> Answer:
    node_id = parameters.path_id(call, "node_id")
    command = commands.add_observation(call.json_body(), node_id, await _embed_if_asked(call))
    outcome = await call.write(command)
    body = {"observation": observation_json(outcome.value), "commit_index": outcome.commit_index}
    return Answer(201, body)


async def node_observations(call: Call) -> Answer:
    node_id = parameters.path_id(call, "node_id")
    replica = await call.read(call.query)
    at = as_of(call.query)
    found = queries.observations_of(reader(call, replica, at), node_id, at)
    return Answer(
        200,
        {
            "observations": [observation_json(item) for item in found],
            "applied_index": replica.applied_index,
        },
    )


async def get_observation(call: Call) -> Answer:
    observation_id = parameters.path_id(call, "observation_id")
    replica = await call.read(call.query)
    at = as_of(call.query)
    found = queries.get_observation(reader(call, replica, at), observation_id, at)
    if found is None:
        raise NotFoundError(f"observation {observation_id} does not exist", "observation_id")
    body = {"observation": observation_json(found), "applied_index": replica.applied_index}
    return Answer(200, body)


async def delete_observation(call: Call) -> Answer:
    outcome = await call.write(DeleteObservation(parameters.path_id(call, "observation_id")))
    body = {"observation": observation_json(outcome.value), "commit_index": outcome.commit_index}
    return Answer(200, body)


# -- Edges ----------------------------------------------------------------------------------------


async def insert_edge(call: Call) -> Answer:
    outcome = await call.write(commands.insert_edge(call.json_body()))
    return Answer(201, {"edge": edge_json(outcome.value), "commit_index": outcome.commit_index})


async def get_edge(call: Call) -> Answer:
    edge_id = parameters.path_id(call, "edge_id")
    replica = await call.read(call.query)
    at = as_of(call.query)
    edge = queries.get_edge(reader(call, replica, at), edge_id, at)
    if edge is None:
        raise NotFoundError(f"edge {edge_id} does not exist", "edge_id")
    return Answer(200, {"edge": edge_json(edge), "applied_index": replica.applied_index})


async def update_edge(call: Call) -> Answer:
    command = commands.update_edge(call.json_body(), parameters.path_id(call, "edge_id"))
    outcome = await call.write(command)
    return Answer(200, {"edge": edge_json(outcome.value), "commit_index": outcome.commit_index})


async def delete_edge(call: Call) -> Answer:
    outcome = await call.write(DeleteEdge(parameters.path_id(call, "edge_id")))
    return Answer(200, {"edge": edge_json(outcome.value), "commit_index": outcome.commit_index})


# -- Vectors and batches --------------------------------------------------------------------------


async def set_vector(call: Call) -> Answer:
    outcome = await call.write(commands.set_vector(call.json_body()))
    return Answer(200, {"node": node_json(outcome.value), "commit_index": outcome.commit_index})


async def batch(call: Call) -> Answer:
    items = call.json_body().object_list("commands", constants.batch_commands_max)
    embed = await _embed_if_asked(call)
    parsed = tuple(commands.batch_command(item, index, embed) for index, item in enumerate(items))
    outcome = await call.write(Batch(parsed))
    results: Any = outcome.value
    assert len(results) == len(parsed), (len(results), len(parsed))
    body = {"results": [record_json(r) for r in results], "commit_index": outcome.commit_index}
    return Answer(200, body)


# -- Declarations ---------------------------------------------------------------------------------

_READ: Final = (parameters.NAMESPACE, *parameters.READ_OPTIONS)
_WRITE: Final = (parameters.NAMESPACE, *parameters.SESSION_HEADERS)
_NODE_READ: Final = (parameters.NODE_ID, *_READ)
_NODE_WRITE: Final = (parameters.NODE_ID, *_WRITE)
_PAGE_LIMIT: Final = Parameter(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": constants.list_limit_max, "default": 100},
    "The most items in one page.",
)
_DIRECTION: Final = Parameter(
    "direction", "query", {"type": "string", "enum": ["out", "in", "both"]}, "Default both."
)
_AFTER: Final = Parameter("after", "query", schemas.INDEX, "Cursor: ids after it.")
_AFTER_VERSION: Final = Parameter(
    "after_version", "query", schemas.INDEX, "Cursor: versions after it."
)

ENDPOINTS: Final = (
    Endpoint("POST", "/api/v1/nodes", "insertNode", "Insert a node", Role.WRITE, insert_node,
             "NodeWritten", 201, _WRITE, "NodeInsert", writes=True),
    Endpoint("GET", "/api/v1/nodes", "listNodes", "List nodes by id, optionally of one label",
             Role.READ, list_nodes, "NodePage",
             parameters=(parameters.LABEL_FILTER, _AFTER, _PAGE_LIMIT, *_READ),
             description="Pages are ordered by id; pass next_after as after for the next one."),
    Endpoint("GET", "/api/v1/nodes/{node_id}", "getNode", "Get a node", Role.READ, get_node,
             "NodeRead", parameters=_NODE_READ),
    Endpoint("PATCH", "/api/v1/nodes/{node_id}", "updateNode", "Change some fields of a node",
             Role.WRITE, update_node, "NodeWritten", parameters=_NODE_WRITE, body="NodePatch",
             writes=True),
    Endpoint("DELETE", "/api/v1/nodes/{node_id}", "deleteNode",
             "Delete a node with its observations and edges", Role.WRITE, delete_node,
             "NodeWritten", parameters=_NODE_WRITE, writes=True),
    Endpoint("GET", "/api/v1/nodes/{node_id}/history", "nodeHistory",
             "Every version of a node, oldest first", Role.READ, node_history, "NodeHistory",
             parameters=(parameters.NODE_ID, _AFTER_VERSION, _PAGE_LIMIT, *_READ)),
    Endpoint("GET", "/api/v1/nodes/{node_id}/edges", "nodeEdges", "The edges touching a node",
             Role.READ, node_edges, "EdgeList",
             parameters=(parameters.NODE_ID, _DIRECTION, parameters.KINDS_FILTER, *_READ)),
    Endpoint("GET", "/api/v1/nodes/{node_id}/observations", "nodeObservations",
             "A node's observations", Role.READ, node_observations, "ObservationList",
             parameters=_NODE_READ),
    Endpoint("POST", "/api/v1/nodes/{node_id}/observations", "addObservation",
             "Add an observation to a node", Role.WRITE, add_observation, "ObservationWritten",
             201, _NODE_WRITE, "ObservationAdd", writes=True),
    Endpoint("GET", "/api/v1/observations/{observation_id}", "getObservation",
             "Get an observation", Role.READ, get_observation, "ObservationRead",
             parameters=(parameters.OBSERVATION_ID, *_READ)),
    Endpoint("DELETE", "/api/v1/observations/{observation_id}", "deleteObservation",
             "Delete an observation", Role.WRITE, delete_observation, "ObservationWritten",
             parameters=(parameters.OBSERVATION_ID, *_WRITE), writes=True),
    Endpoint("POST", "/api/v1/edges", "insertEdge", "Insert an edge", Role.WRITE, insert_edge,
             "EdgeWritten", 201, _WRITE, "EdgeInsert", writes=True),
    Endpoint("GET", "/api/v1/edges/{edge_id}", "getEdge", "Get an edge", Role.READ, get_edge,
             "EdgeRead", parameters=(parameters.EDGE_ID, *_READ)),
    Endpoint("PATCH", "/api/v1/edges/{edge_id}", "updateEdge", "Change an edge's properties",
             Role.WRITE, update_edge, "EdgeWritten", parameters=(parameters.EDGE_ID, *_WRITE),
             body="EdgePatch", writes=True),
    Endpoint("DELETE", "/api/v1/edges/{edge_id}", "deleteEdge", "Delete an edge", Role.WRITE,
             delete_edge, "EdgeWritten", parameters=(parameters.EDGE_ID, *_WRITE), writes=True),
    Endpoint("POST", "/api/v1/vectors", "setVector", "Set (or replace) a node's vector",
             Role.WRITE, set_vector, "NodeWritten", parameters=_WRITE, body="VectorSet",
             writes=True),
    Endpoint("POST", "/api/v1/batch", "batch", "Apply commands atomically: all or none",
             Role.WRITE, batch, "BatchWritten", parameters=_WRITE, body="Batch", writes=True),
)  # fmt: skip
