"""The reference memory server's file, `memory.jsonl`: read it, write it, import it, export it.

What lives here: `parse_memory_file` (the reference server's JSON Lines, or the legacy
`memory.json` holding one `{"entities": [...], "relations": [...]}` object), `to_jsonl` (the
reference server's exact bytes), `import_graph` and `export_graph`, and the `GraphStore` both run
on: an embedded `KnowledgeGraph` (`EmbeddedStore`) or the MCP endpoint of a running server
(`RemoteStore`), through the same tools. What must not: argument parsing, printing or exit codes
(`memora.transfer_cli`).

The file (src/memory/index.ts of @modelcontextprotocol/server-memory) holds one JSON object per
line, `{"type":"entity","name","entityType","observations"}` lines first, then
`{"type":"relation","from","to","relationType"}` lines, joined by "\\n" with no newline at the
end; each line is `JSON.stringify` output (no spaces, non-ASCII characters as they are). Blank
lines are skipped, as the reference skips them. Its legacy name `memory.json` holds the same
lines (the reference only renamed the file).

An import adds what is missing and counts what is there, so running it twice changes nothing.
For each chunk of entities it first asks which exist (`open_nodes`), so a second run embeds
nothing; it creates the new ones (`create_entities`) and adds the observations the existing ones
lack (`add_observations`). Then it creates the relations whose two ends exist
(`create_relations`). Every call is one atomic batch in Memora, so a call that fails changes
nothing; a call that fails because of one of its items is split in halves until that item is
found, reported and skipped, and the rest goes in.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol, TypeVar

import attrs
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from memora.core import constants, validate
from memora.core.errors import MemoraError
from memora.service.embedding import embed_texts_max
from memora.service.knowledge_graph import (
    EntityInput,
    JsonDict,
    KnowledgeGraph,
    ObservationInput,
    ReadContext,
    RelationInput,
    WriteContext,
    entities_per_call_max,
    entity_json,
    names_per_call_max,
    observations_per_entity_max,
    relation_json,
    relations_per_call_max,
)

# Entities per create_entities call unless `--chunk` says otherwise (at most
# `entities_per_call_max`), fewer when their texts would go over `call_texts_max`; relations go
# `relations_chunk_factor` times as many per call.
chunk_entities_default: Final = 250
relations_chunk_factor: Final = 4
# The texts of one call, in UTF-8 bytes: half of the HTTP body limit `memora serve` applies by
# default (8 MiB), leaving room for the JSON around and inside them.
call_text_bytes_max: Final = 4 * 1024 * 1024
# Texts one call embeds, which is also its commands (an entity is one, each observation one):
# `KnowledgeGraph` embeds a call's texts in one `embed_many`, which takes `embed_texts_max`.
call_texts_max: Final = min(embed_texts_max, constants.batch_commands_max)
# Entities per read_graph page of an export.
export_page_entities: Final = constants.list_limit_max
# A remote call embeds up to a chunk of texts on the server before it answers.
remote_call_timeout_s: Final = 600.0
remote_connect_timeout_s: Final = 30.0
# How much of a long text a report quotes.
quoted_chars_max: Final = 60

assert chunk_entities_default <= entities_per_call_max
assert entities_per_call_max * relations_chunk_factor <= relations_per_call_max
assert relations_per_call_max <= constants.batch_commands_max
assert observations_per_entity_max + 1 <= call_texts_max
assert constants.text_bytes_max <= call_text_bytes_max
assert 1 <= export_page_entities <= constants.list_limit_max

ProgressFn = Callable[[str, int, int], None]
T = TypeVar("T")
R = TypeVar("R")

# Only `errors="surrogateescape"` decoding puts these in a str: they stand for bytes that are not
# UTF-8. Any surrogate left in a text is written the way JSON.stringify writes a lone one.
_UNDECODABLE: Final = re.compile("[\udc80-\udcff]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# `memora.api.mcp.arguments.tool_error` writes "code: message (argument field)"; the SDK puts
# "Error executing tool NAME: " in front of it.
_TOOL_ERROR: Final = re.compile(
    r"(?s)(?:Error executing tool [^:]*: )?"
    r"(?P<code>[a-z_]+): (?P<message>.*?)(?: \(argument (?P<field>[^()]*)\))?"
)


# -- Parsing --------------------------------------------------------------------------------------


class MemoryFileError(Exception):
    """The text is not a memory file at all: no line of it is an entity or a relation."""


@attrs.frozen
class Problem:
    """Something that was skipped, or merged: where (`line 7`, `entities[3]`) and why."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@attrs.frozen
