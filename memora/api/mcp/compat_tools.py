"""The reference MCP memory server's surface: nine tools and one resource, same shapes.

Arguments and results match the reference server (`@modelcontextprotocol/server-memory`): the
same names, the same camelCase fields, the same annotations, JSON text content and structured
content. The semantics are those of `memora.service.knowledge_graph`, which also says where they
go further (duplicates inside one call are skipped too; a relation to a missing entity is an
error). Each tool also takes the shared optional arguments of `memora.api.mcp.arguments`, and
`read_graph` takes `detail`, `limit` and `cursor`, so a large memory need not come back in one
answer.

`memory://knowledge-graph` is the caller's namespace's graph. A client that subscribes to it is
sent `notifications/resources/updated` after every change made through this server to that
namespace.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import attrs
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp_types import (
    CallToolResult,
    EmptyResult,
    ReadResourceRequestParams,
    ReadResourceResult,
    SubscribeRequestParams,
    TextResourceContents,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field

from memora.api.mcp import arguments
from memora.api.mcp.access import AccessResolver, McpAccess
from memora.api.mcp.arguments import (
    AsOfArg,
    ConfidenceArg,
    SessionArg,
    SourceArg,
    TimeArg,
    async_errors_as_tool_errors,
    result,
)
from memora.api.settings import Role
from memora.core import constants
from memora.service.knowledge_graph import (
    EntityInput,
    KnowledgeGraph,
    ObservationInput,
    ReadContext,
    RelationInput,
    WriteContext,
)

GRAPH_URI = "memory://knowledge-graph"

Name = Annotated[str, Field(min_length=1, max_length=constants.name_bytes_max)]
Text = Annotated[str, Field(max_length=constants.text_bytes_max)]


class Entity(BaseModel):
    name: Name = Field(description="The name of the entity")
    entityType: str = Field(
        description="The type of the entity", min_length=1, max_length=constants.label_bytes_max
    )
    observations: list[Text] = Field(
        description="An array of observation contents associated with the entity"
    )


class Relation(BaseModel):
    from_: Name = Field(
        alias="from", description="The name of the entity where the relation starts"
    )
    to: Name = Field(description="The name of the entity where the relation ends")
    relationType: str = Field(
        description="The type of the relation",
        min_length=1,
        max_length=constants.edge_kind_bytes_max,
    )


class ObservationAddition(BaseModel):
    entityName: Name = Field(description="The name of the entity to add the observations to")
    contents: list[Text] = Field(description="An array of observation contents to add")


class ObservationDeletion(BaseModel):
    entityName: Name = Field(description="The name of the entity containing the observations")
    observations: list[Text] = Field(description="An array of observations to delete")


class EntityOut(BaseModel):
    name: str
    entityType: str
    observations: list[str] | None = None
    observationCount: int | None = None


class RelationOut(BaseModel):
    from_: str = Field(alias="from")
    to: str
    relationType: str


class Graph(BaseModel):
    entities: list[EntityOut]
    relations: list[RelationOut]
    nextCursor: str | None = None


class CreatedEntities(BaseModel):
    entities: list[EntityOut]


class CreatedRelations(BaseModel):
    relations: list[RelationOut]


class AddedObservations(BaseModel):
    class Added(BaseModel):
        entityName: str
        addedObservations: list[str]

    results: list[Added]


class Done(BaseModel):
    success: bool
    message: str


def _annotations(*, read_only: bool, destructive: bool, idempotent: bool) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=False,
    )


WRITES = _annotations(read_only=False, destructive=False, idempotent=False)
DELETES = _annotations(read_only=False, destructive=True, idempotent=True)
READS = _annotations(read_only=True, destructive=False, idempotent=True)


class GraphSubscriptions:
    """Who hears about changes to `memory://knowledge-graph`, by the protocol they speak.

    Clients of protocol versions before 2026-07-28 send `resources/subscribe`; they are kept here
    with the namespace each reads. A `ServerSession` is made per request and the connection
    under it is what lasts, so that is the key (the SDK exposes it only as `_connection`); a
    notification sent without a related request goes out on the connection's own channel.
    Newer clients open a `subscriptions/listen` stream: they hear from the SDK's bus, which
    knows nothing of namespaces, so a listener learns that some namespace's graph changed
    (never what changed) and reads its own."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self._subscribers: dict[object, tuple[ServerSession, str]] = {}

    def subscribe(self, session: ServerSession, namespace: str) -> None:
        self._subscribers[_connection(session)] = (session, namespace)

    def unsubscribe(self, session: ServerSession) -> None:
        self._subscribers.pop(_connection(session), None)

    async def changed(self, namespace: str) -> None:
        """Tell the subscribers of `namespace`, and the listeners, that its graph changed."""
        for key, (session, subscribed) in list(self._subscribers.items()):
            if subscribed != namespace:
                continue
            try:
                await session.send_resource_updated(GRAPH_URI)
            except Exception:
                self._subscribers.pop(key, None)
        await self.bus.publish(ResourceUpdated(uri=GRAPH_URI))


def _connection(session: ServerSession) -> object:
    return session._connection


