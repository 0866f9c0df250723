"""`memora import` and `memora export`: the reference memory server's `memory.jsonl` in and out.

Parsing and writing are checked on their own (blank lines, CRLF, bad lines named by number, the
legacy `memory.json` object, `JSON.stringify`'s exact bytes). The commands run as a user runs
them (`memora.cli.main`) on a temporary data directory, and against a real `memora serve`
process over `--server`: a realistic file comes back byte for byte, a second import changes
nothing, an import merges into what a memory holds, relations to missing entities are reported
and the rest imported, and `--as-of` exports an earlier state. Every server and import uses the
hashing embedder (no model to load).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from memora import cli, transfer_cli
from memora.net.driver import LOCK_FILE, NodeDriver
from memora.service import jsonl_io
from memora.service.embedding import HashingEmbedder, embed_texts_max
from memora.service.jsonl_io import (
    EmbeddedStore,
    MemoryFileError,
    ParsedEntity,
    ParsedRelation,
    StoreError,
    decode_memory_file,
    export_graph,
    import_graph,
    parse_memory_file,
    to_jsonl,
)
from memora.service.knowledge_graph import (
    EntityInput,
    JsonDict,
    KnowledgeGraph,
    ObservationInput,
    RelationInput,
    WriteContext,
    entities_per_call_max,
    observations_per_entity_max,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from memora_process import MemoraProcess

EMBEDDER = ("--embedder", "hashing")
WRITER = "import-writer-token-0123456789"
READER = "import-reader-token-0123456789"
mcp_line_timeout_s = 10.0
_MCP_URL = re.compile(r"MCP \(streamable HTTP\) on (http://\S+/mcp)")


# -- Files ----------------------------------------------------------------------------------------


def line(value: dict[str, Any]) -> str:
    """A line as the reference server writes it (`JSON.stringify`)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def entity(name: str, entity_type: str, observations: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "entity",
        "name": name,
        "entityType": entity_type,
        "observations": [*observations],
    }


def relation(source: str, target: str, relation_type: str) -> dict[str, Any]:
    return {"type": "relation", "from": source, "to": target, "relationType": relation_type}


def memory_file(items: Sequence[dict[str, Any]]) -> str:
    return "\n".join(line(item) for item in items)


NAMES = (
    "Alice", "Bob", "Zoë Ångström", "李雷", "Ωmega Corp", "Dvořák", "Иван Петров", "مريم",
    "O'Brien \"Bobby\"", "back\\slash", "😀 Smiley", "Ça va", "東京", "Nguyễn Văn A",
    "Straße 5", "tab\there", "Ελένη", "José", "Łódź office", "naïve café",
)  # fmt: skip
TYPES = ("person", "organization", "place", "project", "préférence")
FACTS = (
    "likes green tea", "works on Memora", "lives in Zürich", "said: \"ship it\"",
    "line one\nline two", "emoji 🎉 party", "uses C:\\path\\to\\file", "control \u0001 char",
    "separator \u2028 inside", "حقيقة بالعربية", "日本語の観察", "prefers dark mode",
    "met at PyCon 2024", "allergic to peanuts", "<b>html</b> & stuff", "tab\tseparated",
)  # fmt: skip
KINDS = ("knows", "works_at", "lives_in", "manages", "likes", "a été créé par")


def realistic_items(seed: int = 7, entities: int = 40, relations: int = 70) -> list[dict[str, Any]]:
    """Entities with unicode names and observations (none repeated within an entity), then
    relations in an order unrelated to their `from` entities."""
    prng = random.Random(seed)
    names = [
        f"{NAMES[i % len(NAMES)]} #{i}" if i >= len(NAMES) else NAMES[i] for i in range(entities)
    ]
    items = [
        entity(name, prng.choice(TYPES), prng.sample(FACTS, prng.randint(0, 5))) for name in names
    ]
    seen: set[tuple[str, str, str]] = set()
    while len(seen) < relations:
        key = (prng.choice(names), prng.choice(names), prng.choice(KINDS))
        if key not in seen:
            seen.add(key)
            items.append(relation(*key))
    return items


# -- Running the commands -------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    """`memora ARGUMENTS` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = cli.main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def import_file(capsys: pytest.CaptureFixture[str], path: Path, data_dir: Path, *flags: str) -> str:
    code, out, err = run(
        capsys, "import", str(path), "--data-dir", str(data_dir), *EMBEDDER, *flags
    )
    assert code == 0, err
    return out


