"""The REST API of a real `memora serve` process, as a user reaches it: over HTTP on 127.0.0.1
and a free port, with httpx and with requests. Every endpoint's success and error paths, and the
token, role and tenant rules; every answer checked against `/openapi.json` by `ApiClient`.

One server serves the module (tokens from `MEMORA_TOKENS`); each client library works in its own
namespaces, so the tests do not see each other's records. Restart recovery and signals are
tests/test_serve.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import requests
from api_client import SPEC, ApiClient, HttpxTransport, RequestsTransport, http_timeout_s
from memora_process import MemoraProcess

ROOT = "root-token-0123456789"
WRITER = "alice-write-token-0123456789"
READER = "alice-read-token-0123456789"
OTHER_ADMIN = "bob-admin-token-0123456789"
KINDS = ("httpx", "requests")


def tenant(kind: str, name: str) -> str:
    return f"{kind}-{name}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoraProcess]:
    alice = ",".join(tenant(kind, "a") for kind in KINDS)
    bob = ",".join(tenant(kind, "b") for kind in KINDS)
    tokens = (
        f"root:admin:*:{ROOT};alice:write:{alice}:{WRITER};"
        f"alice-reader:read:{alice}:{READER};bob:admin:{bob}:{OTHER_ADMIN}"
    )
    data_dir: Path = tmp_path_factory.mktemp("real-server") / "data"
    with MemoraProcess(data_dir, {"MEMORA_TOKENS": tokens}) as process:
        yield process


@pytest.fixture(params=KINDS)
async def root(request: pytest.FixtureRequest, server: MemoraProcess) -> AsyncIterator[ApiClient]:
    """A client with the root token, over httpx or over requests."""
    if request.param == "httpx":
        async with httpx.AsyncClient(base_url=server.url, timeout=http_timeout_s) as client:
            yield ApiClient(HttpxTransport(client), ROOT)
    else:
        with requests.Session() as session:
            yield ApiClient(RequestsTransport(session, server.url), ROOT)


@pytest.fixture
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.node.callspec.params["root"]
    return kind


# -- Every endpoint ---------------------------------------------------------------------------


async def node_endpoints(client: ApiClient, namespace: str) -> None:
    """Health, metrics, documents, namespaces and snapshots: each one's success and errors."""
    assert (await client.get("/api/v1/health")).status == 200
    assert (await client.get("/openapi.json")).json == SPEC
    assert (await client.get("/docs")).status == 200
    assert "memora_http_requests_total" in (await client.get("/metrics")).text
    assert (await client.with_token(None).get("/metrics")).status == 401
    assert (await client.get("/api/v1/metrics")).json["metrics"]["http_requests_total"] > 0
    assert (await client.with_token("no-such-token").get("/api/v1/metrics")).status == 401
    created = await client.post("/api/v1/namespaces", {"name": namespace, "dimension": 4})
    assert created.status == 201, created.text
    assert (await client.post("/api/v1/namespaces", {"name": namespace})).status == 409
    assert (await client.get(f"/api/v1/namespaces/{namespace}")).json["namespace"]["dimension"] == 4
    assert (await client.get("/api/v1/namespaces/nowhere")).status == 404
    assert (await client.get("/api/v1/namespaces")).status == 200
    assert (await client.get("/api/v1/namespaces", query={"consistency": "x"})).status == 400
    assert (await client.post("/api/v1/snapshot")).json["snapshot_index"] > 0
    assert (await client.with_token(WRITER).post("/api/v1/snapshot")).status == 403
    await cluster_endpoints(client)


# Membership changes succeed only in a cluster (tests/net/test_cluster.py, tests/test_cluster.py);
# a node running alone answers them 409 not_clustered.
CLUSTER_ONLY = {
    ("post", "/api/v1/cluster/members"),
    ("delete", "/api/v1/cluster/members/{node_id}"),
}


async def cluster_endpoints(client: ApiClient) -> None:
    status = await client.get("/api/v1/cluster")
    assert status.json["voters"] == [1] and status.json["peers"] == [], status.json
    assert (await client.with_token(None).get("/api/v1/cluster")).status == 401
    alone = await client.post("/api/v1/cluster/members", {"node_id": 2})
    assert alone.status == 409 and alone.json["error"]["code"] == "not_clustered", alone.json
    assert (await client.delete("/api/v1/cluster/members/2")).status == 409
    assert (await client.post("/api/v1/cluster/leader", {"node_id": 1})).json == {"leader_id": 1}
    assert (await client.post("/api/v1/cluster/leader", {"node_id": 2})).status == 422
    assert (await client.post("/api/v1/cluster/leader", {"node_id": 0})).status == 400
    transfer = client.with_token(WRITER).post("/api/v1/cluster/leader", {"node_id": 1})
    assert (await transfer).status == 403


