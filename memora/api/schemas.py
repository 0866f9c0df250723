"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of every body the REST API reads or writes.

What lives here: the shapes of records (as `memora.api.representation` writes them), of request
bodies (whose `properties` are also the only fields the parsers accept), and of answers, each
with the limits of `memora.core.constants`. `COMPONENTS` is what `/openapi.json` publishes under
`components/schemas`; `ref(name)` points at one. What must not: behaviour. A schema here that the
code does not honour is a bug that the OpenAPI conformance test catches.
"""

from __future__ import annotations

from typing import Any, Final

from memora.core import constants
from memora.core.raft.types import Role as RaftRole

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    assert name in COMPONENTS, name
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def body_fields(name: str) -> frozenset[str]:
    """The fields a request body of component `name` may hold."""
    return frozenset(COMPONENTS[name]["properties"])


def _object(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    assert set(required) <= set(properties), (required, properties)
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _input(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    """A request body's object: a field that is not required may also be null, meaning absent."""
    optional = {
        name: schema if name in required or _is_nullable(schema) else nullable(schema)
        for name, schema in properties.items()
    }
    return _object(optional, required)


def _is_nullable(schema: Schema) -> bool:
    return {"type": "null"} in schema.get("anyOf", ())


RECORD_ID: Final = {
    "type": "integer",
    "minimum": constants.record_id_min,
    "maximum": constants.record_id_max,
}
INDEX: Final = {"type": "integer", "minimum": 0, "maximum": constants.raft_index_max}
TIMESTAMP_MS: Final = {
    "type": "integer",
    "minimum": constants.int_property_min,
    "maximum": constants.int_property_max,
}
# Text holds no NUL character (its pattern). Limits are in UTF-8 bytes, which JSON Schema cannot
# count: `maxLength` (characters) is the same number, so a longer text is surely refused (400)
# and a text within it but over its bytes is refused as unprocessable (422).
NO_NUL_PATTERN: Final = "^[^\\u0000]*$"


def text(bytes_max: int, *, empty_ok: bool, description: str = "") -> Schema:
    """A string of at most `bytes_max` UTF-8 bytes, without NUL."""
    limit = f"At most {bytes_max} UTF-8 bytes, no NUL."
    schema: Schema = {"type": "string", "maxLength": bytes_max, "pattern": NO_NUL_PATTERN}
    if not empty_ok:
        schema["minLength"] = 1
    schema["description"] = f"{description} {limit}".strip()
    return schema


NAMESPACE_NAME: Final = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    "maxLength": constants.namespace_name_bytes_max,
}
LABEL: Final = text(constants.label_bytes_max, empty_ok=False)
NAME: Final = text(constants.name_bytes_max, empty_ok=False, description="Unique in its namespace.")
TEXT: Final = text(constants.text_bytes_max, empty_ok=True)
KIND: Final = text(constants.edge_kind_bytes_max, empty_ok=False)
KINDS: Final = {"type": "array", "items": KIND, "maxItems": constants.top_k_max}
VECTOR: Final = {
    "type": "array",
    "items": {
        "type": "number",
        "minimum": -constants.vector_component_abs_max,
        "maximum": constants.vector_component_abs_max,
    },
    "minItems": constants.dimension_min,
    "maxItems": constants.dimension_max,
    "description": "Exactly the namespace's dimension of finite numbers (stored as float32); "
    "another length is refused with 422.",
}
PROPERTIES: Final = {
    "type": "object",
    "maxProperties": constants.properties_count_max,
    "propertyNames": text(constants.property_key_bytes_max, empty_ok=False),
    "description": "Any JSON values, with integers that fit in 64 bits, nested at most "
    f"{constants.property_depth_max} deep and encoding to at most "
    f"{constants.properties_bytes_max} bytes; other values are refused with 422.",
}
DIRECTION: Final = {"type": "string", "enum": ["out", "in", "both"]}
CLEARABLE: Final = {
    "type": "array",
    "items": {"type": "string", "enum": ["name", "text", "vector"]},
    "maxItems": 3,
}
EMBED: Final = {
    "type": "boolean",
    "description": "With text and no vector, store the text's embedding (the built-in "
    "hashing embedder, the one text queries use) as the vector.",
}
CONSISTENCY: Final = {"type": "string", "enum": ["linearizable", "lease", "follower"]}

