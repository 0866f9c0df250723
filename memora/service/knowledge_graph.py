"""The reference MCP "memory" server's knowledge graph, kept in Memora's records.

What lives here: the compat profile's nine operations (`create_entities` ... `open_nodes`) with
the reference server's semantics, on any `NodeApi` (one node or a cluster member), plus the
views the extended tools and `memora export` share. What must not: MCP wire details
(`memora.api.mcp`), Raft or state machine logic (`memora.core`, `memora.net`).

The mapping onto the data model:
- an entity is a live node that has a name; `entityType` is the node's label, its observations
  are the node's live observations in the order they were added;
- a relation is a live edge between two entities; `relationType` is the edge's kind.
Nodes without a name (made over REST, or the extended profile's sessions and episodes) are not
entities and the compat tools never show them.

Writes are planned, then proposed. A plan is made from a linearizable read: it skips what
already exists (duplicate names, observations and relations are skipped, as in the reference),
checks what must exist (a relation's ends, an observed entity), and turns the rest into one
atomic `Batch` with explicit node ids, so that a new entity's observations can refer to it in
the same entry. Another writer may commit in between: the batch then fails with a conflict (the
name, the id or the relation is taken) and nothing of it is applied, so the plan is made again
from a fresh read. Two clients writing the same memory at once therefore lose nothing and never
duplicate anything: the reference server's corruption bug cannot happen here.

Every text is embedded before it is proposed (`memora.service.embedding`), in a worker thread,
so the trio loop keeps serving. An observation is embedded together with its entity's name
("Alice: prefers dark roast"), which is what a question about it usually mentions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Literal, TypeVar

import attrs
import numpy as np
import numpy.typing as npt
import trio

from memora.core import constants, queries
from memora.core.errors import ConflictError, LimitError, NotFoundError, ValidationError
from memora.core.namespace import NamespaceState
from memora.core.types import (
    AddObservation,
    Batch,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    DeleteObservation,
    Edge,
    InsertEdge,
    InsertNode,
    Node,
    Observation,
    Proposal,
    Provenance,
    SimpleCommand,
    vector_to_bytes,
)
from memora.net.node_api import Consistency, NodeApi, UnavailableError
from memora.service.embedding import Embedder, embed_texts_max

# The namespace MCP clients use unless they name another.
DEFAULT_MCP_NAMESPACE: Final = "memory"
# Per call: enough for a bulk import in chunks, small enough to keep one entry well under limits.
entities_per_call_max: Final = 1_000
observations_per_entity_max: Final = 1_000
relations_per_call_max: Final = 5_000
names_per_call_max: Final = 5_000
# How often a write is planned again after another writer changed what it read.
plan_attempts_max: Final = 16

JsonDict = dict[str, Any]
Detail = Literal["full", "summary", "names"]
DETAILS: Final = ("full", "summary", "names")
T = TypeVar("T")


@attrs.frozen
class EntityInput:
    name: str
    entity_type: str
    observations: tuple[str, ...] = ()


@attrs.frozen
class RelationInput:
    source: str
    target: str
    relation_type: str


@attrs.frozen
class ObservationInput:
    entity_name: str
    contents: tuple[str, ...]


@attrs.frozen
class WriteContext:
    """Who writes, into which namespace, in which session, and what they say about it."""

    namespace: str
    principal: str
    session: str | None = None
    provenance: Provenance = attrs.field(factory=Provenance)


@attrs.frozen
class Plan:
    """What one write will propose, and what it reports once committed."""

    commands: tuple[SimpleCommand, ...]
    result: Any


@attrs.frozen
class ReadContext:
    namespace: str
    as_of: int | None = None
    consistency: Consistency = Consistency.LINEARIZABLE


class Vectors:
    """Texts embedded so far for one write, as the bytes a command carries.

    A plan asks for the vector of each text it writes. A text not embedded yet is noted as
    missing and answered with a placeholder: the write embeds what is missing, then plans again
    from a fresh read, so only texts that will really be written are ever embedded (a client
    re-sending what exists pays no model time)."""

    def __init__(self) -> None:
        self._by_text: dict[str, bytes] = {}
        self.missing: dict[str, None] = {}

    def add(self, texts: Sequence[str], matrix: npt.NDArray[np.float32]) -> None:
        assert matrix.shape[0] == len(texts)
        for text, row in zip(texts, matrix, strict=True):
            self._by_text[text] = vector_to_bytes(row)

    def __getitem__(self, text: str) -> bytes:
        vector = self._by_text.get(text)
        if vector is None:
            self.missing[text] = None
            return b""
        return vector


def entity_text(name: str, entity_type: str) -> str:
    """What an entity's own vector embeds."""
    return f"{name} ({entity_type})"


