"""The extended profile: the tools the reference memory server does not have.

Each tool is a thin shell over `memora.service.extended_memory`: it checks the caller's role,
converts arguments, and returns JSON text plus structured content. What the tools do, and how
their records sit in the data model, is documented there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult
from pydantic import Field

from memora.api.mcp.arguments import (
    AsOfArg,
    ConfidenceArg,
    SessionArg,
    SourceArg,
    TimeArg,
    async_errors_as_tool_errors,
    result,
)
from memora.api.mcp.compat_tools import DELETES, READS, WRITES, CompatTools, Name, Text
from memora.core import constants
from memora.service.extended_memory import ExtendedMemory

Limit = Annotated[int, Field(ge=1, le=constants.top_k_max)]


def register(server: MCPServer[Any], tools: CompatTools, memory: ExtendedMemory) -> None:
    _register_recall(server, tools, memory)
    _register_writes(server, tools, memory)
    _register_history(server, tools, memory)
    _register_sessions(server, tools, memory)


def _register_recall(server: MCPServer[Any], tools: CompatTools, memory: ExtendedMemory) -> None:
    @server.tool(
        title="Search Memory",
        description=(
            "Recall by meaning: rank entities by a mix of vector similarity (of the entity and "
            "its observations), BM25 keyword match, graph proximity and recency. Each hit has "
            "its score parts, confidence, validity and a provenance id"
        ),
        annotations=READS,
    )
    async def memory_search(
        query: Annotated[Text, Field(description="A question or description, in any words")],
        context: Context[Any],
        limit: Limit = 10,
        near: Annotated[
            list[Name] | None,
            Field(description="Entities to rank proximity from (default: the best hits)"),
        ] = None,
        weights: Annotated[
            dict[str, float] | None,
            Field(description="Override the weights of vector, keyword, graph, recency"),
        ] = None,
        include_archived: bool = False,
    ) -> CallToolResult:
        read = await tools.reader(context, None)
        async with async_errors_as_tool_errors():
            hits = await memory.search(
                read,
                query,
                limit=limit,
                near=near or (),
                weights=weights,
                include_archived=include_archived,
            )
        return result({"results": hits}, {"results": hits})

    @server.tool(
        title="Neighbors",
        description="The entities within `depth` relations of an entity, nearest first",
        annotations=READS,
    )
    async def memory_neighbors(
        name: Name,
        context: Context[Any],
        depth: Annotated[int, Field(ge=1, le=constants.depth_max)] = 1,
        relation_types: list[str] | None = None,
        direction: Literal["in", "out", "both"] = "both",
        limit: Annotated[int, Field(ge=1, le=constants.list_limit_max)] = 100,
        as_of: AsOfArg = None,
    ) -> CallToolResult:
        read = await tools.reader(context, as_of)
        async with async_errors_as_tool_errors():
            found = await memory.neighbors(
                read,
                name,
                depth=depth,
                relation_types=relation_types,
                direction=direction,
                limit=limit,
            )
        return result(found, found)


def _register_writes(server: MCPServer[Any], tools: CompatTools, memory: ExtendedMemory) -> None:
    @server.tool(
        title="Remember an Episode",
        description=(
            "Store a raw episode (what the user said, a document excerpt) as it is, linked to "
            "the entities it is about. Returns an episode_id: pass source='<episode_id>' when "
            "you write the facts you take from it, and memory_provenance will lead back here"
        ),
        annotations=WRITES,
    )
    async def memory_remember(
        content: Annotated[Text, Field(min_length=1)],
        context: Context[Any],
        about: list[Name] | None = None,
        session_id: SessionArg = None,
        source: SourceArg = None,
        confidence: ConfidenceArg = None,
        valid_from: TimeArg = None,
        valid_to: TimeArg = None,
    ) -> CallToolResult:
        write = await tools.writer(context, session_id, source, confidence, valid_from, valid_to)
        async with async_errors_as_tool_errors():
            stored = await memory.remember(write, content, about or ())
        await tools.subscriptions.changed(write.namespace)
        return result(stored, stored)

    @server.tool(
        title="Supersede a Fact",
        description=(
            "Replace an entity's observation with a new one without losing the old: the old "
            "one is closed (kept in memory_history and as_of reads), the new one names it"
        ),
        annotations=WRITES,
    )
    async def memory_supersede(
        entityName: Name,
        old_observation: Text,
        new_observation: Annotated[Text, Field(min_length=1)],
        context: Context[Any],
        session_id: SessionArg = None,
        confidence: ConfidenceArg = None,
        valid_from: TimeArg = None,
    ) -> CallToolResult:
        write = await tools.writer(
            context, session_id, confidence=confidence, valid_from=valid_from
        )
        async with async_errors_as_tool_errors():
            changed = await memory.supersede(write, entityName, old_observation, new_observation)
        await tools.subscriptions.changed(write.namespace)
        return result(changed, changed)

    @server.tool(
        title="Forget",
        description=(
            "Forget entities: mode 'archive' (default) keeps them but leaves them out of "
            "memory_search; 'tombstone' deletes them with their observations and relations. "
            "History keeps every version either way; purging it is left to people"
        ),
        annotations=DELETES,
    )
    async def memory_forget(
        entityNames: list[Name],
        context: Context[Any],
        mode: Literal["archive", "tombstone"] = "archive",
        reason: Annotated[str | None, Field(max_length=constants.source_bytes_max)] = None,
        session_id: SessionArg = None,
    ) -> CallToolResult:
        write = await tools.writer(context, session_id)
        async with async_errors_as_tool_errors():
            forgotten = await memory.forget(write, entityNames, mode, reason)
        await tools.subscriptions.changed(write.namespace)
        return result(forgotten, forgotten)


def _register_history(server: MCPServer[Any], tools: CompatTools, memory: ExtendedMemory) -> None:
    @server.tool(
        title="History",
        description=(
            "Every version of an entity, its observations and its relations: what changed, "
            "when (commit index and time), by whom, in which session, from which source"
        ),
        annotations=READS,
    )
    async def memory_history(
        name: Name,
        context: Context[Any],
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
        as_of: AsOfArg = None,
    ) -> CallToolResult:
        read = await tools.reader(context, as_of)
        async with async_errors_as_tool_errors():
            history = await memory.history(read, name, limit)
        return result(history, history)

    @server.tool(
        title="Provenance",
        description=(
            "Where a fact came from: a provenance id (from memory_search or memory_history, "
            "e.g. o12v1) or an entity name; follows source='episode:N' to the episode"
        ),
        annotations=READS,
    )
    async def memory_provenance(
        id: Annotated[str, Field(min_length=1, max_length=constants.name_bytes_max)],
        context: Context[Any],
        as_of: AsOfArg = None,
    ) -> CallToolResult:
        read = await tools.reader(context, as_of)
        async with async_errors_as_tool_errors():
            found = await memory.provenance(read, id)
        return result(found, found)

    @server.tool(
        title="Memory Status",
        description="What the memory holds, the embedder it uses, and the node serving it",
        annotations=READS,
    )
    async def memory_status(context: Context[Any]) -> CallToolResult:
        read = await tools.reader(context, None)
        async with async_errors_as_tool_errors():
            status = await memory.status(read)
        return result(status, status)


def _register_sessions(server: MCPServer[Any], tools: CompatTools, memory: ExtendedMemory) -> None:
    @server.tool(
        title="Start a Session",
        description=(
            "Start a session (a conversation or task) and get its session_id; pass it as "
            "session_id to the writes made in it"
        ),
        annotations=WRITES,
    )
    async def session_start(
        context: Context[Any],
        title: Annotated[str | None, Field(max_length=constants.source_bytes_max)] = None,
    ) -> CallToolResult:
        write = await tools.writer(context)
        async with async_errors_as_tool_errors():
            started = await memory.session_start(write, title)
        return result(started, started)

    @server.tool(
        title="End a Session",
        description="End a session, with an optional summary",
        annotations=WRITES,
    )
    async def session_end(
        session_id: Annotated[str, Field(min_length=1, max_length=constants.session_bytes_max)],
        context: Context[Any],
        summary: Annotated[str | None, Field(max_length=constants.text_bytes_max)] = None,
    ) -> CallToolResult:
        write = await tools.writer(context, session_id)
        async with async_errors_as_tool_errors():
            ended = await memory.session_end(write, session_id, summary)
        return result(ended, ended)

    @server.tool(
        title="List Sessions",
        description="Sessions, newest first",
        annotations=READS,
    )
    async def sessions_list(
        context: Context[Any],
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
        active_only: bool = False,
    ) -> CallToolResult:
        read = await tools.reader(context, None)
        async with async_errors_as_tool_errors():
            sessions = await memory.sessions(read, limit, active_only)
        return result({"sessions": sessions}, {"sessions": sessions})
