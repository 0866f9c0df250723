"""The extended profile's operations: recall, neighbours, episodes, supersede, history,
provenance, forget, sessions and status, on any `NodeApi`.

What lives here: each operation as a read at a barrier or a write planned like the compat ones
(`memora.service.knowledge_graph`); the JSON-ready views they return. What must not: MCP
wire details, ranking arithmetic (`memora.service.recall`), Raft or state machine logic.

How the extended records sit in the data model:
- an episode (`memory_remember`) is a node labelled `memora.Episode` with no name (so the
  compat tools never show it), its content as text, embedded; it `mentions` the entities it is
  about. A fact written with `source="episode:<id>"` is linked to it, and `memory_provenance`
  follows that link;
- a session is a node labelled `memora.Session` with no name; its id (made here, random) is in
  its properties and in the `session` of every write made in it;
- `memory_supersede` tombstones the old observation and adds the new one in one atomic batch;
  the new one's source names the old one (`supersedes:o<id>`), its validity starts then, and the
  old one stays readable in `memory_history` and with `as_of`;
- `memory_forget` archives (the entity stays, flagged `archived`, left out of `memory_search`) or
  tombstones (deleted, with its observations and relations; history keeps every version).
  Purging history is left to people.

A provenance id names one version of one record: `n12v3` is node 12 version 3, `o5v1` an
observation, `e7v2` an edge.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import trio

from memora.core import constants, queries
from memora.core.errors import NotFoundError, ValidationError
from memora.core.namespace import NamespaceState
from memora.core.types import (
    AddObservation,
    DeleteNode,
    DeleteObservation,
    Edge,
    InsertEdge,
    InsertNode,
    Node,
    Observation,
    Provenance,
    Record,
    SimpleCommand,
    UpdateNode,
)
from memora.net.node_api import Consistency
from memora.service.keyword_index import KeywordIndex
from memora.service.knowledge_graph import (
    JsonDict,
    KnowledgeGraph,
    Plan,
    ReadContext,
    Vectors,
    WriteContext,
    edges_at,
    entity_id,
    entity_view,
    observation_text,
    observations_at,
    relations_touching,
)
from memora.service.recall import (
    ARCHIVED_PROPERTY,
    DEFAULT_WEIGHTS,
    RecallQuery,
    check_weights,
    rank,
)
from memora.service.times import iso_time

EPISODE_LABEL: Final = "memora.Episode"
SESSION_LABEL: Final = "memora.Session"
MENTIONS: Final = "mentions"
EPISODE_SOURCE_PREFIX: Final = "episode:"
history_versions_max: Final = 1_000
sessions_listed_max: Final = 1_000
_PROVENANCE_ID: Final = re.compile(r"([noe])(\d{1,19})v(\d{1,9})")
ForgetMode = Literal["archive", "tombstone"]


class ExtendedMemory:
    """The extended tools' operations over a `KnowledgeGraph`'s node and embedder."""

    def __init__(self, graph: KnowledgeGraph) -> None:
        self.graph = graph
        self._keyword_indexes: dict[str, KeywordIndex] = {}

    # -- Recall -----------------------------------------------------------------------------------

    async def search(
        self,
        context: ReadContext,
        query: str,
        *,
        limit: int = 10,
        near: Sequence[str] = (),
        weights: Mapping[str, float] | None = None,
        include_archived: bool = False,
    ) -> list[JsonDict]:
        """Hybrid recall (`memora.service.recall`): the best entities for `query`, each with its
        score parts, confidence, validity and provenance id."""
        checked = check_weights(weights or DEFAULT_WEIGHTS)
        vector = (await trio.to_thread.run_sync(self.graph.embedder.embed_many, [query]))[0]
        replica = await self.graph.node.read_barrier(context.consistency)
        ns = replica.machine.reader(context.namespace)
        index = self._keyword_index(ns)
        anchors = tuple(entity_id(ns, name, "near") for name in near)
        recall = RecallQuery(
            query,
            vector,
            limit,
            replica.machine.last_timestamp_ms,
            anchors,
            checked,
            include_archived,
        )
        return [
            _hit_json(ns, hit.node, hit.score, hit.parts, hit.observations)
            for hit in rank(ns, index, recall)
        ]

    def _keyword_index(self, ns: NamespaceState) -> KeywordIndex:
        index = self._keyword_indexes.setdefault(ns.info.name, KeywordIndex())
        index.refresh(ns)
        return index

    async def neighbors(
        self,
        context: ReadContext,
        name: str,
        *,
        depth: int = 1,
        relation_types: Sequence[str] | None = None,
        direction: Literal["in", "out", "both"] = "both",
        limit: int = 100,
    ) -> JsonDict:
        """The entities within `depth` hops of `name`, nearest first, with their relations."""
        ns = await self.graph.reader(context)
        node_id = entity_id(ns, name, "name", context.as_of)
        kinds = None if relation_types is None else frozenset(relation_types)
        found = queries.related(ns, node_id, depth, kinds, direction, context.as_of, limit)
        entities = [(node, hops) for node, hops in found if node.name is not None]
        centre = queries.get_node(ns, node_id, context.as_of)
        assert centre is not None
        nodes = [centre, *(node for node, _ in entities)]
        return {
            "entity": entity_view(ns, centre, context.as_of),
            "neighbors": [
                {**entity_view(ns, node, context.as_of), "hops": hops} for node, hops in entities
            ],
            "relations": relations_touching(ns, nodes, context.as_of, only_from=False),
        }

    # -- Episodes and supersede -------------------------------------------------------------------

    async def remember(self, context: WriteContext, content: str, about: Sequence[str]) -> JsonDict:
        """Store a raw episode (what was said or seen), linked to the entities it is about."""

        def plan(ns: NamespaceState, vectors: Vectors) -> Plan:
            node_id = ns.next_node_id
            targets = list(dict.fromkeys(entity_id(ns, name, "about") for name in about))
            commands: list[SimpleCommand] = [
                InsertNode(
                    EPISODE_LABEL,
                    id=node_id,
                    text=content,
                    vector=vectors[content],
                    provenance=context.provenance,
                )
            ]
            commands += [
                InsertEdge(node_id, target, MENTIONS, provenance=context.provenance)
                for target in targets
            ]
            episode = f"{EPISODE_SOURCE_PREFIX}{node_id}"
            return Plan(tuple(commands), {"episode_id": episode, "about": list(about)})

        result: JsonDict = await self.graph.write_planned(context, plan, Vectors())
        return result

    async def supersede(
        self, context: WriteContext, entity_name: str, old: str, new: str
    ) -> JsonDict:
        """Replace the observation `old` of an entity with `new`, keeping `old` in history."""
        text = observation_text(entity_name, new)

        def plan(ns: NamespaceState, vectors: Vectors) -> Plan:
            node_id = entity_id(ns, entity_name, "entityName")
            current = [o for o in observations_at(ns, node_id, None) if o.text == old]
            if not current:
                raise NotFoundError(f"{entity_name} has no observation {old!r}", "old_observation")
            closed = current[0]
            provenance = Provenance(
                f"supersedes:o{closed.id}",
                context.provenance.confidence,
                context.provenance.valid_from_ms,
                context.provenance.valid_to_ms,
            )
            commands = (
                DeleteObservation(closed.id),
                AddObservation(node_id, new, vectors[text], provenance=provenance),
            )
            return Plan(
                commands,
                {
                    "entityName": entity_name,
                    "closed": f"o{closed.id}v{closed.version}",
                    "added": new,
                },
            )

        result: JsonDict = await self.graph.write_planned(context, plan, Vectors())
        return result

    # -- History and provenance -------------------------------------------------------------------

    async def history(self, context: ReadContext, name: str, limit: int = 100) -> JsonDict:
        """Every version of an entity and of its observations and relations, oldest first."""
        if not 1 <= limit <= history_versions_max:
            raise ValidationError(f"limit must be between 1 and {history_versions_max}", "limit")
        ns = await self.graph.reader(context)
        node_id = entity_id(ns, name, "name", context.as_of)
        records: list[Record] = list(ns.nodes[node_id])
        for observation_id in ns.observations_ever.get(node_id, ()):
            records.extend(ns.observations[observation_id])
        for edge_id in ns.edges_ever.get(node_id, ()):
            records.extend(ns.edges[edge_id])
        if context.as_of is not None:
            records = [r for r in records if r.updated.index <= context.as_of]
        records.sort(key=lambda r: (r.updated.index, _kind_letter(r), r.id))
        return {
            "name": name,
            "versions": [_version_json(ns, r) for r in records[-limit:]],
            "truncated": len(records) > limit,
        }

    async def provenance(self, context: ReadContext, reference: str) -> JsonDict:
        """Who wrote a record version, when, in which session, from what source; and the
        episode it came from, if its source names one."""
        ns = await self.graph.reader(context)
        record = _record_of(ns, reference, context.as_of)
        view = _version_json(ns, record)
        source = record.provenance.source or ""
        if source.startswith(EPISODE_SOURCE_PREFIX):
            view["episode"] = _episode_json(ns, source)
        return view

    # -- Forget -----------------------------------------------------------------------------------

    async def forget(
        self, context: WriteContext, names: Sequence[str], mode: ForgetMode, reason: str | None
    ) -> JsonDict:
        """Archive or tombstone entities; unknown names are reported, not fatal."""
        if mode not in ("archive", "tombstone"):
            raise ValidationError("mode must be archive or tombstone", "mode")

        def plan(ns: NamespaceState, _: Vectors) -> Plan:
            found = {name: ns.names[name] for name in dict.fromkeys(names) if name in ns.names}
            commands: list[SimpleCommand] = []
            for node_id in found.values():
                if mode == "tombstone":
                    commands.append(DeleteNode(node_id))
                    continue
                node = ns.nodes[node_id][-1]
                properties = {**node.properties, ARCHIVED_PROPERTY: True}
                if reason:
                    properties["archived_reason"] = reason
                commands.append(UpdateNode(node_id, properties=properties))
            missing = [name for name in names if name not in found]
            return Plan(
                tuple(commands), {"mode": mode, "forgotten": list(found), "not_found": missing}
            )

        result: JsonDict = await self.graph.write_planned(context, plan, Vectors())
        return result

    # -- Sessions ---------------------------------------------------------------------------------

    async def session_start(self, context: WriteContext, title: str | None) -> JsonDict:
        session_id = uuid.uuid4().hex
        properties: dict[str, Any] = {"session_id": session_id, "status": "active"}
        if title:
            properties["title"] = title

        def plan(ns: NamespaceState, _: Vectors) -> Plan:
            node = InsertNode(
                SESSION_LABEL, properties=properties, text=title, provenance=context.provenance
            )
            return Plan((node,), {"session_id": session_id, "title": title})

        result: JsonDict = await self.graph.write_planned(context, plan, Vectors())
        return result

    async def session_end(
        self, context: WriteContext, session_id: str, summary: str | None
    ) -> JsonDict:
        def plan(ns: NamespaceState, _: Vectors) -> Plan:
            node = _session_node(ns, session_id)
            if node.properties.get("status") == "ended":
                return Plan((), {"session_id": session_id, "status": "ended"})
            properties = {**node.properties, "status": "ended"}
            if summary:
                properties["summary"] = summary
            return Plan(
                (UpdateNode(node.id, properties=properties),),
                {"session_id": session_id, "status": "ended"},
            )

        result: JsonDict = await self.graph.write_planned(context, plan, Vectors())
        return result

    async def sessions(
        self, context: ReadContext, limit: int = 50, active_only: bool = False
    ) -> list[JsonDict]:
        if not 1 <= limit <= sessions_listed_max:
            raise ValidationError(f"limit must be between 1 and {sessions_listed_max}", "limit")
        ns = await self.graph.reader(context)
        nodes = queries.list_nodes(ns, SESSION_LABEL, 0, constants.list_limit_max, context.as_of)
        views = [_session_json(node) for node in reversed(nodes)]
        if active_only:
            views = [view for view in views if view["status"] == "active"]
        return views[:limit]

    # -- Status -----------------------------------------------------------------------------------

    async def status(self, context: ReadContext) -> JsonDict:
        replica = await self.graph.node.read_barrier(Consistency.FOLLOWER)
        ns = replica.machine.reader(context.namespace)
        entities = len(ns.names)
        relations = sum(
            1 for (source, target, _) in ns.edge_keys if _named(ns, source) and _named(ns, target)
        )
        health = self.graph.node.health()
        return {
            "namespace": ns.info.name,
            "entities": entities,
            "relations": relations,
            "observations": sum(len(ids) for ids in ns.observations_live.values()),
            "episodes": len(ns.labels.get(EPISODE_LABEL, ())),
            "sessions": len(ns.labels.get(SESSION_LABEL, ())),
            "applied_index": replica.applied_index,
            "embedder": {
                "name": self.graph.embedder.name,
                "dimension": self.graph.embedder.dimension,
            },
            "node": {
                key: health.get(key)
                for key in ("node_id", "role", "term", "leader_id", "commit_index")
            },
        }


# -- Views and lookups ----------------------------------------------------------------------------


def _named(ns: NamespaceState, node_id: int) -> bool:
    node = ns.live_node(node_id)
    return node is not None and node.name is not None


def _kind_letter(record: Record) -> str:
    return "n" if isinstance(record, Node) else "o" if isinstance(record, Observation) else "e"


def provenance_id(record: Record) -> str:
    return f"{_kind_letter(record)}{record.id}v{record.version}"


def _record_of(ns: NamespaceState, reference: str, as_of: int | None) -> Record:
    """The record version a provenance id names, or the current version of a named entity."""
    match = _PROVENANCE_ID.fullmatch(reference)
    if match is None:
        node_id = entity_id(ns, reference, "id", as_of)
        node = queries.get_node(ns, node_id, as_of)
        assert node is not None
        return node
    letter, record_id, version = match.group(1), int(match.group(2)), int(match.group(3))
    versions: Sequence[Record] = ()
    if letter == "n":
        versions = ns.nodes.get(record_id, [])
    elif letter == "o":
        versions = ns.observations.get(record_id, [])
    else:
        versions = ns.edges.get(record_id, [])
    if not 1 <= version <= len(versions):
        raise NotFoundError(f"no record version {reference}", "id")
    record = versions[version - 1]
    assert record.version == version, (record, version)
    return record


def _version_json(ns: NamespaceState, record: Record) -> JsonDict:
    change = "deleted" if record.deleted else "created" if record.version == 1 else "updated"
    view: JsonDict = {
        "provenance_id": provenance_id(record),
        "change": change,
        "commit_index": record.updated.index,
        "time": iso_time(record.updated.timestamp_ms),
        "principal": record.updated.principal,
        "session_id": record.updated.session,
        "source": record.provenance.source,
        "confidence": record.provenance.confidence,
        "valid_from": iso_time(record.provenance.valid_from_ms),
        "valid_to": iso_time(record.provenance.valid_to_ms),
    }
    view.update(_record_body(ns, record))
    return view


def _record_body(ns: NamespaceState, record: Record) -> JsonDict:
    if isinstance(record, Node):
        return {
            "kind": "entity",
            "name": record.name,
            "entityType": record.label,
            "properties": record.properties,
        }
    if isinstance(record, Observation):
        owner = ns.nodes[record.node_id][-1]
        return {"kind": "observation", "entityName": owner.name, "text": record.text}
    assert isinstance(record, Edge)
    source, target = ns.nodes[record.source][-1], ns.nodes[record.target][-1]
    return {"kind": "relation", "from": source.name, "to": target.name, "relationType": record.kind}


def _episode_json(ns: NamespaceState, source: str) -> JsonDict | None:
    reference = source.removeprefix(EPISODE_SOURCE_PREFIX)
    if not reference.isdigit():
        return None
    versions = ns.nodes.get(int(reference))
    if not versions or versions[-1].label != EPISODE_LABEL:
        return None
    episode = versions[-1]
    about = [edge for edge in edges_at(ns, episode.id, None) if edge.kind == MENTIONS]
    names = [ns.nodes[edge.target][-1].name for edge in about]
    return {
        "episode_id": source,
        "content": episode.text,
        "about": names,
        "commit_index": episode.created.index,
    }


def _session_node(ns: NamespaceState, session_id: str) -> Node:
    for node_id in ns.labels.get(SESSION_LABEL, ()):
        node = ns.nodes[node_id][-1]
        if node.properties.get("session_id") == session_id:
            return node
    raise NotFoundError(f"no session {session_id!r}", "session_id")


def _session_json(node: Node) -> JsonDict:
    return {
        "session_id": node.properties.get("session_id"),
        "title": node.properties.get("title"),
        "status": node.properties.get("status"),
        "summary": node.properties.get("summary"),
        "started": iso_time(node.created.timestamp_ms),
        "principal": node.created.principal,
    }


def _hit_json(
    ns: NamespaceState,
    node: Node,
    score: float,
    parts: Mapping[str, float],
    observations: Sequence[Observation],
) -> JsonDict:
    assert node.name is not None
    return {
        "name": node.name,
        "entityType": node.label,
        "score": round(score, 6),
        "scores": {key: round(value, 6) for key, value in parts.items()},
        "matched_observations": [
            {
                "text": o.text,
                "provenance_id": provenance_id(o),
                "confidence": o.provenance.confidence,
            }
            for o in observations
        ],
        "observations": [o.text for o in observations_at(ns, node.id, None)],
        "confidence": node.provenance.confidence,
        "valid_from": iso_time(node.provenance.valid_from_ms),
        "valid_to": iso_time(node.provenance.valid_to_ms),
        "provenance_id": provenance_id(node),
        "updated": iso_time(node.updated.timestamp_ms),
        "archived": bool(node.properties.get(ARCHIVED_PROPERTY, False)),
    }