class ParsedEntity:
    name: str
    entity_type: str
    observations: tuple[str, ...]
    where: str


@attrs.frozen
class ParsedRelation:
    source: str
    target: str
    relation_type: str
    where: str


@attrs.frozen
class ParsedGraph:
    """A memory file's entities and relations in file order, and what of it was skipped."""

    entities: tuple[ParsedEntity, ...]
    relations: tuple[ParsedRelation, ...]
    problems: tuple[Problem, ...]
    legacy_object: bool = False  # The `{"entities": [...], "relations": [...]}` form.


class _Bad(Exception):
    """A field of one item that Memora cannot take (its message says why)."""


def decode_memory_file(data: bytes) -> str:
    """The file's text for `parse_memory_file`: a UTF-8 byte order mark is dropped, and bytes
    that are not UTF-8 are kept as surrogate escapes, so that only their lines are refused."""
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")


def parse_memory_file(text: str) -> ParsedGraph:
    """The entities and relations of a `memory.jsonl` (or legacy `memory.json`) text.

    A line that is not JSON, not an object, of an unknown `type`, or with a field missing or
    not what Memora takes (a name must be a non-empty string within `constants.name_bytes_max`
    UTF-8 bytes, and so on) is skipped and listed in `problems`; so is one bad observation of
    an entity, which keeps the others. `MemoryFileError` if nothing at all could be read."""
    whole = _legacy_object(text)
    parsed = _parse_lines(text) if whole is None else _parse_legacy_object(whole)
    if parsed.problems and not parsed.entities and not parsed.relations:
        shown = "; ".join(str(problem) for problem in parsed.problems[:3])
        raise MemoryFileError(f"no entity or relation could be read ({shown})")
    return parsed


def _legacy_object(text: str) -> dict[str, Any] | None:
    """The whole text as one `{"entities", "relations"}` object, or None if it is not one."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None  # Several lines of JSON Lines, or not JSON: read line by line.
    if not isinstance(value, dict) or "type" in value:
        return None
    return value if {"entities", "relations"} & value.keys() else None


def _parse_lines(text: str) -> ParsedGraph:
    builder = _Builder()
    for number, line in enumerate(text.split("\n"), start=1):
        body = line.strip(" \t\r")
        if body:
            builder.line(body, f"line {number}")
    return builder.graph(legacy_object=False)


def _parse_legacy_object(whole: dict[str, Any]) -> ParsedGraph:
    builder = _Builder()
    for key, kind in (("entities", "entity"), ("relations", "relation")):
        items = whole.get(key, [])
        if not isinstance(items, list):
            builder.problems.append(Problem(key, "must be a list"))
            continue
        for index, item in enumerate(items):
            builder.item(item, f"{key}[{index}]", kind)
    return builder.graph(legacy_object=True)


class _Builder:
    """Collects what the items of a file say, in file order."""

    def __init__(self) -> None:
        self.entities: list[ParsedEntity] = []
        self.relations: list[ParsedRelation] = []
        self.problems: list[Problem] = []

    def graph(self, *, legacy_object: bool) -> ParsedGraph:
        return ParsedGraph(
            tuple(self.entities), tuple(self.relations), tuple(self.problems), legacy_object
        )

    def line(self, body: str, where: str) -> None:
        if _UNDECODABLE.search(body):
            self.problems.append(Problem(where, "is not valid UTF-8"))
            return
        try:
            item = json.loads(body)
        except ValueError as error:
            message = getattr(error, "msg", str(error))
            column = getattr(error, "colno", None)
            at = f" at column {column}" if column is not None else ""
            self.problems.append(Problem(where, f"is not JSON ({message}{at})"))
            return
        self.item(item, where, None)

    def item(self, item: object, where: str, kind: str | None) -> None:
        """One entity or relation; `kind` is what the legacy object's list says it must be."""
        if not isinstance(item, dict):
            self.problems.append(Problem(where, "is not a JSON object"))
            return
        declared = item.get("type", kind)
        try:
            if kind is not None and declared != kind:
                raise _Bad(f"has type {declared!r} in the list of {kind} items")
            if declared == "entity":
                self.entities.append(self._entity(item, where))
            elif declared == "relation":
                self.relations.append(_relation(item, where))
            elif "type" not in item:
                raise _Bad('has no "type" (entity or relation)')
            else:
                raise _Bad(f"has an unknown type {declared!r}")
        except _Bad as bad:
            self.problems.append(Problem(where, str(bad)))

    def _entity(self, item: dict[str, Any], where: str) -> ParsedEntity:
        name = _text(item, "name", constants.name_bytes_max)
        entity_type = _text(item, "entityType", constants.label_bytes_max)
        observations = item.get("observations")
        if not isinstance(observations, list):
            raise _Bad('has no "observations" list')
        kept: list[str] = []
        for index, observation in enumerate(observations):
            try:
                kept.append(_checked(observation, "observation", constants.text_bytes_max))
            except _Bad as bad:
                self.problems.append(Problem(where, f"observations[{index}] skipped: {bad}"))
        return ParsedEntity(name, entity_type, tuple(kept), where)


