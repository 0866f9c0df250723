"""Hybrid recall for `memory_search`: vectors, BM25, graph proximity and recency, in one score.

What lives here: the ranking, a pure function of one namespace at a read barrier and the query's
vector (`rank`). What must not: I/O, embedding (the caller embeds the query first), MCP shapes.

Candidates are the entities (named live nodes) that are near the query's vector, by their own
vector or by one of their observations' vectors, plus those whose words match (BM25,
`memora.service.keyword_index`). Each candidate gets four parts, each between 0 and 1:
- `vector`: the best cosine similarity of the entity's vector or an observation's, clipped at 0;
- `keyword`: its BM25 score divided by the best BM25 score among the candidates;
- `graph`: 1 / (1 + hops) from the nearest anchor, within two hops, else 0. The anchors are the
  entities named in `near`, or else the three best candidates by vector and keyword alone, so
  a hit close to other strong hits (spreading activation) rises;
- `recency`: 0.5 ** (age / 30 days), the age of its newest change against the newest applied
  write (the state's own clock, so the same read gives the same ranking on every replica).
The score is the weighted sum (`DEFAULT_WEIGHTS`, overridable per call), ties broken by node
id. The default weights favour meaning: on the labelled paraphrase set of tests/mcp/recall_set.py
(69 questions, all-MiniLM-L6-v2) recall@5 was 0.96 with the vector part alone, 0.91-0.96 with
these weights (depending on how entities are named), and 0.90-0.93 with a keyword weight of
0.25, because a question rarely repeats its memory's words. Keywords and the graph still break
ties and find exact names and identifiers that a sentence model blurs.

Archived entities (`memory_forget` with mode archive) are left out unless asked for, and so are
observations whose validity ended before the newest applied write.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs
import numpy as np

from memora.core import constants, queries
from memora.core.errors import ValidationError
from memora.core.namespace import NamespaceState
from memora.core.types import FloatArray, Node, Observation, vector_from_bytes
from memora.service.keyword_index import KeywordIndex

DEFAULT_WEIGHTS: Final[Mapping[str, float]] = {
    "vector": 0.70,
    "keyword": 0.10,
    "graph": 0.10,
    "recency": 0.10,
}
RECENCY_HALF_LIFE_MS: Final = 30 * 24 * 3600 * 1000
ANCHORS_MAX: Final = 3
GRAPH_HOPS_MAX: Final = 2
CANDIDATES_PER_HIT: Final = 5
CANDIDATES_MIN: Final = 50
ARCHIVED_PROPERTY: Final = "archived"


@attrs.frozen
class RecallHit:
    node: Node
    score: float
    parts: Mapping[str, float]
    observations: tuple[Observation, ...]  # The observations that matched best, best first.


@attrs.frozen
class RecallQuery:
    text: str
    vector: FloatArray
    limit: int = 10
    now_ms: int = 0  # The newest write's timestamp: recency and validity are measured from it.
    near: tuple[int, ...] = ()  # Node ids of anchor entities.
    weights: Mapping[str, float] = DEFAULT_WEIGHTS
    include_archived: bool = False


def check_weights(weights: Mapping[str, float]) -> Mapping[str, float]:
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValidationError(
            f"unknown weights {sorted(unknown)}; use {list(DEFAULT_WEIGHTS)}", "weights"
        )
    merged = {**DEFAULT_WEIGHTS, **weights}
    if any(not math.isfinite(w) or w < 0 for w in merged.values()) or sum(merged.values()) <= 0:
        raise ValidationError("weights must be finite, >= 0, and not all 0", "weights")
    return merged


def rank(ns: NamespaceState, index: KeywordIndex, query: RecallQuery) -> list[RecallHit]:
    """The `query.limit` best entities of the namespace's live state (see the module doc)."""
    if not 1 <= query.limit <= constants.top_k_max:
        raise ValidationError(f"limit must be between 1 and {constants.top_k_max}", "limit")
    wanted = min(constants.top_k_max, max(CANDIDATES_MIN, query.limit * CANDIDATES_PER_HIT))
    now_ms = query.now_ms
    similarity, matched = _vector_candidates(ns, query.vector, wanted, now_ms)
    keyword = dict(index.search(query.text, wanted)) if query.text.strip() else {}
    ids = [i for i in dict.fromkeys([*similarity, *keyword]) if _eligible(ns, i, query)]
    for node_id in ids:
        if node_id not in similarity:
            similarity[node_id], matched[node_id] = _exact_similarity(
                ns, node_id, query.vector, now_ms
            )
    best_keyword = max((keyword.get(i, 0.0) for i in ids), default=0.0)
    parts = {
        i: {
            "vector": max(0.0, similarity[i]),
            "keyword": keyword.get(i, 0.0) / best_keyword if best_keyword > 0 else 0.0,
            "recency": _recency(ns.nodes[i][-1], matched[i], now_ms),
        }
        for i in ids
    }
    anchors = query.near or _top(ids, parts, query.weights, ANCHORS_MAX)
    hops = _hops_from(ns, anchors)
    for node_id in ids:
        distance = hops.get(node_id)
        parts[node_id]["graph"] = 0.0 if distance is None else 1.0 / (1.0 + distance)
    scored = [(sum(query.weights[k] * v for k, v in parts[i].items()), i) for i in ids]
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    return [
        RecallHit(ns.nodes[i][-1], score, parts[i], tuple(matched[i][:3]))
        for score, i in scored[: query.limit]
    ]


