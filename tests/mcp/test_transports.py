"""Memora's MCP server on every transport, driven by the MCP SDK's client as an LLM host drives it.

What is checked here, end to end with real processes on 127.0.0.1:
- stdio (`memora mcp`): the tools of each profile, a write and read back, the memory surviving a
  restart, and a second process on a held data directory refused with a clear message;
- streamable HTTP (`memora serve`): the same round trip, bearer tokens (401 without or with a
  wrong one, 403 for a namespace the token does not grant, a read token refused the write
  tools), tenants that never see each other, and DNS-rebinding protection on the Host header;
- the relay (`memora mcp --server URL --token T`): the server's tools on stdio, writes landing on
  the server;
- two clients writing the same memory at once, over HTTP and through two relays: nothing lost,
  nothing duplicated (the reference memory server's corruption bug);
- the `memory://knowledge-graph` resource: listed, readable, and its subscribers told of changes.

One `memora serve` with tokens serves the module; each test works in a namespace of its own.
Every test is bounded by `trio.fail_after`, and every process it starts is stopped before it ends
(the SDK's stdio client closes stdin and reaps its child; the server is stopped by SIGTERM and
must exit 0). The helpers that start processes live in `mcp_processes.py`.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_processes import (
    COMPAT_TOOLS,
    EXTENDED_TOOLS,
    GRAPH_URI,
    REPOSITORY,
    McpServeProcess,
    http_client_of,
    mcp_arguments,
    relay_arguments,
    stdio_client_of,
)
from mcp_types import (
    CallToolResult,
    ResourceUpdatedNotification,
    TextContent,
    TextResourceContents,
)

TEST_TIMEOUT_S: Final = 120.0
REFUSAL_TIMEOUT_S: Final = 60.0
HTTP_TIMEOUT_S: Final = 10.0
NOTIFICATION_TIMEOUT_S: Final = 5.0
WRITER_ENTITIES: Final = 40  # Entities each concurrent writer creates, one call each.

WRITER_TOKEN: Final = "writer-token-0123456789"
READER_TOKEN: Final = "reader-token-0123456789"
TENANT_A_TOKEN: Final = "tenant-a-token-0123456789"
TENANT_B_TOKEN: Final = "tenant-b-token-0123456789"
TOKENS: Final = ";".join(
    (
        f"writer:write:*:{WRITER_TOKEN}",
        f"reader:read:memory,read-only:{READER_TOKEN}",
        f"tenant-a:write:a:{TENANT_A_TOKEN}",
        f"tenant-b:write:b:{TENANT_B_TOKEN}",
    )
)
INITIALIZE: Final = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test_transports", "version": "1"},
    },
}
MCP_HEADERS: Final = {"Accept": "application/json, text/event-stream"}
WRITE_CALLS: Final = (
    (
        "create_entities",
        {"entities": [{"name": "Eve", "entityType": "person", "observations": []}]},
    ),
    ("create_relations", {"relations": [{"from": "Ada", "to": "Ada", "relationType": "is"}]}),
    ("add_observations", {"observations": [{"entityName": "Ada", "contents": ["new"]}]}),
    ("delete_entities", {"entityNames": ["Ada"]}),
    ("delete_observations", {"deletions": [{"entityName": "Ada", "observations": ["old"]}]}),
    ("delete_relations", {"relations": [{"from": "Ada", "to": "Ada", "relationType": "is"}]}),
)


# -- Helpers ---------------------------------------------------------------------------------------


def text_of(result: CallToolResult) -> str:
    """The one text content of a tool result, as every Memora tool answers."""
    assert len(result.content) == 1, result.content
    content = result.content[0]
    assert isinstance(content, TextContent), content
    return content.text


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The structured content of a tool call that must succeed."""
    result = await client.call_tool(tool, arguments)
    text = text_of(result)
    assert not result.is_error, f"{tool}({arguments}) failed: {text}"
    assert result.structured_content is not None, tool
    return result.structured_content


