"""The vocabulary of endpoints: what an endpoint declares, and what its handler is given.

What lives here: `Endpoint` (method, path, role, parameters, body and answer schemas, handler),
which is the single source both for registering routes in the app and for `/openapi.json`;
`Call`, everything a handler needs about one request (the node, the caller, the namespace, its
typed arguments) with the two ways to reach the node (`write`, `read`); and `Answer`.
What must not: Quart. Handlers and endpoints here are plain functions and values, so the same
handler serves a test and a real server, and the spec cannot drift from the routes.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Final

import attrs

from memora.api import schemas
from memora.api.arguments import Arguments
from memora.api.auth import Caller
from memora.api.errors import UnprocessableError
from memora.api.settings import Role
from memora.core import constants
from memora.core.errors import ValidationError
from memora.core.namespace import NamespaceState
from memora.core.replica import Replica
from memora.core.types import Command, Proposal
from memora.net.node_api import Consistency, NodeApi, WriteOutcome
from memora.service.arguments import text_embedder

CLIENT_ID_HEADER: Final = "X-Memora-Client-Id"
SEQUENCE_HEADER: Final = "X-Memora-Sequence"
sequence_max: Final = 2**63 - 1


class Tenancy(enum.Enum):
    """Where an endpoint's namespace comes from."""

    QUERY = "query"  # The `namespace` query parameter, else the default namespace.
    PATH = "path"  # The `{name}` path parameter (namespace endpoints).
    NODE = "node"  # None: the endpoint is about the node itself, not a namespace's data.


@attrs.frozen
class Parameter:
    name: str
    location: str  # "path", "query" or "header", as OpenAPI spells it.
    schema: schemas.Schema
    description: str
    required: bool = False

    def __attrs_post_init__(self) -> None:
        assert self.location in ("path", "query", "header"), self.location
        assert self.required or self.location != "path", "a path parameter is always required"


@attrs.frozen
class Answer:
    """A handler's reply: the status and JSON body (or text, for Prometheus)."""

    status: int
    body: dict[str, Any] | str
    content_type: str = "application/json"


@attrs.frozen
class Call:
    """One authenticated request, as a handler sees it."""

    node: NodeApi
    caller: Caller
    namespace: str
    path: dict[str, str]
    query: Arguments
    body: Arguments | None
    client_id: str | None
    sequence: int
    api_counters: Mapping[str, int]  # The app's own counters, for the metrics endpoints.

    def json_body(self) -> Arguments:
        assert self.body is not None, "only endpoints that declare a body read one"
        return self.body

    async def write(self, command: Command, namespace: str | None = None) -> WriteOutcome:
        """Propose `command` as the caller, in the request's namespace (or `namespace`)."""
        proposal = Proposal(
            timestamp_ms=0,  # The node stamps its own clock (NodeApi.write).
            principal=self.caller.principal,
            namespace=namespace or self.namespace,
            session=self.client_id,
            command=command,
            client_id=self.client_id,
            sequence=self.sequence,
        )
        with refusals_as_unprocessable():
            return await self.node.write(proposal)

    async def read(self, options: Arguments) -> Replica:
        """The replica after the read barrier `options` ask for (consistency, min_commit_index)."""
        consistency = options.choice(
            "consistency", tuple(Consistency), Consistency.LINEARIZABLE.value
        )
        minimum = options.integer("min_commit_index", 0, constants.raft_index_max, None)
        if minimum is not None:
            _refuse_index_never_written(self.node, minimum)
        return await self.node.read_barrier(Consistency(consistency), minimum)

    async def embedder(self) -> Callable[[str], bytes]:
        """Text -> embedding bytes for this namespace, whose dimension a local read gives."""
        replica = await self.node.read_barrier(Consistency.FOLLOWER)
        embedder = text_embedder(replica.machine.namespace(self.namespace).info.dimension)
        return lambda text: embedder.embed(text).tobytes()


@contextlib.contextmanager
def refusals_as_unprocessable() -> Iterator[None]:
    """Turn the state machine's and the queries' refusals of a request that was well-formed
    (it matched the schema) into 422s: a 400 says the request itself is malformed."""
    try:
        yield
    except ValidationError as error:
        if type(error) is not ValidationError:  # A subclass has a status of its own.
            raise
        raise UnprocessableError(error.message, error.field) from None


def _refuse_index_never_written(node: NodeApi, index: int) -> None:
    """Refuse a `min_commit_index` past the leader's last log index: every committed index is in
    the leader's log (Raft's leader completeness), so no write has returned it, and waiting for
    it would only end in a timeout."""
    health = node.health()
    if health["role"] == "leader" and index > health["last_index"]:
        message = f"min_commit_index {index} is past the last log index {health['last_index']}"
        raise UnprocessableError(message, "min_commit_index")


def as_of(options: Arguments) -> int | None:
    value: int | None = options.integer("as_of", 0, constants.raft_index_max, None)
    return value


def reader(call: Call, replica: Replica, at: int | None) -> NamespaceState:
    """The namespace of the request as it was at commit index `at` (None: as it is)."""
    if at is not None and at > replica.applied_index:
        message = f"as_of {at} is after the last applied index {replica.applied_index}"
        raise UnprocessableError(message, "as_of")
    return replica.machine.reader(call.namespace, at)


Handler = Callable[[Call], Awaitable[Answer]]


@attrs.frozen
class Endpoint:
    """One method on one path: how it is served and how it is documented."""

    method: str
    path: str  # OpenAPI template: /api/v1/nodes/{node_id}
    operation_id: str
    summary: str
    role: Role | None  # None: no token needed.
    handler: Handler
    answer: str  # Component name of the success body ("" for a text answer).
    status: int = 200
    parameters: tuple[Parameter, ...] = ()
    body: str | None = None  # Component name of the request body.
    tenancy: Tenancy = Tenancy.QUERY
    writes: bool = False  # Takes the client session headers.
    conflicts: bool = False  # May answer 409 without being a record write (membership).
    description: str = ""
    media_type: str = "application/json"  # Of the success answer; JSON needs an `answer`.

    def __attrs_post_init__(self) -> None:
        assert self.method in ("GET", "POST", "PATCH", "DELETE"), self.method
        assert self.path.startswith("/"), self.path
        assert self.body is None or self.body in schemas.COMPONENTS, self.body
        assert self.answer == "" or self.answer in schemas.COMPONENTS, self.answer
        assert (self.answer == "") == (self.media_type != "application/json"), self.operation_id
        assert (self.body is not None) <= (self.method in ("POST", "PATCH")), self.operation_id
        in_path = {p.name for p in self.parameters if p.location == "path"}
        assert in_path == _template_names(self.path), (self.path, in_path)

    def quart_rule(self) -> str:
        """The path as Quart routes it: `{node_id}` becomes `<node_id>` (parsed by the handler,
        so that a malformed id is a 400 naming the field)."""
        return self.path.replace("{", "<").replace("}", ">")


def _template_names(path: str) -> set[str]:
    return {part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")}
