"""Memora's MCP servers started as a user starts them, and the MCP SDK's clients of them.

What lives here: `McpServeProcess`, a `memora serve` child process (tests/api/memora_process.py)
with its MCP port read back from the start-up lines; the command lines of `memora mcp`, embedded
on a data directory or relaying to a server; and SDK clients over stdio and streamable HTTP,
with or without a bearer token. Every server listens on 127.0.0.1 on a port the OS picks, and
uses the hashing embedder (no model to load). Every wait is bounded; nothing here needs pytest.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from memora_process import REPOSITORY, MemoraProcess, start_timeout_s

EMBEDDER: Final = "hashing"
COMPAT_TOOLS: Final = (
    "create_entities",
    "create_relations",
    "add_observations",
    "delete_entities",
    "delete_observations",
    "delete_relations",
    "read_graph",
    "search_nodes",
    "open_nodes",
)
EXTENDED_TOOLS: Final = (
    "memory_search",
    "memory_neighbors",
    "memory_remember",
    "memory_supersede",
    "memory_forget",
    "memory_history",
    "memory_provenance",
    "memory_status",
    "session_start",
    "session_end",
    "sessions_list",
)
GRAPH_URI: Final = "memory://knowledge-graph"
http_connect_timeout_s: Final = 10.0
http_read_timeout_s: Final = 60.0
_MCP_LISTENING: Final = re.compile(r"MCP \(streamable HTTP\) on (http://127\.0\.0\.1:(\d+)/mcp)")
_READY: Final = "ready; "


def mcp_arguments(data_dir: Path, *flags: str) -> list[str]:
    """The arguments of an embedded `memora mcp` on `data_dir`, after `python`."""
    return ["-m", "memora", "mcp", "--data-dir", str(data_dir), "--embedder", EMBEDDER, *flags]


def relay_arguments(url: str, token: str | None = None) -> list[str]:
    """The arguments of `memora mcp --server URL [--token T]`, after `python`."""
    return ["-m", "memora", "mcp", "--server", url, *(["--token", token] if token else [])]


def stdio_parameters(arguments: Sequence[str]) -> StdioServerParameters:
    """A `python ARGUMENTS` child speaking MCP on stdio, run from the repository."""
    return StdioServerParameters(
        command=sys.executable,
        args=list(arguments),
        cwd=REPOSITORY,
        env={"PYTHONPATH": str(REPOSITORY)},
    )


def stdio_client_of(arguments: Sequence[str], **options: Any) -> Client:
    """An SDK client that starts `python ARGUMENTS`. The child's stderr is this process's (which
    pytest captures, and shows for a failed test)."""
    transport = stdio_client(stdio_parameters(arguments), errlog=sys.stderr)
    return Client(transport, cache=None, **options)


@asynccontextmanager
async def http_client_of(
    url: str, token: str | None = None, **options: Any
) -> AsyncIterator[Client]:
    """An SDK client over streamable HTTP, sending `token` as the bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx2.Timeout(http_connect_timeout_s, read=http_read_timeout_s)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(url, http_client=http), cache=None, **options) as client,
    ):
        yield client


class McpServeProcess(MemoraProcess):
    """`memora serve` with MCP over streamable HTTP on a free port, the hashing embedder, and
    `tokens` (`MEMORA_TOKENS` syntax) if given: the API is open without them."""

    def __init__(self, data_dir: Path, tokens: str | None = None, flags: Sequence[str] = ()):
        environment = {"MEMORA_TOKENS": tokens} if tokens else None
        mcp_flags = ["--mcp-port", "0", "--embedder", EMBEDDER, *flags]
        super().__init__(data_dir, environment, mcp_flags)
        try:
            self.mcp_url, self.mcp_port = self._wait_for_mcp()
        except BaseException:
            self.kill()
            raise

    def _wait_for_mcp(self) -> tuple[str, int]:
        """The MCP endpoint's URL and port, once the server has said it is ready."""
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            lines = list(self.lines)
            found = [match for line in lines if (match := _MCP_LISTENING.search(line))]
            if found and any(_READY in line for line in lines):
                return found[0].group(1), int(found[0].group(2))
            time.sleep(0.02)
        raise RuntimeError(f"memora serve did not announce its MCP endpoint:\n{self.output()}")
