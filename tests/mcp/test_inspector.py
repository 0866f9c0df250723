"""A real third-party MCP client against Memora: the MCP Inspector's CLI, from npm.

`@modelcontextprotocol/inspector` (pinned below) is the MCP project's own debugging client, built
on the TypeScript SDK. Its CLI makes one request per run (`--cli TARGET --method tools/list`, or
`--method tools/call --tool-name X --tool-arg key=value ...`, where the value of an array or
object argument is JSON) and prints the answer as JSON. It exits 0 even when the tool failed, so
every answer here is parsed and its `isError` checked.

Both transports replay the same transcript (`TRANSCRIPT`): the tool list of the compat profile,
then each of the nine tools once with real arguments, each answer checked against what the
memory must hold by then. Over stdio every run of the Inspector starts its own `memora mcp` on
the same data directory, so the memory carries from call to call, through a restart each time;
over streamable HTTP one `memora serve` (no tokens: this Inspector sends no headers) serves them.

`npx -y` fetches the package once per session (a module fixture, with a generous timeout) and
names its `mcp-inspector` program in npx's cache; each call then runs that program directly,
since `npx` itself would spend seconds per call resolving the same package again. Without npx,
or when the registry cannot be reached, the tests are skipped, saying why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
from mcp_processes import COMPAT_TOOLS, REPOSITORY, McpServeProcess, mcp_arguments

INSPECTOR_PACKAGE: Final = "@modelcontextprotocol/inspector@0.15.0"
fetch_timeout_s: Final = 300.0  # The first `npx -y` downloads the package and its dependencies.
call_timeout_s: Final = 90.0  # Node, the Inspector, and over stdio a `memora mcp` starting.
error_tail_chars_max: Final = 2_000

Run = Callable[[Sequence[str]], dict[str, Any]]


@pytest.fixture(scope="module")
def inspector() -> str:
    """The path of the Inspector's program in npx's cache, fetched first if need be."""
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("npx is not on PATH (it comes with Node.js): cannot run the MCP Inspector")
    command = [npx, "-y", "-p", INSPECTOR_PACKAGE, "-c", "command -v mcp-inspector"]
    try:
        found = subprocess.run(command, capture_output=True, text=True, timeout=fetch_timeout_s)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npx did not fetch {INSPECTOR_PACKAGE} within {fetch_timeout_s:.0f} s")
    if found.returncode != 0:
        reason = found.stderr.strip()[-error_tail_chars_max:]
        pytest.skip(
            f"npx could not fetch {INSPECTOR_PACKAGE} (is the registry reachable?) {reason}"
        )
    return found.stdout.strip().splitlines()[-1]


def run_inspector(inspector: str, target: Sequence[str], request: Sequence[str]) -> dict[str, Any]:
    """One Inspector run: `mcp-inspector --cli TARGET REQUEST`, its printed answer parsed."""
    command = [inspector, "--cli", *target, *request]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=call_timeout_s, cwd=REPOSITORY
    )
    stderr = done.stderr[-error_tail_chars_max:]
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{stderr}"
    try:
        answer: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as error:
        raise AssertionError(f"{command} printed no JSON:\n{done.stdout}\n{stderr}") from error
    return answer


def call_tool(tool: str, **arguments: Any) -> list[str]:
    """The Inspector's arguments for `tools/call`: strings as they are, the rest as JSON."""
    pairs = [
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in arguments.items()
    ]
    return [
        "--method",
        "tools/call",
        "--tool-name",
        tool,
        *(["--tool-arg", *pairs] if pairs else []),
    ]


def entity(name: str, entity_type: str, *observations: str) -> dict[str, Any]:
    return {"name": name, "entityType": entity_type, "observations": list(observations)}


def relation(source: str, target: str, relation_type: str) -> dict[str, str]:
    return {"from": source, "to": target, "relationType": relation_type}


ADA: Final = entity("Ada", "person", "likes tea", "writes programs")
BABBAGE: Final = entity("Babbage", "person", "designs engines")
ENGINE: Final = entity("Engine", "machine")
KNOWS: Final = relation("Ada", "Babbage", "knows")
DESIGNED: Final = relation("Babbage", "Engine", "designed")
MET: Final = "met Babbage in 1833"
ADA_NOW: Final = entity("Ada", "person", "likes tea", "writes programs", MET)
ADA_LATER: Final = entity("Ada", "person", "writes programs", MET)