def _relation(item: dict[str, Any], where: str) -> ParsedRelation:
    source = _text(item, "from", constants.name_bytes_max)
    target = _text(item, "to", constants.name_bytes_max)
    relation_type = _text(item, "relationType", constants.edge_kind_bytes_max)
    return ParsedRelation(source, target, relation_type, where)


def _text(item: dict[str, Any], key: str, bytes_max: int) -> str:
    if key not in item:
        raise _Bad(f'has no "{key}"')
    return _checked(item[key], key, bytes_max)


def _checked(value: object, field: str, bytes_max: int) -> str:
    """`value` if Memora stores it as a text: a non-empty string, short enough, no NUL."""
    try:
        return validate.text_field(value, field, bytes_max)
    except MemoraError as error:
        raise _Bad(error.message) from None


# -- Writing --------------------------------------------------------------------------------------


def to_jsonl(graph: JsonDict) -> str:
    """`{"entities", "relations"}` as the reference server writes its file, byte for byte."""
    return "\n".join(jsonl_lines(graph))


def jsonl_lines(graph: JsonDict) -> Iterator[str]:
    for entity in graph.get("entities", ()):
        yield entity_line(entity)
    for relation in graph.get("relations", ()):
        yield relation_line(relation)


def entity_line(entity: JsonDict) -> str:
    """One entity's line, with the reference's key order."""
    return _json_line(
        {
            "type": "entity",
            "name": entity["name"],
            "entityType": entity["entityType"],
            "observations": list(entity["observations"]),
        }
    )


def relation_line(relation: JsonDict) -> str:
    return _json_line(
        {
            "type": "relation",
            "from": relation["from"],
            "to": relation["to"],
            "relationType": relation["relationType"],
        }
    )