@attrs.frozen
class CompatTools:
    """What the compat tools need: the graph, who is calling, and who listens for changes."""

    graph: KnowledgeGraph
    access: AccessResolver
    subscriptions: GraphSubscriptions

    async def writer(
        self,
        context: Context[Any],
        session_id: str | None = None,
        source: str | None = None,
        confidence: float | None = None,
        valid_from: str | int | None = None,
        valid_to: str | int | None = None,
    ) -> WriteContext:
        access = self.access(context)
        access.require(Role.WRITE)
        async with async_errors_as_tool_errors():
            provenance = arguments.provenance(source, confidence, valid_from, valid_to)
            await self.graph.ensure_namespace(access.namespace, access.caller.principal)
        return WriteContext(access.namespace, access.caller.principal, session_id, provenance)

    async def reader(self, context: Context[Any], as_of: int | None) -> ReadContext:
        access = self.access(context)
        access.require(Role.READ)
        async with async_errors_as_tool_errors():
            await self.graph.ensure_namespace(access.namespace, access.caller.principal)
        return ReadContext(access.namespace, as_of)


def register(server: MCPServer[Any], tools: CompatTools) -> None:
    """Add the nine tools, the resource and its subscriptions to `server`."""
    _register_writes(server, tools)
    _register_deletes(server, tools)
    _register_reads(server, tools)
    _register_resource(server, tools)


def _register_writes(server: MCPServer[Any], tools: CompatTools) -> None:
    graph = tools.graph

    @server.tool(
        title="Create Entities",
        description="Create multiple new entities in the knowledge graph",
        annotations=WRITES,
    )
    async def create_entities(
        entities: list[Entity],
        context: Context[Any],
        session_id: SessionArg = None,
        source: SourceArg = None,
        confidence: ConfidenceArg = None,
        valid_from: TimeArg = None,
        valid_to: TimeArg = None,
    ) -> Annotated[CallToolResult, CreatedEntities]:
        write = await tools.writer(context, session_id, source, confidence, valid_from, valid_to)
        inputs = [EntityInput(e.name, e.entityType, tuple(e.observations)) for e in entities]
        async with async_errors_as_tool_errors():
            created = await graph.create_entities(write, inputs)
        await tools.subscriptions.changed(write.namespace)
        return result(created, {"entities": created})

    @server.tool(
        title="Create Relations",
        description=(
            "Create multiple new relations between entities in the knowledge graph. "
            "Relations should be in active voice"
        ),
        annotations=WRITES,
    )
    async def create_relations(
        relations: list[Relation],
        context: Context[Any],
        session_id: SessionArg = None,
        source: SourceArg = None,
        confidence: ConfidenceArg = None,
        valid_from: TimeArg = None,
        valid_to: TimeArg = None,
    ) -> Annotated[CallToolResult, CreatedRelations]:
        write = await tools.writer(context, session_id, source, confidence, valid_from, valid_to)
        inputs = [RelationInput(r.from_, r.to, r.relationType) for r in relations]
        async with async_errors_as_tool_errors():
            created = await graph.create_relations(write, inputs)
        await tools.subscriptions.changed(write.namespace)
        return result(created, {"relations": created})

    @server.tool(
        title="Add Observations",
        description="Add new observations to existing entities in the knowledge graph",
        annotations=WRITES,
    )
    async def add_observations(
        observations: list[ObservationAddition],
        context: Context[Any],
        session_id: SessionArg = None,
        source: SourceArg = None,
        confidence: ConfidenceArg = None,
        valid_from: TimeArg = None,
        valid_to: TimeArg = None,
    ) -> Annotated[CallToolResult, AddedObservations]:
        write = await tools.writer(context, session_id, source, confidence, valid_from, valid_to)
        inputs = [ObservationInput(o.entityName, tuple(o.contents)) for o in observations]
        async with async_errors_as_tool_errors():
            added = await graph.add_observations(write, inputs)
        await tools.subscriptions.changed(write.namespace)
        return result(added, {"results": added})


def _register_deletes(server: MCPServer[Any], tools: CompatTools) -> None:
    graph = tools.graph

    async def done(namespace: str, message: str) -> CallToolResult:
        await tools.subscriptions.changed(namespace)
        return result(message, {"success": True, "message": message})

    @server.tool(
        title="Delete Entities",
        description=(
            "Delete multiple entities and their associated relations from the knowledge graph"
        ),
        annotations=DELETES,
    )
    async def delete_entities(
        entityNames: Annotated[list[Name], Field(description="An array of entity names to delete")],
        context: Context[Any],
        session_id: SessionArg = None,
    ) -> Annotated[CallToolResult, Done]:
        write = await tools.writer(context, session_id)
        async with async_errors_as_tool_errors():
            await graph.delete_entities(write, entityNames)
        return await done(write.namespace, "Entities deleted successfully")

    @server.tool(
        title="Delete Observations",
        description="Delete specific observations from entities in the knowledge graph",
        annotations=DELETES,
    )
    async def delete_observations(
        deletions: list[ObservationDeletion],
        context: Context[Any],
        session_id: SessionArg = None,
    ) -> Annotated[CallToolResult, Done]:
        write = await tools.writer(context, session_id)
        inputs = [ObservationInput(d.entityName, tuple(d.observations)) for d in deletions]
        async with async_errors_as_tool_errors():
            await graph.delete_observations(write, inputs)
        return await done(write.namespace, "Observations deleted successfully")

    @server.tool(
        title="Delete Relations",
        description="Delete multiple relations from the knowledge graph",
        annotations=DELETES,
    )
    async def delete_relations(
        relations: Annotated[list[Relation], Field(description="An array of relations to delete")],
        context: Context[Any],
        session_id: SessionArg = None,
    ) -> Annotated[CallToolResult, Done]:
        write = await tools.writer(context, session_id)
        inputs = [RelationInput(r.from_, r.to, r.relationType) for r in relations]
        async with async_errors_as_tool_errors():
            await graph.delete_relations(write, inputs)
        return await done(write.namespace, "Relations deleted successfully")