# Each of the nine tools once, and the structured content each must answer with by then.
TRANSCRIPT: Final[tuple[tuple[list[str], dict[str, Any]], ...]] = (
    (
        call_tool("create_entities", entities=[ADA, BABBAGE, ENGINE]),
        {"entities": [ADA, BABBAGE, ENGINE]},
    ),
    (
        call_tool("create_relations", relations=[KNOWS, DESIGNED]),
        {"relations": [KNOWS, DESIGNED]},
    ),
    (
        call_tool("add_observations", observations=[{"entityName": "Ada", "contents": [MET]}]),
        {"results": [{"entityName": "Ada", "addedObservations": [MET]}]},
    ),
    (
        # "babbage" is Babbage's name and one of Ada's observations, in any case.
        call_tool("search_nodes", query="babbage"),
        {"entities": [ADA_NOW, BABBAGE], "relations": [KNOWS, DESIGNED]},
    ),
    (
        call_tool("open_nodes", names=["Ada", "Nobody"]),
        {"entities": [ADA_NOW], "relations": [KNOWS]},
    ),
    (
        call_tool(
            "delete_observations", deletions=[{"entityName": "Ada", "observations": ["likes tea"]}]
        ),
        {"success": True, "message": "Observations deleted successfully"},
    ),
    (
        call_tool("delete_relations", relations=[DESIGNED]),
        {"success": True, "message": "Relations deleted successfully"},
    ),
    (
        call_tool("delete_entities", entityNames=["Engine"]),
        {"success": True, "message": "Entities deleted successfully"},
    ),
    (
        call_tool("read_graph"),
        {"entities": [ADA_LATER, BABBAGE], "relations": [KNOWS]},
    ),
)
READ_ONLY_TOOLS: Final = ("read_graph", "search_nodes", "open_nodes")


def check_tool_list(answer: dict[str, Any]) -> None:
    tools = {tool["name"]: tool for tool in answer["tools"]}
    assert len(tools) == len(answer["tools"]) == len(COMPAT_TOOLS)
    assert set(tools) == set(COMPAT_TOOLS)
    for name, tool in tools.items():
        assert tool["inputSchema"]["type"] == "object", name
        assert tool["annotations"]["readOnlyHint"] is (name in READ_ONLY_TOOLS), name
    assert tools["create_entities"]["inputSchema"]["required"] == ["entities"]


def check_answer(request: list[str], answer: dict[str, Any], expected: dict[str, Any]) -> None:
    """A tool's answer: no error, the structured content expected, and the same as JSON text."""
    assert answer.get("isError") is False, (request, answer)
    assert answer["structuredContent"] == expected, request
    [content] = answer["content"]
    assert content["type"] == "text"
    if "success" in expected:
        assert content["text"] == expected["message"]
        return
    text = json.loads(content["text"])
    if len(expected) == 1:
        # The reference server's text of a write is the list it made.
        [made] = expected.values()
        assert text == made, request
    else:
        assert text == expected, request


def replay(run: Run) -> None:
    check_tool_list(run(["--method", "tools/list"]))
    tool_names = [request[request.index("--tool-name") + 1] for request, _ in TRANSCRIPT]
    assert sorted(tool_names) == sorted(COMPAT_TOOLS)  # Each of the nine, once.
    for request, expected in TRANSCRIPT:
        check_answer(request, run(request), expected)


def test_inspector_over_stdio_calls_each_compat_tool(inspector: str, tmp_path: Path) -> None:
    target = [sys.executable, *mcp_arguments(tmp_path / "data", "--profile", "compat")]
    replay(lambda request: run_inspector(inspector, target, request))


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[McpServeProcess]:
    with McpServeProcess(tmp_path / "serve", flags=["--mcp-profile", "compat"]) as server:
        yield server


def test_inspector_over_streamable_http_calls_each_compat_tool(
    inspector: str, http_server: McpServeProcess
) -> None:
    target = [http_server.mcp_url, "--transport", "http"]
    replay(lambda request: run_inspector(inspector, target, request))
