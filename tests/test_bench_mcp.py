"""`python -m memora.bench mcp` at tiny sizes: the plan every system replays, the verdicts, and one
end-to-end run against the real servers (the reference over stdio through npx, Memora over stdio
and streamable HTTP) whose report must have every row; the output's shape, not the speed."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from memora.bench import mcp
from memora.bench.__main__ import main

TINY: Any = ["--checkpoints", "20", "60", "--calls", "3", "--warmup", "1", "--rounds", "3"]
TINY_CHECKPOINTS = ("20", "60")


def test_every_system_replays_the_same_plan_that_holds_each_checkpoint_exactly() -> None:
    config = mcp.Config(checkpoints=(30, 120), calls=4, rounds=3, warmup=2, batch=16)
    plan = mcp.make_plan(config)
    assert plan == mcp.make_plan(config)
    assert plan != mcp.make_plan(mcp.Config(checkpoints=(30, 120), calls=4, warmup=2, seed=8))
    made: list[str] = []
    for checkpoint, entities in zip(plan.checkpoints, config.checkpoints, strict=True):
        for batch, relations in checkpoint.growth:
            assert 1 <= len(batch["entities"]) <= config.batch
            made += [entity["name"] for entity in batch["entities"]]
            for relation in relations["relations"]:
                assert {relation["from"], relation["to"]} <= set(made)
        assert checkpoint.entities == entities == len(made)
        calls = [checkpoint.warmup, *checkpoint.rounds]
        assert [len(tools["open_nodes"]) for tools in calls] == [2, 4, 4, 4]
        for tools in calls:
            assert set(tools) == {mcp.PING, *mcp.TOOLS}
            assert all(query["query"] in made for query in tools["search_nodes"])
            assert all(set(names["names"]) <= set(made) for names in tools["open_nodes"])
            for create in tools["create_entities"]:
                (entity,) = create["entities"]
                assert len(entity["observations"]) == mcp.observations_per_new_entity
                made.append(entity["name"])
        assert len(made) == entities + config.new_entities_per_checkpoint
    assert max(Counter(made).values()) == 1, "every entity has its own name"


def test_the_flags_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mcp", "--checkpoints", "100", "120", "--calls", "10"]) == 2
    assert "must be at least 100 + 35" in capsys.readouterr().err
    assert main(["mcp", "--entities", "500", "--checkpoints", "100", "400"]) == 2
    assert "--entities must be the last" in capsys.readouterr().err
    assert mcp.default_checkpoints(10_000) == (1_000, 5_000, 10_000)


def test_memora_is_faster_only_when_both_percentiles_are_lower() -> None:
    def cells(p50: float, p99: float) -> dict[str, Any]:
        found = {"p50_ms": p50, "p99_ms": p99, "results_median": 1, "rounds": 3}
        return {"checkpoints": {"100": {"tools": dict.fromkeys(mcp.COMPAT_TOOLS, found)}}}

    measured = {"reference stdio": cells(10, 20), "memora stdio": cells(5, 10)}
    measured["memora http"] = cells(5, 30)
    config = mcp.Config(checkpoints=(100,))
    rows = mcp.checkpoint_rows(measured, 100)
    judged = mcp.verdicts(config, rows)
    assert {(v["transport"], v["faster"]) for v in judged} == {("stdio", True), ("http", False)}
    lines = list(mcp.verdict_lines(config, judged, {}))
    assert len(lines) == len(mcp.COMPAT_TOOLS)
    assert all("memora stdio faster (p50 2.00x" in line for line in lines)
    assert all("memora http SLOWER (p50 2.00x, p99 0.67x)" in line for line in lines)
    alone = list(mcp.verdict_lines(config, [], {"memora": "not here"}))
    assert alone[0] == "verdict create_entities at 100 entities: not judged (memora: not here)"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One tiny run of every system that can run here, through the command line."""
    skips = {"reference": mcp.reference_problem(), "memora": mcp.memora_problem()}
    if all(skips.values()):
        pytest.skip(f"neither server can run here: {skips}")
    flags = [f"--no-{name}" for name, problem in skips.items() if problem is not None]
    path = tmp_path_factory.mktemp("bench-mcp") / "result.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["mcp", *TINY, "--embedder", "hashing", *flags, "--json-out", str(path)])
    assert code == 0, out.getvalue()
    return json.loads(Path(path).read_text()), out.getvalue()