Detail = Literal["full", "summary", "names"]


def _register_reads(server: MCPServer[Any], tools: CompatTools) -> None:
    graph = tools.graph

    @server.tool(
        title="Read Graph",
        description=(
            "Read the entire knowledge graph. For a large memory pass `limit` (entities per "
            "page) and then each answer's `nextCursor` as `cursor`; `detail` = summary "
            "(observation counts) or names keeps answers short"
        ),
        annotations=READS,
    )
    async def read_graph(
        context: Context[Any],
        detail: Annotated[Detail, Field(description="full (default), summary or names")] = "full",
        limit: Annotated[
            int | None,
            Field(
                description="Entities per page (default: all)", ge=1, le=constants.list_limit_max
            ),
        ] = None,
        cursor: Annotated[
            str | None, Field(description="nextCursor of the previous page", max_length=32)
        ] = None,
        as_of: AsOfArg = None,
    ) -> Annotated[CallToolResult, Graph]:
        read = await tools.reader(context, as_of)
        async with async_errors_as_tool_errors():
            page = await graph.read_graph(read, detail=detail, limit=limit, cursor=cursor)
        return result(page, page)

    @server.tool(
        title="Search Nodes",
        description="Search for nodes in the knowledge graph based on a query",
        annotations=READS,
    )
    async def search_nodes(
        query: Annotated[
            Text,
            Field(
                description=(
                    "The search query to match against entity names, types, and observation content"
                )
            ),
        ],
        context: Context[Any],
        as_of: AsOfArg = None,
    ) -> Annotated[CallToolResult, Graph]:
        read = await tools.reader(context, as_of)
        async with async_errors_as_tool_errors():
            found = await graph.search_nodes(read, query)
        return result(found, found)

    @server.tool(
        title="Open Nodes",
        description="Open specific nodes in the knowledge graph by their names",
        annotations=READS,
    )
    async def open_nodes(
        names: Annotated[list[Name], Field(description="An array of entity names to retrieve")],
        context: Context[Any],
        as_of: AsOfArg = None,
    ) -> Annotated[CallToolResult, Graph]:
        read = await tools.reader(context, as_of)
        async with async_errors_as_tool_errors():
            found = await graph.open_nodes(read, names)
        return result(found, found)


def _register_resource(server: MCPServer[Any], tools: CompatTools) -> None:
    """`memory://knowledge-graph`: listed like any resource, but read by a handler of its own,
    because the graph depends on the caller's namespace and the SDK passes no context to a
    static resource."""

    @server.resource(
        GRAPH_URI,
        name="knowledge-graph",
        title="Knowledge Graph",
        description="The full knowledge graph with all entities and relations",
        mime_type="application/json",
    )
    def knowledge_graph() -> str:
        raise AssertionError("memory://knowledge-graph is read by read_resource below")

    sdk_read = server._lowlevel_server.get_request_handler("resources/read")
    assert sdk_read is not None

    async def read_resource(context: Any, params: ReadResourceRequestParams) -> Any:
        if str(params.uri) != GRAPH_URI:
            return await sdk_read.handler(context, params)
        read = await tools.reader(Context(request_context=context), None)
        async with async_errors_as_tool_errors():
            graph = await tools.graph.read_graph(read)
        contents = TextResourceContents(
            uri=GRAPH_URI, mime_type="application/json", text=arguments.json_text(graph)
        )
        return ReadResourceResult(contents=[contents])

    async def subscribe(context: Any, params: SubscribeRequestParams) -> EmptyResult:
        access: McpAccess = tools.access(Context(request_context=context))
        access.require(Role.READ)
        if str(params.uri) == GRAPH_URI:
            tools.subscriptions.subscribe(context.session, access.namespace)
        return EmptyResult()

    async def unsubscribe(context: Any, params: UnsubscribeRequestParams) -> EmptyResult:
        tools.subscriptions.unsubscribe(context.session)
        return EmptyResult()

    lowlevel = server._lowlevel_server  # MCPServer has no public hook for these three.
    lowlevel.add_request_handler("resources/read", ReadResourceRequestParams, read_resource)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
