"""Reading and writing records over REST: nodes, edges, observations, vectors, batches, history,
pages, `as_of`, and the commit index of a write used as a later read's `min_commit_index`.

Every answer also goes through `ApiClient`'s check against `/openapi.json`."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from api_client import ApiClient

NODES = "/api/v1/nodes"
SMALL = {"namespace": "small"}  # A namespace of dimension 4, made by `small_namespace`.


async def small_namespace(client: ApiClient) -> None:
    reply = await client.post("/api/v1/namespaces", {"name": "small", "dimension": 4})
    assert reply.status == 201, reply.text


async def insert(client: ApiClient, query: dict[str, Any] | None = None, **fields: Any) -> Any:
    reply = await client.post(NODES, fields, query=query)
    assert reply.status == 201, reply.text
    return reply.json


@pytest.mark.trio
async def test_the_seed_curl_example_inserts_and_gets_a_node(client: ApiClient) -> None:
    written = await insert(client, id=100, label="UserPreference")
    node = written["node"]
    assert (node["id"], node["label"], node["version"], node["deleted"]) == (
        100,
        "UserPreference",
        1,
        False,
    )
    assert node["created"]["principal"] == "local"
    assert node["created"]["commit_index"] == written["commit_index"]
    reply = await client.get(f"{NODES}/100")
    assert reply.status == 200
    assert reply.json["node"] == node
    assert reply.json["applied_index"] >= written["commit_index"]
    whole_float = await insert(client, id=101.0, label="UserPreference")  # JSON's 101.0 is 101.
    assert whole_float["node"]["id"] == 101


@pytest.mark.trio
async def test_a_node_keeps_every_field_it_was_given(client: ApiClient) -> None:
    await small_namespace(client)
    fields = {
        "label": "Person",
        "name": "alice",
        "properties": {"age": 31, "tags": ["a", {"b": None}], "score": 0.5},
        "text": "likes dark mode",
        "vector": [0.5, -0.25, 1.0, 0.0],
        "provenance": {"source": "chat:42", "confidence": 0.75, "valid_from_ms": 5},
    }
    node = (await insert(client, SMALL, **fields))["node"]
    assert {key: node[key] for key in ("label", "name", "properties", "text", "vector")} == {
        key: fields[key] for key in ("label", "name", "properties", "text", "vector")
    }
    assert node["provenance"] == {
        "source": "chat:42",
        "confidence": 0.75,
        "valid_from_ms": 5,
        "valid_to_ms": None,
    }
    assert node["namespace"] == "small"
    assert (await client.get(f"{NODES}/{node['id']}", query=SMALL)).json["node"] == node


@pytest.mark.trio
async def test_patch_changes_fields_and_clears_others_and_delete_tombstones(
    client: ApiClient,
) -> None:
    await insert(client, id=1, label="Note", name="n1", text="first")
    patched = await client.patch(f"{NODES}/1", {"text": "second", "clear": ["name"]})
    assert patched.status == 200
    node = patched.json["node"]
    assert (node["text"], node["name"], node["version"]) == ("second", None, 2)
    deleted = await client.delete(f"{NODES}/1")
    assert deleted.status == 200 and deleted.json["node"]["deleted"] is True
    assert (await client.get(f"{NODES}/1")).status == 404
    again = await client.delete(f"{NODES}/1")
    assert (again.status, again.error_code, again.error_field) == (404, "not_found", "id")


@pytest.mark.trio
async def test_duplicates_conflict(client: ApiClient) -> None:
    await insert(client, id=7, label="Person", name="bob")
    same_id = await client.post(NODES, {"id": 7, "label": "Person"})
    same_name = await client.post(NODES, {"label": "Person", "name": "bob"})
    assert (same_id.status, same_id.error_code) == (409, "conflict")
    assert (same_name.status, same_name.error_code) == (409, "conflict")


@pytest.mark.trio
async def test_nodes_page_by_label_with_a_cursor(client: ApiClient) -> None:
    for number in range(1, 8):
        await insert(client, id=number, label="Even" if number % 2 == 0 else "Odd")
    seen = []
    after = 0
    while after is not None:
        page = await client.get(NODES, query={"label": "Odd", "limit": 2, "after": after})
        assert page.status == 200
        seen += [node["id"] for node in page.json["nodes"]]
        assert all(node["label"] == "Odd" for node in page.json["nodes"])
        after = page.json["next_after"]
    assert seen == [1, 3, 5, 7]
    everything = await client.get(NODES, query={"limit": 1000})
    assert [node["id"] for node in everything.json["nodes"]] == list(range(1, 8))
    assert everything.json["next_after"] is None


@pytest.mark.trio
async def test_history_lists_every_version_and_as_of_reads_the_past(client: ApiClient) -> None:
    first = await insert(client, id=1, label="Note", text="v1")
    second = (await client.patch(f"{NODES}/1", {"text": "v2"})).json
    await client.delete(f"{NODES}/1")
    history = await client.get(f"{NODES}/1/history")
    versions = history.json["versions"]
    assert [(v["version"], v["text"], v["deleted"]) for v in versions] == [
        (1, "v1", False),
        (2, "v2", False),
        (3, "v2", True),
    ]
    past = await client.get(f"{NODES}/1", query={"as_of": first["commit_index"]})
    assert past.json["node"]["text"] == "v1"
    at_second = await client.get(f"{NODES}/1/history", query={"as_of": second["commit_index"]})
    assert [v["version"] for v in at_second.json["versions"]] == [1, 2]
    paged = await client.get(f"{NODES}/1/history", query={"limit": 2})
    assert paged.json["next_after_version"] == 2
    rest = await client.get(f"{NODES}/1/history", query={"after_version": 2})
    assert [v["version"] for v in rest.json["versions"]] == [3]
    before = await client.get(f"{NODES}/1", query={"as_of": first["commit_index"] - 1})
    assert before.status == 404
    future = await client.get(f"{NODES}/1", query={"as_of": 10**9})
    assert (future.status, future.error_field) == (422, "as_of")


@pytest.mark.trio
async def test_edges_insert_get_patch_delete_and_list_by_node(client: ApiClient) -> None:
    await insert(client, id=1, label="Person")
    await insert(client, id=2, label="Project")
    written = await client.post("/api/v1/edges", {"source": 1, "target": 2, "kind": "owns"})
    assert written.status == 201
    edge = written.json["edge"]
    assert (edge["source"], edge["target"], edge["kind"]) == (1, 2, "owns")
    default_kind = await client.post("/api/v1/edges", {"source": 2, "target": 1})
    assert default_kind.json["edge"]["kind"] == "related"
    got = await client.get(f"/api/v1/edges/{edge['id']}")
    assert got.json["edge"] == edge
    patched = await client.patch(f"/api/v1/edges/{edge['id']}", {"properties": {"since": 2020}})
    assert patched.json["edge"]["properties"] == {"since": 2020}
    outgoing = await client.get(f"{NODES}/1/edges", query={"direction": "out"})
    assert [e["kind"] for e in outgoing.json["edges"]] == ["owns"]
    owns = await client.get(f"{NODES}/1/edges", query={"kinds": "owns,links"})
    assert [e["id"] for e in owns.json["edges"]] == [edge["id"]]
    both = await client.get(f"{NODES}/1/edges")
    assert len(both.json["edges"]) == 2
    assert (await client.delete(f"/api/v1/edges/{edge['id']}")).json["edge"]["deleted"]
    assert (await client.get(f"/api/v1/edges/{edge['id']}")).status == 404
    dangling = await client.post("/api/v1/edges", {"source": 1, "target": 99})
    assert (dangling.status, dangling.error_code) == (404, "not_found")


@pytest.mark.trio
async def test_observations_add_list_get_delete(client: ApiClient) -> None:
    await insert(client, id=1, label="Person")
    added = await client.post(f"{NODES}/1/observations", {"text": "prefers tea"})
    assert added.status == 201
    observation = added.json["observation"]
    assert (observation["node_id"], observation["text"]) == (1, "prefers tea")
    listed = await client.get(f"{NODES}/1/observations")
    assert listed.json["observations"] == [observation]
    got = await client.get(f"/api/v1/observations/{observation['id']}")
    assert got.json["observation"] == observation
    deleted = await client.delete(f"/api/v1/observations/{observation['id']}")
    assert deleted.json["observation"]["deleted"] is True
    assert (await client.get(f"{NODES}/1/observations")).json["observations"] == []
    missing = await client.post(f"{NODES}/404/observations", {"text": "x"})
    assert missing.status == 404


@pytest.mark.trio
async def test_set_vector_and_embedding_text_on_write(client: ApiClient) -> None:
    await small_namespace(client)
    await insert(client, SMALL, id=1, label="Item")
    reply = await client.post(
        "/api/v1/vectors", {"node_id": 1, "vector": [1, 0, 0, 0]}, query=SMALL
    )
    assert reply.status == 200 and reply.json["node"]["vector"] == [1.0, 0.0, 0.0, 0.0]
    wrong = await client.post("/api/v1/vectors", {"node_id": 1, "vector": [1, 0]}, query=SMALL)
    assert (wrong.status, wrong.error_code) == (422, "wrong_dimension")
    embedded = await insert(client, SMALL, label="Note", text="dark mode", embed=True)
    vector = embedded["node"]["vector"]
    assert len(vector) == 4 and any(vector)
    conflicting = await client.post(
        NODES, {"label": "Note", "text": "x", "vector": [1, 0, 0, 0], "embed": True}, query=SMALL
    )
    assert (conflicting.status, conflicting.error_field) == (422, "embed")


@pytest.mark.trio
async def test_a_batch_applies_all_or_nothing(client: ApiClient) -> None:
    commands = [
        {"op": "insert_node", "id": 1, "label": "Person"},
        {"op": "insert_node", "id": 2, "label": "Person"},
        {"op": "insert_edge", "source": 1, "target": 2, "kind": "links"},
        {"op": "add_observation", "node_id": 1, "text": "met at the conference"},
        {"op": "update_node", "id": 2, "text": "updated"},
    ]
    reply = await client.post("/api/v1/batch", {"commands": commands})
    assert reply.status == 200, reply.text
    assert [result["type"] for result in reply.json["results"]] == [
        "node",
        "node",
        "edge",
        "observation",
        "node",
    ]
    failing = [{"op": "insert_node", "id": 3, "label": "Person"}, {"op": "delete_node", "id": 99}]
    refused = await client.post("/api/v1/batch", {"commands": failing})
    assert (refused.status, refused.error_field) == (404, "commands[1].id")
    assert (await client.get(f"{NODES}/3")).status == 404
    for op in ("drop_table", {}, ["insert_node"]):
        unknown_op = await client.post("/api/v1/batch", {"commands": [{"op": op}]})
        assert (unknown_op.status, unknown_op.error_field) == (400, "commands[0].op")


@pytest.mark.trio
async def test_a_write_commit_index_is_a_read_barrier_at_every_consistency(
    client: ApiClient,
) -> None:
    written = await insert(client, id=5, label="Person")
    for consistency in ("linearizable", "lease", "follower"):
        query = {"consistency": consistency, "min_commit_index": written["commit_index"]}
        reply = await client.get(f"{NODES}/5", query=query)
        assert reply.status == 200, (consistency, reply.text)
        assert reply.json["applied_index"] >= written["commit_index"]
    bad = await client.get(f"{NODES}/5", query={"consistency": "eventual"})
    assert (bad.status, bad.error_field) == (400, "consistency")
    with trio.fail_after(2):  # Refused at once, not after waiting out the request timeout.
        unwritten = await client.get(f"{NODES}/5", query={"min_commit_index": 10**9})
    assert (unwritten.status, unwritten.error_field) == (422, "min_commit_index")


@pytest.mark.trio
async def test_namespaces_are_created_listed_and_separate(client: ApiClient) -> None:
    await small_namespace(client)
    info = await client.get("/api/v1/namespaces/small")
    assert info.json["namespace"]["dimension"] == 4
    listed = await client.get("/api/v1/namespaces")
    assert [ns["name"] for ns in listed.json["namespaces"]] == ["default", "small"]
    await insert(client, SMALL, id=1, label="Only in small")
    assert (await client.get(f"{NODES}/1")).status == 404
    missing = await client.get(f"{NODES}/1", query={"namespace": "nowhere"})
    assert (missing.status, missing.error_field) == (404, "namespace")
    again = await client.post("/api/v1/namespaces", {"name": "small"})
    assert again.status == 409