def rows_of(result: dict[str, Any], system: str, transport: str) -> dict[tuple[str, str], Any]:
    return {
        (entities, row["tool"]): row
        for entities, rows in result["checkpoints"].items()
        for row in rows
        if (row["system"], row["transport"]) == (system, transport)
    }


def check_rows(rows: dict[tuple[str, str], Any], tools: tuple[str, ...]) -> None:
    assert set(rows) == {(entities, tool) for entities in TINY_CHECKPOINTS for tool in tools}
    for (_, tool), row in rows.items():
        assert math.isfinite(row["p50_ms"]) and math.isfinite(row["p99_ms"]), row
        assert 0 < row["p50_ms"] <= row["p99_ms"] < 30_000, row
        assert (row["rounds"], row["calls_per_round"]) == (3, 3)
        expected_results = {"create_entities": 1, "open_nodes": mcp.names_per_open}
        if tool in expected_results:
            assert row["results_median"] == expected_results[tool], row
        elif tool != mcp.PING:
            assert row["results_median"] >= 1, row


def test_the_reference_over_stdio_has_every_row(tiny_run: tuple[dict[str, Any], str]) -> None:
    result, out = tiny_run
    if mcp.reference_problem() is not None:
        pytest.skip(f"the reference server cannot run here: {mcp.reference_problem()}")
    check_rows(rows_of(result, "reference", "stdio"), (mcp.PING, *mcp.COMPAT_TOOLS))
    assert result["systems"]["reference stdio"]["server"].startswith("memory-server")
    assert "At 20 entities:" in out and "At 60 entities:" in out


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_memora_has_every_row(tiny_run: tuple[dict[str, Any], str], transport: str) -> None:
    result, _ = tiny_run
    if mcp.memora_problem() is not None:
        pytest.skip(f"Memora's MCP server cannot run here: {mcp.memora_problem()}")
    check_rows(rows_of(result, "memora", transport), (mcp.PING, *mcp.TOOLS))
    assert result["systems"][f"memora {transport}"]["unlisted_tools"] == []


def test_side_by_side_ratios_and_verdicts(tiny_run: tuple[dict[str, Any], str]) -> None:
    result, out = tiny_run
    if mcp.reference_problem() is not None or mcp.memora_problem() is not None:
        pytest.skip("needs both the reference server and Memora's MCP server")
    reference = rows_of(result, "reference", "stdio")
    for transport in ("stdio", "http"):
        for (entities, tool), row in rows_of(result, "memora", transport).items():
            if tool == "memory_search":
                assert row["reference_over_memora_p50"] is None
                continue
            for percentile in ("p50", "p99"):
                found = row[f"reference_over_memora_{percentile}"]
                peer = reference[(entities, tool)][f"{percentile}_ms"]
                assert found == pytest.approx(peer / row[f"{percentile}_ms"]), row
            # Like is compared with like: the same answers, as far as their sizes tell.
            assert row["results_median"] == reference[(entities, tool)]["results_median"], tool
    judged = {(v["tool"], v["transport"]): v["faster"] for v in result["verdicts"]}
    assert set(judged) == {(tool, t) for tool in mcp.COMPAT_TOOLS for t in ("stdio", "http")}
    assert result["all_faster"] is all(judged.values())
    verdict_lines = [line for line in out.splitlines() if line.startswith("verdict ")]
    assert len(verdict_lines) == len(mcp.COMPAT_TOOLS)
    assert all("at 60 entities: memora stdio " in line for line in verdict_lines)


@pytest.mark.trio
async def test_a_failed_call_aborts_with_the_tool_and_the_answer(tmp_path: Path) -> None:
    if mcp.memora_problem() is None:
        systems = mcp.memora_systems(tmp_path, "hashing")
    elif mcp.reference_problem() is None:
        (tmp_path / "reference").mkdir()
        systems = [mcp.reference_system(tmp_path)]
    else:
        pytest.skip("neither server can run here")
    async with mcp.connect(systems[0], tmp_path / "server.log") as client:
        with pytest.raises(mcp.BenchError, match=r"stdio: open_nodes \{\"names\": 3\} failed: "):
            await mcp.call(client, systems[0], "open_nodes", {"names": 3})
