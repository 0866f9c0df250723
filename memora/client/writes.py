"""The writes of `memora.Client` and `memora.AsyncClient`, as sans-I/O exchanges.

What lives here: one generator function per write, with the embedded `memora.Memora`'s exact
signature (plus `embed` where a write carries text). Each yields one REST request, is sent the
JSON answer, and returns the record written, as `memora.core.types` has it. Both clients run
these same functions, so they cannot drift apart. What must not: I/O, retries, URLs or headers
(`memora.client.calls` adds the session headers that make a retried write apply once).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from memora.client import arguments, records
from memora.client.arguments import EDGES_PATH, NODES_PATH, OBSERVATIONS_PATH
from memora.client.protocol import Exchange, Request
from memora.core import constants
from memora.core.types import (
    Edge,
    Metric,
    Namespace,
    Node,
    Observation,
    Properties,
    Provenance,
    SimpleCommand,
)

# -- Namespaces -----------------------------------------------------------------------------------


def create_namespace(
    name: str, *, dimension: int = constants.dimension_default, metric: Metric = "cosine"
) -> Exchange[Namespace]:
    body = {"name": name, "dimension": dimension, "metric": metric}
    answer = yield Request("POST", "/api/v1/namespaces", body=body, namespaced=False, write=True)
    return records.namespace(answer["namespace"])


# -- Node writes ----------------------------------------------------------------------------------


def insert_node(
    label: str,
    *,
    id: int | None = None,
    name: str | None = None,
    properties: Properties | None = None,
    text: str | None = None,
    vector: Any = None,
    provenance: Provenance | None = None,
    namespace: str | None = None,
    embed: bool = False,
) -> Exchange[Node]:
    """Insert a node. With `embed=True` (and text, no vector) the server stores the embedding
    of `text` as the vector."""
    body = {
        "label": label,
        "id": None if id is None else arguments.record_id(id, "id"),
        "name": name,
        "properties": properties,
        "provenance": records.provenance_json(provenance),
        **arguments.text_fields(text, vector, embed),
    }
    answer = yield arguments.write("POST", NODES_PATH, body, namespace)
    return records.node(answer["node"])


def update_node(
    id: int,
    *,
    label: str | None = None,
    name: str | None = None,
    properties: Properties | None = None,
    text: str | None = None,
    vector: Any = None,
    provenance: Provenance | None = None,
    clear: Sequence[str] = (),
    namespace: str | None = None,
    embed: bool = False,
) -> Exchange[Node]:
    """Change some fields of a node; see `UpdateNode` for `properties` and `clear`."""
    body = {
        "label": label,
        "name": name,
        "properties": properties,
        "provenance": records.provenance_json(provenance),
        "clear": list(clear) or None,
        **arguments.text_fields(text, vector, embed),
    }
    path = arguments.record_path(NODES_PATH, id, "id")
    answer = yield arguments.write("PATCH", path, body, namespace)
    return records.node(answer["node"])


def delete_node(id: int, *, namespace: str | None = None) -> Exchange[Node]:
    path = arguments.record_path(NODES_PATH, id, "id")
    answer = yield arguments.write("DELETE", path, None, namespace)
    return records.node(answer["node"])


def insert_vector(node_id: int, vector: Any, *, namespace: str | None = None) -> Exchange[Node]:
    """Set the vector of an existing node."""
    body = {
        "node_id": arguments.record_id(node_id, "node_id"),
        "vector": records.vector_json(vector),
    }
    answer = yield arguments.write("POST", "/api/v1/vectors", body, namespace)
    return records.node(answer["node"])


# -- Edge and observation writes ------------------------------------------------------------------


def insert_edge(
    source: int,
    target: int,
    kind: str = "related",
    *,
    id: int | None = None,
    properties: Properties | None = None,
    provenance: Provenance | None = None,
    namespace: str | None = None,
) -> Exchange[Edge]:
    body = {
        "source": source,
        "target": target,
        "kind": kind,
        "id": id,
        "properties": properties,
        "provenance": records.provenance_json(provenance),
    }
    answer = yield arguments.write("POST", EDGES_PATH, body, namespace)
    return records.edge(answer["edge"])


def update_edge(
    id: int,
    *,
    properties: Properties | None = None,
    provenance: Provenance | None = None,
    namespace: str | None = None,
) -> Exchange[Edge]:
    body = {"properties": properties, "provenance": records.provenance_json(provenance)}
    path = arguments.record_path(EDGES_PATH, id, "id")
    answer = yield arguments.write("PATCH", path, body, namespace)
    return records.edge(answer["edge"])


def delete_edge(id: int, *, namespace: str | None = None) -> Exchange[Edge]:
    path = arguments.record_path(EDGES_PATH, id, "id")
    answer = yield arguments.write("DELETE", path, None, namespace)
    return records.edge(answer["edge"])


def add_observation(
    node_id: int,
    text: str,
    *,
    vector: Any = None,
    provenance: Provenance | None = None,
    namespace: str | None = None,
    embed: bool = False,
) -> Exchange[Observation]:
    body = {
        "provenance": records.provenance_json(provenance),
        **arguments.text_fields(text, vector, embed),
    }
    path = arguments.record_path(NODES_PATH, node_id, "node_id", "observations")
    answer = yield arguments.write("POST", path, body, namespace)
    return records.observation(answer["observation"])


def delete_observation(id: int, *, namespace: str | None = None) -> Exchange[Observation]:
    path = arguments.record_path(OBSERVATIONS_PATH, id, "id")
    answer = yield arguments.write("DELETE", path, None, namespace)
    return records.observation(answer["observation"])


def batch(
    commands: Iterable[SimpleCommand], *, namespace: str | None = None
) -> Exchange[tuple[Any, ...]]:
    """Apply commands atomically: all take effect, or none and the first error is raised.

    Returns the tuple of records written, one per command. The REST batch takes every command
    but `CreateNamespace`, and assigns observation ids itself."""
    items = [records.batch_command_json(command, n) for n, command in enumerate(commands)]
    body = {"commands": items}
    answer = yield arguments.write("POST", "/api/v1/batch", body, namespace)
    return tuple(records.written_record(item) for item in answer["results"])
