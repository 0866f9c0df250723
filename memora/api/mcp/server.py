"""One `MCPServer` with Memora's tools, for stdio and streamable HTTP alike."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from memora.api.mcp import compat_tools, extended_tools
from memora.api.mcp.access import AccessResolver, McpAccess
from memora.api.mcp.compat_tools import CompatTools, GraphSubscriptions
from memora.service.extended_memory import ExtendedMemory
from memora.service.knowledge_graph import KnowledgeGraph

PROFILES = ("extended", "compat")

INSTRUCTIONS = """\
Memora is your long-term memory: a knowledge graph of entities (people, projects, preferences,
decisions...), the relations between them, and observations (facts) about each. It keeps the
history of every change. Store what is worth remembering with create_entities, add_observations
and create_relations; look things up with search_nodes and open_nodes, or by meaning with
memory_search when it is offered.
"""


def build_server(
    graph: KnowledgeGraph, default_access: McpAccess | None, profile: str = "extended"
) -> MCPServer[Any]:
    """The MCP server over `graph`. `default_access` is the caller of a transport that carries
    none (stdio); over HTTP every request brings its own (`memora.api.mcp.http`).

    Profiles: "extended" (the default) serves the reference server's nine tools and Memora's own;
    "compat" serves exactly the nine, for a client that must see the reference surface alone."""
    assert profile in PROFILES, profile
    subscriptions = GraphSubscriptions()
    server: MCPServer[Any] = MCPServer(
        "memora",
        title="Memora",
        instructions=INSTRUCTIONS,
        version=_version(),
        log_level="WARNING",  # The SDK logs every session at INFO; the server says what matters.
        subscriptions=subscriptions.bus,
    )
    tools = CompatTools(graph, AccessResolver(default_access), subscriptions)
    compat_tools.register(server, tools)
    if profile == "extended":
        extended_tools.register(server, tools, ExtendedMemory(graph))
    return server


def _version() -> str:
    from importlib.metadata import version

    return version("memora")
