"""`memora serve` holds 1,000 concurrent keep-alive connections, as the seed design claims.

A real server process on 127.0.0.1 and a free port, started with a soft limit on open files too
low for 1,000 connections (it raises its own at start-up), and a few nodes loaded by batch. One
trio client then opens 1,000 connections and keeps every one open to the end. Each connection
runs a closed loop, sending its next request as soon as the last one is answered, on the same
connection each time (the test checks that none was reopened), and every answer is checked:

1. as soon as it is open: `GET /api/v1/health`;
2. every fourth connection inserts a node (`POST /api/v1/nodes`); the others read a loaded node;
3. a writer reads its node back; the others read another loaded node;
4. then reads of loaded nodes, until every connection has done steps 1 to 3.

When the last connection has had its first answer, the server has accepted all of them, none is
done yet, and its open sockets are counted (from /proc). A connection the server closed would
fail its next request: the client never reconnects. No connection idles between its requests,
so the server's keep-alive timeout never applies however slow the machine; the whole test,
start-up included, is bounded by `load_test_timeout_s`.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from memora.bench.http import (
    LOOPBACK_HOST,
    HttpConnection,
    Request,
    Response,
    ServerProcess,
    json_request,
)

connections_count = 1_000
writer_every = 4  # Connection i inserts a node if i % writer_every == 0.
loaded_nodes = 100  # Loaded by one batch before the connections open.
load_test_timeout_s = 60.0
request_timeout_s = 30.0
# The server starts with this soft limit on open files: too low for `connections_count`.
server_open_files_soft_limit = 256
# The test process's own descriptors beyond one per connection (pytest, the server's pipe).
client_descriptors_spare = 100
loaded_label = "Loaded"
written_label = "LoadTest"


@pytest.fixture
def open_files_limit() -> Iterator[None]:
    """Raise this process's soft limit on open files to its hard one for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections_count + client_descriptors_spare
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit on open files ({hard}) is below the {needed} needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    started = ServerProcess(
        str(tmp_path / "data"), open_files_soft_limit=server_open_files_soft_limit
    )
    try:
        yield started
    finally:
        started.kill()


def decoded(response: Response, status: int) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body[:300])
    value = json.loads(response.body)
    assert isinstance(value, dict), value
    return value


def written_id(position: int) -> int:
    return 1_000_000 + position


class LoadClient:
    """`connections_count` keep-alive connections to one server, each in a closed loop."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.connections: list[HttpConnection] = []
        self.answered_once = 0
        self.done_with_steps = 0
        self.all_done = trio.Event()
        self.sockets_when_all_open: int | None = None
        self.requests = 0

    async def load_nodes(self) -> None:
        commands = [
            {"op": "insert_node", "id": node_id, "label": loaded_label}
            for node_id in range(1, loaded_nodes + 1)
        ]
        connection = await HttpConnection.open(LOOPBACK_HOST, self.server.port)
        try:
            request = json_request("POST", "/api/v1/batch", {"commands": commands})
            decoded(await self.send(connection, request), 200)
        finally:
            await connection.aclose()

    async def send(self, connection: HttpConnection, request: Request) -> Response:
        with trio.fail_after(request_timeout_s):
            response = await connection.send(request)
        self.requests += 1
        return response

    async def run_connection(self, position: int) -> None:
        with trio.fail_after(request_timeout_s):
            connection = await HttpConnection.open(LOOPBACK_HOST, self.server.port)
        self.connections.append(connection)
        health = decoded(await self.send(connection, Request("GET", "/api/v1/health")), 200)
        assert health["role"] == "leader", health
        self.answered_once += 1
        if self.answered_once == connections_count:
            self.sockets_when_all_open = self.server.open_sockets()
        if position % writer_every == 0:
            await self.insert_and_read_back(connection, position)
        else:
            await self.read_loaded(connection, position)
            await self.read_loaded(connection, position + 1)
        self.done_with_steps += 1
        if self.done_with_steps == connections_count:
            self.all_done.set()
        while not self.all_done.is_set():
            await self.read_loaded(connection, position)

    async def insert_and_read_back(self, connection: HttpConnection, position: int) -> None:
        node_id = written_id(position)
        body = {"id": node_id, "label": written_label, "name": f"connection {position}"}
        created = decoded(
            await self.send(connection, json_request("POST", "/api/v1/nodes", body)), 201
        )
        assert created["node"]["id"] == node_id and created["commit_index"] > 0, created
        found = decoded(
            await self.send(connection, Request("GET", f"/api/v1/nodes/{node_id}")), 200
        )
        assert found["node"] == created["node"], (found, created)

    async def read_loaded(self, connection: HttpConnection, position: int) -> None:
        node_id = position % loaded_nodes + 1
        found = decoded(
            await self.send(connection, Request("GET", f"/api/v1/nodes/{node_id}")), 200
        )
        assert (found["node"]["id"], found["node"]["label"]) == (node_id, loaded_label), found

    async def run(self) -> None:
        with trio.fail_after(load_test_timeout_s):
            await self.load_nodes()
            try:
                async with trio.open_nursery() as nursery:
                    for position in range(connections_count):
                        nursery.start_soon(self.run_connection, position)
            finally:
                for connection in self.connections:
                    await connection.aclose()


def test_server_holds_1000_concurrent_keep_alive_connections(
    open_files_limit: None, server: ServerProcess
) -> None:
    client = LoadClient(server)
    started = time.monotonic()
    try:
        trio.run(client.run)
    except BaseException:
        print(f"{client.requests} requests answered; the server said:\n{server.output()}")
        raise
    print(
        f"{client.requests} requests on {connections_count} connections in "
        f"{time.monotonic() - started:.1f} s"
    )
    assert len(client.connections) == connections_count
    assert sum(connection.reconnections for connection in client.connections) == 0
    # The listener and every connection: the server held them all at once.
    sockets = client.sockets_when_all_open
    assert sockets is None or sockets >= connections_count + 1, sockets
    server_limit = server.open_files_soft_limit()
    assert server_limit is None or server_limit > server_open_files_soft_limit, server_limit
    assert server.stop() == 0, server.output()
