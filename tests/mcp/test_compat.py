"""The compat suite: each behaviour of the reference MCP memory server, checked on Memora.

The reference is `@modelcontextprotocol/server-memory` (src/memory/index.ts): same tool names,
argument and result shapes, annotations, text and structured content, and these semantics:
duplicate names and observations are skipped, a relation to a missing entity is an error
(Memora's addition: the reference silently stores it), deleting an entity cascades to its
relations, search is a case-insensitive substring match over name, type and observations, and
search and open return every relation that touches an entity they return.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio
from conftest import ClientFactory
from mcp import Client

from memora.service.embedding import HashingEmbedder

GRAPH = "memory://knowledge-graph"
COMPAT_TOOLS = {
    "create_entities",
    "create_relations",
    "add_observations",
    "delete_entities",
    "delete_observations",
    "delete_relations",
    "read_graph",
    "search_nodes",
    "open_nodes",
}
# (readOnly, destructive, idempotent) as the reference declares them.
ANNOTATIONS = {
    "create_entities": (False, False, False),
    "create_relations": (False, False, False),
    "add_observations": (False, False, False),
    "delete_entities": (False, True, True),
    "delete_observations": (False, True, True),
    "delete_relations": (False, True, True),
    "read_graph": (True, False, True),
    "search_nodes": (True, False, True),
    "open_nodes": (True, False, True),
}
pytestmark = pytest.mark.trio

REQUIRED_ARGUMENTS = {
    "create_entities": ["entities"],
    "create_relations": ["relations"],
    "add_observations": ["observations"],
    "delete_entities": ["entityNames"],
    "delete_observations": ["deletions"],
    "delete_relations": ["relations"],
    "read_graph": [],
    "search_nodes": ["query"],
    "open_nodes": ["names"],
}


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def call_error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


def entity(name: str, kind: str = "person", *observations: str) -> dict[str, Any]:
    return {"name": name, "entityType": kind, "observations": list(observations)}


def relation(source: str, target: str, kind: str) -> dict[str, str]:
    return {"from": source, "to": target, "relationType": kind}


async def seed(client: Client) -> None:
    await call(
        client,
        "create_entities",
        {
            "entities": [
                entity("Alice", "person", "Prefers dark roast", "Lives in Paris"),
                entity("Bob", "person", "Plays chess"),
                entity("Acme", "company", "Builds rockets"),
                entity("Zed", "robot"),
            ]
        },
    )
    await call(
        client,
        "create_relations",
        {
            "relations": [
                relation("Alice", "Acme", "works_at"),
                relation("Bob", "Alice", "knows"),
                relation("Acme", "Zed", "owns"),
            ]
        },
    )


async def test_the_compat_profile_lists_exactly_the_nine_tools_with_the_reference_shapes(
    connect: ClientFactory,
) -> None:
    async with connect(profile="compat") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == COMPAT_TOOLS
    for name, tool in tools.items():
        hints = tool.annotations
        assert hints is not None
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (
            ANNOTATIONS[name]
        ), name
        assert hints.open_world_hint is False
        assert sorted(tool.input_schema.get("required", [])) == REQUIRED_ARGUMENTS[name], name
    entity_schema = tools["create_entities"].input_schema
    assert "entities" in entity_schema["properties"]
    assert "relations" in tools["delete_relations"].input_schema["properties"]


async def test_the_extended_profile_adds_memoras_tools_to_the_nine(connect: ClientFactory) -> None:
    async with connect() as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert names > COMPAT_TOOLS
    assert {"memory_search", "memory_history", "session_start", "memory_status"} <= names
    assert len(names) == 20


async def test_create_entities_returns_what_it_created_and_skips_duplicates(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        first = await call(
            client,
            "create_entities",
            {"entities": [entity("Alice", "person", "likes tea", "likes tea", "cycles")]},
        )
        assert first == {"entities": [entity("Alice", "person", "likes tea", "cycles")]}
        again = await call(
            client,
            "create_entities",
            {"entities": [entity("Alice", "robot", "other"), entity("Bob"), entity("Bob")]},
        )
        assert again == {"entities": [entity("Bob")]}
        graph = await call(client, "read_graph", {})
    assert graph["entities"] == [entity("Alice", "person", "likes tea", "cycles"), entity("Bob")]
    assert graph["relations"] == []


async def test_text_content_is_the_reference_json(connect: ClientFactory) -> None:
    async with connect() as client:
        result = await client.call_tool("create_entities", {"entities": [entity("Ann")]})
        deleted = await client.call_tool("delete_entities", {"entityNames": ["Ann"]})
    assert json.loads(result.content[0].text) == [entity("Ann")]  # type: ignore[union-attr]
    assert result.content[0].text == json.dumps([entity("Ann")], indent=2)  # type: ignore[union-attr]
    assert deleted.content[0].text == "Entities deleted successfully"  # type: ignore[union-attr]
    assert deleted.structured_content == {
        "success": True,
        "message": "Entities deleted successfully",
    }


async def test_relations_skip_duplicates_and_refuse_missing_entities_atomically(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await call(client, "create_entities", {"entities": [entity("Alice"), entity("Bob")]})
        created = await call(
            client,
            "create_relations",
            {"relations": [relation("Alice", "Bob", "knows"), relation("Alice", "Bob", "knows")]},
        )
        assert created == {"relations": [relation("Alice", "Bob", "knows")]}
        again = await call(
            client, "create_relations", {"relations": [relation("Alice", "Bob", "knows")]}
        )
        assert again == {"relations": []}
        error = await call_error(
            client,
            "create_relations",
            {"relations": [relation("Bob", "Alice", "knows"), relation("Alice", "Nobody", "x")]},
        )
        assert "Entity with name Nobody not found" in error
        assert error.startswith("Error executing tool create_relations: not_found")
        graph = await call(client, "read_graph", {})
    assert graph["relations"] == [relation("Alice", "Bob", "knows")]  # Bob->Alice not written.


async def test_add_observations_reports_what_it_added_and_refuses_unknown_entities(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await call(client, "create_entities", {"entities": [entity("Alice", "person", "a")]})
        added = await call(
            client,
            "add_observations",
            {"observations": [{"entityName": "Alice", "contents": ["a", "b", "b", "c"]}]},
        )
        assert added == {"results": [{"entityName": "Alice", "addedObservations": ["b", "c"]}]}
        error = await call_error(
            client,
            "add_observations",
            {
                "observations": [
                    {"entityName": "Alice", "contents": ["d"]},
                    {"entityName": "Ghost", "contents": ["boo"]},
                ]
            },
        )
        assert "Entity with name Ghost not found" in error
        opened = await call(client, "open_nodes", {"names": ["Alice"]})
    assert opened["entities"] == [entity("Alice", "person", "a", "b", "c")]


async def test_deleting_an_entity_cascades_to_its_relations_and_ignores_unknown_names(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await seed(client)
        done = await call(client, "delete_entities", {"entityNames": ["Alice", "Nobody"]})
        assert done == {"success": True, "message": "Entities deleted successfully"}
        graph = await call(client, "read_graph", {})
    assert [e["name"] for e in graph["entities"]] == ["Bob", "Acme", "Zed"]
    assert graph["relations"] == [relation("Acme", "Zed", "owns")]


async def test_delete_observations_and_relations_remove_only_what_matches(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await seed(client)
        await call(
            client,
            "delete_observations",
            {
                "deletions": [
                    {"entityName": "Alice", "observations": ["Lives in Paris", "not there"]},
                    {"entityName": "Nobody", "observations": ["x"]},
                ]
            },
        )
        done = await call(
            client,
            "delete_relations",
            {"relations": [relation("Bob", "Alice", "knows"), relation("Bob", "Acme", "x")]},
        )
        assert done["message"] == "Relations deleted successfully"
        graph = await call(client, "read_graph", {})
    assert graph["entities"][0] == entity("Alice", "person", "Prefers dark roast")
    assert graph["relations"] == [
        relation("Alice", "Acme", "works_at"),
        relation("Acme", "Zed", "owns"),
    ]


async def test_search_is_a_case_insensitive_substring_match_with_touching_relations(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await seed(client)
        by_observation = await call(client, "search_nodes", {"query": "PARIS"})
        by_type = await call(client, "search_nodes", {"query": "compan"})
        by_name = await call(client, "search_nodes", {"query": "ob"})
        nothing = await call(client, "search_nodes", {"query": "volcano"})
    assert [e["name"] for e in by_observation["entities"]] == ["Alice"]
    assert by_observation["relations"] == [
        relation("Alice", "Acme", "works_at"),
        relation("Bob", "Alice", "knows"),
    ]
    assert [e["name"] for e in by_type["entities"]] == ["Acme"]
    assert by_type["relations"] == [
        relation("Alice", "Acme", "works_at"),
        relation("Acme", "Zed", "owns"),
    ]
    assert [e["name"] for e in by_name["entities"]] == ["Bob", "Zed"]  # "Bob", "robot"
    assert nothing == {"entities": [], "relations": []}


async def test_search_sees_every_change_to_an_entity(connect: ClientFactory) -> None:
    async with connect() as client:
        await seed(client)

        async def names(query: str) -> list[str]:
            found = await call(client, "search_nodes", {"query": query})
            return [e["name"] for e in found["entities"]]

        assert await names("volcano") == []
        await call(
            client,
            "add_observations",
            {"observations": [{"entityName": "Bob", "contents": ["Climbed a VOLCANO"]}]},
        )
        assert await names("volcano") == ["Bob"]
        await call(
            client,
            "delete_observations",
            {"deletions": [{"entityName": "Bob", "observations": ["Climbed a VOLCANO"]}]},
        )
        assert await names("volcano") == []
        await call(client, "delete_entities", {"entityNames": ["Bob"]})
        await call(client, "create_entities", {"entities": [entity("Bob", "volcanologist")]})
        assert await names("volcano") == ["Bob"]
        assert await names("person\x00") == []  # A needle never matches across fields.


async def test_open_nodes_returns_the_named_entities_and_every_relation_touching_them(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await seed(client)
        opened = await call(client, "open_nodes", {"names": ["Zed", "Bob", "Nobody"]})
    assert [e["name"] for e in opened["entities"]] == ["Bob", "Zed"]
    assert opened["relations"] == [
        relation("Bob", "Alice", "knows"),
        relation("Acme", "Zed", "owns"),
    ]


async def test_read_graph_pages_cover_every_entity_and_each_relation_once(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await seed(client)
        whole = await call(client, "read_graph", {})
        entities: list[dict[str, Any]] = []
        relations: list[dict[str, Any]] = []
        cursor = None
        while True:
            arguments: dict[str, Any] = {"limit": 3}
            if cursor is not None:
                arguments["cursor"] = cursor
            page = await call(client, "read_graph", arguments)
            entities += page["entities"]
            relations += page["relations"]
            cursor = page.get("nextCursor")
            if cursor is None:
                break
        names = await call(client, "read_graph", {"detail": "names"})
        summary = await call(client, "read_graph", {"detail": "summary"})
        bad = await call_error(client, "read_graph", {"cursor": "not-a-cursor"})
    assert entities == whole["entities"]
    assert sorted(map(str, relations)) == sorted(map(str, whole["relations"]))
    assert names["entities"][0] == {"name": "Alice", "entityType": "person"}
    assert summary["entities"][0] == {
        "name": "Alice",
        "entityType": "person",
        "observationCount": 2,
    }
    assert "cursor" in bad


async def test_reads_as_of_an_earlier_commit_see_the_graph_as_it_was(
    connect: ClientFactory,
) -> None:
    async with connect(profile="extended") as client:
        await seed(client)
        status = await call(client, "memory_status", {})
        before = status["applied_index"]
        await call(client, "delete_entities", {"entityNames": ["Alice"]})
        now = await call(client, "search_nodes", {"query": "paris"})
        then = await call(client, "search_nodes", {"query": "paris", "as_of": before})
        opened = await call(client, "open_nodes", {"names": ["Alice"], "as_of": before})
        future = await call_error(client, "read_graph", {"as_of": before + 1_000})
    assert now["entities"] == []
    assert [e["name"] for e in then["entities"]] == ["Alice"]
    assert opened["entities"] == [entity("Alice", "person", "Prefers dark roast", "Lives in Paris")]
    assert "as_of" in future


async def test_bad_arguments_are_tool_errors_and_change_nothing(connect: ClientFactory) -> None:
    async with connect() as client:
        long_name = await client.call_tool("create_entities", {"entities": [entity("x" * 600)]})
        no_type = await client.call_tool(
            "create_entities", {"entities": [{"name": "A", "observations": []}]}
        )
        bad_confidence = await client.call_tool(
            "create_entities", {"entities": [entity("A")], "confidence": 2}
        )
        bad_time = await client.call_tool(
            "create_entities", {"entities": [entity("A")], "valid_from": "next tuesday"}
        )
        graph = await call(client, "read_graph", {})
    assert long_name.is_error and no_type.is_error and bad_confidence.is_error
    assert bad_time.is_error
    assert "valid_from" in bad_time.content[0].text  # type: ignore[union-attr]
    assert graph == {"entities": [], "relations": []}


async def test_the_knowledge_graph_resource_is_listed_and_readable(connect: ClientFactory) -> None:
    async with connect() as client:
        await seed(client)
        resources = (await client.list_resources()).resources
        contents = (await client.read_resource(GRAPH)).contents
    assert [str(r.uri) for r in resources] == [GRAPH]
    graph = json.loads(contents[0].text)  # type: ignore[union-attr]
    assert [e["name"] for e in graph["entities"]] == ["Alice", "Bob", "Acme", "Zed"]
    assert len(graph["relations"]) == 3


async def test_a_legacy_subscriber_is_notified_of_every_change(connect: ClientFactory) -> None:
    updates: list[str] = []

    async def on_message(message: Any) -> None:
        uri = getattr(getattr(message, "params", None), "uri", None)
        if uri is not None:
            updates.append(str(uri))

    async with connect(mode="legacy", message_handler=on_message) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resources/subscribe predates 2026-07-28.
            await client.subscribe_resource(GRAPH)
        await seed(client)
        with trio.fail_after(5):
            while len(updates) < 2:
                await trio.sleep(0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.unsubscribe_resource(GRAPH)
        await call(client, "delete_entities", {"entityNames": ["Zed"]})
        await trio.sleep(0.2)
    assert updates == [GRAPH, GRAPH]  # Two writes while subscribed, none after.


async def test_a_listener_hears_that_the_graph_changed(connect: ClientFactory) -> None:
    async with connect() as client, client.listen(resource_subscriptions=[GRAPH]) as listening:
        await call(client, "create_entities", {"entities": [entity("Ann")]})
        with trio.fail_after(5):
            event = await listening.__anext__()
    assert GRAPH in str(event)


class CountingEmbedder(HashingEmbedder):
    """Counts the texts it is asked to embed."""

    def __init__(self) -> None:
        super().__init__(64)
        self.texts = 0

    def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts += len(texts)
        return super().embed_many(texts)


async def test_a_large_call_is_embedded_in_chunks_and_duplicates_are_never_embedded(
    connect: ClientFactory,
) -> None:
    embedder = CountingEmbedder()
    many = [entity(f"e{i}", "thing", "a", "b", "c") for i in range(300)]  # 1,200 texts.
    async with connect(embedder=embedder) as client:
        created = await call(client, "create_entities", {"entities": many})
        first = embedder.texts
        again = await call(client, "create_entities", {"entities": many})
        added = await call(
            client,
            "add_observations",
            {"observations": [{"entityName": "e1", "contents": ["a", "b", "new"]}]},
        )
    assert len(created["entities"]) == 300 and again == {"entities": []}
    assert first == 1_200
    assert embedder.texts == first + 1  # Only "new" was embedded after the first call.
    assert added["results"][0]["addedObservations"] == ["new"]