def export_text(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    code, out, err = run(capsys, "export", "--format", "jsonl", *flags)
    assert code == 0, err
    return out


def counts(summary: str) -> dict[str, list[int]]:
    """The numbers of an import summary's lines: {"entities": [total, created, present,
    skipped], ...}."""
    found = {}
    for kind in ("entities", "observations", "relations"):
        match = re.search(
            rf"^  {kind} +(\d+): (\d+) \w+, (\d+) already present, (\d+) skipped", summary, re.M
        )
        assert match, summary
        found[kind] = [int(group) for group in match.groups()]
    return found


def commit_index(summary: str) -> int:
    match = re.search(r"commit index (\d+)", summary)
    assert match, summary
    return int(match.group(1))


# -- Parsing --------------------------------------------------------------------------------------


def test_parse_skips_blank_lines_and_reads_crlf() -> None:
    text = (
        "\r\n"
        + line(entity("Alice", "person", ["likes tea"]))
        + "\r\n   \n\t\n"
        + line(entity("Bob", "person", []))
        + "\r\n"
        + line(relation("Alice", "Bob", "knows"))
        + "\r\n\n"
    )
    parsed = parse_memory_file(text)
    assert parsed.problems == ()
    assert parsed.entities == (
        ParsedEntity("Alice", "person", ("likes tea",), "line 2"),
        ParsedEntity("Bob", "person", (), "line 5"),
    )
    assert parsed.relations == (ParsedRelation("Alice", "Bob", "knows", "line 6"),)
    assert not parsed.legacy_object


def test_parse_reports_bad_lines_by_number_and_keeps_the_rest() -> None:
    lines = [
        line(entity("Alice", "person", ["ok", 7, "", "also ok"])),  # 1: two bad observations
        "{not json",  # 2
        "[1, 2]",  # 3
        line({"type": "thing", "name": "x"}),  # 4
        line({"name": "no type", "entityType": "t", "observations": []}),  # 5
        line({"type": "entity", "entityType": "t", "observations": []}),  # 6: no name
        line({"type": "entity", "name": "Carol", "entityType": 3, "observations": []}),  # 7
        line({"type": "entity", "name": "Dan", "entityType": "t"}),  # 8: no observations
        line(relation("Alice", "", "knows")),  # 9: empty end
        line(entity("x" * 600, "person", [])),  # 10: name over 512 bytes
        line(entity("nul\u0000", "person", [])),  # 11
        line(relation("Alice", "Alice", "self")),  # 12
    ]
    parsed = parse_memory_file("\n".join(lines))
    assert [entity.name for entity in parsed.entities] == ["Alice"]
    assert parsed.entities[0].observations == ("ok", "also ok")
    assert [(r.source, r.where) for r in parsed.relations] == [("Alice", "line 12")]
    problems = [str(problem) for problem in parsed.problems]
    assert [problem.where for problem in parsed.problems] == [
        "line 1", "line 1", *(f"line {number}" for number in range(2, 12))
    ]  # fmt: skip
    assert "observations[1] skipped: observation must be a string" in problems[0]
    assert "observations[2] skipped: observation must not be empty" in problems[1]
    assert problems[2].startswith("line 2: is not JSON (")
    assert problems[3] == "line 3: is not a JSON object"
    assert problems[4] == "line 4: has an unknown type 'thing'"
    assert problems[5] == 'line 5: has no "type" (entity or relation)'
    assert problems[6] == 'line 6: has no "name"'
    assert problems[7] == "line 7: entityType must be a string"
    assert problems[8] == 'line 8: has no "observations" list'
    assert problems[9] == "line 9: to must not be empty"
    assert problems[10] == "line 10: name is 600 bytes; the limit is 512"
    assert problems[11] == "line 11: name must not contain NUL characters"


def test_bytes_that_are_not_utf8_spoil_only_their_line() -> None:
    data = b"\xef\xbb\xbf" + line(entity("Alice", "p", [])).encode() + b"\n"
    data += b'{"type":"entity","name":"caf\xe9","entityType":"p","observations":[]}'
    parsed = parse_memory_file(decode_memory_file(data))
    assert [entity.name for entity in parsed.entities] == ["Alice"]
    assert [str(problem) for problem in parsed.problems] == ["line 2: is not valid UTF-8"]


def test_parse_reads_the_legacy_object_form() -> None:
    legacy = {
        "entities": [
            {"name": "Alice", "entityType": "person", "observations": ["likes tea"]},
            {"type": "entity", "name": "Bob", "entityType": "person", "observations": []},
            {"name": "Bad", "entityType": "person"},
        ],
        "relations": [{"from": "Alice", "to": "Bob", "relationType": "knows"}],
    }
    parsed = parse_memory_file(json.dumps(legacy, indent=2))
    assert parsed.legacy_object
    assert [entity.name for entity in parsed.entities] == ["Alice", "Bob"]
    assert parsed.relations == (ParsedRelation("Alice", "Bob", "knows", "relations[0]"),)
    assert [str(problem) for problem in parsed.problems] == [
        'entities[2]: has no "observations" list'
    ]
    # The legacy file name with JSON Lines in it (what the reference only renamed).
    one_line = line(entity("Alice", "person", []))
    assert not parse_memory_file(one_line).legacy_object
    assert parse_memory_file(one_line).entities[0].name == "Alice"


def test_a_file_with_nothing_readable_is_refused_and_an_empty_one_is_empty() -> None:
    with pytest.raises(MemoryFileError, match=r"line 1: is not JSON"):
        parse_memory_file("hello\nworld")
    with pytest.raises(MemoryFileError, match=r"line 2: has an unknown type"):
        parse_memory_file("\n" + line({"type": "nope"}))
    empty = parse_memory_file("\n \n")
    assert (empty.entities, empty.relations, empty.problems) == ((), (), ())


# -- Writing --------------------------------------------------------------------------------------

TRICKY = {
    "entities": [
        {
            "name": 'Zoë "Z" \\ 李',
            "entityType": "person",
            "observations": ["a\nb\tc\u0001\u007f\u2028 😀", "/slash/ </script>", "\ud800 lone"],
        },
        {"name": "Bob", "entityType": "person", "observations": []},
    ],
    "relations": [{"from": 'Zoë "Z" \\ 李', "to": "Bob", "relationType": "knows"}],
}


def test_to_jsonl_writes_the_reference_format() -> None:
    expected = (
        '{"type":"entity","name":"Zoë \\"Z\\" \\\\ 李","entityType":"person","observations":'
        '["a\\nb\\tc\\u0001\u007f\u2028 😀","/slash/ </script>","\\ud800 lone"]}\n'
        '{"type":"entity","name":"Bob","entityType":"person","observations":[]}\n'
        '{"type":"relation","from":"Zoë \\"Z\\" \\\\ 李","to":"Bob","relationType":"knows"}'
    )
    assert to_jsonl(TRICKY) == expected
    assert to_jsonl({"entities": [], "relations": []}) == ""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js for JSON.stringify")
def test_to_jsonl_is_what_json_stringify_writes() -> None:
    """The reference server's own `saveGraph`, run on Node.js."""
    script = """
        const graph = JSON.parse(require("fs").readFileSync(0, "utf-8"));
        const lines = [
          ...graph.entities.map(e => JSON.stringify({type: "entity", name: e.name,
              entityType: e.entityType, observations: e.observations})),
          ...graph.relations.map(r => JSON.stringify({type: "relation", from: r.from,
              to: r.to, relationType: r.relationType})),
        ];
        process.stdout.write(lines.join("\\n"));
    """
    graph = {**TRICKY, "entities": [*TRICKY["entities"], *realistic_items()[:3]]}
    graph["entities"] = [{k: v for k, v in e.items() if k != "type"} for e in graph["entities"]]
    done = subprocess.run(
        ["node", "-e", script],
        input=json.dumps(graph).encode(),  # ASCII escapes carry the lone surrogate through.
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert to_jsonl(graph).encode("utf-8") == done.stdout


# -- Import and export on a data directory --------------------------------------------------------


def test_a_realistic_file_comes_back_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = realistic_items()
    text = memory_file(items)
    source = tmp_path / "memory.jsonl"
    source.write_text(text, encoding="utf-8")
    data_dir = tmp_path / "data"
    summary = import_file(capsys, source, data_dir, "--chunk", "7")
    observations = sum(len(item.get("observations", [])) for item in items)
    assert counts(summary) == {
        "entities": [40, 40, 0, 0],
        "observations": [observations, observations, 0, 0],
        "relations": [70, 70, 0, 0],
    }
    assert export_text(capsys, "--data-dir", str(data_dir)).encode() == text.encode()
    output = tmp_path / "exported.jsonl"
    export_text(capsys, "--data-dir", str(data_dir), "--output", str(output))
    assert output.read_bytes() == text.encode("utf-8")


def test_a_file_larger_than_one_page_comes_back_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Relations between entities of different read_graph pages keep their file order."""
    items = realistic_items(seed=11, entities=1_100, relations=300)
    text = memory_file(items)
    source = tmp_path / "memory.jsonl"
    source.write_text(text, encoding="utf-8")
    data_dir = tmp_path / "data"
    import_file(capsys, source, data_dir)
    assert export_text(capsys, "--data-dir", str(data_dir)).encode() == text.encode()


def test_importing_twice_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = realistic_items(seed=3, entities=25, relations=30)
    source = tmp_path / "memory.jsonl"
    source.write_text(memory_file(items), encoding="utf-8")
    data_dir = tmp_path / "data"
    import_file(capsys, source, data_dir)
    first = export_text(capsys, "--data-dir", str(data_dir))
    again = counts(import_file(capsys, source, data_dir, "--chunk", "4"))
    observations = sum(len(item.get("observations", [])) for item in items)
    assert again == {
        "entities": [25, 0, 25, 0],
        "observations": [observations, 0, observations, 0],
        "relations": [30, 0, 30, 0],
    }
    assert export_text(capsys, "--data-dir", str(data_dir)) == first


def test_an_import_merges_into_what_the_memory_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    before = tmp_path / "before.jsonl"
    before.write_text(
        memory_file(
            [
                entity("Alice", "person", ["likes tea", "lives in Oslo"]),
                entity("Bob", "person", ["plays chess"]),
                relation("Alice", "Bob", "knows"),
            ]
        )
    )
    import_file(capsys, before, data_dir)
    more = tmp_path / "more.jsonl"
    more.write_text(
        memory_file(
            [
                entity("Alice", "human", ["lives in Oslo", "speaks Norwegian"]),
                entity("Carol", "person", ["new here"]),
                relation("Alice", "Bob", "knows"),
                relation("Carol", "Bob", "knows"),  # Bob is only in the memory, not the file.
            ]
        )
    )
    summary = import_file(capsys, more, data_dir)
    assert counts(summary) == {
        "entities": [2, 1, 1, 0],
        "observations": [3, 2, 1, 0],
        "relations": [2, 1, 1, 0],
    }
    assert "line 1: entity 'Alice' exists with the type 'person', which is kept" in summary
    assert export_text(capsys, "--data-dir", str(data_dir)) == memory_file(
        [
            entity("Alice", "person", ["likes tea", "lives in Oslo", "speaks Norwegian"]),
            entity("Bob", "person", ["plays chess"]),
            entity("Carol", "person", ["new here"]),
            relation("Alice", "Bob", "knows"),
            relation("Carol", "Bob", "knows"),
        ]
    )


def test_repeats_in_the_file_are_dropped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "memory.jsonl"
    source.write_text(
        memory_file(
            [
                entity("Alice", "person", ["likes tea", "likes tea", "runs"]),
                entity("Bob", "person", []),
                entity("Alice", "robot", ["runs", "sings"]),  # The reference can write this.
                relation("Alice", "Bob", "knows"),
                relation("Alice", "Bob", "knows"),
            ]
        )
    )
    data_dir = tmp_path / "data"
    summary = import_file(capsys, source, data_dir)
    assert counts(summary) == {
        "entities": [2, 2, 0, 0],
        "observations": [3, 3, 0, 0],
        "relations": [1, 1, 0, 0],
    }
    assert "(1 repeated names merged)" in summary
    assert "(2 repeats dropped)" in summary  # Observations.
    assert "(1 repeats dropped)" in summary  # Relations.
    assert "line 1: entity 'Alice' repeats the observation 'likes tea': dropped" in summary
    assert "line 3: entity 'Alice' again (first at line 1): merged, keeping the type" in summary
    assert "line 3: entity 'Alice' repeats the observation 'runs': dropped" in summary
    assert "line 5: relation 'Alice' -'knows'-> 'Bob' again (first at line 4): dropped" in summary
    assert export_text(capsys, "--data-dir", str(data_dir)) == memory_file(
        [
            entity("Alice", "person", ["likes tea", "runs", "sings"]),
            entity("Bob", "person", []),
            relation("Alice", "Bob", "knows"),
        ]
    )


def test_relations_to_missing_entities_are_reported_and_the_rest_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "memory.jsonl"
    source.write_text(
        memory_file(
            [
                entity("Alice", "person", []),
                entity("Bob", "person", []),
                relation("Alice", "Ghost", "knows"),
                relation("Alice", "Bob", "knows"),
                relation("Phantom", "Bob", "haunts"),
                relation("Bob", "Alice", "knows"),
            ]
        )
    )
    data_dir = tmp_path / "data"
    summary = import_file(capsys, source, data_dir, "--chunk", "1")
    assert counts(summary)["relations"] == [4, 2, 0, 2]
    assert "line 3: relation 'Alice' -'knows'-> 'Ghost' skipped: there is no entity 'Ghost'" in (
        summary
    )
    assert "line 5: relation 'Phantom' -'haunts'-> 'Bob' skipped: there is no entity" in summary
    exported = export_text(capsys, "--data-dir", str(data_dir))
    assert exported.split("\n")[2:] == [
        line(relation("Alice", "Bob", "knows")),
        line(relation("Bob", "Alice", "knows")),
    ]


def test_the_legacy_object_file_imports_like_its_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = realistic_items(seed=11, entities=12, relations=10)
    legacy = {
        "entities": [{k: v for k, v in item.items() if k != "type"} for item in items[:12]],
        "relations": [{k: v for k, v in item.items() if k != "type"} for item in items[12:]],
    }
    source = tmp_path / "memory.json"
    source.write_text(json.dumps(legacy, indent=2, ensure_ascii=False), encoding="utf-8")
    import_file(capsys, source, tmp_path / "data")
    assert export_text(capsys, "--data-dir", str(tmp_path / "data")) == memory_file(items)


def test_export_as_of_an_earlier_commit_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    first = tmp_path / "first.jsonl"
    first_items = [entity("Alice", "person", ["likes tea"]), entity("Bob", "person", [])]
    first.write_text(memory_file([*first_items, relation("Alice", "Bob", "knows")]))
    index = commit_index(import_file(capsys, first, data_dir))
    second = tmp_path / "second.jsonl"
    second.write_text(
        memory_file(
            [entity("Alice", "person", ["likes coffee"]), relation("Bob", "Alice", "knows")]
        )
    )
    assert commit_index(import_file(capsys, second, data_dir)) > index
    then = export_text(capsys, "--data-dir", str(data_dir), "--as-of", str(index))
    assert then == first.read_text()
    now = export_text(capsys, "--data-dir", str(data_dir))
    assert '"observations":["likes tea","likes coffee"]' in now
    assert now.endswith(line(relation("Bob", "Alice", "knows")))
    assert export_text(capsys, "--data-dir", str(data_dir), "--as-of", "0") == ""


def test_export_pages_hold_every_entity_and_relation_once(tmp_path: Path) -> None:
    items = realistic_items(seed=5, entities=23, relations=40)
    parsed = parse_memory_file(memory_file(items))

    async def main() -> tuple[list[str], list[str]]:
        node = NodeDriver.open(str(tmp_path / "data"))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            graph = KnowledgeGraph(node, HashingEmbedder(32))
            await graph.ensure_namespace("memory", "test")
            store = EmbeddedStore(graph, WriteContext("memory", "test"))
            await import_graph(store, parsed, chunk_size=5)
            whole: list[str] = []
            paged: list[str] = []
            await export_graph(store, whole.append)
            counted = await export_graph(store, paged.append, page_entities=4)
            assert (counted.entities, counted.relations) == (23, 40)
            node.stop()
        return whole, paged

    whole, paged = trio.run(main)
    assert "".join(whole) == memory_file(items)  # One page: relations in creation order.
    assert paged[:23] == whole[:23]
    assert [text.lstrip("\n") for text in paged] != [text.lstrip("\n") for text in whole]
    assert sorted(text.lstrip("\n") for text in paged) == sorted(t.lstrip("\n") for t in whole)


# -- Chunks that fail because of one item ---------------------------------------------------------


class FakeStore:
    """A memory in dictionaries that fails like Memora: a whole call, atomically."""

    def __init__(self, poison: str = "", ghosts: Sequence[str] = ()) -> None:
        self.entities: dict[str, JsonDict] = {}
        self.relations: list[tuple[str, str, str]] = []
        self.poison = poison  # A name whose create_entities call is too large.
        self.ghosts = set(ghosts)  # Names open_nodes claims exist (deleted meanwhile, say).
        self.calls: list[str] = []

    async def create_entities(self, entities: Sequence[EntityInput]) -> list[JsonDict]:
        self.calls.append(f"create_entities {len(entities)}")
        if any(item.name == self.poison for item in entities):
            raise StoreError("too_large", "the command encodes to 70000000 bytes", "command")
        created = []
        for item in entities:
            if item.name not in self.entities:
                self.entities[item.name] = {
                    "name": item.name,
                    "entityType": item.entity_type,
                    "observations": list(dict.fromkeys(item.observations)),
                }
                created.append(self.entities[item.name])
        return created

    async def add_observations(self, items: Sequence[ObservationInput]) -> list[JsonDict]:
        answers = []
        for item in items:
            have = self.entities[item.entity_name]["observations"]
            added = [text for text in item.contents if text not in have]
            have += added
            answers.append({"entityName": item.entity_name, "addedObservations": added})
        return answers

    async def create_relations(self, relations: Sequence[RelationInput]) -> list[JsonDict]:
        self.calls.append(f"create_relations {len(relations)}")
        for position, item in enumerate(relations):
            for end, field in ((item.source, "from"), (item.target, "to")):
                if end not in self.entities:
                    message = f"Entity with name {end} not found"
                    raise StoreError("not_found", message, f"relations[{position}].{field}")
        created = []
        for item in relations:
            key = (item.source, item.target, item.relation_type)
            if key not in self.relations:
                self.relations.append(key)
                created.append({"from": key[0], "to": key[1], "relationType": key[2]})
        return created

    async def open_nodes(self, names: Sequence[str]) -> JsonDict:
        found = [self.entities[name] for name in names if name in self.entities]
        ghosts = [
            {"name": name, "entityType": "ghost", "observations": []}
            for name in names
            if name in self.ghosts
        ]
        return {"entities": found + ghosts, "relations": []}

    async def read_graph(self, *, limit: int, cursor: str | None, as_of: int | None) -> JsonDict:
        raise AssertionError("not used")


def test_a_chunk_that_fails_because_of_one_entity_is_split_around_it() -> None:
    names = [f"e{number}" for number in range(10)]
    items = [entity(name, "t", [f"fact of {name}"]) for name in names]
    items += [relation("e1", "e7", "knows"), relation("e7", "e2", "knows")]
    store = FakeStore(poison="e7")
    report = trio.run(import_graph, store, parse_memory_file(memory_file(items)), 8)
    assert sorted(store.entities) == sorted(set(names) - {"e7"})
    assert (report.entities_created, report.entities_skipped) == (9, 1)
    assert (report.observations_added, report.observations_skipped) == (9, 1)
    assert report.relations_skipped == 2
    assert str(report.skipped[1]) == (
        "line 11: relation 'e1' -'knows'-> 'e7' skipped: the entity 'e7' was skipped (line 8)"
    )
    assert str(report.skipped[0]) == (
        "line 8: entity 'e7' skipped: too_large: the command encodes to 70000000 bytes "
        "(argument command)"
    )
    # 8 fail, then 4 + 4 (one fails), 2 + 2 (one fails), 1 + 1 (one fails); then the last 2.
    assert store.calls[:8] == [f"create_entities {n}" for n in (8, 4, 4, 2, 2, 1, 1, 2)]


def test_a_relation_whose_end_vanished_is_split_out_and_the_rest_created() -> None:
    items = [entity(name, "t", []) for name in ("a", "b", "c")]
    items += [relation("a", "b", "r"), relation("b", "gone", "r"), relation("c", "a", "r")]
    store = FakeStore(ghosts=["gone"])  # The check finds it; the write does not.
    report = trio.run(import_graph, store, parse_memory_file(memory_file(items)))
    assert store.relations == [("a", "b", "r"), ("c", "a", "r")]
    assert (report.relations_created, report.relations_present, report.relations_skipped) == (
        2,
        0,
        1,
    )
    assert str(report.skipped[0]) == (
        "line 5: relation 'b' -'r'-> 'gone' skipped: not_found: Entity with name gone not "
        "found (argument relations[0].to)"
    )


class LimitedStore(FakeStore):
    """Refuses, as no single item's fault, a call over the limits KnowledgeGraph enforces."""

    async def create_entities(self, entities: Sequence[EntityInput]) -> list[JsonDict]:
        self.check(len(entities), [len(item.observations) for item in entities], len(entities))
        return await super().create_entities(entities)

    async def add_observations(self, items: Sequence[ObservationInput]) -> list[JsonDict]:
        self.check(len(items), [len(item.contents) for item in items], 0)
        return await super().add_observations(items)

    def check(self, items: int, observations: list[int], entity_texts: int) -> None:
        texts = entity_texts + sum(observations)
        if items > entities_per_call_max or max(observations) > observations_per_entity_max:
            raise StoreError("limit", f"{items} items, {max(observations)} observations")
        if texts > embed_texts_max:
            raise StoreError("limit", f"{texts} texts in one call")


def test_calls_stay_within_the_limits_of_one_call() -> None:
    many = [f"fact {number}" for number in range(2_500)]
    items = [entity("big", "t", many)]
    items += [entity(f"e{number}", "t", ["a", "b", "c"]) for number in range(1_200)]
    store = LimitedStore()
    report = trio.run(import_graph, store, parse_memory_file(memory_file(items)), 1_000)
    assert store.entities["big"]["observations"] == many
    assert (report.entities_created, report.observations_added) == (1_201, 2_500 + 3_600)
    assert report.skipped == []


def test_an_error_no_item_caused_stops_the_import() -> None:
    class Unavailable(FakeStore):
        async def create_relations(self, relations: Sequence[RelationInput]) -> list[JsonDict]:
            raise StoreError("unavailable", "no leader is known; retry later")

    store = Unavailable()
    items = [entity("a", "t", ["x"]), entity("b", "t", []), relation("a", "b", "r")]
    report = jsonl_io.ImportReport()
    with pytest.raises(StoreError, match="unavailable"):
        trio.run(import_graph, store, parse_memory_file(memory_file(items)), 10, None, report)
    assert (report.entities_created, report.observations_added) == (2, 1)


def test_tool_error_texts_are_read_back_into_codes() -> None:
    error = StoreError.from_tool_text(
        "Error executing tool create_relations: not_found: Entity with name X (1) not found "
        "(argument relations[3].from)"
    )
    assert (error.code, error.message, error.field) == (
        "not_found",
        "Entity with name X (1) not found",
        "relations[3].from",
    )
    assert error.about_an_item
    namespace = StoreError.from_tool_text("invalid: namespace 'memory' holds (argument namespace)")
    assert not namespace.about_an_item
    other = StoreError.from_tool_text("Error executing tool x: 1 validation error for X")
    assert not other.about_an_item
    assert str(other) == "Error executing tool x: 1 validation error for X"


# -- Failures a user sees -------------------------------------------------------------------------


def test_clear_errors_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = str(tmp_path / "data")
    code, _, err = run(capsys, "import", str(tmp_path / "missing.jsonl"), "--data-dir", data_dir)
    assert code == 1
    assert err.strip() == (
        f"memora import: cannot read {tmp_path / 'missing.jsonl'}: No such file or directory"
    )
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("hello\n")
    code, _, err = run(capsys, "import", str(garbage), "--data-dir", data_dir, *EMBEDDER)
    assert code == 1
    assert "is not a memory file: no entity or relation could be read (line 1: is not JSON" in err
    good = tmp_path / "good.jsonl"
    good.write_text(line(entity("A", "t", [])))
    code, _, err = run(capsys, "import", str(good), "--data-dir", data_dir, "--namespace", "no/pe")
    assert code == 2 and "memora import: namespace:" in err
    code, _, err = run(
        capsys, "import", str(good), "--data-dir", data_dir, "--embedder", "word2vec"
    )
    assert code == 2 and "memora import: embedder:" in err
    code, _, err = run(capsys, "import", str(good), "--server", "http://127.0.0.1:1/mcp", *EMBEDDER)
    assert code == 2 and "--embedder: applies to --data-dir only" in err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["import", str(good), "--chunk", "0"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export", "--data-dir", data_dir, "--server", "http://127.0.0.1:1/mcp"])
    assert exit_.value.code == 2
    code, _, err = run(capsys, "export", "--data-dir", str(tmp_path / "nothing"))
    assert (code, err.strip()) == (
        1,
        f"memora export: there is no data directory {tmp_path / 'nothing'}",
    )
    assert not (tmp_path / "nothing").exists()
    code, _, err = run(capsys, "export", "--data-dir", str(tmp_path))  # Exists, holds no node.
    assert (code, err.strip()) == (1, f"memora export: there is no data directory {tmp_path}")
    assert not (tmp_path / LOCK_FILE).exists()
    import_file(capsys, good, Path(data_dir))
    code, _, err = run(capsys, "export", "--data-dir", data_dir, "--namespace", "nope")
    assert (code, err.strip()) == (
        1,
        "memora export: not_found: namespace 'nope' does not exist (argument namespace)",
    )
    code, _, err = run(capsys, "import", str(good), "--server", "http://127.0.0.1:1/mcp")
    assert code == 1
    assert err.startswith("memora import: cannot reach the MCP server at http://127.0.0.1:1/mcp")


def test_a_data_directory_a_server_holds_is_refused_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    good = tmp_path / "good.jsonl"
    good.write_text(line(entity("A", "t", [])))
    import_file(capsys, good, data_dir)
    descriptor = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # As a running server holds it.
        code, _, err = run(capsys, "import", str(good), "--data-dir", str(data_dir), *EMBEDDER)
        assert code == 1
        assert "cannot open the data directory" in err and "in use by another process" in err
        assert "use --server http://HOST:9090/mcp" in err
        code, _, err = run(capsys, "export", "--data-dir", str(data_dir))
        assert code == 1 and "use --server" in err
    finally:
        os.close(descriptor)


def test_a_failed_export_leaves_the_old_file_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    source = tmp_path / "memory.jsonl"
    source.write_text(memory_file(realistic_items(entities=5, relations=3)))
    import_file(capsys, source, data_dir)
    output = tmp_path / "out.jsonl"
    output.write_text("the old export")
    output.chmod(0o640)
    code, _, err = run(
        capsys, "export", "--data-dir", str(data_dir), "--output", str(output), "--as-of", "99999"
    )
    assert code == 1 and "as_of 99999 is after the last applied index" in err

    async def half_then_fail(store: Any, write: Any, **options: Any) -> Any:
        write(line(entity("half", "written", [])))
        raise StoreError("unavailable", "the node stopped")

    monkeypatch.setattr(transfer_cli, "export_graph", half_then_fail)
    code, _, err = run(capsys, "export", "--data-dir", str(data_dir), "--output", str(output))
    assert (code, err.strip()) == (1, "memora export: unavailable: the node stopped")
    assert output.read_text() == "the old export"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "memory.jsonl", "out.jsonl"]
    monkeypatch.undo()
    export_text(capsys, "--data-dir", str(data_dir), "--output", str(output))
    assert output.read_text() == source.read_text()
    assert output.stat().st_mode & 0o777 == 0o640


# -- Over a running server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `memora serve` process with a writer and a reader token; yields its MCP URL."""
    tokens = f"writer:write:memory,other:{WRITER};reader:read:memory:{READER}"
    data_dir = tmp_path_factory.mktemp("import-server") / "data"
    flags = ("--mcp-port", "0", *EMBEDDER)
    with MemoraProcess(data_dir, {"MEMORA_TOKENS": tokens}, flags) as process:
        yield mcp_url(process)


def mcp_url(process: MemoraProcess) -> str:
    deadline = time.monotonic() + mcp_line_timeout_s
    while time.monotonic() < deadline:
        for text in process.lines:
            if match := _MCP_URL.search(text):
                return match.group(1)
        time.sleep(0.02)
    raise AssertionError(f"no MCP line:\n{process.output()}")


def test_import_and_export_over_a_server(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = realistic_items(seed=13, entities=30, relations=45)
    text = memory_file(items)
    source = tmp_path / "memory.jsonl"
    source.write_text(text, encoding="utf-8")
    remote = ("--server", server, "--token", WRITER)
    code, summary, err = run(capsys, "import", str(source), *remote, "--chunk", "8")
    assert code == 0, err
    assert counts(summary)["entities"] == [30, 30, 0, 0]
    assert counts(summary)["relations"] == [45, 45, 0, 0]
    assert export_text(capsys, "--server", server, "--token", READER).encode() == text.encode()
    code, summary, err = run(capsys, "import", str(source), *remote)
    assert code == 0, err
    assert counts(summary)["entities"] == [30, 0, 30, 0]
    assert counts(summary)["relations"] == [45, 0, 45, 0]
    assert export_text(capsys, "--server", server, "--token", READER) == text
    # Another namespace of the same server is another memory.
    other = ("--server", server, "--token", WRITER, "--namespace", "other")
    lonely = tmp_path / "lonely.jsonl"
    lonely.write_text(memory_file([entity("Alice", "person", []), relation("Alice", "Bob", "x")]))
    code, summary, err = run(capsys, "import", str(lonely), *other)
    assert code == 0, err
    assert "relation 'Alice' -'x'-> 'Bob' skipped: there is no entity 'Bob'" in summary
    assert export_text(capsys, *other) == line(entity("Alice", "person", []))


def test_a_server_says_why_it_refused(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMORA_TOKEN", raising=False)
    source = tmp_path / "memory.jsonl"
    source.write_text(line(entity("Refused", "t", [])))
    code, _, err = run(capsys, "import", str(source), "--server", server)
    assert code == 1
    assert err.strip() == (
        f"memora import: the MCP server at {server} refused: HTTP 401: unauthenticated: "
        "a bearer token is required (Authorization: Bearer ...)"
    )
    monkeypatch.setenv("MEMORA_TOKEN", READER)
    code, _, err = run(capsys, "import", str(source), "--server", server)
    assert code == 1
    assert "forbidden" in err and "importing again is safe" in err
    code, _, err = run(capsys, "export", "--server", server, "--namespace", "elsewhere")
    assert code == 1
    assert "refused: HTTP 403: forbidden: the token does not grant access to namespace" in err
