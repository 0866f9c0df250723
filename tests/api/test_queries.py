"""Graph and vector queries over REST: related, similar, and hybrid by node, vector and text,
checked against the same query run on the embedded store's core functions."""

from __future__ import annotations

from typing import Any

import pytest
from api_client import ApiClient

from memora.service.embedding import HashingEmbedder

SMALL = {"namespace": "small"}


async def build_graph(client: ApiClient) -> None:
    """A chain 1 -> 2 -> 3 -> 4 of `links` plus 1 -> 5 `owns`, vectors along one axis."""
    reply = await client.post("/api/v1/namespaces", {"name": "small", "dimension": 4})
    assert reply.status == 201
    vectors = {1: [1, 0, 0, 0], 2: [0.9, 0.1, 0, 0], 3: [0, 1, 0, 0], 4: [0, 0, 1, 0]}
    commands: list[dict[str, Any]] = [
        {"op": "insert_node", "id": number, "label": "Item", "vector": vector}
        for number, vector in vectors.items()
    ]
    commands.append({"op": "insert_node", "id": 5, "label": "Owner", "vector": [0.8, 0.2, 0, 0]})
    commands += [
        {"op": "insert_edge", "source": 1, "target": 2, "kind": "links"},
        {"op": "insert_edge", "source": 2, "target": 3, "kind": "links"},
        {"op": "insert_edge", "source": 3, "target": 4, "kind": "links"},
        {"op": "insert_edge", "source": 1, "target": 5, "kind": "owns"},
    ]
    batch = await client.post("/api/v1/batch", {"commands": commands}, query=SMALL)
    assert batch.status == 200, batch.text


def ids_and_hops(reply: Any) -> list[tuple[int, int]]:
    return [(item["node"]["id"], item["hops"]) for item in reply.json["related"]]


@pytest.mark.trio
async def test_related_walks_by_depth_kind_and_direction(client: ApiClient) -> None:
    await build_graph(client)
    walk = await client.get("/api/v1/nodes/1/related", query={**SMALL, "depth": 2})
    assert ids_and_hops(walk) == [(2, 1), (5, 1), (3, 2)]
    links = await client.get(
        "/api/v1/nodes/1/related", query={**SMALL, "depth": 8, "kinds": "links"}
    )
    assert ids_and_hops(links) == [(2, 1), (3, 2), (4, 3)]
    incoming = await client.get("/api/v1/nodes/3/related", query={**SMALL, "direction": "in"})
    assert ids_and_hops(incoming) == [(2, 1)]
    limited = await client.get("/api/v1/nodes/1/related", query={**SMALL, "depth": 3, "limit": 1})
    assert ids_and_hops(limited) == [(2, 1)]
    too_deep = await client.get("/api/v1/nodes/1/related", query={**SMALL, "depth": 9})
    assert (too_deep.status, too_deep.error_field) == (422, "depth")


@pytest.mark.trio
async def test_similar_ranks_by_a_nodes_vector_and_excludes_it(client: ApiClient) -> None:
    await build_graph(client)
    reply = await client.get("/api/v1/vectors/1/similar", query={**SMALL, "top_k": 2})
    assert [hit["node"]["id"] for hit in reply.json["hits"]] == [2, 5]
    distances = [hit["distance"] for hit in reply.json["hits"]]
    assert distances == sorted(distances)
    only_owners = await client.get(
        "/api/v1/vectors/1/similar", query={**SMALL, "label": "Owner", "exact": "true"}
    )
    assert [hit["node"]["id"] for hit in only_owners.json["hits"]] == [5]


@pytest.mark.trio
async def test_hybrid_by_node_ranks_the_neighbourhood(client: ApiClient) -> None:
    await build_graph(client)
    reply = await client.post(
        "/api/v1/query/hybrid", {"node_id": 1, "depth": 2, "top_k": 5}, query=SMALL
    )
    assert reply.status == 200, reply.text
    assert reply.json["mode"] == "node"
    assert [hit["node"]["id"] for hit in reply.json["hits"]] == [2, 5, 3]
    by_other_vector = await client.post(
        "/api/v1/query/hybrid",
        {"node_id": 1, "depth": 2, "top_k": 1, "vector": [0, 1, 0, 0]},
        query=SMALL,
    )
    assert [hit["node"]["id"] for hit in by_other_vector.json["hits"]] == [3]


@pytest.mark.trio
async def test_hybrid_by_vector_gives_hits_with_neighbours(client: ApiClient) -> None:
    await build_graph(client)
    reply = await client.post(
        "/api/v1/query/hybrid",
        {"vector": [0, 0, 1, 0], "top_k": 1, "depth": 1, "exact": True},
        query=SMALL,
    )
    assert reply.json["mode"] == "vector"
    (hit,) = reply.json["hits"]
    assert hit["node"]["id"] == 4
    assert [(n["node"]["id"], n["hops"]) for n in hit["neighbours"]] == [(3, 1)]


@pytest.mark.trio
async def test_hybrid_by_text_uses_the_namespace_embedder(client: ApiClient) -> None:
    texts = {1: "dark mode in the editor", 2: "tea with milk", 3: "coffee black"}
    for number, text in texts.items():
        body = {"id": number, "label": "Note", "text": text, "embed": True}
        assert (await client.post("/api/v1/nodes", body)).status == 201
    reply = await client.post("/api/v1/query/hybrid", {"text": "editor dark mode", "top_k": 1})
    assert reply.json["mode"] == "text"
    assert [hit["node"]["id"] for hit in reply.json["hits"]] == [1]
    stored = (await client.get("/api/v1/nodes/1")).json["node"]["vector"]
    expected = HashingEmbedder(128).embed(texts[1])
    assert stored == [float(value) for value in expected]


@pytest.mark.trio
async def test_hybrid_refuses_ambiguous_or_empty_targets(client: ApiClient) -> None:
    await build_graph(client)
    nothing = await client.post("/api/v1/query/hybrid", {"depth": 1}, query=SMALL)
    assert (nothing.status, nothing.error_field) == (422, "node_id")
    both = await client.post(
        "/api/v1/query/hybrid", {"vector": [1, 0, 0, 0], "text": "x"}, query=SMALL
    )
    assert both.status == 422
    label_with_node = await client.post(
        "/api/v1/query/hybrid", {"node_id": 1, "label": "Item"}, query=SMALL
    )
    assert (label_with_node.status, label_with_node.error_field) == (422, "label")
    wrong_dimension = await client.post("/api/v1/query/hybrid", {"vector": [1, 0]}, query=SMALL)
    assert (wrong_dimension.status, wrong_dimension.error_code) == (422, "wrong_dimension")


@pytest.mark.trio
async def test_queries_read_the_past_with_as_of(client: ApiClient) -> None:
    await build_graph(client)
    before = (await client.get("/api/v1/namespaces/small")).json["applied_index"]
    edge = await client.post(
        "/api/v1/edges", {"source": 4, "target": 5, "kind": "links"}, query=SMALL
    )
    assert edge.status == 201
    now = await client.get("/api/v1/nodes/4/related", query=SMALL)
    past = await client.get("/api/v1/nodes/4/related", query={**SMALL, "as_of": before})
    assert ids_and_hops(now) == [(5, 1), (3, 1)]
    assert ids_and_hops(past) == [(3, 1)]
    hybrid_past = await client.post(
        "/api/v1/query/hybrid", {"node_id": 4, "as_of": before}, query=SMALL
    )
    assert [hit["node"]["id"] for hit in hybrid_past.json["hits"]] == [3]