def _json_line(value: JsonDict) -> str:
    """`JSON.stringify(value)`: the same separators, escapes and lowercase hex."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


# -- Stores ---------------------------------------------------------------------------------------


UNKNOWN_CODE: Final = "error"  # A tool error that does not start with a Memora error code.


class StoreError(Exception):
    """A call the store refused: Memora's error `code` (`not_found`, `too_large`, ...), its
    message, and the argument at fault if it named one."""

    # Codes that one item of a call can cause; any other stops the whole transfer.
    ITEM_CODES: Final = ("invalid", "too_large", "not_found")

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        text = message if code == UNKNOWN_CODE else f"{code}: {message}"
        super().__init__(text + (f" (argument {field})" if field else ""))
        self.code = code
        self.message = message
        self.field = field

    @property
    def about_an_item(self) -> bool:
        """Whether one item of the call may be at fault (not the namespace, the caller...)."""
        return self.code in self.ITEM_CODES and self.field not in ("namespace", "as_of", None)

    @classmethod
    def from_tool_text(cls, text: str) -> StoreError:
        """The error of a tool result (`memora.api.mcp.arguments.tool_error` wrote it)."""
        match = _TOOL_ERROR.fullmatch(text.strip())
        if match is None:
            return cls(UNKNOWN_CODE, text.strip() or "the tool failed and said nothing")
        return cls(match["code"], match["message"], match["field"])


class GraphStore(Protocol):
    """The tools an import or an export calls, wherever the graph is."""

    async def create_entities(self, entities: Sequence[EntityInput]) -> list[JsonDict]: ...

    async def add_observations(self, items: Sequence[ObservationInput]) -> list[JsonDict]: ...

    async def create_relations(self, relations: Sequence[RelationInput]) -> list[JsonDict]: ...

    async def open_nodes(self, names: Sequence[str]) -> JsonDict: ...

    async def read_graph(
        self, *, limit: int | None, cursor: str | None, as_of: int | None
    ) -> JsonDict: ...


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except MemoraError as error:
        raise StoreError(error.code, error.message, error.field) from error


@attrs.frozen
class EmbeddedStore:
    """The graph of a node in this process (`memora import --data-dir`)."""

    graph: KnowledgeGraph
    write: WriteContext

    async def create_entities(self, entities: Sequence[EntityInput]) -> list[JsonDict]:
        with _store_errors():
            return await self.graph.create_entities(self.write, entities)

    async def add_observations(self, items: Sequence[ObservationInput]) -> list[JsonDict]:
        with _store_errors():
            return await self.graph.add_observations(self.write, items)

    async def create_relations(self, relations: Sequence[RelationInput]) -> list[JsonDict]:
        with _store_errors():
            return await self.graph.create_relations(self.write, relations)

    async def open_nodes(self, names: Sequence[str]) -> JsonDict:
        with _store_errors():
            return await self.graph.open_nodes(ReadContext(self.write.namespace), names)

    async def read_graph(
        self, *, limit: int | None, cursor: str | None, as_of: int | None
    ) -> JsonDict:
        context = ReadContext(self.write.namespace, as_of)
        with _store_errors():
            return await self.graph.read_graph(context, detail="full", limit=limit, cursor=cursor)


class RemoteStore:
    """The graph behind a server's MCP endpoint (`--server URL`), through its tools."""

    def __init__(self, client: Client, source: str | None) -> None:
        self._client = client
        self._provenance = {} if source is None else {"source": source}

    async def create_entities(self, entities: Sequence[EntityInput]) -> list[JsonDict]:
        arguments = [entity_json(e.name, e.entity_type, e.observations) for e in entities]
        answer = await self._call("create_entities", {"entities": arguments})
        return _answer_list(answer, "entities")

    async def add_observations(self, items: Sequence[ObservationInput]) -> list[JsonDict]:
        arguments = [{"entityName": i.entity_name, "contents": list(i.contents)} for i in items]
        answer = await self._call("add_observations", {"observations": arguments})
        return _answer_list(answer, "results")

    async def create_relations(self, relations: Sequence[RelationInput]) -> list[JsonDict]:
        arguments = [relation_json(r.source, r.target, r.relation_type) for r in relations]
        answer = await self._call("create_relations", {"relations": arguments})
        return _answer_list(answer, "relations")

    async def open_nodes(self, names: Sequence[str]) -> JsonDict:
        return await self._call("open_nodes", {"names": list(names)}, write=False)

    async def read_graph(
        self, *, limit: int | None, cursor: str | None, as_of: int | None
    ) -> JsonDict:
        arguments: JsonDict = {"detail": "full"}
        if limit is not None:
            arguments["limit"] = limit
        if cursor is not None:
            arguments["cursor"] = cursor
        if as_of is not None:
            arguments["as_of"] = as_of
        return await self._call("read_graph", arguments, write=False)

    async def _call(self, tool: str, arguments: JsonDict, *, write: bool = True) -> JsonDict:
        result = await self._client.call_tool(
            tool, {**arguments, **self._provenance} if write else arguments
        )
        if result.is_error:
            text = " ".join(getattr(block, "text", "") for block in result.content)
            raise StoreError.from_tool_text(text)
        answer = result.structured_content
        if not isinstance(answer, dict):
            raise StoreError("bad_answer", f"{tool} answered without structured content")
        return answer


def _answer_list(answer: JsonDict, key: str) -> list[JsonDict]:
    value = answer.get(key)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise StoreError("bad_answer", f"the answer has no list of objects {key!r}")
    return value


def with_namespace(url: str, namespace: str | None) -> str:
    """The MCP URL that picks `namespace` (`?namespace=`), or `url` as it is for None."""
    if namespace is None:
        return url
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(key, value) for key, value in query if key != "namespace"]
    query.append(("namespace", namespace))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@contextlib.asynccontextmanager
