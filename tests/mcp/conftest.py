"""Fixtures of the MCP tests: a real `NodeDriver` on a temporary directory, run in the test's
nursery, and the MCP server over it, reached in-process by the SDK's own client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import Client

from memora.api.auth import OPEN_ACCESS_PRINCIPAL, Caller
from memora.api.mcp.access import McpAccess
from memora.api.mcp.server import build_server
from memora.net.driver import NodeDriver
from memora.service.embedding import Embedder, HashingEmbedder
from memora.service.knowledge_graph import KnowledgeGraph

TEST_TIMEOUT_S = 60.0
NAMESPACE = "memory"

ClientFactory = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture
async def node(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[NodeDriver]:
    driver = NodeDriver.open(str(tmp_path / "data"))
    await nursery.start(driver.run)
    with trio.fail_after(TEST_TIMEOUT_S):
        yield driver
    driver.stop()


@pytest.fixture
def connect(node: NodeDriver) -> ClientFactory:
    """`async with connect(profile=..., embedder=...) as client:` an in-process MCP client."""

    def factory(
        profile: str = "extended", embedder: Embedder | None = None, **client_options: Any
    ) -> AbstractAsyncContextManager[Client]:
        graph = KnowledgeGraph(node, embedder or HashingEmbedder(64))
        access = McpAccess(Caller(OPEN_ACCESS_PRINCIPAL, None), NAMESPACE)
        return Client(build_server(graph, access, profile), **client_options)

    return factory
