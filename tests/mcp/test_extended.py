"""The extended profile's tools, in process: recall, neighbours, episodes, supersede, history,
provenance, forget, sessions and status; and recall quality with the default embedder."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ClientFactory
from mcp import Client
from recall_set import MEMORIES, QUESTIONS
from test_compat import call, call_error, entity, relation

from memora.service.embedding import MiniLmEmbedder

pytestmark = pytest.mark.trio
RECALL_AT_5_MIN = 0.90


async def people(client: Client) -> str:
    started = await call(client, "session_start", {"title": "onboarding"})
    session: str = started["session_id"]
    await call(
        client,
        "create_entities",
        {
            "entities": [
                entity("Alice", "person", "prefers dark roast coffee", "lives in Paris"),
                entity("Acme", "company", "builds rockets"),
                entity("Rex", "dog", "chases squirrels"),
            ],
            "session_id": session,
            "source": "chat",
            "confidence": 0.8,
            "valid_from": "2025-01-01",
        },
    )
    await call(
        client,
        "create_relations",
        {"relations": [relation("Alice", "Acme", "works_at"), relation("Alice", "Rex", "owns")]},
    )
    return session


async def test_memory_search_returns_score_parts_confidence_validity_and_provenance(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await people(client)
        found = await call(client, "memory_search", {"query": "rockets", "limit": 2})
    hits = found["results"]
    assert next(hit["name"] for hit in hits) == "Acme"
    top = hits[0]
    assert set(top["scores"]) == {"vector", "keyword", "graph", "recency"}
    assert top["scores"]["keyword"] == 1.0
    weights = {"vector": 0.70, "keyword": 0.10, "graph": 0.10, "recency": 0.10}
    assert top["score"] == pytest.approx(
        sum(weights[k] * v for k, v in top["scores"].items()), abs=1e-5
    )
    assert top["confidence"] == 0.8
    assert top["valid_from"] == "2025-01-01T00:00:00.000Z" and top["valid_to"] is None
    assert top["provenance_id"] == "n3v1"  # Node 1 is the session.
    assert top["matched_observations"][0]["text"] == "builds rockets"
    assert len(hits) == 2


async def test_memory_search_weights_and_archived_entities(connect: ClientFactory) -> None:
    async with connect() as client:
        await people(client)
        keyword_only = await call(
            client,
            "memory_search",
            {"query": "squirrels", "weights": {"vector": 0, "graph": 0, "recency": 0}},
        )
        await call(client, "memory_forget", {"entityNames": ["Rex"], "reason": "moved away"})
        hidden = await call(client, "memory_search", {"query": "squirrels"})
        shown = await call(
            client, "memory_search", {"query": "squirrels", "include_archived": True}
        )
        bad = await call_error(client, "memory_search", {"query": "x", "weights": {"magic": 1}})
    assert keyword_only["results"][0]["name"] == "Rex"
    assert keyword_only["results"][0]["score"] == pytest.approx(0.10 * 1.0)
    assert "Rex" not in [hit["name"] for hit in hidden["results"]]
    assert shown["results"][0]["name"] == "Rex" and shown["results"][0]["archived"]
    assert "weights" in bad


async def test_neighbors_walk_relations_to_a_depth(connect: ClientFactory) -> None:
    async with connect() as client:
        await people(client)
        await call(client, "create_entities", {"entities": [entity("Mars", "planet")]})
        await call(
            client, "create_relations", {"relations": [relation("Acme", "Mars", "flies_to")]}
        )
        one = await call(client, "memory_neighbors", {"name": "Alice"})
        two = await call(client, "memory_neighbors", {"name": "Alice", "depth": 2})
        outgoing = await call(client, "memory_neighbors", {"name": "Mars", "direction": "out"})
        missing = await call_error(client, "memory_neighbors", {"name": "Nobody"})
    assert [(n["name"], n["hops"]) for n in one["neighbors"]] == [("Acme", 1), ("Rex", 1)]
    assert ("Mars", 2) in [(n["name"], n["hops"]) for n in two["neighbors"]]
    assert outgoing["neighbors"] == []
    assert "not_found" in missing


async def test_an_episode_links_to_its_entities_and_provenance_follows_facts_to_it(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await people(client)
        episode = await call(
            client,
            "memory_remember",
            {"content": "Alice: 'I moved to Berlin last week!'", "about": ["Alice"]},
        )
        episode_id = episode["episode_id"]
        await call(
            client,
            "add_observations",
            {
                "observations": [{"entityName": "Alice", "contents": ["lives in Berlin"]}],
                "source": episode_id,
            },
        )
        history = await call(client, "memory_history", {"name": "Alice"})
        fact = next(v for v in history["versions"] if v.get("text") == "lives in Berlin")
        origin = await call(client, "memory_provenance", {"id": fact["provenance_id"]})
        graph = await call(client, "read_graph", {})
    assert origin["source"] == episode_id
    assert origin["episode"]["content"] == "Alice: 'I moved to Berlin last week!'"
    assert origin["episode"]["about"] == ["Alice"]
    assert [e["name"] for e in graph["entities"]] == ["Alice", "Acme", "Rex"]  # No episode.


async def test_supersede_closes_the_old_fact_and_keeps_it_in_history(
    connect: ClientFactory,
) -> None:
    async with connect() as client:
        await people(client)
        before = (await call(client, "memory_status", {}))["applied_index"]
        changed = await call(
            client,
            "memory_supersede",
            {
                "entityName": "Alice",
                "old_observation": "lives in Paris",
                "new_observation": "lives in Berlin",
            },
        )
        now = await call(client, "open_nodes", {"names": ["Alice"]})
        then = await call(client, "open_nodes", {"names": ["Alice"], "as_of": before})
        history = await call(client, "memory_history", {"name": "Alice"})
        added = next(v for v in history["versions"] if v.get("text") == "lives in Berlin")
        missing = await call_error(
            client,
            "memory_supersede",
            {"entityName": "Alice", "old_observation": "nope", "new_observation": "x"},
        )
    assert now["entities"][0]["observations"] == ["prefers dark roast coffee", "lives in Berlin"]
    assert then["entities"][0]["observations"] == ["prefers dark roast coffee", "lives in Paris"]
    changes = [
        (v.get("text"), v["change"]) for v in history["versions"] if v["kind"] == "observation"
    ]
    assert ("lives in Paris", "created") in changes and ("lives in Paris", "deleted") in changes
    assert added["source"] == f"supersedes:{changed['closed'].split('v')[0]}"
    assert "not_found" in missing


async def test_history_records_who_when_which_session_and_source(connect: ClientFactory) -> None:
    async with connect() as client:
        session = await people(client)
        await call(client, "delete_relations", {"relations": [relation("Alice", "Rex", "owns")]})
        history = await call(client, "memory_history", {"name": "Alice"})
        short = await call(client, "memory_history", {"name": "Alice", "limit": 2})
    versions = history["versions"]
    created = versions[0]
    assert (created["kind"], created["change"], created["name"]) == ("entity", "created", "Alice")
    assert created["session_id"] == session and created["source"] == "chat"
    assert created["principal"] == "local" and created["confidence"] == 0.8
    indexes = [v["commit_index"] for v in versions]
    assert indexes == sorted(indexes)
    relation_changes = [
        (v["relationType"], v["change"]) for v in versions if v["kind"] == "relation"
    ]
    assert ("owns", "deleted") in relation_changes
    assert short["versions"] == versions[-2:] and short["truncated"]


async def test_forget_by_tombstone_deletes_but_history_keeps_it(connect: ClientFactory) -> None:
    async with connect() as client:
        await people(client)
        forgotten = await call(
            client, "memory_forget", {"entityNames": ["Rex", "Nobody"], "mode": "tombstone"}
        )
        graph = await call(client, "read_graph", {})
        provenance = await call(client, "memory_provenance", {"id": "n4v2"})
    assert forgotten == {"mode": "tombstone", "forgotten": ["Rex"], "not_found": ["Nobody"]}
    assert [e["name"] for e in graph["entities"]] == ["Alice", "Acme"]
    assert provenance["change"] == "deleted" and provenance["name"] == "Rex"


async def test_sessions_start_end_and_list(connect: ClientFactory) -> None:
    async with connect() as client:
        first = await call(client, "session_start", {"title": "first"})
        second = await call(client, "session_start", {})
        await call(client, "session_end", {"session_id": first["session_id"], "summary": "ok"})
        again = await call(client, "session_end", {"session_id": first["session_id"]})
        every = await call(client, "sessions_list", {})
        active = await call(client, "sessions_list", {"active_only": True})
        unknown = await call_error(client, "session_end", {"session_id": "nope"})
        status = await call(client, "memory_status", {})
    assert again["status"] == "ended"
    listed = [(s["session_id"], s["status"]) for s in every["sessions"]]
    assert listed == [(second["session_id"], "active"), (first["session_id"], "ended")]
    assert every["sessions"][1]["summary"] == "ok"
    assert [s["session_id"] for s in active["sessions"]] == [second["session_id"]]
    assert "not_found" in unknown
    assert status["sessions"] == 2 and status["entities"] == 0


async def test_status_counts_what_the_memory_holds(connect: ClientFactory) -> None:
    async with connect() as client:
        await people(client)
        await call(client, "memory_remember", {"content": "a chat"})
        status = await call(client, "memory_status", {})
    assert (status["entities"], status["relations"], status["observations"]) == (3, 2, 4)
    assert (status["episodes"], status["sessions"]) == (1, 1)
    assert status["embedder"] == {"name": "hashing-64", "dimension": 64}
    assert status["node"]["role"] == "leader"


async def test_recall_finds_the_right_memory_in_the_top_5_for_paraphrased_questions(
    connect: ClientFactory,
) -> None:
    """The labelled set of tests/mcp/recall_set.py, through memory_search, default embedder."""
    async with connect(embedder=MiniLmEmbedder()) as client:
        entities: list[dict[str, Any]] = [entity(key, "memory", text) for key, text in MEMORIES]
        await call(client, "create_entities", {"entities": entities})
        misses = []
        for question, key in QUESTIONS:
            found = await call(client, "memory_search", {"query": question, "limit": 5})
            names = [hit["name"] for hit in found["results"]]
            if key not in names:
                misses.append((question, key, names))
    hit_rate = 1 - len(misses) / len(QUESTIONS)
    print(f"recall@5 = {hit_rate:.3f} over {len(QUESTIONS)} questions; misses: {misses}")
    assert hit_rate >= RECALL_AT_5_MIN, misses
