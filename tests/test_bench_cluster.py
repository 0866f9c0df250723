"""A tiny run of `python -m memora.bench cluster` (three members on loopback, no PySyncObj): the
output's shape, and that writes really went through, not the speed."""

from __future__ import annotations

import json

import pytest

from memora.bench.__main__ import main


def test_cluster_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cluster", "--seconds", "0.3", "--inflight", "1", "4", "--http-requests", "20"]
    assert main([*argv, "--no-peer"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    assert result["bench"] == "cluster"
    phases = result["metrics"]["memora"]["phases"]
    assert set(phases) == {"1", "4"}
    for phase in phases.values():
        assert phase["committed"] > 0 and phase["errors"] == 0, phase
        assert 0 < phase["p50_ms"] <= phase["p99_ms"] < 30_000
    rest = result["metrics"]["memora"]["rest_sequential"]
    assert rest["requests"] == 20 and rest["errors"] == 0, rest
    assert result["metrics"]["pysyncobj"] == {"skipped": "disabled by --no-peer"}
    assert "1 (REST)" in out
