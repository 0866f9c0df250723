"""`memora mcp`: MCP over stdio, for desktop LLM clients.

Two ways to run:
- embedded (the default): this process opens the node on `--data-dir` (default
  ./memora_data, the same as `memora serve`) and serves the MCP tools on stdin/stdout. The
  data directory is locked: while `memora serve` has it open, use `--server` instead.
- `--server URL`: a relay to the streamable HTTP MCP endpoint of a running `memora serve`
  (e.g. http://127.0.0.1:9090/mcp, any member of a cluster): every message goes over HTTP as it
  is, so the tools, sessions and subscriptions are the server's. `--token` (or MEMORA_TOKEN)
  is sent as the bearer token.

stdout carries the protocol alone: what the process has to say goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from typing import Any, TextIO

import httpx2
import trio
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from memora.api.auth import OPEN_ACCESS_PRINCIPAL, Caller
from memora.api.mcp.access import McpAccess
from memora.api.mcp.server import PROFILES, build_server
from memora.core import validate
from memora.core.errors import MemoraError
from memora.net.driver import NodeDriver
from memora.net.raft_storage import RaftStorageError
from memora.service.embedding import DEFAULT_EMBEDDER_SPEC, Embedder, embedder_from_spec
from memora.service.knowledge_graph import DEFAULT_MCP_NAMESPACE, KnowledgeGraph

EXIT_FAILURE = 1
_PREFIX = "memora mcp:"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", default="memora_data", help="the node's data directory (default memora_data)"
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_MCP_NAMESPACE,
        help=f"namespace that holds the memory (default {DEFAULT_MCP_NAMESPACE})",
    )
    parser.add_argument(
        "--embedder",
        default=DEFAULT_EMBEDDER_SPEC,
        help="minilm (default: a sentence model, offline), hashing[:DIM] (fast, lexical), or "
        "openai:BASE_URL (MEMORA_EMBEDDING_MODEL, MEMORA_EMBEDDING_API_KEY)",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="extended",
        help="extended (default): the reference memory server's nine tools and Memora's own; "
        "compat: exactly the nine",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="relay to the MCP endpoint of a running server instead of opening --data-dir",
    )
    parser.add_argument("--token", help="bearer token for --server (default: MEMORA_TOKEN)")


def main(arguments: argparse.Namespace, environ: Mapping[str, str], err: TextIO) -> int:
    logging.basicConfig(stream=err, level=logging.WARNING)
    if arguments.server:
        token = arguments.token or environ.get("MEMORA_TOKEN")
        return _relay(arguments.server, token, err)
    try:
        namespace = validate.namespace_name(arguments.namespace)
        embedder = embedder_from_spec(arguments.embedder)
    except MemoraError as error:
        _say(err, f"{error.field or 'argument'}: {error.message}")
        return 2
    return _embedded(arguments.data_dir, namespace, embedder, arguments.profile, err)


def _embedded(data_dir: str, namespace: str, embedder: Embedder, profile: str, err: TextIO) -> int:
    try:
        node = NodeDriver.open(data_dir)
    except (OSError, ValueError, RaftStorageError, MemoraError) as error:
        _say(err, f"cannot open the data directory {data_dir}: {error}")
        if "in use" in str(error):
            _say(err, "a running `memora serve` holds it: use --server http://HOST:9090/mcp")
        return EXIT_FAILURE
    _say(
        err,
        f"data directory {os.path.abspath(data_dir)}, namespace {namespace!r}, "
        f"embedder {embedder.name}; serving MCP on stdio",
    )
    trio.run(_serve_stdio, node, namespace, embedder, profile)
    return 0


async def _serve_stdio(node: NodeDriver, namespace: str, embedder: Embedder, profile: str) -> None:
    graph = KnowledgeGraph(node, embedder)
    access = McpAccess(Caller(OPEN_ACCESS_PRINCIPAL, None), namespace)
    server = build_server(graph, access, profile)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        nursery.start_soon(_warm_up, embedder)
        await server.run_stdio_async()
        node.stop()  # stdin closed: drain, fsync, close.


async def _warm_up(embedder: Embedder) -> None:
    """Load the model now rather than on the first call that needs it."""
    await trio.to_thread.run_sync(embedder.embed_many, ["warm up"])


def _relay(url: str, token: str | None, err: TextIO) -> int:
    refusal = _preflight(url, token)
    if refusal is not None:
        _say(err, f"cannot relay to {url}: {refusal}")
        return EXIT_FAILURE
    _say(err, f"relaying MCP on stdio to {url}")
    failure: BaseException | None = None
    try:
        trio.run(_relay_messages, url, token)
    except* (httpx2.HTTPError, OSError) as group:
        failure = group.exceptions[0]
    if failure is not None:
        _say(err, f"the relay to {url} failed: {failure}")
        return EXIT_FAILURE
    return 0


def _preflight(url: str, token: str | None) -> str | None:
    """Why the server refuses this relay (unreachable, bad token, not an MCP endpoint), or None.

    Checked once before serving: once the relay runs, the SDK reports an HTTP refusal to the
    client only as "Server returned an error response"."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers["Accept"] = "application/json, text/event-stream"
    try:
        response = httpx2.post(url, json={}, headers=headers, timeout=10.0)
    except httpx2.HTTPError as error:
        return f"the server is unreachable ({error})"
    if response.status_code in (401, 403):
        try:
            return str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            return f"the server answered HTTP {response.status_code}"
    if response.status_code == 404:
        return "no MCP endpoint there (HTTP 404); the path is /mcp on the MCP port"
    return None


async def _relay_messages(url: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as client,
        streamable_http_client(url, http_client=client) as (remote_read, remote_write),
        stdio_server() as (local_read, local_write),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_pump, local_read, remote_write, nursery.cancel_scope)
        nursery.start_soon(_pump, remote_read, local_write, nursery.cancel_scope)


async def _pump(source: Any, sink: Any, done: trio.CancelScope) -> None:
    """Forward messages until `source` ends, then stop the relay."""
    async with sink:
        async for message in source:
            if isinstance(message, SessionMessage):
                await sink.send(message)
            else:
                logging.getLogger(__name__).warning("dropped a bad message: %s", message)
    done.cancel()


def _say(err: TextIO, line: str) -> None:
    print(f"{_PREFIX} {line}", file=err, flush=True)
