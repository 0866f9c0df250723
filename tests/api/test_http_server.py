"""The app through a real hypercorn on 127.0.0.1 and a free port, as `memora serve` runs it,
with an httpx client: a write, a read of it, errors and the docs, over real sockets."""

from __future__ import annotations

import httpx
import pytest
import trio

from memora.api.app import create_app
from memora.api.http_server import serve_http
from memora.api.settings import ApiSettings, Role, TokenGrant
from memora.net.driver import NodeDriver


@pytest.mark.trio
async def test_the_api_over_hypercorn(node: NodeDriver) -> None:
    grant = TokenGrant("secret", frozenset({"*"}), Role.ADMIN, "operator")
    app = create_app(node, ApiSettings(tokens=(grant,), body_bytes_max=4096))
    stopped = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_http(
                app,
                host="127.0.0.1",
                port=0,
                shutdown_trigger=stopped.wait,
                task_status=task_status,
            )
        )
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": "Bearer secret"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
            written = await http.post("/api/v1/nodes", json={"id": 100, "label": "UserPreference"})
            assert written.status_code == 201
            commit_index = written.json()["commit_index"]
            read = await http.get(
                "/api/v1/nodes/100",
                params={"consistency": "follower", "min_commit_index": commit_index},
            )
            assert read.json()["node"]["created"]["principal"] == "operator"
            too_large = await http.post("/api/v1/nodes", content=b" " * 5000)
            assert too_large.status_code == 413 and too_large.json()["error"]["field"] == "body"
            anonymous = await http.get("/api/v1/nodes/100", headers={"Authorization": ""})
            assert anonymous.status_code == 401
            assert (await http.get("/docs")).headers["content-type"].startswith("text/html")
            prometheus = await http.get("/metrics")
            assert "memora_http_requests_total" in prometheus.text
        stopped.set()
