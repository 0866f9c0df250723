"""A tiny run of `python -m memora.bench raft`: every metric present, sane values."""

from __future__ import annotations

import importlib.util
import json

import pytest

from memora.bench.__main__ import main


def test_raft_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    has_peer = importlib.util.find_spec("pysyncobj") is not None
    argv = ["raft", "--seconds", "0.3", "--inflight", "1", "8", "--payload-bytes", "100"]
    if not has_peer:
        argv.append("--no-peer")
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    assert result["bench"] == "raft"
    memora = result["metrics"]["memora"]
    assert memora["state_machine"].startswith("no-op")
    assert set(memora["phases"]) == {"1", "8"}
    for phase in memora["phases"].values():
        assert phase["committed"] > 0
        assert phase["entries_per_s"] > 0
        assert 0 < phase["p50_ms"] <= phase["p99_ms"] < 10_000
        # Every entry is fsynced on at least a quorum (leader plus one follower), possibly in
        # groups; one fsync per node per entry at most, plus the rare empty-append Ready.
        assert 0 < phase["fsyncs_per_entry"] <= 3.5
        assert phase["hard_state_writes"] == 0
    assert memora["phases"]["8"]["fsyncs_per_entry"] < memora["phases"]["1"]["fsyncs_per_entry"]
    peer = result["metrics"]["pysyncobj"]
    if has_peer:
        for phase in peer["phases"].values():
            assert phase["entries_per_s"] > 0 and phase["p50_ms"] > 0
    else:
        assert "skipped" in peer
    assert "inflight" in out and "PySyncObj" in out