def observation_text(entity_name: str, content: str) -> str:
    """What an observation's vector embeds: its text, in the context of its entity."""
    return f"{entity_name}: {content}"


class KnowledgeGraph:
    """The compat profile's operations on one node (see the module docstring)."""

    def __init__(self, node: NodeApi, embedder: Embedder) -> None:
        self.node = node
        self.embedder = embedder
        self._ready_namespaces: set[str] = set()  # Namespaces are never dropped: safe to keep.
        self._search_texts: dict[str, SearchTexts] = {}

    # -- Namespaces -------------------------------------------------------------------------------

    async def ensure_namespace(self, namespace: str, principal: str) -> None:
        """Create `namespace` with the embedder's dimension if it does not exist yet; refuse one
        whose dimension differs (its vectors could not be compared with this embedder's)."""
        if namespace in self._ready_namespaces:
            return
        replica = await self.node.read_barrier(Consistency.LINEARIZABLE)
        existing = replica.machine.namespaces.get(namespace)
        if existing is None:
            command = CreateNamespace(self.embedder.dimension, "cosine")
            try:
                await self.node.write(Proposal(0, principal, namespace, None, command))
                self._ready_namespaces.add(namespace)
                return
            except ConflictError:  # Created by another writer meanwhile.
                replica = await self.node.read_barrier(Consistency.LINEARIZABLE)
                existing = replica.machine.namespaces[namespace]
        dimension = existing.info.dimension
        if dimension != self.embedder.dimension:
            raise ValidationError(
                f"namespace {namespace!r} holds {dimension}-dimensional vectors, but the "
                f"embedder {self.embedder.name!r} makes {self.embedder.dimension}-dimensional "
                "ones; use another namespace or the embedder it was made with",
                "namespace",
            )
        self._ready_namespaces.add(namespace)

    # -- Writes -----------------------------------------------------------------------------------

    async def create_entities(
        self, context: WriteContext, entities: Sequence[EntityInput]
    ) -> list[JsonDict]:
        """Create the entities whose names are new; returns those it created."""
        _check_count(entities, "entities", entities_per_call_max)
        for entity in entities:
            _check_count(entity.observations, "observations", observations_per_entity_max)

        def plan(ns: NamespaceState, vectors: Vectors) -> Plan:
            return _plan_create_entities(ns, entities, vectors, context.provenance)

        result: list[JsonDict] = await self.write_planned(context, plan, Vectors())
        return result

    async def create_relations(
        self, context: WriteContext, relations: Sequence[RelationInput]
    ) -> list[JsonDict]:
        """Create the relations that do not exist yet; both ends must be existing entities."""
        _check_count(relations, "relations", relations_per_call_max)

        def plan(ns: NamespaceState, vectors: Vectors) -> Plan:
            return _plan_create_relations(ns, relations, context.provenance)

        result: list[JsonDict] = await self.write_planned(context, plan, Vectors())
        return result

    async def add_observations(
        self, context: WriteContext, items: Sequence[ObservationInput]
    ) -> list[JsonDict]:
        """Add the observations an entity does not have yet; the entity must exist."""
        _check_count(items, "observations", entities_per_call_max)
        for item in items:
            _check_count(item.contents, "contents", observations_per_entity_max)

        def plan(ns: NamespaceState, vectors: Vectors) -> Plan:
            return _plan_add_observations(ns, items, vectors, context.provenance)

        result: list[JsonDict] = await self.write_planned(context, plan, Vectors())
        return result

    async def delete_entities(self, context: WriteContext, names: Sequence[str]) -> int:
        """Delete the named entities with their observations and relations; unknown names are
        ignored. Returns how many were deleted."""
        _check_count(names, "entityNames", names_per_call_max)

        def plan(ns: NamespaceState, vectors: Vectors) -> Plan:
            ids = _unique(node_id for name in names if (node_id := ns.names.get(name)) is not None)
            return Plan(tuple(DeleteNode(node_id) for node_id in ids), len(ids))

        deleted: int = await self.write_planned(context, plan, Vectors())
        return deleted

    async def delete_observations(
        self, context: WriteContext, deletions: Sequence[ObservationInput]
    ) -> int:
        """Delete observations by their text; unknown entities and texts are ignored."""
        _check_count(deletions, "deletions", entities_per_call_max)

        def plan(ns: NamespaceState, vectors: Vectors) -> Plan:
            ids = _unique(_observations_to_delete(ns, deletions))
            return Plan(tuple(DeleteObservation(oid) for oid in ids), len(ids))

        deleted: int = await self.write_planned(context, plan, Vectors())
        return deleted

    async def delete_relations(
        self, context: WriteContext, relations: Sequence[RelationInput]
    ) -> int:
        """Delete relations by (from, to, relationType); unknown ones are ignored."""
        _check_count(relations, "relations", relations_per_call_max)

        def plan(ns: NamespaceState, vectors: Vectors) -> Plan:
            ids = _unique(_relations_to_delete(ns, relations))
            return Plan(tuple(DeleteEdge(edge_id) for edge_id in ids), len(ids))

        deleted: int = await self.write_planned(context, plan, Vectors())
        return deleted

    async def write_planned(
        self,
        context: WriteContext,
        plan: Callable[[NamespaceState, Vectors], Plan],
        vectors: Vectors,
    ) -> Any:
        """Plan from a fresh linearizable read and propose; plan again after embedding the texts
        the plan lacked, and after a conflict (another writer got in between the read and the
        write). Returns the plan's result."""
        for _ in range(plan_attempts_max):
            replica = await self.node.read_barrier(Consistency.LINEARIZABLE)
            vectors.missing.clear()
            planned = plan(replica.machine.reader(context.namespace), vectors)
            if vectors.missing:
                await self._embed(vectors, list(vectors.missing))
                continue  # The state may have moved while the model ran: plan again.
            if not planned.commands:
                return planned.result
            proposal = Proposal(
                0, context.principal, context.namespace, context.session, Batch(planned.commands)
            )
            try:
                await self.node.write(proposal)
            except ConflictError:
                continue
            return planned.result
        raise UnavailableError(
            f"the write conflicted with concurrent writes {plan_attempts_max} times in a row; "
            "try again"
        )

    async def _embed(self, vectors: Vectors, texts: Sequence[str]) -> None:
        """Embed `texts` in a worker thread, at most `embed_texts_max` per model call."""
        for start in range(0, len(texts), embed_texts_max):
            chunk = texts[start : start + embed_texts_max]
            matrix = await trio.to_thread.run_sync(self.embedder.embed_many, chunk)
            vectors.add(chunk, matrix)

    # -- Reads ------------------------------------------------------------------------------------

    async def reader(self, context: ReadContext) -> NamespaceState:
        """The namespace at a read barrier; read it synchronously, with no await in between."""
        replica = await self.node.read_barrier(context.consistency)
        return replica.machine.reader(context.namespace, context.as_of)

    async def read_graph(
        self,
        context: ReadContext,
        *,
        detail: Detail = "full",
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JsonDict:
        """The whole graph, or with `limit` one page of entities (in creation order) with the
        relations that start at them, so each relation comes once over all pages. `detail`:
        "full" (observations), "summary" (observation counts) or "names"."""
        if detail not in DETAILS:
            raise ValidationError(f"detail must be one of {', '.join(DETAILS)}", "detail")
        after_id = _cursor_id(cursor)
        ns = await self.reader(context)
        nodes = (node for node in entity_nodes(ns, context.as_of) if node.id > after_id)
        page = list(itertools.islice(nodes, None if limit is None else limit + 1))
        more = limit is not None and len(page) > limit
        page = page[:limit] if more else page
        view = graph_view(ns, page, context.as_of, only_from=limit is not None, detail=detail)
        if more:
            view["nextCursor"] = str(page[-1].id)
        return view

    async def search_nodes(self, context: ReadContext, query: str) -> JsonDict:
        """Entities whose name, type or an observation contains `query`, ignoring case, with
        every relation that touches them."""
        _check_text(query, "query")
        replica = await self.node.read_barrier(context.consistency)
        ns = replica.machine.reader(context.namespace, context.as_of)
        needle = query.lower()
        if context.as_of is None and SearchTexts.SEPARATOR not in needle:
            texts = self._search_texts.setdefault(ns.info.name, SearchTexts())
            found = texts.matching(ns, replica.machine.applied_index, needle)
        else:
            found = [
                node
                for node in entity_nodes(ns, context.as_of)
                if _contains(ns, node, needle, context.as_of)
            ]
        return graph_view(ns, found, context.as_of, only_from=False)

    async def open_nodes(self, context: ReadContext, names: Sequence[str]) -> JsonDict:
        """The named entities (unknown names are skipped) with every relation that touches them."""
        _check_count(names, "names", names_per_call_max)
        ns = await self.reader(context)
        by_name = entity_ids_by_name(ns, context.as_of)
        ids = _unique(node_id for name in names if (node_id := by_name.get(name)) is not None)
        nodes = [node for node_id in sorted(ids) if (node := _node(ns, node_id, context.as_of))]
        return graph_view(ns, nodes, context.as_of, only_from=False)


# -- Plans (pure: a namespace and the input in, commands and a result out) ------------------------


def _plan_create_entities(
    ns: NamespaceState, entities: Sequence[EntityInput], vectors: Vectors, provenance: Provenance
) -> Plan:
    commands: list[SimpleCommand] = []
    created: list[JsonDict] = []
    taken = set(ns.names)
    node_id = ns.next_node_id
    for entity in entities:
        if entity.name in taken:
            continue
        taken.add(entity.name)
        observations = list(dict.fromkeys(entity.observations))
        commands.append(
            InsertNode(
                entity.entity_type,
                id=node_id,
                name=entity.name,
                vector=vectors[entity_text(entity.name, entity.entity_type)],
                provenance=provenance,
            )
        )
        commands.extend(
            AddObservation(
                node_id,
                content,
                vectors[observation_text(entity.name, content)],
                provenance=provenance,
            )
            for content in observations
        )
        created.append(entity_json(entity.name, entity.entity_type, observations))
        node_id += 1
    return Plan(tuple(commands), created)


def _plan_create_relations(
    ns: NamespaceState, relations: Sequence[RelationInput], provenance: Provenance
) -> Plan:
    commands: list[SimpleCommand] = []
    created: list[JsonDict] = []
    seen: set[tuple[int, int, str]] = set()
    for position, relation in enumerate(relations):
        source = entity_id(ns, relation.source, f"relations[{position}].from")
        target = entity_id(ns, relation.target, f"relations[{position}].to")
        key = (source, target, relation.relation_type)
        if key in ns.edge_keys or key in seen:
            continue
        seen.add(key)
        commands.append(InsertEdge(source, target, relation.relation_type, provenance=provenance))
        created.append(relation_json(relation.source, relation.target, relation.relation_type))
    return Plan(tuple(commands), created)


def _plan_add_observations(
    ns: NamespaceState,
    items: Sequence[ObservationInput],
    vectors: Vectors,
    provenance: Provenance,
) -> Plan:
    commands: list[SimpleCommand] = []
    results: list[JsonDict] = []
    added_to: dict[int, set[str]] = {}
    for position, item in enumerate(items):
        node_id = entity_id(ns, item.entity_name, f"observations[{position}].entityName")
        have = added_to.setdefault(node_id, set(live_observation_texts(ns, node_id)))
        added = [text for text in dict.fromkeys(item.contents) if text not in have]
        have.update(added)
        commands.extend(
            AddObservation(
                node_id,
                text,
                vectors[observation_text(item.entity_name, text)],
                provenance=provenance,
            )
            for text in added
        )
        results.append({"entityName": item.entity_name, "addedObservations": added})
    return Plan(tuple(commands), results)


def _observations_to_delete(
    ns: NamespaceState, deletions: Sequence[ObservationInput]
) -> Iterator[int]:
    for deletion in deletions:
        node_id = ns.names.get(deletion.entity_name)
        if node_id is None:
            continue
        doomed = set(deletion.contents)
        for observation_id in ns.observations_live.get(node_id, {}):
            if ns.observations[observation_id][-1].text in doomed:
                yield observation_id


def _relations_to_delete(ns: NamespaceState, relations: Sequence[RelationInput]) -> Iterator[int]:
    for relation in relations:
        source = ns.names.get(relation.source)
        target = ns.names.get(relation.target)
        if source is None or target is None:
            continue
        edge_id = ns.edge_keys.get((source, target, relation.relation_type))
        if edge_id is not None:
            yield edge_id


def entity_id(ns: NamespaceState, name: str, field: str, as_of: int | None = None) -> int:
    """The id of the entity named `name` at `as_of`; NotFoundError naming `field` if none."""
    node_id = entity_ids_by_name(ns, as_of).get(name)
    if node_id is None:
        raise NotFoundError(f"Entity with name {name} not found", field)
    return node_id


# -- Views ----------------------------------------------------------------------------------------


def entity_json(name: str, entity_type: str, observations: Sequence[str]) -> JsonDict:
    return {"name": name, "entityType": entity_type, "observations": list(observations)}


def relation_json(source: str, target: str, relation_type: str) -> JsonDict:
    return {"from": source, "to": target, "relationType": relation_type}


def _node(ns: NamespaceState, node_id: int, as_of: int | None) -> Node | None:
    node = ns.live_node(node_id) if as_of is None else queries.get_node(ns, node_id, as_of)
    return node if node is not None and node.name is not None else None


def entity_nodes(ns: NamespaceState, as_of: int | None) -> Iterator[Node]:
    """The entities (named live nodes) at `as_of`, in the order they were created (by id)."""
    if as_of is None:
        for node_id in sorted(ns.names.values()):
            yield ns.nodes[node_id][-1]
        return
    for node_id in sorted(ns.nodes):
        node = queries.get_node(ns, node_id, as_of)
        if node is not None and node.name is not None:
            yield node


def entity_ids_by_name(ns: NamespaceState, as_of: int | None) -> dict[str, int]:
    if as_of is None:
        return ns.names
    return {node.name: node.id for node in entity_nodes(ns, as_of) if node.name is not None}


def observations_at(ns: NamespaceState, node_id: int, as_of: int | None) -> list[Observation]:
    """A node's live observations at `as_of`, in the order they were added."""
    if as_of is None:
        return [ns.observations[oid][-1] for oid in ns.observations_live.get(node_id, {})]
    found = (
        queries.get_observation(ns, oid, as_of) for oid in ns.observations_ever.get(node_id, ())
    )
    return [observation for observation in found if observation is not None]


def live_observation_texts(ns: NamespaceState, node_id: int) -> list[str]:
    return [observation.text for observation in observations_at(ns, node_id, None)]


def edges_at(ns: NamespaceState, node_id: int, as_of: int | None) -> list[Edge]:
    """The live edges that touch `node_id` at `as_of`, by edge id."""
    if as_of is None:
        ids = sorted({*ns.out_live.get(node_id, {}), *ns.in_live.get(node_id, {})})
        return [ns.edges[edge_id][-1] for edge_id in ids]
    return queries.edges_of(ns, node_id, "both", None, as_of)


def entity_view(
    ns: NamespaceState, node: Node, as_of: int | None, detail: Detail = "full"
) -> JsonDict:
    assert node.name is not None, node
    if detail == "names":
        return {"name": node.name, "entityType": node.label}
    observations = observations_at(ns, node.id, as_of)
    if detail == "summary":
        return {"name": node.name, "entityType": node.label, "observationCount": len(observations)}
    return entity_json(node.name, node.label, [observation.text for observation in observations])


def graph_view(
    ns: NamespaceState,
    nodes: Sequence[Node],
    as_of: int | None,
    *,
    only_from: bool,
    detail: Detail = "full",
) -> JsonDict:
    """`{"entities", "relations"}` for `nodes`, with the relations between entities that touch
    them (or, with `only_from`, that start at them: each relation once across pages)."""
    entities = [entity_view(ns, node, as_of, detail) for node in nodes]
    return {"entities": entities, "relations": relations_touching(ns, nodes, as_of, only_from)}


def relations_touching(
    ns: NamespaceState, nodes: Sequence[Node], as_of: int | None, only_from: bool
) -> list[JsonDict]:
    inside = {node.id for node in nodes}
    seen: set[int] = set()
    relations: list[tuple[int, JsonDict]] = []
    for node in nodes:
        for edge in edges_at(ns, node.id, as_of):
            if edge.id in seen or (only_from and edge.source not in inside):
                continue
            seen.add(edge.id)
            source, target = _node(ns, edge.source, as_of), _node(ns, edge.target, as_of)
            if source is None or target is None:
                continue  # An edge to a node that is not an entity (no name).
            assert source.name is not None and target.name is not None
            relations.append((edge.id, relation_json(source.name, target.name, edge.kind)))
    relations.sort(key=lambda pair: pair[0])
    return [relation for _, relation in relations]


class SearchTexts:
    """Each entity's searchable text (name, type, observations), lower-cased once and kept until
    the entity changes, for `search_nodes` on the live state.

    An entry is stale when the node's record is not the one it was made from (a new version is
    a new record) or the node's live observations are not the same ones (observations are
    added and deleted, never edited). After a write, every entry is checked (a few comparisons
    each); while the state does not move (the same applied index) a search only scans the
    texts. Lower-casing every text on every search was most of its cost."""

    SEPARATOR: Final = "\x00"  # Never in a needle that can match: a match stays in one field.

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Node, tuple[int, ...], str]] = {}
        self._checked_at = -1  # The applied index at which every entry was last checked.

    def matching(self, ns: NamespaceState, applied_index: int, needle: str) -> list[Node]:
        """The live entities whose text contains `needle` (already lower-cased), by id."""
        if applied_index != self._checked_at:
            live = ns.names.values()
            self._entries = {node_id: self._entry(ns, node_id) for node_id in sorted(live)}
            self._checked_at = applied_index
        return [node for node, _, text in self._entries.values() if needle in text]

    def _entry(self, ns: NamespaceState, node_id: int) -> tuple[Node, tuple[int, ...], str]:
        node = ns.nodes[node_id][-1]
        observation_ids = tuple(ns.observations_live.get(node_id, ()))
        entry = self._entries.get(node_id)
        if entry is not None and entry[0] is node and entry[1] == observation_ids:
            return entry
        assert node.name is not None
        parts = [node.name, node.label]
        parts += [ns.observations[oid][-1].text for oid in observation_ids]
        return node, observation_ids, self.SEPARATOR.join(parts).lower()


def _contains(ns: NamespaceState, node: Node, needle: str, as_of: int | None) -> bool:
    assert node.name is not None
    if needle in node.name.lower() or needle in node.label.lower():
        return True
    return any(needle in o.text.lower() for o in observations_at(ns, node.id, as_of))


# -- Input checks ---------------------------------------------------------------------------------


def _check_count(items: Sequence[object], field: str, maximum: int) -> None:
    if len(items) > maximum:
        raise LimitError(f"{field} holds {len(items)} items; the limit is {maximum}", field)


def _check_text(text: str, field: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > constants.text_bytes_max:
        raise LimitError(f"{field} is longer than {constants.text_bytes_max} bytes", field)


def _cursor_id(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 19:
        raise ValidationError("cursor must be the nextCursor of a previous page", "cursor")
    return int(cursor)


def _unique(ids: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(ids))
