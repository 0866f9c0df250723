"""Parameters that many endpoints share, declared once for the handlers and the OpenAPI spec.

What lives here: the path ids, the read options (`consistency`, `min_commit_index`, `as_of`),
the namespace selector, the client session headers, and the parser of a path id. What must not:
parameters only one endpoint has; those sit next to it.
"""

from __future__ import annotations

from typing import Final

from memora.api import schemas
from memora.api.arguments import Arguments
from memora.api.routing import CLIENT_ID_HEADER, SEQUENCE_HEADER, Call, Parameter, sequence_max
from memora.core import constants


def path_id(call: Call, name: str) -> int:
    """A record id from the path, as a typed error when malformed."""
    path = Arguments(call.path, from_query=True)
    value: int = path.integer(name, constants.record_id_min, constants.record_id_max)
    return value


def path_parameter(name: str, description: str) -> Parameter:
    return Parameter(name, "path", schemas.RECORD_ID, description, required=True)


NODE_ID: Final = path_parameter("node_id", "The node's id.")
EDGE_ID: Final = path_parameter("edge_id", "The edge's id.")
OBSERVATION_ID: Final = path_parameter("observation_id", "The observation's id.")

NAMESPACE: Final = Parameter(
    "namespace",
    "query",
    schemas.NAMESPACE_NAME,
    "The namespace (tenant) to use; the server's default namespace when absent.",
)
CONSISTENCY: Final = Parameter(
    "consistency",
    "query",
    {**schemas.CONSISTENCY, "default": "linearizable"},
    "linearizable (the default) sees every write acknowledged before the read began; lease "
    "trusts the leader's lease; follower reads what this node has applied, maybe stale.",
)
MIN_COMMIT_INDEX: Final = Parameter(
    "min_commit_index",
    "query",
    schemas.INDEX,
    "Wait until this node has applied at least this index: pass a write's commit_index to "
    "read your own write at any consistency.",
)
AS_OF: Final = Parameter(
    "as_of",
    "query",
    schemas.INDEX,
    "Read the state as it was at this commit index (at most the applied index).",
)
READ_OPTIONS: Final = (CONSISTENCY, MIN_COMMIT_INDEX, AS_OF)

CLIENT_ID: Final = Parameter(
    CLIENT_ID_HEADER,
    "header",
    schemas.text(constants.client_id_bytes_max, empty_ok=False),
    "A client session id. With X-Memora-Sequence, a retried write applies exactly once and a "
    "retry gets the first answer. Also recorded as the session of the records written.",
)
SEQUENCE: Final = Parameter(
    SEQUENCE_HEADER,
    "header",
    {"type": "integer", "minimum": 1, "maximum": sequence_max},
    "The write's number in its client session: 1, 2, 3, ...; a retry reuses its number.",
)
SESSION_HEADERS: Final = (CLIENT_ID, SEQUENCE)

LABEL_FILTER: Final = Parameter("label", "query", schemas.LABEL, "Only nodes of this label.")
KINDS_FILTER: Final = Parameter(
    "kinds",
    "query",
    {"type": "string", "pattern": schemas.NO_NUL_PATTERN},
    f"Edge kinds to follow, comma-separated (at most {constants.top_k_max}, each at most "
    f"{constants.edge_kind_bytes_max} UTF-8 bytes); all if absent.",
)