async def error_text(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """The text of a tool call that must fail with a tool error (`isError: true`)."""
    result = await client.call_tool(tool, arguments)
    text = text_of(result)
    assert result.is_error, f"{tool}({arguments}) should have failed, answered {text}"
    return text


async def tool_names(client: Client) -> list[str]:
    listing = await client.list_tools()
    assert listing.next_cursor is None
    return [tool.name for tool in listing.tools]


def entity(name: str, entity_type: str, *observations: str) -> dict[str, Any]:
    return {"name": name, "entityType": entity_type, "observations": list(observations)}


def relation(source: str, target: str, relation_type: str) -> dict[str, str]:
    return {"from": source, "to": target, "relationType": relation_type}


async def round_trip(client: Client) -> None:
    """Write two entities, a relation and an observation, then read them back three ways."""
    ada = entity("Ada Lovelace", "person", "wrote the first program")
    engine = entity("Analytical Engine", "machine")
    created = await call(client, "create_entities", {"entities": [ada, engine]})
    assert created == {"entities": [ada, engine]}
    knows = relation("Ada Lovelace", "Analytical Engine", "programmed")
    assert await call(client, "create_relations", {"relations": [knows]}) == {"relations": [knows]}
    added = await call(
        client,
        "add_observations",
        {"observations": [{"entityName": "Ada Lovelace", "contents": ["born 1815"]}]},
    )
    assert added == {
        "results": [{"entityName": "Ada Lovelace", "addedObservations": ["born 1815"]}]
    }
    ada["observations"].append("born 1815")
    assert await call(client, "open_nodes", {"names": ["Ada Lovelace", "Nobody"]}) == {
        "entities": [ada],
        "relations": [knows],
    }
    found = await call(client, "search_nodes", {"query": "ENGINE"})
    assert found == {"entities": [engine], "relations": [knows]}
    assert await call(client, "read_graph", {}) == {"entities": [ada, engine], "relations": [knows]}


def namespace_url(server: McpServeProcess, namespace: str) -> str:
    return f"{server.mcp_url}?namespace={namespace}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServeProcess]:
    """One `memora serve` with the module's tokens; stopped cleanly (exit 0) at the end."""
    with McpServeProcess(tmp_path_factory.mktemp("serve"), TOKENS) as process:
        yield process


# -- stdio -----------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_stdio_extended_profile_lists_twenty_tools_and_round_trips(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with stdio_client_of(mcp_arguments(tmp_path / "data")) as client:
            names = await tool_names(client)
            assert len(names) == 20
            assert sorted(names) == sorted(COMPAT_TOOLS + EXTENDED_TOOLS)
            await round_trip(client)


@pytest.mark.trio
async def test_stdio_compat_profile_lists_exactly_the_nine_tools(tmp_path: Path) -> None:
    arguments = mcp_arguments(tmp_path / "data", "--profile", "compat")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with stdio_client_of(arguments) as client:
            assert sorted(await tool_names(client)) == sorted(COMPAT_TOOLS)
            await round_trip(client)


@pytest.mark.trio
async def test_stdio_memory_survives_a_restart(tmp_path: Path) -> None:
    arguments = mcp_arguments(tmp_path / "data")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with stdio_client_of(arguments) as client:
            await round_trip(client)
            before = await call(client, "read_graph", {})
        # The first process has exited (the client reaps it), so the directory is free again.
        async with stdio_client_of(arguments) as client:
            assert await call(client, "read_graph", {}) == before
            grace = entity("Grace Hopper", "person", "wrote a compiler")
            await call(client, "create_entities", {"entities": [grace]})
        async with stdio_client_of(arguments) as client:
            after = await call(client, "read_graph", {})
            assert after["entities"] == [*before["entities"], grace]
            assert after["relations"] == before["relations"]


async def refused_mcp(arguments: list[str]) -> trio.CompletedProcess[bytes]:
    """Run `memora mcp` with ARGUMENTS and an empty stdin; it is expected to stop at once."""
    return await trio.run_process(
        [sys.executable, *arguments],
        cwd=REPOSITORY,
        stdin=b"",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


@pytest.mark.trio
async def test_second_mcp_on_a_held_data_dir_is_refused_and_the_first_goes_on(
    tmp_path: Path,
) -> None:
    arguments = mcp_arguments(tmp_path / "data")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with stdio_client_of(arguments) as client:
            await round_trip(client)
            before = await call(client, "read_graph", {})
            with trio.fail_after(REFUSAL_TIMEOUT_S):
                second = await refused_mcp(arguments)
            stderr = second.stderr.decode()
            assert second.returncode == 1, stderr
            assert second.stdout == b""  # stdout is the protocol's alone.
            assert "memora mcp: cannot open the data directory" in stderr
            assert "is in use by another process" in stderr
            assert "use --server" in stderr
            # The first process is unharmed and still serves writes.
            assert await call(client, "read_graph", {}) == before
            await call(client, "create_entities", {"entities": [entity("After", "marker")]})


@pytest.mark.trio
async def test_mcp_on_the_data_dir_of_a_running_server_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with McpServeProcess(data_dir) as serving, trio.fail_after(REFUSAL_TIMEOUT_S):
        refused = await refused_mcp(mcp_arguments(data_dir))
        stderr = refused.stderr.decode()
        assert refused.returncode == 1, stderr
        assert "is in use by another process" in stderr
        assert "a running `memora serve` holds it: use --server" in stderr
        assert serving.process.poll() is None


# -- streamable HTTP -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_http_lists_twenty_tools_and_round_trips(server: McpServeProcess) -> None:
    url = namespace_url(server, "http-round-trip")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with http_client_of(url, WRITER_TOKEN) as client:
            assert sorted(await tool_names(client)) == sorted(COMPAT_TOOLS + EXTENDED_TOOLS)
            await round_trip(client)


def post_initialize(
    url: str, token: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    authorization = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(
        url,
        json=INITIALIZE,
        headers={**MCP_HEADERS, **authorization, **(headers or {})},
        timeout=HTTP_TIMEOUT_S,
    )


def test_http_without_a_valid_token_is_401(server: McpServeProcess) -> None:
    for token, message in ((None, "a bearer token is required"), ("x" * 24, "is not valid")):
        answer = post_initialize(server.mcp_url, token)
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == 'Bearer realm="memora"'
        assert answer.json()["error"]["code"] == "unauthenticated"
        assert message in answer.json()["error"]["message"]
    assert post_initialize(server.mcp_url, WRITER_TOKEN).status_code == 200


def test_http_namespace_the_token_does_not_grant_is_403(server: McpServeProcess) -> None:
    for url in (namespace_url(server, "b"), namespace_url(server, "other"), server.mcp_url):
        # Tenant a's token grants namespace a alone; the default namespace is 'memory'.
        answer = post_initialize(url, TENANT_A_TOKEN)
        assert answer.status_code == 403, (url, answer.text)
        assert answer.json()["error"] == {
            "code": "forbidden",
            "message": f"the token does not grant access to namespace {url_namespace(url)!r}",
            "field": "namespace",
        }
    assert post_initialize(namespace_url(server, "a"), TENANT_A_TOKEN).status_code == 200


def url_namespace(url: str) -> str:
    return url.partition("?namespace=")[2] or "memory"


@pytest.mark.trio
async def test_http_read_only_token_reads_but_may_not_write(server: McpServeProcess) -> None:
    url = namespace_url(server, "read-only")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with http_client_of(url, WRITER_TOKEN) as writer:
            await call(writer, "create_entities", {"entities": [entity("Ada", "person", "old")]})
            before = await call(writer, "read_graph", {})
        async with http_client_of(url, READER_TOKEN) as reader:
            assert await call(reader, "read_graph", {}) == before
            assert await call(reader, "open_nodes", {"names": ["Ada"]}) == before
            assert await call(reader, "search_nodes", {"query": "ada"}) == before
            for tool, arguments in WRITE_CALLS:
                text = await error_text(reader, tool, arguments)
                assert "forbidden: this endpoint needs the write role" in text, (tool, text)
            assert await call(reader, "read_graph", {}) == before


@pytest.mark.trio
async def test_http_tenants_never_see_each_other(server: McpServeProcess) -> None:
    tenants = {"a": TENANT_A_TOKEN, "b": TENANT_B_TOKEN}
    with trio.fail_after(TEST_TIMEOUT_S):
        for name, token in tenants.items():
            async with http_client_of(namespace_url(server, name), token) as client:
                both = entity("Common Name", "thing", f"{name}'s secret")
                own = entity(f"Only {name}", "thing", f"{name}'s own")
                await call(client, "create_entities", {"entities": [both, own]})
        for name, token in tenants.items():
            other = "b" if name == "a" else "a"
            async with http_client_of(namespace_url(server, name), token) as client:
                expected = {
                    "entities": [
                        entity("Common Name", "thing", f"{name}'s secret"),
                        entity(f"Only {name}", "thing", f"{name}'s own"),
                    ],
                    "relations": [],
                }
                assert await call(client, "read_graph", {}) == expected
                assert await call(client, "search_nodes", {"query": "secret"}) == {
                    "entities": expected["entities"][:1],
                    "relations": [],
                }
                nothing = {"entities": [], "relations": []}
                assert await call(client, "search_nodes", {"query": other + "'s"}) == nothing
                assert await call(client, "open_nodes", {"names": [f"Only {other}"]}) == nothing
                text = await error_text(
                    client,
                    "add_observations",
                    {"observations": [{"entityName": f"Only {other}", "contents": ["x"]}]},
                )
                assert "not_found" in text, text


def test_http_dns_rebinding_is_refused_by_host(server: McpServeProcess) -> None:
    port = server.mcp_port
    evil = post_initialize(server.mcp_url, WRITER_TOKEN, {"Host": f"evil.example:{port}"})
    assert evil.status_code == 421, evil.text
    assert evil.text == "Invalid Host header"
    evil_origin = post_initialize(
        server.mcp_url, WRITER_TOKEN, {"Origin": f"http://evil.example:{port}"}
    )
    assert evil_origin.status_code == 403, evil_origin.text
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        answer = post_initialize(
            server.mcp_url, WRITER_TOKEN, {"Host": host, "Origin": f"http://{host}"}
        )
        assert answer.status_code == 200, (host, answer.text)
        assert '"serverInfo"' in answer.text


# -- The relay -------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_relay_serves_the_servers_tools_and_writes_land_on_it(
    server: McpServeProcess,
) -> None:
    url = namespace_url(server, "relayed")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with stdio_client_of(relay_arguments(url, WRITER_TOKEN)) as relayed:
            assert sorted(await tool_names(relayed)) == sorted(COMPAT_TOOLS + EXTENDED_TOOLS)
            await round_trip(relayed)
            through_relay = await call(relayed, "read_graph", {})
        async with http_client_of(url, WRITER_TOKEN) as direct:
            assert await call(direct, "read_graph", {}) == through_relay
            assert [e["name"] for e in through_relay["entities"]] == [
                "Ada Lovelace",
                "Analytical Engine",
            ]


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions inside `error`, however deeply grouped."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


@pytest.mark.trio
async def test_relay_with_a_wrong_token_fails_instead_of_hanging(server: McpServeProcess) -> None:
    arguments = relay_arguments(server.mcp_url, "wrong-token-0123456789")
    with trio.fail_after(TEST_TIMEOUT_S), pytest.raises(BaseException) as failure:
        async with stdio_client_of(arguments):
            raise AssertionError("the relay should not have connected")
    errors = list(leaves(failure.value))
    assert any(isinstance(error, MCPError) for error in errors), errors


def test_relay_says_why_the_server_refused_it(server: McpServeProcess) -> None:
    arguments = relay_arguments(server.mcp_url, "wrong-token-0123456789")
    finished = subprocess.run(
        [sys.executable, *arguments],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TEST_TIMEOUT_S,
    )
    assert finished.returncode == 1
    assert finished.stdout == ""
    assert f"cannot relay to {server.mcp_url}: the bearer token is not valid" in finished.stderr


# -- Two writers at once ---------------------------------------------------------------------------

SHARED: Final = "Shared Notebook"


async def write_workload(client: Client, writer: str) -> None:
    """Per entity: one create, one observation on the shared entity, one or two relations."""
    await call(client, "create_entities", {"entities": [entity(SHARED, "notebook", "opened")]})
    for index in range(WRITER_ENTITIES):
        name = f"{writer}-{index}"
        created = entity(name, "note", f"{name} first", f"{name} second")
        await call(client, "create_entities", {"entities": [created]})
        note = {"entityName": SHARED, "contents": [f"{writer} wrote {index}"]}
        await call(client, "add_observations", {"observations": [note]})
        relations = [relation(name, SHARED, "written_in")]
        if index > 0:
            relations.append(relation(name, f"{writer}-{index - 1}", "follows"))
        await call(client, "create_relations", {"relations": relations})


def check_nothing_lost(graph: dict[str, Any], writers: tuple[str, ...]) -> None:
    """Every entity, observation and relation of `write_workload` exactly once."""
    entities = {item["name"]: item for item in graph["entities"]}
    assert len(entities) == len(graph["entities"]), "an entity appears twice"
    names = [f"{writer}-{index}" for writer in writers for index in range(WRITER_ENTITIES)]
    assert set(entities) == {SHARED, *names}
    for name in names:
        assert entities[name] == entity(name, "note", f"{name} first", f"{name} second")
    notes = entities[SHARED]["observations"]
    expected_notes = [f"{w} wrote {i}" for w in writers for i in range(WRITER_ENTITIES)]
    assert collections.Counter(notes) == collections.Counter(["opened", *expected_notes])
    for writer in writers:
        # Each writer's notes were added one after another, so they keep that order.
        own = [note for note in notes if note.startswith(f"{writer} wrote ")]
        assert own == [f"{writer} wrote {i}" for i in range(WRITER_ENTITIES)]
    relations = collections.Counter(
        (item["from"], item["to"], item["relationType"]) for item in graph["relations"]
    )
    expected = {(name, SHARED, "written_in") for name in names} | {
        (f"{w}-{i}", f"{w}-{i - 1}", "follows") for w in writers for i in range(1, WRITER_ENTITIES)
    }
    assert set(relations) == expected
    assert max(relations.values()) == 1, "a relation appears twice"


@pytest.mark.trio
async def test_two_http_clients_writing_at_once_lose_nothing(server: McpServeProcess) -> None:
    url = namespace_url(server, "concurrent-http")
    writers = ("left", "right")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            http_client_of(url, WRITER_TOKEN) as left,
            http_client_of(url, WRITER_TOKEN) as right,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_workload, left, writers[0])
                nursery.start_soon(write_workload, right, writers[1])
            check_nothing_lost(await call(left, "read_graph", {}), writers)


@pytest.mark.trio
async def test_two_relays_writing_at_once_lose_nothing(server: McpServeProcess) -> None:
    url = namespace_url(server, "concurrent-relay")
    writers = ("up", "down")
    arguments = relay_arguments(url, WRITER_TOKEN)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            stdio_client_of(arguments) as up,
            stdio_client_of(arguments) as down,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(write_workload, up, writers[0])
            nursery.start_soon(write_workload, down, writers[1])
        async with http_client_of(url, WRITER_TOKEN) as reader:
            check_nothing_lost(await call(reader, "read_graph", {}), writers)


# -- The knowledge-graph resource ------------------------------------------------------------------


class Notifications:
    """A `message_handler` that remembers the `resources/updated` notifications it is sent."""

    def __init__(self) -> None:
        self.updated: list[str] = []
        self.arrived = trio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            self.updated.append(message.params.uri)
            self.arrived.set()

    async def wait(self) -> list[str]:
        with trio.move_on_after(NOTIFICATION_TIMEOUT_S):
            await self.arrived.wait()
        return self.updated


async def subscribe_legacy(client: Client) -> None:
    """`resources/subscribe`, which the SDK marks deprecated as of protocol 2026-07-28."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.subscribe_resource(GRAPH_URI)


async def check_graph_resource(client: Client) -> None:
    listing = await client.list_resources()
    assert [(str(r.uri), r.name, r.mime_type) for r in listing.resources] == [
        (GRAPH_URI, "knowledge-graph", "application/json")
    ]
    expected = await call(client, "read_graph", {})
    contents = (await client.read_resource(GRAPH_URI)).contents
    assert len(contents) == 1
    assert contents[0].mime_type == "application/json"
    assert isinstance(contents[0], TextResourceContents)
    assert json.loads(contents[0].text) == expected


@pytest.mark.trio
async def test_stdio_graph_resource_is_readable_and_subscribers_are_notified(
    tmp_path: Path,
) -> None:
    notifications = Notifications()
    arguments = mcp_arguments(tmp_path / "data")
    with trio.fail_after(TEST_TIMEOUT_S):
        options = {"message_handler": notifications, "mode": "legacy"}
        async with stdio_client_of(arguments, **options) as client:
            await round_trip(client)
            await check_graph_resource(client)
            await subscribe_legacy(client)
            assert notifications.updated == []
            await call(client, "create_entities", {"entities": [entity("New", "thing")]})
            assert await notifications.wait() == [GRAPH_URI]


@pytest.mark.trio
async def test_stdio_listen_stream_reports_graph_changes(tmp_path: Path) -> None:
    """The 2026-07-28 way to subscribe: a `subscriptions/listen` stream."""
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            stdio_client_of(mcp_arguments(tmp_path / "data")) as client,
            client.listen(resource_subscriptions=[GRAPH_URI]) as events,
        ):
            assert events.honored.resource_subscriptions == [GRAPH_URI]
            await call(client, "create_entities", {"entities": [entity("New", "thing")]})
            with trio.fail_after(NOTIFICATION_TIMEOUT_S):
                async for event in events:
                    assert event.uri == GRAPH_URI  # type: ignore[union-attr]
                    break


@pytest.mark.trio
async def test_http_graph_resource_is_the_namespaces_graph(server: McpServeProcess) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with http_client_of(namespace_url(server, "resource"), WRITER_TOKEN) as client:
            await round_trip(client)
            await check_graph_resource(client)
        async with http_client_of(namespace_url(server, "a"), TENANT_A_TOKEN) as client:
            await check_graph_resource(client)  # Tenant a's graph, not the one above.


@pytest.mark.trio
async def test_http_subscriber_is_notified_of_another_clients_write(
    server: McpServeProcess,
) -> None:
    url = namespace_url(server, "subscribed")
    notifications = Notifications()
    with trio.fail_after(TEST_TIMEOUT_S):
        options = {"message_handler": notifications, "mode": "legacy"}
        async with http_client_of(url, WRITER_TOKEN, **options) as subscriber:
            await subscribe_legacy(subscriber)
            async with http_client_of(url, WRITER_TOKEN) as writer:
                await call(writer, "create_entities", {"entities": [entity("New", "thing")]})
            assert await notifications.wait() == [GRAPH_URI]


@pytest.mark.trio
async def test_http_listen_stream_reports_another_clients_write(server: McpServeProcess) -> None:
    url = namespace_url(server, "listened")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with http_client_of(url, WRITER_TOKEN) as subscriber:
            with trio.fail_after(NOTIFICATION_TIMEOUT_S * 2):
                async with subscriber.listen(resource_subscriptions=[GRAPH_URI]) as events:
                    async with http_client_of(url, WRITER_TOKEN) as writer:
                        new = entity("New", "thing")
                        await call(writer, "create_entities", {"entities": [new]})
                    async for event in events:
                        assert event.uri == GRAPH_URI  # type: ignore[union-attr]
                        break