_STAMP = _object(
    {
        "commit_index": INDEX,
        "timestamp_ms": TIMESTAMP_MS,
        "principal": {"type": "string"},
        "session": nullable({"type": "string"}),
    },
    ("commit_index", "timestamp_ms", "principal", "session"),
)
_PROVENANCE_FIELDS: Final[dict[str, Schema]] = {
    "source": nullable(text(constants.source_bytes_max, empty_ok=True)),
    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    "valid_from_ms": nullable(TIMESTAMP_MS),
    "valid_to_ms": nullable(TIMESTAMP_MS),
}
_PROVENANCE = _object(_PROVENANCE_FIELDS, tuple(_PROVENANCE_FIELDS))
_PROVENANCE_INPUT = _input(_PROVENANCE_FIELDS)
_PROVENANCE_INPUT["description"] = "valid_from_ms may not be after valid_to_ms (else 422)."
_RECORD_COMMON: Final[dict[str, Schema]] = {
    "namespace": {"type": "string"},
    "id": RECORD_ID,
    "version": {"type": "integer", "minimum": 1},
}
_RECORD_TAIL: Final[dict[str, Schema]] = {
    "provenance": {"$ref": "#/components/schemas/Provenance"},
    "created": {"$ref": "#/components/schemas/Stamp"},
    "updated": {"$ref": "#/components/schemas/Stamp"},
    "deleted": {"type": "boolean"},
}


def _record(fields: dict[str, Schema]) -> Schema:
    properties = {**_RECORD_COMMON, **fields, **_RECORD_TAIL}
    return _object(properties, tuple(properties))


_NODE = _record(
    {
        "label": {"type": "string"},
        "name": nullable({"type": "string"}),
        "properties": PROPERTIES,
        "text": nullable({"type": "string"}),
        "vector": nullable({"type": "array", "items": {"type": "number"}}),
    }
)
_EDGE = _record(
    {
        "source": RECORD_ID,
        "target": RECORD_ID,
        "kind": {"type": "string"},
        "properties": PROPERTIES,
    }
)
_OBSERVATION = _record(
    {
        "node_id": RECORD_ID,
        "text": {"type": "string"},
        "vector": nullable({"type": "array", "items": {"type": "number"}}),
    }
)
_NAMESPACE = _object(
    {
        "name": {"type": "string"},
        "dimension": {"type": "integer"},
        "metric": {"type": "string", "enum": list(constants.metrics)},
        "created": {"$ref": "#/components/schemas/Stamp"},
    },
    ("name", "dimension", "metric", "created"),
)
_ERROR = _object(
    {
        "error": _object(
            {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": nullable({"type": "string"}),
            },
            ("code", "message", "field"),
        )
    },
    ("error",),
)

_NODE_REF: Final = {"$ref": "#/components/schemas/Node"}
_RELATED = _object({"node": _NODE_REF, "hops": {"type": "integer", "minimum": 1}}, ("node", "hops"))
_SIMILAR = _object({"node": _NODE_REF, "distance": {"type": "number"}}, ("node", "distance"))
_HYBRID_HIT = _object(
    {
        "node": _NODE_REF,
        "distance": {"type": "number"},
        "neighbours": {"type": "array", "items": {"$ref": "#/components/schemas/RelatedNode"}},
    },
    ("node", "distance"),
)
_WRITTEN_RECORD = {
    "oneOf": [
        _object({"type": {"const": "node"}, "node": _NODE_REF}, ("type", "node")),
        _object(
            {"type": {"const": "edge"}, "edge": {"$ref": "#/components/schemas/Edge"}},
            ("type", "edge"),
        ),
        _object(
            {
                "type": {"const": "observation"},
                "observation": {"$ref": "#/components/schemas/Observation"},
            },
            ("type", "observation"),
        ),
    ]
}