async def open_remote_store(
    url: str,
    token: str | None,
    source: str | None = None,
    refusals: list[str] | None = None,
) -> AsyncIterator[RemoteStore]:
    """A session with the MCP endpoint at `url`, `token` sent as the bearer token. The SDK
    turns an HTTP error into a bare "Server returned an error response": every HTTP error
    answer is added to `refusals` ("HTTP 401: unauthenticated: ...") to say what it was."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx2.Timeout(remote_connect_timeout_s, read=remote_call_timeout_s)

    async def record(response: httpx2.Response) -> None:
        if response.status_code >= 400 and refusals is not None:
            await response.aread()
            refusals.append(_http_refusal(response.status_code, response.text))

    async with (
        httpx2.AsyncClient(
            headers=headers, timeout=timeout, event_hooks={"response": [record]}
        ) as http_client,
        Client(
            streamable_http_client(url, http_client=http_client),
            mode="legacy",  # The initialize handshake, which every MCP server speaks.
            cache=None,
            read_timeout_seconds=remote_call_timeout_s,
        ) as client,
    ):
        yield RemoteStore(client, source)


def _http_refusal(status: int, body: str) -> str:
    """`HTTP 401: unauthenticated: ...` from Memora's error body, else the start of the body."""
    try:
        error = json.loads(body)["error"]
        detail = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        detail = " ".join(body.split())[:200] or "no details"
    return f"HTTP {status}: {detail}"


# -- Import ---------------------------------------------------------------------------------------


@attrs.define
class ImportReport:
    """What an import did. `skipped` says what was not imported and why; `notes` what was merged
    or dropped as a repeat, and what differs from what the memory already held."""

    entities_total: int = 0  # Distinct names.
    entities_created: int = 0
    entities_present: int = 0
    entities_merged: int = 0  # Lines repeating a name, merged into its first line.
    entities_skipped: int = 0
    observations_total: int = 0  # Distinct per entity.
    observations_added: int = 0
    observations_present: int = 0
    observations_repeated: int = 0  # Repeated within one entity of the file: dropped.
    observations_skipped: int = 0
    relations_total: int = 0  # Distinct (from, to, relationType).
    relations_created: int = 0
    relations_present: int = 0
    relations_repeated: int = 0
    relations_skipped: int = 0
    skipped: list[Problem] = attrs.Factory(list)
    notes: list[Problem] = attrs.Factory(list)


@attrs.frozen
class _Chunking:
    """How much one call may carry."""

    items_max: int
    texts_max: int = call_texts_max
    text_bytes_max: int = call_text_bytes_max


