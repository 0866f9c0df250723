"""Bearer tokens, roles and tenants: who may call what, and that one tenant never sees another's
data; plus exactly-once writes with the client session headers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from api_client import ApiClient
from quart_trio import QuartTrio

from memora.api.auth import identify
from memora.api.errors import UnauthenticatedError
from memora.api.settings import ApiSettings, Role, TokenGrant

GRANTS = (
    TokenGrant("root-token", frozenset({"*"}), Role.ADMIN, "root"),
    TokenGrant("alice-write", frozenset({"tenant-a"}), Role.WRITE, "alice"),
    TokenGrant("alice-read", frozenset({"tenant-a"}), Role.READ, "alice-reader"),
    TokenGrant("bob-admin", frozenset({"tenant-b"}), Role.ADMIN, "bob"),
)
A = {"namespace": "tenant-a"}
B = {"namespace": "tenant-b"}


@pytest.fixture
async def clients(make_app: Callable[[ApiSettings], QuartTrio]) -> dict[str, ApiClient]:
    """A client per token (and "anonymous"), with namespaces tenant-a and tenant-b holding a
    node 1 each."""
    base = ApiClient(make_app(ApiSettings(tokens=GRANTS)))
    by_name = {grant.principal: base.with_token(grant.token) for grant in GRANTS}
    by_name["anonymous"] = base.with_token(None)
    for name in ("tenant-a", "tenant-b"):
        created = await by_name["root"].post("/api/v1/namespaces", {"name": name})
        assert created.status == 201, created.text
        node = {"id": 1, "label": "Secret", "text": f"{name}'s secret"}
        assert (
            await by_name["root"].post("/api/v1/nodes", node, query={"namespace": name})
        ).status == 201
    return by_name


@pytest.mark.trio
async def test_no_or_unknown_token_is_401_with_www_authenticate(
    clients: dict[str, ApiClient],
) -> None:
    for client in (clients["anonymous"], clients["root"].with_token("not-a-token")):
        reply = await client.get("/api/v1/nodes/1", query=A)
        assert (reply.status, reply.error_code) == (401, "unauthenticated")
        assert reply.headers["www-authenticate"].startswith("Bearer")
    basic = await clients["anonymous"].get(
        "/api/v1/nodes/1", query=A, headers={"Authorization": "Basic cm9vdA=="}
    )
    assert basic.status == 401
    health = await clients["anonymous"].get("/api/v1/health")
    assert health.status == 200 and health.json["role"] == "leader"
    assert "data_dir" not in health.json, "health needs no token: it must not show the path"
    assert (await clients["anonymous"].get("/openapi.json")).status == 200


@pytest.mark.trio
async def test_a_tenant_never_sees_another_tenants_data(clients: dict[str, ApiClient]) -> None:
    alice = clients["alice"]
    assert (await alice.get("/api/v1/nodes/1", query=A)).json["node"]["namespace"] == "tenant-a"
    attempts = [
        await alice.get("/api/v1/nodes/1", query=B),
        await alice.get("/api/v1/nodes", query=B),
        await alice.get("/api/v1/namespaces/tenant-b"),
        await alice.post("/api/v1/query/hybrid", {"text": "secret"}, query=B),
        await alice.post("/api/v1/nodes", {"label": "Spy"}, query=B),
        await alice.delete("/api/v1/nodes/1", query=B),
        await alice.get("/api/v1/nodes/1"),  # The default namespace is not hers either.
    ]
    for reply in attempts:
        assert (reply.status, reply.error_code) == (403, "forbidden"), reply.text
        assert "secret" not in reply.text
    listed = await alice.get("/api/v1/namespaces")
    assert [ns["name"] for ns in listed.json["namespaces"]] == ["tenant-a"]
    assert (await clients["bob"].get("/api/v1/nodes/1", query=B)).status == 200


@pytest.mark.trio
async def test_roles_are_enforced_per_endpoint(clients: dict[str, ApiClient]) -> None:
    reader, writer, bob = clients["alice-reader"], clients["alice"], clients["bob"]
    assert (await reader.get("/api/v1/nodes/1", query=A)).status == 200
    refused = await reader.post("/api/v1/nodes", {"label": "Note"}, query=A)
    assert (refused.status, refused.error_code) == (403, "forbidden")
    assert (await writer.post("/api/v1/nodes", {"label": "Note"}, query=A)).status == 201
    assert (await writer.post("/api/v1/namespaces", {"name": "tenant-a2"})).status == 403
    assert (await writer.post("/api/v1/snapshot")).status == 403
    assert (await bob.post("/api/v1/namespaces", {"name": "tenant-b2"})).status == 403
    assert (await bob.post("/api/v1/snapshot")).status == 403  # Node-wide: needs "*".
    snapshot = await clients["root"].post("/api/v1/snapshot")
    assert snapshot.status == 200 and snapshot.json["snapshot_index"] > 0
    assert (await reader.get("/api/v1/metrics")).status == 200


@pytest.mark.trio
async def test_the_tokens_principal_is_recorded_on_writes(clients: dict[str, ApiClient]) -> None:
    written = await clients["alice"].post("/api/v1/nodes", {"label": "Note"}, query=A)
    assert written.json["node"]["created"]["principal"] == "alice"
    patched = await clients["bob"].patch("/api/v1/nodes/1", {"text": "changed"}, query=B)
    node = patched.json["node"]
    assert (node["created"]["principal"], node["updated"]["principal"]) == ("root", "bob")


def test_tokens_are_matched_whole() -> None:
    settings = ApiSettings(tokens=GRANTS)
    assert identify(settings, "Bearer root-token").principal == "root"
    assert identify(settings, "bearer  alice-read ").principal == "alice-reader"
    for header in (
        "Bearer root-toke",
        "Bearer root-token2",
        "Bearer ",
        "root-token",
        "Bearer \udcff",
    ):
        with pytest.raises(UnauthenticatedError):
            identify(settings, header)
    assert identify(ApiSettings(), None).principal == "local"


# -- Exactly-once writes --------------------------------------------------------------------------

SESSION = {"X-Memora-Client-Id": "client-7", "X-Memora-Sequence": "1"}


@pytest.mark.trio
async def test_a_retried_write_applies_once_and_gets_the_first_answer(client: ApiClient) -> None:
    first = await client.post("/api/v1/nodes", {"label": "Note"}, headers=SESSION)
    retry = await client.post("/api/v1/nodes", {"label": "Note"}, headers=SESSION)
    assert first.status == retry.status == 201
    assert retry.json["node"] == first.json["node"]
    assert first.json["node"]["created"]["session"] == "client-7"
    page = await client.get("/api/v1/nodes", query={"label": "Note"})
    assert len(page.json["nodes"]) == 1
    following = {**SESSION, "X-Memora-Sequence": "2"}
    second = await client.post("/api/v1/nodes", {"label": "Note"}, headers=following)
    assert second.json["node"]["id"] != first.json["node"]["id"]
    stale = await client.post("/api/v1/nodes", {"label": "Note"}, headers=SESSION)
    assert (stale.status, stale.error_code) == (409, "conflict")


@pytest.mark.trio
async def test_a_session_number_reused_by_another_kind_of_write_is_a_conflict(
    client: ApiClient,
) -> None:
    """It was a 500: the namespace endpoint was handed the cached node of the first write."""
    first = await client.post("/api/v1/nodes", {"label": "Note"}, headers=SESSION)
    assert first.status == 201
    reused = await client.post("/api/v1/namespaces", {"name": "notes"}, headers=SESSION)
    assert (reused.status, reused.error_code, reused.error_field) == (
        409,
        "conflict",
        "sequence",
    )
    assert (await client.get("/api/v1/namespaces/notes")).status == 404


@pytest.mark.trio
async def test_session_headers_go_together_and_are_checked(client: ApiClient) -> None:
    only_id = await client.post(
        "/api/v1/nodes", {"label": "Note"}, headers={"X-Memora-Client-Id": "c"}
    )
    assert (only_id.status, only_id.error_field) == (422, "X-Memora-Sequence")
    for sequence in ("0", "-1", "one", "99999999999999999999"):
        headers = {"X-Memora-Client-Id": "c", "X-Memora-Sequence": sequence}
        reply = await client.post("/api/v1/nodes", {"label": "Note"}, headers=headers)
        assert reply.status in (400, 422) and reply.error_field == "X-Memora-Sequence"
    assert (await client.get("/api/v1/nodes", query={"label": "Note"})).json["nodes"] == []
