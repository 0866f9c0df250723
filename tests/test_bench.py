"""Smoke test of `python -m memora.bench core`: a tiny run prints every metric with sane values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from memora.bench import data

TINY = [
    "--vectors", "1500", "--dimension", "16", "--clusters", "5", "--queries", "40",
    "--graph-nodes", "600", "--graph-edges", "3000", "--sources", "40", "--inserts", "40",
    "--warmup", "5", "--rounds", "2", "--batch-size", "500", "--ef", "32", "64",
]  # fmt: skip


def run_tiny(json_out: Path) -> tuple[dict[str, Any], str]:
    completed = subprocess.run(
        [sys.executable, "-m", "memora.bench", "core", *TINY, "--json-out", str(json_out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1, completed.stdout
    return json.loads(lines[0].removeprefix("BENCH_JSON ")), completed.stdout


def check_latency(summary: dict[str, Any]) -> None:
    assert 0 < summary["p50_us"] <= summary["p90_us"] <= summary["p99_us"] < 1e6, summary


def test_tiny_run_reports_every_metric(tmp_path: Path) -> None:
    result, stdout = run_tiny(tmp_path / "bench.json")
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    metrics = result["metrics"]
    for ef in (32, 64):
        similar = metrics[f"query_similar_ef{ef}"]
        for system in ("memora", "hnswlib"):
            check_latency(similar[system])
            assert 0.8 <= similar[system]["recall_at_10"] <= 1.0, similar
        assert similar["ratio_p50"] > 0 and isinstance(similar["pass"], bool)
    assert "ef" in metrics["query_similar_verdict"]
    ingest = metrics["ingest"]
    assert ingest["memora_vectors_per_s"] > 0 and ingest["hnswlib_vectors_per_s"] > 0
    assert ingest["ratio"] > 0
    for direction in ("out", "both"):
        related = metrics[f"query_related_{direction}"]
        check_latency(related["memora"])
        check_latency(related["networkx"])
        assert related["answer_mismatches"] == 0, related
        assert related["mean_reached"] > 0
    assert metrics["graph_load"]["memora_commands_per_s"] > 0
    check_latency(metrics["insert_node"])
    check_latency(metrics["insert_node"]["fsync_floor"])
    assert metrics["insert_node"]["operations"] == 40
    memory = metrics["memory"]
    assert memory["memora_vector_index_bytes"] > 0 and memory["hnswlib_index_bytes"] > 0
    assert {row["status"] for row in result["rows"]} <= {"PASS", "FAIL", "info"}
    assert "query_similar p50 ef=32" in stdout


def test_power_law_graph_has_no_duplicate_pairs_and_is_seeded() -> None:
    graph = data.power_law_graph(7, 2_000, 10_000)
    pairs = set(zip(graph.sources.tolist(), graph.targets.tolist(), strict=True))
    assert len(pairs) == graph.edge_count > 9_900
    assert not np.any(graph.sources == graph.targets)
    again = data.power_law_graph(7, 2_000, 10_000)
    assert np.array_equal(graph.sources, again.sources)
    degrees = np.bincount(np.concatenate([graph.sources, graph.targets]))
    assert degrees.max() > 10 * np.median(degrees)  # A heavy tail: hubs exist.


def test_exact_neighbours_match_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    found = data.exact_neighbours(vectors, queries, 10, "l2")
    direct = np.argsort(((queries[:, None, :] - vectors[None]) ** 2).sum(-1), axis=1)[:, :10]
    assert np.array_equal(found, direct)
    assert data.recall_at_k(found.tolist(), direct) == 1.0
