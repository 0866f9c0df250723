"""Bad input, limits and an unhappy node: every refusal is a JSON error with the right status, and
nothing a client sends produces a 5xx (a hypothesis fuzz of methods, paths, query parameters
and bodies, every answer also checked against the spec)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import trio
from api_client import SPEC, ApiClient
from hypothesis import strategies as st
from quart_trio import QuartTrio

from memora.api.app import create_app
from memora.api.settings import ApiSettings
from memora.core import constants
from memora.core.replica import Replica
from memora.core.types import Proposal
from memora.net.driver import NodeDriver
from memora.net.node_api import Consistency, UnavailableError, WriteOutcome


@pytest.mark.trio
async def test_unknown_routes_and_methods_are_json_errors(client: ApiClient) -> None:
    missing = await client.get("/api/v2/everything")
    assert (missing.status, missing.error_code) == (404, "not_found")
    wrong_method = await client.request("PUT", "/api/v1/nodes")
    assert (wrong_method.status, wrong_method.error_code) == (405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "GET, POST"
    options = await client.request("OPTIONS", "/api/v1/nodes/1")
    assert options.status == 405


@pytest.mark.trio
async def test_malformed_bodies_name_what_is_wrong(client: ApiClient) -> None:
    cases: list[tuple[bytes, str | None]] = [
        (b"{", "body"),
        (b"[1, 2]", "body"),
        (b'{"label": NaN}', "body"),
        (b"\xff\xfe", "body"),
        (b"[" * 100_000, "body"),
        (b'{"label": 5}', "label"),
        (b'{"label": "X", "colour": "red"}', "colour"),
        (b'{"label": "X", "id": true}', "id"),
        (b'{"label": "X", "id": 0}', "id"),
        (b'{"label": "X", "properties": []}', "properties"),
        (b'{"label": "X", "provenance": {"confidence": 2}}', "provenance.confidence"),
        (b'{"label": "X", "vector": [1, "a"]}', "vector"),
        (b'{"label": "X", "text": "a\\u0000b"}', "text"),
        (b'{"label": "\\ud800"}', "label"),
    ]
    for data, field in cases:
        reply = await client.request("POST", "/api/v1/nodes", data=data)
        assert reply.status in (400, 422), (data[:40], reply.text)
        assert reply.error_field == field, (data[:40], reply.text)


@pytest.mark.trio
async def test_every_limit_is_a_422_naming_its_field(client: ApiClient) -> None:
    long_text = "x" * (constants.text_bytes_max + 1)
    cases = [
        ("GET", "/api/v1/vectors/1/similar", {"top_k": constants.top_k_max + 1}, None, "top_k"),
        ("GET", "/api/v1/nodes", {"limit": constants.list_limit_max + 1}, None, "limit"),
        ("GET", "/api/v1/nodes/1/related", {"depth": constants.depth_max + 1}, None, "depth"),
        ("POST", "/api/v1/nodes", None, {"label": "X", "text": long_text}, "text"),
        ("POST", "/api/v1/nodes", None, {"label": "L" * 200}, "label"),
        (
            "POST",
            "/api/v1/vectors",
            None,
            {"node_id": 1, "vector": [0.0] * (constants.dimension_max + 1)},
            "vector",
        ),
        ("POST", "/api/v1/query/hybrid", None, {"node_id": 1, "top_k": 10**6}, "top_k"),
    ]
    for method, path, query, body, field in cases:
        reply = await client.request(method, path, query=query, body=body)
        assert (reply.status, reply.error_code, reply.error_field) == (422, "too_large", field)


@pytest.mark.trio
async def test_malformed_path_ids_are_400(client: ApiClient) -> None:
    for raw in ("abc", "-1", "0", "1.5", str(2**64)):
        reply = await client.get(f"/api/v1/nodes/{raw}")
        assert reply.status in (400, 422) and reply.error_field == "node_id", raw


@pytest.mark.trio
async def test_a_body_over_the_limit_is_413(make_app: Callable[[ApiSettings], QuartTrio]) -> None:
    client = ApiClient(make_app(ApiSettings(body_bytes_max=1024)))
    reply = await client.post("/api/v1/nodes", {"label": "X", "text": "y" * 2000})
    assert (reply.status, reply.error_code, reply.error_field) == (413, "body_too_large", "body")
    assert (await client.post("/api/v1/nodes", {"label": "X"})).status == 201


class UnhappyNode:
    """A NodeApi whose writes hang for ever or fail as unavailable; reads and the rest pass
    through to a real node."""

    def __init__(self, node: NodeDriver, failure: str) -> None:
        self._node = node
        self._failure = failure

    async def write(self, proposal: Proposal) -> WriteOutcome:
        if self._failure == "hang":
            await trio.sleep_forever()
        raise UnavailableError("no leader")

    async def read_barrier(
        self, consistency: Consistency, min_commit_index: int | None = None
    ) -> Replica:
        return await self._node.read_barrier(consistency, min_commit_index)

    async def snapshot(self) -> int:
        return await self._node.snapshot()

    def health(self) -> dict[str, Any]:
        return self._node.health()

    def metrics(self) -> dict[str, float | int]:
        return self._node.metrics()


@pytest.mark.trio
@pytest.mark.parametrize("failure", ["hang", "unavailable"])
async def test_a_write_that_cannot_finish_is_503_with_retry_after(
    node: NodeDriver, failure: str
) -> None:
    app = create_app(UnhappyNode(node, failure), ApiSettings(request_timeout_s=0.2))
    client = ApiClient(app)
    reply = await client.post("/api/v1/nodes", {"label": "X"})
    assert reply.status == 503
    assert reply.error_code == ("timeout" if failure == "hang" else "unavailable")
    assert reply.headers["retry-after"] == "1"
    metrics = (await client.get("/api/v1/metrics")).json["metrics"]
    assert metrics["http_request_timeouts_total"] == (1 if failure == "hang" else 0)
    assert metrics["http_responses_5xx_total"] == 1


# -- The fuzz -------------------------------------------------------------------------------------

_OPERATIONS = [(path, method) for path, methods in SPEC["paths"].items() for method in methods]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_SEGMENT = st.one_of(
    st.integers(-5, 2**65).map(str),
    st.text(max_size=12),
).map(lambda text: urllib.parse.quote(text, safe="") or "x")


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes | None]:
    template, method = draw(st.sampled_from(_OPERATIONS))
    operation = SPEC["paths"][template][method]
    path = "/".join(
        draw(_SEGMENT) if part.startswith("{") else part for part in template.split("/")
    )
    names = [p["name"] for p in operation["parameters"] if p["in"] == "query"]
    query = draw(st.dictionaries(st.sampled_from([*names, "zz"]), st.text(max_size=12), max_size=4))
    body = None
    if "requestBody" in operation:
        schema_name = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        fields = list(SPEC["components"]["schemas"][schema_name.split("/")[-1]]["properties"])
        shaped = st.dictionaries(st.sampled_from(fields), _JSON, max_size=5)
        body = json.dumps(draw(st.one_of(shaped, _JSON))).encode()
        body = draw(st.one_of(st.just(body), st.binary(max_size=30)))
    verb = draw(st.sampled_from([method.upper(), method.upper(), "PUT", "HEAD"]))
    return verb, path or "/", query, body


@pytest.mark.trio
async def test_no_input_produces_a_server_error(client: ApiClient) -> None:
    await client.post("/api/v1/nodes", {"id": 1, "label": "Seed", "vector": [0.5] * 128})

    @hypothesis.settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(_requests())
    def fuzz(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
        method, path, query, body = request
        # ApiClient also fails on any answer the spec does not describe.
        reply = trio.from_thread.run(lambda: client.request(method, path, query=query, data=body))
        assert reply.status < 500, (method, path, query, body, reply)

    await trio.to_thread.run_sync(fuzz)
