"""The JSON form of records and query results, the same in every answer of the REST API.

What lives here: one function per record type (node, edge, observation, namespace) and per
result shape, each returning plain JSON-ready values. Vectors become lists of floats (the exact
float32 values), stamps become `{"commit_index", "timestamp_ms", "principal", "session"}`, and
provenance keeps its field names. What must not: reading state or parsing requests. The JSON
Schemas in `memora.api.schemas` describe exactly these shapes; a change here changes them too.
"""

from __future__ import annotations

from typing import Any

from memora.core.types import (
    Edge,
    HybridHit,
    Namespace,
    Node,
    Observation,
    Provenance,
    RelatedNode,
    SimilarHit,
    Stamp,
    vector_from_bytes,
)

Json = dict[str, Any]


def stamp_json(stamp: Stamp) -> Json:
    return {
        "commit_index": stamp.index,
        "timestamp_ms": stamp.timestamp_ms,
        "principal": stamp.principal,
        "session": stamp.session,
    }


def provenance_json(provenance: Provenance) -> Json:
    return {
        "source": provenance.source,
        "confidence": provenance.confidence,
        "valid_from_ms": provenance.valid_from_ms,
        "valid_to_ms": provenance.valid_to_ms,
    }


def vector_json(vector: bytes | None) -> list[float] | None:
    return None if vector is None else [float(value) for value in vector_from_bytes(vector)]


def node_json(node: Node) -> Json:
    return {
        "namespace": node.namespace,
        "id": node.id,
        "version": node.version,
        "label": node.label,
        "name": node.name,
        "properties": node.properties,
        "text": node.text,
        "vector": vector_json(node.vector),
        "provenance": provenance_json(node.provenance),
        "created": stamp_json(node.created),
        "updated": stamp_json(node.updated),
        "deleted": node.deleted,
    }


def edge_json(edge: Edge) -> Json:
    return {
        "namespace": edge.namespace,
        "id": edge.id,
        "version": edge.version,
        "source": edge.source,
        "target": edge.target,
        "kind": edge.kind,
        "properties": edge.properties,
        "provenance": provenance_json(edge.provenance),
        "created": stamp_json(edge.created),
        "updated": stamp_json(edge.updated),
        "deleted": edge.deleted,
    }


def observation_json(observation: Observation) -> Json:
    return {
        "namespace": observation.namespace,
        "id": observation.id,
        "version": observation.version,
        "node_id": observation.node_id,
        "text": observation.text,
        "vector": vector_json(observation.vector),
        "provenance": provenance_json(observation.provenance),
        "created": stamp_json(observation.created),
        "updated": stamp_json(observation.updated),
        "deleted": observation.deleted,
    }


def namespace_json(namespace: Namespace) -> Json:
    return {
        "name": namespace.name,
        "dimension": namespace.dimension,
        "metric": namespace.metric,
        "created": stamp_json(namespace.created),
    }


def record_json(record: Any) -> Json:
    """Any record a write returns, tagged with its type (the items of a batch's answer)."""
    if isinstance(record, Node):
        return {"type": "node", "node": node_json(record)}
    if isinstance(record, Edge):
        return {"type": "edge", "edge": edge_json(record)}
    if isinstance(record, Observation):
        return {"type": "observation", "observation": observation_json(record)}
    raise AssertionError(f"a write returned {type(record).__name__}, not a record")


def related_json(related: RelatedNode) -> Json:
    node, hops = related
    return {"node": node_json(node), "hops": hops}


def similar_json(hit: SimilarHit) -> Json:
    node, distance = hit
    return {"node": node_json(node), "distance": distance}


def hybrid_hit_json(hit: HybridHit) -> Json:
    return {
        "node": node_json(hit.node),
        "distance": hit.distance,
        "neighbours": [related_json(neighbour) for neighbour in hit.neighbours],
    }