# -- Request bodies -------------------------------------------------------------------------------

_PROVENANCE_INPUT_REF: Final = {"$ref": "#/components/schemas/ProvenanceInput"}
_NODE_INSERT = _input(
    {
        "id": RECORD_ID,
        "label": LABEL,
        "name": NAME,
        "properties": PROPERTIES,
        "text": TEXT,
        "vector": VECTOR,
        "provenance": _PROVENANCE_INPUT_REF,
        "embed": EMBED,
    },
    ("label",),
)
_NODE_PATCH = _input(
    {
        "label": LABEL,
        "name": NAME,
        "properties": {**PROPERTIES, "description": "Replaces the whole map."},
        "text": TEXT,
        "vector": VECTOR,
        "provenance": _PROVENANCE_INPUT_REF,
        "clear": CLEARABLE,
        "embed": EMBED,
    }
)
_EDGE_INSERT = _input(
    {
        "id": RECORD_ID,
        "source": RECORD_ID,
        "target": RECORD_ID,
        "kind": {**KIND, "default": "related"},
        "properties": PROPERTIES,
        "provenance": _PROVENANCE_INPUT_REF,
    },
    ("source", "target"),
)
_EDGE_PATCH = _input({"properties": PROPERTIES, "provenance": _PROVENANCE_INPUT_REF})
_OBSERVATION_ADD = _input(
    {
        "text": {**TEXT, "minLength": 1},
        "vector": VECTOR,
        "provenance": _PROVENANCE_INPUT_REF,
        "embed": EMBED,
    },
    ("text",),
)
_VECTOR_SET = _input({"node_id": RECORD_ID, "vector": VECTOR}, ("node_id", "vector"))
_NAMESPACE_CREATE = _input(
    {
        "name": NAMESPACE_NAME,
        "dimension": {
            "type": "integer",
            "minimum": constants.dimension_min,
            "maximum": constants.dimension_max,
            "default": constants.dimension_default,
        },
        "metric": {"type": "string", "enum": list(constants.metrics), "default": "cosine"},
    },
    ("name",),
)


def _batch_command(op: str, body: Schema) -> Schema:
    properties = {"op": {"const": op}, **body["properties"]}
    return _input(properties, ("op", *body["required"]))


_ID_REQUIRED: Final = {"id": RECORD_ID}
BATCH_COMMANDS: Final = {
    "insert_node": _batch_command("insert_node", _NODE_INSERT),
    "update_node": _batch_command(
        "update_node", _input({**_ID_REQUIRED, **_NODE_PATCH["properties"]}, ("id",))
    ),
    "delete_node": _batch_command("delete_node", _input(_ID_REQUIRED, ("id",))),
    "set_vector": _batch_command("set_vector", _VECTOR_SET),
    "insert_edge": _batch_command("insert_edge", _EDGE_INSERT),
    "update_edge": _batch_command(
        "update_edge", _input({**_ID_REQUIRED, **_EDGE_PATCH["properties"]}, ("id",))
    ),
    "delete_edge": _batch_command("delete_edge", _input(_ID_REQUIRED, ("id",))),
    "add_observation": _batch_command(
        "add_observation",
        _input({"node_id": RECORD_ID, **_OBSERVATION_ADD["properties"]}, ("node_id", "text")),
    ),
    "delete_observation": _batch_command("delete_observation", _input(_ID_REQUIRED, ("id",))),
}

