"""A tiny run of `python -m memora.bench http` against a real `memora serve`: the output's shape,
not the speed."""

from __future__ import annotations

import json
from functools import partial

import pytest
import trio

from memora.bench import http
from memora.bench.__main__ import main

CLOSING_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def test_http_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["http", "--nodes", "30", "--requests", "20", "--rounds", "2", "--warmup", "5"]
    assert main([*argv, "--connections", "1", "3", "--top-k", "5"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    assert result["bench"] == "http"
    assert result["config"]["connections"] == [1, 3]
    levels = result["metrics"]["levels"]
    assert set(levels) == {"1", "3"}
    for cells in levels.values():
        assert set(cells) == set(http.OPERATIONS)
        for cell in cells.values():
            assert cell["rounds"] == 2 and cell["requests_per_round"] == 20
            assert cell["requests_per_s"] > 0
            assert 0 < cell["p50_ms"] <= cell["p99_ms"] < 30_000
            assert cell["client_cpu_us_per_request"] > 0
    assert result["metrics"]["load_nodes_per_s"] > 0
    floors = result["metrics"]["floors"]
    assert set(floors) == {"asgi", "quart"}
    for cell in floors.values():
        assert cell["rounds"] == 2 and cell["requests_per_round"] == 20
        assert 0 < cell["p50_ms"] <= cell["p99_ms"] < 30_000
    assert all(name in out for name in http.FLOOR_NAMES.values())
    targets = {check["operation"]: check for check in result["targets"]}
    assert set(targets) == {"get_node", "insert_node"}
    for operation, check in targets.items():
        assert check["p50_ms"] == levels["1"][operation]["p50_ms"]
        assert check["met"] is (check["p50_ms"] < check["p50_ms_max"])
    assert result["all_targets_met"] is all(check["met"] for check in targets.values())
    assert "operation" in out and "client CPU/req" in out
    assert out.count("target ") == 2


def test_http_bench_refuses_a_bad_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["http", "--connections", "0"]) == 2
    assert "connection level" in capsys.readouterr().err


@pytest.mark.trio
async def test_the_client_reconnects_when_the_server_asks_it_to_close() -> None:
    """hypercorn closes a connection after `keep_alive_requests_max` requests, saying so."""
    accepted: list[int] = []

    async def answer_once_then_close(stream: trio.SocketStream) -> None:
        accepted.append(len(accepted))
        await stream.receive_some(65536)
        await stream.send_all(CLOSING_ANSWER)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, answer_once_then_close, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        connection = await http.HttpConnection.open("127.0.0.1", port)
        for _ in range(3):
            assert await connection.send(http.Request("GET", "/")) == http.Response(200, b"ok")
        assert (connection.reconnections, len(accepted)) == (2, 3)
        await connection.aclose()
        nursery.cancel_scope.cancel()