async def record_endpoints(client: ApiClient, namespace: str) -> None:
    """Nodes, observations, edges, vectors and batches: each one's success and errors."""
    ns = {"namespace": namespace}
    node = {"id": 100, "label": "UserPreference", "vector": [1, 0, 0, 0]}
    assert (await client.post("/api/v1/nodes", node, query=ns)).status == 201
    assert (await client.post("/api/v1/nodes", node, query=ns)).status == 409
    assert (await client.post("/api/v1/nodes", {"label": 5}, query=ns)).status == 400
    assert (await client.get("/api/v1/nodes/100", query=ns)).json["node"]["id"] == 100
    assert (await client.get("/api/v1/nodes/101", query=ns)).status == 404
    assert (await client.patch("/api/v1/nodes/100", {"text": "t"}, query=ns)).status == 200
    assert (await client.patch("/api/v1/nodes/101", {"text": "t"}, query=ns)).status == 404
    assert (await client.get("/api/v1/nodes", query=ns)).json["nodes"][0]["id"] == 100
    assert (await client.get("/api/v1/nodes", query={**ns, "limit": 0})).status == 400
    assert len((await client.get("/api/v1/nodes/100/history", query=ns)).json["versions"]) == 2
    assert (await client.get("/api/v1/nodes/101/history", query=ns)).status == 404
    observation = await client.post("/api/v1/nodes/100/observations", {"text": "tea"}, query=ns)
    assert observation.status == 201
    assert (
        await client.post("/api/v1/nodes/101/observations", {"text": "x"}, query=ns)
    ).status == 404
    assert (await client.get("/api/v1/nodes/100/observations", query=ns)).status == 200
    assert (await client.get("/api/v1/nodes/x/observations", query=ns)).status == 400
    observation_path = f"/api/v1/observations/{observation.json['observation']['id']}"
    assert (await client.get(observation_path, query=ns)).status == 200
    assert (await client.delete(observation_path, query=ns)).status == 200
    assert (await client.get(observation_path, query=ns)).status == 404
    assert (await client.delete(observation_path, query=ns)).status == 404
    await client.post("/api/v1/nodes", {"id": 200, "label": "Project"}, query=ns)
    edge = await client.post("/api/v1/edges", {"source": 100, "target": 200}, query=ns)
    assert edge.status == 201
    assert (
        await client.post("/api/v1/edges", {"source": 100, "target": 9}, query=ns)
    ).status == 404
    assert (await client.get("/api/v1/nodes/100/edges", query=ns)).status == 200
    assert (
        await client.get("/api/v1/nodes/100/edges", query={**ns, "direction": "up"})
    ).status == 400
    edge_path = f"/api/v1/edges/{edge.json['edge']['id']}"
    assert (await client.get(edge_path, query=ns)).status == 200
    assert (await client.patch(edge_path, {"properties": {"a": 1}}, query=ns)).status == 200
    assert (await client.delete(edge_path, query=ns)).status == 200
    assert (await client.get(edge_path, query=ns)).status == 404
    assert (await client.patch(edge_path, {"properties": {}}, query=ns)).status == 404
    assert (await client.delete(edge_path, query=ns)).status == 404
    vector = {"node_id": 200, "vector": [0, 1, 0, 0]}
    assert (await client.post("/api/v1/vectors", vector, query=ns)).status == 200
    short = {"node_id": 200, "vector": [1]}
    assert (await client.post("/api/v1/vectors", short, query=ns)).status == 422
    batch = {"commands": [{"op": "insert_node", "id": 300, "label": "Batch"}]}
    assert (await client.post("/api/v1/batch", batch, query=ns)).status == 200
    assert (await client.post("/api/v1/batch", {"commands": 1}, query=ns)).status == 400
    assert (await client.delete("/api/v1/nodes/300", query=ns)).status == 200
    assert (await client.delete("/api/v1/nodes/300", query=ns)).status == 404