_BATCH = _input(
    {
        "commands": {
            "type": "array",
            "items": {"oneOf": list(BATCH_COMMANDS.values())},
            "maxItems": constants.batch_commands_max,
        }
    },
    ("commands",),
)
_HYBRID_QUERY = _input(
    {
        "node_id": {**RECORD_ID, "description": "Rank this node's neighbourhood."},
        "vector": {**VECTOR, "description": "Rank by similarity to this vector."},
        "text": {**TEXT, "description": "Rank by similarity to this text's embedding."},
        "depth": {"type": "integer", "minimum": 1, "maximum": constants.depth_max, "default": 1},
        "top_k": {"type": "integer", "minimum": 1, "maximum": constants.top_k_max, "default": 10},
        "kinds": KINDS,
        "direction": {**DIRECTION, "default": "both"},
        "label": {**LABEL, "description": "Vector or text queries: only nodes of this label."},
        "exact": {"type": "boolean", "default": False},
        "as_of": INDEX,
        "consistency": {**CONSISTENCY, "default": "linearizable"},
        "min_commit_index": INDEX,
    }
)
_HYBRID_QUERY["description"] = "node_id, or one of vector and text, or node_id and one of them."

# -- Answers --------------------------------------------------------------------------------------


def _answer(properties: dict[str, Schema]) -> Schema:
    return _object(properties, tuple(properties))


def _array_of(name: str) -> Schema:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}


_NEXT: Final = nullable(INDEX)

NODE_ID: Final = {
    "type": "integer",
    "minimum": constants.raft_node_id_min,
    "maximum": constants.raft_node_id_max,
}
_PEER_PROPERTIES: Final[dict[str, Schema]] = {
    "node_id": NODE_ID,
    "role": {"type": "string", "enum": ["voter", "learner"]},
    "match_index": nullable(INDEX),
    "lag": nullable({"type": "integer", "description": "Entries behind the leader's log."}),
    "connected": {"type": "boolean", "description": "Whether this node's link to it is up."},
    "last_received_s_ago": nullable(
        {"type": "number", "description": "Seconds since this node last heard from it."}
    ),
}
# The match index and lag are known on the leader only; the link fields exist in a cluster only.
_PEER_HEALTH = _object(_PEER_PROPERTIES, ("node_id", "role", "match_index", "lag"))
_PEER_STATUS = _object(
    {**_PEER_PROPERTIES, "address": nullable({"type": "string"})},
    ("node_id", "role", "match_index", "lag"),
)
_HEALTH_PROPERTIES: Final[dict[str, Schema]] = {
    "node_id": NODE_ID,
    "state": {"type": "string", "enum": ["starting", "serving", "stopping", "stopped"]},
    "role": {"type": "string", "enum": [role.value for role in RaftRole]},
    "term": INDEX,
    "leader_id": nullable(NODE_ID),
    "commit_index": INDEX,
    "applied_index": INDEX,
    "last_index": INDEX,
    "snapshot_index": INDEX,
    "voters": {"type": "array", "items": NODE_ID},
    "learners": {"type": "array", "items": NODE_ID},
    "peers": {"type": "array", "items": _PEER_HEALTH},
}
# The fields health shows anyone, without a token; the node's data directory is not one of them.
HEALTH_FIELDS: Final = tuple(_HEALTH_PROPERTIES)
_HEALTH = _object(_HEALTH_PROPERTIES, HEALTH_FIELDS)
_HEALTH["description"] = (
    "The node's lifecycle state, Raft role, term, commit and applied index, leader, voters and "
    "peers with their lag. Public: it shows nothing of the node's host or its data."
)