def _eligible(ns: NamespaceState, node_id: int, query: RecallQuery) -> bool:
    node = ns.live_node(node_id)
    if node is None or node.name is None:
        return False
    return query.include_archived or not node.properties.get(ARCHIVED_PROPERTY, False)


def _current(observation: Observation, now_ms: int) -> bool:
    valid_to = observation.provenance.valid_to_ms
    return valid_to is None or valid_to >= now_ms


def _vector_candidates(
    ns: NamespaceState, vector: FloatArray, wanted: int, now_ms: int
) -> tuple[dict[int, float], dict[int, list[Observation]]]:
    """Entity id -> best similarity, and its matching observations, from both vector indexes."""
    similarity: dict[int, float] = {}
    matched: dict[int, list[Observation]] = {}
    for node_id, distance in ns.node_vectors.search(vector, wanted):
        similarity[node_id] = max(similarity.get(node_id, -1.0), 1.0 - distance)
        matched.setdefault(node_id, [])
    for observation_id, distance in ns.observation_vectors.search(vector, wanted):
        observation = ns.observations[observation_id][-1]
        if not _current(observation, now_ms):
            continue
        node_id = observation.node_id
        similarity[node_id] = max(similarity.get(node_id, -1.0), 1.0 - distance)
        matched.setdefault(node_id, []).append(observation)
    return similarity, matched


def _exact_similarity(
    ns: NamespaceState, node_id: int, vector: FloatArray, now_ms: int
) -> tuple[float, list[Observation]]:
    """The best similarity of a keyword-only candidate, and its observations, best first."""
    node = ns.nodes[node_id][-1]
    best = _cosine(node.vector, vector)
    scored = []
    for observation_id in ns.observations_live.get(node_id, {}):
        observation = ns.observations[observation_id][-1]
        if _current(observation, now_ms):
            scored.append((_cosine(observation.vector, vector), observation_id, observation))
    scored.sort(key=lambda item: (-item[0], item[1]))
    if scored:
        best = max(best, scored[0][0])
    return best, [observation for _, _, observation in scored]


def _cosine(data: bytes | None, vector: FloatArray) -> float:
    if data is None:
        return 0.0
    stored = vector_from_bytes(data)
    norms = float(np.linalg.norm(stored)) * float(np.linalg.norm(vector))
    return 0.0 if norms == 0.0 else float(np.dot(stored, vector)) / norms


def _recency(node: Node, observations: Sequence[Observation], now_ms: int) -> float:
    newest = max([node.updated.timestamp_ms, *(o.updated.timestamp_ms for o in observations)])
    age = max(0, now_ms - newest)
    return float(0.5 ** (age / RECENCY_HALF_LIFE_MS))


def _top(
    ids: Iterable[int],
    parts: Mapping[int, Mapping[str, float]],
    weights: Mapping[str, float],
    count: int,
) -> tuple[int, ...]:
    def preliminary(node_id: int) -> tuple[float, int]:
        own = parts[node_id]
        return (-(weights["vector"] * own["vector"] + weights["keyword"] * own["keyword"]), node_id)

    return tuple(sorted(ids, key=preliminary)[:count])


def _hops_from(ns: NamespaceState, anchors: Sequence[int]) -> dict[int, int]:
    """Node id -> fewest hops from any anchor (anchors at 0), up to GRAPH_HOPS_MAX."""
    hops: dict[int, int] = {}
    for anchor in anchors:
        if ns.live_node(anchor) is None:
            continue
        hops[anchor] = 0
        reached = queries.related_depths(
            ns, anchor, GRAPH_HOPS_MAX, None, "both", None, constants.hybrid_expand_nodes_max
        )
        for node_id, distance in reached.items():
            hops[node_id] = min(distance, hops.get(node_id, distance))
    return hops