async def query_endpoints(client: ApiClient, namespace: str) -> None:
    """Related, similar and hybrid: each one's success and errors."""
    ns = {"namespace": namespace}
    await client.post("/api/v1/edges", {"source": 100, "target": 200}, query=ns)
    related = await client.get("/api/v1/nodes/100/related", query=ns)
    assert [item["node"]["id"] for item in related.json["related"]] == [200]
    assert (await client.get("/api/v1/nodes/100/related", query={**ns, "depth": 99})).status == 422
    similar = await client.get("/api/v1/vectors/100/similar", query=ns)
    assert [hit["node"]["id"] for hit in similar.json["hits"]] == [200]
    assert (await client.get("/api/v1/vectors/101/similar", query=ns)).status == 404
    hybrid = await client.post("/api/v1/query/hybrid", {"node_id": 100, "top_k": 5}, query=ns)
    assert hybrid.json["mode"] == "node"
    assert (await client.post("/api/v1/query/hybrid", {}, query=ns)).status == 422


@pytest.mark.trio
async def test_every_endpoint_answers_its_success_and_its_errors(
    root: ApiClient, kind: str
) -> None:
    namespace = tenant(kind, "tour")
    await node_endpoints(root, namespace)
    await record_endpoints(root, namespace)
    await query_endpoints(root, namespace)
    for path, operations in SPEC["paths"].items():
        for method, operation in operations.items():
            statuses = {status for m, p, status in root.seen if (m, p) == (method.upper(), path)}
            if (method, path) in CLUSTER_ONLY:
                assert 409 in statuses, (method, path, statuses)
            else:
                assert any(status < 300 for status in statuses), (method, path, statuses)
            errors = set(operation["responses"]) - {"200", "201", "503"}
            assert not errors or any(400 <= status < 500 for status in statuses), (method, path)


# -- Tokens, roles and tenants ------------------------------------------------------------------


@pytest.mark.trio
async def test_tokens_roles_and_tenants_over_http(root: ApiClient, kind: str) -> None:
    a, b = tenant(kind, "a"), tenant(kind, "b")
    for name in (a, b):
        assert (await root.post("/api/v1/namespaces", {"name": name})).status == 201
        secret = {"id": 1, "label": "Secret", "text": f"{name}'s secret"}
        assert (await root.post("/api/v1/nodes", secret, query={"namespace": name})).status == 201
    alice, reader = root.with_token(WRITER), root.with_token(READER)
    anonymous = await root.with_token(None).get("/api/v1/nodes/1", query={"namespace": a})
    assert (anonymous.status, anonymous.headers["www-authenticate"][:6]) == (401, "Bearer")
    assert (await alice.get("/api/v1/nodes/1", query={"namespace": a})).status == 200
    for reply in (
        await alice.get("/api/v1/nodes/1", query={"namespace": b}),
        await alice.post("/api/v1/query/hybrid", {"text": "secret"}, query={"namespace": b}),
        await alice.get("/api/v1/nodes/1"),
        await reader.post("/api/v1/nodes", {"label": "Note"}, query={"namespace": a}),
        await root.with_token(OTHER_ADMIN).post("/api/v1/snapshot"),
    ):
        assert (reply.status, reply.error_code) == (403, "forbidden"), reply.text
        assert "secret" not in reply.text
    listed = await alice.get("/api/v1/namespaces")
    names = {space["name"] for space in listed.json["namespaces"]}
    assert a in names and names <= {tenant(each, "a") for each in KINDS}, names
    written = await alice.post("/api/v1/nodes", {"label": "Note"}, query={"namespace": a})
    assert written.json["node"]["created"]["principal"] == "alice"


@pytest.mark.trio
async def test_a_retried_write_applies_once_over_http(root: ApiClient, kind: str) -> None:
    namespace = tenant(kind, "retry")
    assert (await root.post("/api/v1/namespaces", {"name": namespace})).status == 201
    ns = {"namespace": namespace}
    session = {"X-Memora-Client-Id": f"{kind}-client", "X-Memora-Sequence": "1"}
    first = await root.post("/api/v1/nodes", {"label": "Note"}, query=ns, headers=session)
    retry = await root.post("/api/v1/nodes", {"label": "Note"}, query=ns, headers=session)
    assert first.status == retry.status == 201 and retry.json == first.json
    assert len((await root.get("/api/v1/nodes", query=ns)).json["nodes"]) == 1