COMPONENTS: Final[dict[str, Schema]] = {
    "Stamp": _STAMP,
    "Provenance": _PROVENANCE,
    "ProvenanceInput": _PROVENANCE_INPUT,
    "Node": _NODE,
    "Edge": _EDGE,
    "Observation": _OBSERVATION,
    "Namespace": _NAMESPACE,
    "Error": _ERROR,
    "RelatedNode": _RELATED,
    "SimilarHit": _SIMILAR,
    "HybridHit": _HYBRID_HIT,
    "WrittenRecord": _WRITTEN_RECORD,
    "NodeInsert": _NODE_INSERT,
    "NodePatch": _NODE_PATCH,
    "EdgeInsert": _EDGE_INSERT,
    "EdgePatch": _EDGE_PATCH,
    "ObservationAdd": _OBSERVATION_ADD,
    "VectorSet": _VECTOR_SET,
    "NamespaceCreate": _NAMESPACE_CREATE,
    "Batch": _BATCH,
    "HybridQuery": _HYBRID_QUERY,
    "NodeWritten": _answer({"node": _NODE_REF, "commit_index": INDEX}),
    "EdgeWritten": _answer({"edge": {"$ref": "#/components/schemas/Edge"}, "commit_index": INDEX}),
    "ObservationWritten": _answer(
        {"observation": {"$ref": "#/components/schemas/Observation"}, "commit_index": INDEX}
    ),
    "NamespaceWritten": _answer(
        {"namespace": {"$ref": "#/components/schemas/Namespace"}, "commit_index": INDEX}
    ),
    "BatchWritten": _answer({"results": _array_of("WrittenRecord"), "commit_index": INDEX}),
    "NodeRead": _answer({"node": _NODE_REF, "applied_index": INDEX}),
    "EdgeRead": _answer({"edge": {"$ref": "#/components/schemas/Edge"}, "applied_index": INDEX}),
    "ObservationRead": _answer(
        {"observation": {"$ref": "#/components/schemas/Observation"}, "applied_index": INDEX}
    ),
    "NamespaceRead": _answer(
        {"namespace": {"$ref": "#/components/schemas/Namespace"}, "applied_index": INDEX}
    ),
    "NamespaceList": _answer({"namespaces": _array_of("Namespace"), "applied_index": INDEX}),
    "NodePage": _answer({"nodes": _array_of("Node"), "next_after": _NEXT, "applied_index": INDEX}),
    "NodeHistory": _answer(
        {"versions": _array_of("Node"), "next_after_version": _NEXT, "applied_index": INDEX}
    ),
    "EdgeList": _answer({"edges": _array_of("Edge"), "applied_index": INDEX}),
    "ObservationList": _answer({"observations": _array_of("Observation"), "applied_index": INDEX}),
    "RelatedList": _answer({"related": _array_of("RelatedNode"), "applied_index": INDEX}),
    "SimilarList": _answer({"hits": _array_of("SimilarHit"), "applied_index": INDEX}),
    "HybridAnswer": _answer(
        {
            "mode": {"type": "string", "enum": ["node", "vector", "text"]},
            "hits": _array_of("HybridHit"),
            "applied_index": INDEX,
        }
    ),
    "SnapshotTaken": _answer({"snapshot_index": INDEX}),
    "ClusterStatus": _answer(
        {
            "cluster_id": nullable({"type": "string"}),
            "node_id": NODE_ID,
            "leader_id": nullable(NODE_ID),
            "term": INDEX,
            "voters": {"type": "array", "items": NODE_ID},
            "learners": {"type": "array", "items": NODE_ID},
            "peers": {"type": "array", "items": _PEER_STATUS},
            "applied_index": INDEX,
            "state_hash": {
                "type": "string",
                "description": "SHA-256 of this node's state; equal on members at one index.",
            },
        }
    ),
    "MemberAdd": _input(
        {
            "node_id": NODE_ID,
            "address": {
                "type": "string",
                "maxLength": 300,
                "description": "host:port of the node's peer listener, if the cluster does not "
                "know it yet (a node that joins also announces it when it connects).",
            },
        },
        ("node_id",),
    ),
    "LeaderTransfer": _input({"node_id": NODE_ID}, ("node_id",)),
    "MembershipChanged": _answer(
        {
            "commit_index": INDEX,
            "voters": {"type": "array", "items": NODE_ID},
            "learners": {"type": "array", "items": NODE_ID},
        }
    ),
    "LeaderTransferred": _answer({"leader_id": NODE_ID}),
    "Health": _HEALTH,
    "OpenApiDocument": {"type": "object", "description": "An OpenAPI 3.1 document."},
    "Metrics": _answer({"metrics": {"type": "object", "additionalProperties": {"type": "number"}}}),
}