async def import_graph(
    store: GraphStore,
    parsed: ParsedGraph,
    chunk_size: int = chunk_entities_default,
    progress: ProgressFn | None = None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Add `parsed` to the store's graph (see the module docstring). `progress(phase, done,
    total)` is called after each chunk, phase "entities" or "relations". A `StoreError` that no
    single item caused (the server went away, the token may not write) stops the import; what
    was imported by then stays, and importing again is safe. Pass `report` to keep the counts
    of an import that stopped."""
    assert 1 <= chunk_size <= entities_per_call_max, chunk_size
    importer = _Importer(store, ImportReport() if report is None else report, chunk_size)
    entities = merge_entities(parsed.entities, importer.report)
    importer.report.entities_total = len(entities)
    importer.report.observations_total = sum(len(entity.observations) for entity in entities)
    imported: set[str] = set()
    done = 0
    for chunk in _chunks(entities, _entity_cost, _Chunking(chunk_size)):
        imported |= await importer.entities(chunk)
        done += len(chunk)
        if progress is not None:
            progress("entities", done, len(entities))
    relations = unique_relations(parsed.relations, importer.report)
    importer.report.relations_total = len(relations)
    await importer.relations(relations, imported, progress)
    return importer.report


def merge_entities(entities: Iterable[ParsedEntity], report: ImportReport) -> list[ParsedEntity]:
    """One entity per name, in the order of first appearance: a repeated name's observations
    join its first line's (whose type it keeps), and repeated observations are dropped."""
    merged: dict[str, tuple[ParsedEntity, dict[str, None]]] = {}
    for entity in entities:
        first, texts = merged.setdefault(entity.name, (entity, {}))
        if first is not entity:
            report.entities_merged += 1
            message = f"entity {_quote(entity.name)} again (first at {first.where}): merged"
            if first.entity_type != entity.entity_type:
                message += f", keeping the type {_quote(first.entity_type)}"
            report.notes.append(Problem(entity.where, message))
        for text in entity.observations:
            if text in texts:
                report.observations_repeated += 1
                message = f"entity {_quote(entity.name)} repeats the observation {_quote(text)}"
                report.notes.append(Problem(entity.where, f"{message}: dropped"))
            texts[text] = None
    return [
        ParsedEntity(first.name, first.entity_type, tuple(texts), first.where)
        for first, texts in merged.values()
    ]


def unique_relations(
    relations: Iterable[ParsedRelation], report: ImportReport
) -> list[ParsedRelation]:
    """Each (from, to, relationType) once, in the order of first appearance."""
    seen: dict[tuple[str, str, str], ParsedRelation] = {}
    for relation in relations:
        first = seen.setdefault(_relation_key(relation), relation)
        if first is not relation:
            report.relations_repeated += 1
            message = f"relation {_relation_text(relation)} again (first at {first.where})"
            report.notes.append(Problem(relation.where, f"{message}: dropped"))
    return list(seen.values())


def observation_pieces(texts: Sequence[str]) -> list[tuple[str, ...]]:
    """`texts` cut into pieces that one call can carry for one entity (none for no texts)."""
    pieces: list[tuple[str, ...]] = []
    piece: list[str] = []
    size = 0
    for text in texts:
        cost = _bytes(text)
        full = len(piece) == observations_per_entity_max or size + cost > call_text_bytes_max
        if piece and full:
            pieces.append(tuple(piece))
            piece, size = [], 0
        piece.append(text)
        size += cost
    if piece:
        pieces.append(tuple(piece))
    return pieces


class _Importer:
    """The calls of one import, and its report."""

    def __init__(self, store: GraphStore, report: ImportReport, chunk_size: int) -> None:
        self.store = store
        self.report = report
        self.chunk_size = chunk_size
        self.where: dict[str, str] = {}  # Entity name: its (first) place in the file.
        self.skipped_entities: set[str] = set()

    async def entities(self, chunk: list[ParsedEntity]) -> set[str]:
        """Create the chunk's new entities and add what the others lack; returns the names of
        the chunk that are now in the store."""
        self.where.update((entity.name, entity.where) for entity in chunk)
        existing = await self.existing_entities([entity.name for entity in chunk])
        by_name = {entity.name: entity for entity in chunk}
        skipped: set[str] = set()

        def failed(head: EntityInput, error: StoreError) -> None:
            entity = by_name[head.name]
            skipped.add(entity.name)
            self.skipped_entities.add(entity.name)
            self.report.entities_skipped += 1
            self.report.observations_skipped += len(entity.observations)
            message = f"entity {_quote(entity.name)} skipped: {error}"
            self.report.skipped.append(Problem(entity.where, message))

        heads = [_head(entity) for entity in chunk if entity.name not in existing]
        created = await _send_split(self.store.create_entities, heads, failed)
        created_names = {answer.get("name") for answer in created}
        self.report.observations_added += sum(len(a.get("observations", ())) for a in created)
        additions: list[ObservationInput] = []
        for entity in chunk:
            if entity.name in skipped:
                continue
            if entity.name in created_names:
                self.report.entities_created += 1
                additions += _inputs(entity.name, observation_pieces(entity.observations)[1:])
                continue
            self.report.entities_present += 1
            # Not created and not skipped: it existed, or another writer created it meanwhile.
            additions += self.missing_observations(entity, existing.get(entity.name))
        await self.observations(additions)
        return set(by_name) - skipped

    def missing_observations(
        self, entity: ParsedEntity, existing: JsonDict | None
    ) -> list[ObservationInput]:
        """What the store's entity lacks of the file's (all of it when not known)."""
        if existing is None:
            return _inputs(entity.name, observation_pieces(entity.observations))
        have = set(existing.get("observations", ()))
        missing = [text for text in entity.observations if text not in have]
        self.report.observations_present += len(entity.observations) - len(missing)
        if existing.get("entityType") != entity.entity_type:
            message = (
                f"entity {_quote(entity.name)} exists with the type "
                f"{_quote(str(existing.get('entityType')))}, which is kept (the file says "
                f"{_quote(entity.entity_type)})"
            )
            self.report.notes.append(Problem(entity.where, message))
        return _inputs(entity.name, observation_pieces(missing))

    async def observations(self, additions: list[ObservationInput]) -> None:
        def failed(item: ObservationInput, error: StoreError) -> None:
            self.report.observations_skipped += len(item.contents)
            message = f"{len(item.contents)} observations of {_quote(item.entity_name)} skipped"
            self.report.skipped.append(Problem(self.where[item.entity_name], f"{message}: {error}"))

        async def send(items: list[ObservationInput]) -> list[tuple[ObservationInput, JsonDict]]:
            answers = await self.store.add_observations(items)
            if len(answers) != len(items):
                raise StoreError("bad_answer", "add_observations answered for other items")
            return list(zip(items, answers, strict=True))

        for chunk in _chunks(additions, _observations_cost, _Chunking(self.chunk_size)):
            for item, answer in await _send_split(send, chunk, failed):
                added = len(answer.get("addedObservations", ()))
                self.report.observations_added += added
                self.report.observations_present += len(item.contents) - added

    async def relations(
        self, relations: list[ParsedRelation], imported: set[str], progress: ProgressFn | None
    ) -> None:
        """Create the relations whose ends exist; report the others."""
        ends = {name for relation in relations for name in (relation.source, relation.target)}
        known = imported | set(await self.existing_entities(sorted(ends - imported)))
        sendable: list[ParsedRelation] = []
        for relation in relations:
            missing = [name for name in (relation.source, relation.target) if name not in known]
            if missing:
                self.skip_relation(relation, self.why_missing(missing[0]))
            else:
                sendable.append(relation)
        by_key = {_relation_key(relation): relation for relation in sendable}

        def failed(relation: RelationInput, error: StoreError) -> None:
            parsed = by_key[(relation.source, relation.target, relation.relation_type)]
            self.skip_relation(parsed, str(error))

        items_max = min(self.chunk_size * relations_chunk_factor, relations_per_call_max)
        done = 0
        for chunk in _chunks(sendable, _relation_cost, _Chunking(items_max)):
            skipped_before = self.report.relations_skipped
            inputs = [RelationInput(r.source, r.target, r.relation_type) for r in chunk]
            created = await _send_split(self.store.create_relations, inputs, failed)
            skipped = self.report.relations_skipped - skipped_before
            self.report.relations_created += len(created)
            self.report.relations_present += len(chunk) - len(created) - skipped
            done += len(chunk)
            if progress is not None:
                progress("relations", done, len(sendable))

    def why_missing(self, name: str) -> str:
        if name in self.skipped_entities:
            return f"the entity {_quote(name)} was skipped ({self.where[name]})"
        return f"there is no entity {_quote(name)}"

    def skip_relation(self, relation: ParsedRelation, reason: str) -> None:
        self.report.relations_skipped += 1
        message = f"relation {_relation_text(relation)} skipped: {reason}"
        self.report.skipped.append(Problem(relation.where, message))

    async def existing_entities(self, names: Sequence[str]) -> dict[str, JsonDict]:
        """The store's entities of these names, by name."""
        found: dict[str, JsonDict] = {}
        for piece in _chunks(names, _name_cost, _Chunking(names_per_call_max)):
            for entity in _answer_list(await self.store.open_nodes(piece), "entities"):
                found[str(entity.get("name"))] = entity
        return found


async def _send_split(
    send: Callable[[list[T]], Awaitable[list[R]]],
    items: list[T],
    failed: Callable[[T, StoreError], None],
) -> list[R]:
    """`send(items)`. If that fails because of an item, the halves are sent, and so on down to
    single items: `failed` is told of each item that fails alone, and the rest goes in. Every
    call is atomic, so a failed one changed nothing and may be sent again in parts."""
    if not items:
        return []
    try:
        return await send(items)
    except StoreError as error:
        if not error.about_an_item:
            raise
        if len(items) == 1:
            failed(items[0], error)
            return []
    middle = len(items) // 2
    first = await _send_split(send, items[:middle], failed)
    return first + await _send_split(send, items[middle:], failed)


def _chunks(
    items: Sequence[T], cost: Callable[[T], tuple[int, int]], chunking: _Chunking
) -> Iterator[list[T]]:
    """`items` in order, cut so that no chunk goes over any of `chunking`'s limits (a single
    item over them is a chunk of its own). `cost(item)` is (texts to embed, UTF-8 bytes)."""
    chunk: list[T] = []
    texts = text_bytes = 0
    for item in items:
        item_texts, item_bytes = cost(item)
        full = (
            len(chunk) == chunking.items_max
            or texts + item_texts > chunking.texts_max
            or text_bytes + item_bytes > chunking.text_bytes_max
        )
        if chunk and full:
            yield chunk
            chunk, texts, text_bytes = [], 0, 0
        chunk.append(item)
        texts += item_texts
        text_bytes += item_bytes
    if chunk:
        yield chunk


def _head(entity: ParsedEntity) -> EntityInput:
    """What create_entities gets of an entity: the first piece of its observations."""
    pieces = observation_pieces(entity.observations)
    return EntityInput(entity.name, entity.entity_type, pieces[0] if pieces else ())


def _inputs(name: str, pieces: Iterable[tuple[str, ...]]) -> list[ObservationInput]:
    return [ObservationInput(name, piece) for piece in pieces]


def _entity_cost(entity: ParsedEntity) -> tuple[int, int]:
    head = _head(entity)
    texts = sum(_bytes(text) for text in head.observations)
    return 1 + len(head.observations), _bytes(entity.name) + _bytes(entity.entity_type) + texts


def _observations_cost(item: ObservationInput) -> tuple[int, int]:
    return len(item.contents), _bytes(item.entity_name) + sum(_bytes(t) for t in item.contents)


def _relation_cost(relation: ParsedRelation) -> tuple[int, int]:
    texts = (relation.source, relation.target, relation.relation_type)
    return 0, sum(_bytes(text) for text in texts)  # A relation embeds nothing.


def _name_cost(name: str) -> tuple[int, int]:
    return 0, _bytes(name)


def _relation_key(relation: ParsedRelation) -> tuple[str, str, str]:
    return relation.source, relation.target, relation.relation_type


def _relation_text(relation: ParsedRelation) -> str:
    source, target = _quote(relation.source), _quote(relation.target)
    return f"{source} -{_quote(relation.relation_type)}-> {target}"


def _quote(text: str) -> str:
    shown = text if len(text) <= quoted_chars_max else text[: quoted_chars_max - 3] + "..."
    return repr(shown)


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# -- Export ---------------------------------------------------------------------------------------


ENTITY_KEYS: Final = ("name", "entityType", "observations")
RELATION_KEYS: Final = ("from", "to", "relationType")


@attrs.frozen
class ExportCounts:
    entities: int
    relations: int


async def export_graph(
    store: GraphStore,
    write: Callable[[str], object],
    *,
    as_of: int | None = None,
    page_entities: int | None = export_page_entities,
) -> ExportCounts:
    """Write the store's graph (as of commit `as_of`, if given) with `write`, in the reference
    server's format: entity lines in creation order, then relation lines.

    The graph is read in pages of `page_entities` entities, each with the relations that start
    at its entities: relations come by the page of their `from` entity, in creation order
    within a page. With `page_entities=None` it is read in one answer, and relations come in
    creation order throughout (what an embedded export does: a file it imported comes back byte
    for byte at any size). Entity lines are written as they come; relations are kept until the last
    page. Over `--server` each page is a read of its own, so writes made during an export may
    show in later pages only; `as_of` reads one moment throughout."""
    assert page_entities is None or 1 <= page_entities <= constants.list_limit_max, page_entities
    relations: list[JsonDict] = []
    entities = 0
    separator = ""
    cursor: str | None = None
    while True:
        page = await store.read_graph(limit=page_entities, cursor=cursor, as_of=as_of)
        for entity in _answer_list(page, "entities"):
            write(separator + entity_line(_checked_answer(entity, ENTITY_KEYS)))
            separator = "\n"
            entities += 1
        relations += (_checked_answer(r, RELATION_KEYS) for r in _answer_list(page, "relations"))
        next_cursor = page.get("nextCursor")
        if next_cursor is None:
            break
        if not isinstance(next_cursor, str) or next_cursor == cursor:
            raise StoreError("bad_answer", f"read_graph answered the cursor {next_cursor!r}")
        cursor = next_cursor
    for relation in relations:
        write(separator + relation_line(relation))
        separator = "\n"
    return ExportCounts(entities, len(relations))


def _checked_answer(item: JsonDict, keys: tuple[str, ...]) -> JsonDict:
    missing = [key for key in keys if key not in item]
    if missing:
        raise StoreError("bad_answer", f"read_graph answered an item without {missing[0]!r}")
    return item
