"""`memora.Client` and `memora.AsyncClient` against a real `memora serve` process.

One server serves the module, with tokens from `MEMORA_TOKENS`; each test works in a namespace of
its own. Covered: the method names and signatures against the embedded `memora.Memora` (with the
deliberate differences listed and explained), every operation round-tripped, query answers equal
to the embedded store's on the same data, typed errors (auth included), exactly-once writes when
an answer is lost, failover past a dead URL, `UnavailableError` within the deadline, Retry-After,
the read-your-writes floor, writers on many threads sharing one session, and the async client
under trio. A few tests drive the sans-I/O `Call` by hand, with no server at all.
"""

from __future__ import annotations

import inspect
import itertools
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import memora
from memora import (
    ConflictError,
    DimensionError,
    InsertEdge,
    InsertNode,
    NotFoundError,
    Provenance,
    ValidationError,
)
from memora.api.representation import node_json
from memora.client import (
    AsyncClient,
    BadAnswerError,
    Client,
    ClientClosedError,
    ClientError,
    ForbiddenError,
    RetryPolicy,
    UnauthenticatedError,
    UnavailableError,
    UnprocessableError,
)
from memora.client.calls import Call, ClientState, LeaderProbe, Router, Session
from memora.client.protocol import Done, Send, Sleep
from memora.client.reads import get_node
from memora.client.writes import insert_node
from memora.core import constants
from memora.core.types import CreateNamespace, SimpleCommand, vector_to_bytes
from memora.service.embedded import Memora

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from memora_process import MemoraProcess

ROOT = "root-token-0123456789"
WRITER = "writer-token-0123456789"
READER = "reader-token-0123456789"
SHARED = "shared"  # The one namespace the writer and the reader may use.
DIMENSION = 4
_namespaces = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoraProcess]:
    tokens = f"root:admin:*:{ROOT};w:write:{SHARED}:{WRITER};r:read:{SHARED}:{READER}"
    data_dir = tmp_path_factory.mktemp("client") / "data"
    with MemoraProcess(data_dir, {"MEMORA_TOKENS": tokens}) as process:
        with Client(process.url, token=ROOT) as admin:
            admin.create_namespace(SHARED, dimension=DIMENSION)
        yield process


@pytest.fixture
def namespace(server: MemoraProcess) -> str:
    """A fresh namespace of dimension 4 for one test."""
    name = f"test-{next(_namespaces)}"
    with Client(server.url, token=ROOT) as admin:
        admin.create_namespace(name, dimension=DIMENSION)
    return name


@pytest.fixture
def client(server: MemoraProcess, namespace: str) -> Iterator[Client]:
    with Client(server.url, token=ROOT, namespace=namespace) as opened:
        yield opened


def dead_url() -> str:
    """A loopback URL nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- The same surface as the embedded store -------------------------------------------------------

# Memora's public names the clients do not have, and why.
NOT_OVER_REST = {
    "open": "a client is made from URLs (Client(urls)), not opened on a directory",
    "get_node_by_name": "the REST API has no lookup of a node by its name",
    "state_hash": "the REST API does not publish the state digest",
    "content_hash": "the REST API does not publish the content digest",
    "stats": "REST has no per-namespace counts; get_namespace and metrics instead",
    "applied_index": "a property cannot be a network call; health()['applied_index'] instead",
}
# Keyword-only parameters the clients add to Memora's methods: read options on reads, and the
# server-side embedding of text on writes of text.
ADDED_PARAMETERS = {"consistency", "min_commit_index", "embed"}
# Defaults that differ: REST answers at most `list_limit_max` related nodes in one page.
OTHER_DEFAULTS = {
    ("query_related", "limit"): constants.list_limit_max,
    ("query_related_nodes", "limit"): constants.list_limit_max,
}
# What the clients have and Memora has not: REST-only reads, and the client's own state.
CLIENT_ONLY = {
    "get_observation", "query_hybrid_by_text", "get_namespace", "list_namespaces", "health",
    "metrics", "urls", "client_id", "last_sequence", "commit_index", "leader_url",
    "namespace",  # Memora's is an instance attribute, so dir(Memora) does not list it.
}  # fmt: skip
ASYNC_ONLY = {"aclose"}


def public_names(kind: type) -> set[str]:
    return {name for name in dir(kind) if not name.startswith("_")}


def test_the_clients_have_the_embedded_stores_operations() -> None:
    embedded = public_names(Memora)
    assert embedded - public_names(Client) == set(NOT_OVER_REST)
    assert public_names(Client) - embedded == CLIENT_ONLY
    assert public_names(AsyncClient) == public_names(Client) | ASYNC_ONLY


def test_the_clients_take_every_argument_the_embedded_store_takes() -> None:
    shared = (public_names(Memora) - set(NOT_OVER_REST)) & public_names(Client)
    for name in sorted(shared):
        expected = inspect.signature(getattr(Memora, name))
        actual = inspect.signature(getattr(Client, name))
        assert actual.return_annotation == expected.return_annotation, name
        for parameter in expected.parameters.values():
            given = actual.parameters[parameter.name]
            default = OTHER_DEFAULTS.get((name, parameter.name), parameter.default)
            assert given.default == default, (name, parameter.name)
            assert given.annotation == parameter.annotation, (name, parameter.name)
            assert given.kind == parameter.kind or parameter.name == "self", (name, parameter)
        for added in set(actual.parameters) - set(expected.parameters):
            assert added in ADDED_PARAMETERS, (name, added)
            assert actual.parameters[added].kind is inspect.Parameter.KEYWORD_ONLY


def test_the_async_client_has_the_same_signatures_as_coroutines() -> None:
    for name in sorted(public_names(Client)):
        method = getattr(Client, name)
        if isinstance(method, property) or name in ("close",):
            continue
        twin = getattr(AsyncClient, name)
        assert inspect.signature(twin) == inspect.signature(method), name
        assert inspect.iscoroutinefunction(twin), name
    assert inspect.iscoroutinefunction(AsyncClient.close)


def test_memora_exports_the_clients() -> None:
    assert memora.Client is Client and memora.AsyncClient is AsyncClient


# -- Every operation, round trip ------------------------------------------------------------------


def test_nodes_round_trip(client: Client) -> None:
    provenance = Provenance("chat", 0.5, 10, 20)
    node = client.insert_node(
        "Person", name="ada", properties={"langs": ["en"]}, text="hi", vector=[1, 0, 0, 0],
        provenance=provenance,
    )  # fmt: skip
    assert (node.label, node.name, node.version) == ("Person", "ada", 1)
    assert node.provenance == provenance
    assert node.namespace == client.namespace and node.created.session == client.client_id
    assert client.get_node(node.id) == node and client.commit_index == node.created.index
    changed = client.update_node(node.id, label="Human", properties={}, clear=["text"])
    assert (changed.label, changed.properties, changed.text) == ("Human", {}, None)
    assert client.get_node(node.id, as_of=node.created.index) == node
    deleted = client.delete_node(node.id)
    assert deleted.deleted and client.get_node(node.id) is None
    assert client.node_history(node.id) == [node, changed, deleted]
    assert client.get_node(10**9) is None


def test_node_history_follows_every_page(client: Client) -> None:
    node = client.insert_node("Counter")
    versions = [node, client.update_node(node.id, text="a"), client.update_node(node.id, text="b")]
    pages = {"0": (versions[:2], 2), "2": (versions[2:], None)}
    asked: list[str] = []

    def history_pages(request: httpx.Request) -> httpx.Response:
        after = request.url.params["after_version"]
        asked.append(after)
        page, following = pages[after]
        body = {"versions": [node_json(v) for v in page], "next_after_version": following}
        return httpx.Response(200, json={**body, "applied_index": 9})

    with Client("http://memora.test", transport=httpx.MockTransport(history_pages)) as paged:
        assert paged.node_history(node.id) == versions and asked == ["0", "2"]
    assert client.node_history(node.id) == versions  # One page from the real server.


def test_vectors_round_trip_exactly(client: Client) -> None:
    node = client.insert_node("Doc")
    vector = [0.1, 0.2, 0.3, 1e-7]
    with_vector = client.insert_vector(node.id, vector)
    assert with_vector.vector == vector_to_bytes(vector) and client.get_node(node.id) == with_vector


def test_edges_round_trip(client: Client) -> None:
    ada, bob = client.insert_node("Person"), client.insert_node("Person")
    edge = client.insert_edge(ada.id, bob.id, "knows", properties={"since": 2020})
    assert (edge.source, edge.target, edge.kind) == (ada.id, bob.id, "knows")
    assert client.get_edge(edge.id) == edge
    updated = client.update_edge(edge.id, properties={"since": 2021})
    assert updated.version == 2 and updated.properties == {"since": 2021}
    assert client.edges_of(ada.id, direction="out", kinds="knows") == [updated]
    assert client.edges_of(ada.id, direction="in") == []
    assert client.edges_of(bob.id, kinds=["likes"]) == []
    assert client.delete_edge(edge.id).deleted and client.get_edge(edge.id) is None


def test_observations_round_trip(client: Client) -> None:
    node = client.insert_node("Person")
    observation = client.add_observation(node.id, "likes tea", vector=[0, 1, 0, 0])
    assert observation.node_id == node.id and observation.text == "likes tea"
    assert client.observations_of(node.id) == [observation]
    assert client.get_observation(observation.id) == observation
    embedded = client.add_observation(node.id, "drinks coffee", embed=True)
    assert embedded.vector is not None
    assert client.delete_observation(observation.id).deleted
    assert client.get_observation(observation.id) is None
    assert client.observations_of(node.id) == [embedded]


def test_batch_applies_all_or_nothing(client: Client) -> None:
    vector = vector_to_bytes([1, 1, 0, 0])
    commands: list[SimpleCommand] = [
        InsertNode("A", id=1),
        InsertNode("B", id=2, vector=vector),
        InsertEdge(1, 2, "to"),
    ]
    first, second, edge = client.batch(commands)
    assert (first.id, second.id, edge.source, edge.target) == (1, 2, 1, 2)
    with pytest.raises(NotFoundError):
        client.batch([InsertNode("C", id=3), InsertEdge(3, 99, "to")])
    assert client.get_node(3) is None
    with pytest.raises(ValidationError) as refused:
        client.batch([CreateNamespace(4)])
    assert refused.value.field == "commands[0]"


def test_list_nodes_pages_by_cursor(client: Client) -> None:
    created = [client.insert_node("Even" if n % 2 == 0 else "Odd") for n in range(5)]
    pages, after = [], 0
    while page := client.list_nodes(after_id=after, limit=2):
        pages.append([node.id for node in page])
        after = page[-1].id
    assert pages == [[1, 2], [3, 4], [5]] and [node.id for node in created] == [1, 2, 3, 4, 5]
    assert [node.id for node in client.list_nodes(label="Even")] == [1, 3, 5]


def test_namespaces_snapshot_health_and_metrics(client: Client, namespace: str) -> None:
    assert client.get_namespace(namespace).dimension == DIMENSION
    assert namespace in [item.name for item in client.list_namespaces()]
    created = client.create_namespace(f"{namespace}-l2", dimension=2, metric="l2")
    assert (created.name, created.dimension, created.metric) == (f"{namespace}-l2", 2, "l2")
    inserted = client.insert_node("X", vector=[3, 4], namespace=created.name)
    assert client.get_node(inserted.id, namespace=created.name) == inserted
    health = client.health()
    assert health["role"] == "leader" and health["applied_index"] >= client.commit_index
    assert client.snapshot() >= client.commit_index
    assert client.metrics()["writes_applied_total"] > 0


# -- Queries answer as the embedded store does ----------------------------------------------------

GRAPH_VECTORS = ([1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1, 0, 0], [0, 0.8, 0.6, 0], [0, 0, 0, 1])


def build_graph(store: Any, namespace: str | None = None) -> None:
    """The same five nodes and four edges, in the same order, in either store."""
    for vector in GRAPH_VECTORS:
        store.insert_node("Item", vector=vector, namespace=namespace)
    for source, target in ((1, 2), (2, 3), (3, 4), (1, 5)):
        store.insert_edge(source, target, "next", namespace=namespace)


def shape(answer: Any) -> Any:
    """Records reduced to what two stores agree on: ids (stamps and sessions differ)."""
    if isinstance(answer, memora.Node):
        return answer.id
    if isinstance(answer, memora.HybridHit):
        return (answer.node.id, answer.distance, shape(answer.neighbours))
    if isinstance(answer, list | tuple):
        return [shape(item) for item in answer]
    if isinstance(answer, dict):
        return answer
    return answer


QUERIES: dict[str, Callable[[Any], Any]] = {
    "similar by node": lambda store: store.query_similar(1, 3, exact=True),
    "similar by vector": lambda store: store.query_similar([0, 1, 0.1, 0], 2, exact=True),
    "related": lambda store: store.query_related(1, 2),
    "related nodes": lambda store: store.query_related_nodes(3, 1, kinds=["next"], direction="in"),
    "hybrid": lambda store: store.query_hybrid(2, 2, 3),
    "hybrid by vector": lambda store: store.query_hybrid_by_vector([0, 0, 1, 0], 2, 1, exact=True),
    "edges": lambda store: [edge.target for edge in store.edges_of(2)],
}


def test_queries_answer_as_the_embedded_store_does(
    client: Client, namespace: str, tmp_path: Path
) -> None:
    build_graph(client)
    embedded = Memora.open(tmp_path / "embedded", namespace=namespace, dimension=DIMENSION)
    with embedded as store:
        build_graph(store)
        for name, query in QUERIES.items():
            assert shape(query(client)) == shape(query(store)), name
    by_text = client.query_hybrid_by_text("anything", 2, 1)
    assert len(by_text) == 2 and all(hit.neighbours for hit in by_text)


# -- Typed errors ---------------------------------------------------------------------------------


def test_refusals_are_typed_errors(client: Client) -> None:
    node = client.insert_node("Person", name="ada")
    with pytest.raises(ConflictError):
        client.insert_node("Person", name="ada")
    with pytest.raises(DimensionError):
        client.insert_node("Person", vector=[1, 2])
    with pytest.raises(NotFoundError) as missing:
        client.get_node(node.id, namespace="no-such-namespace")
    assert missing.value.field == "namespace"
    with pytest.raises(UnprocessableError) as unprocessable:
        client.query_hybrid(node.id)  # The node has no vector to rank by.
    assert isinstance(unprocessable.value, ValidationError) and unprocessable.value.status == 422
    with pytest.raises(UnprocessableError):
        client.get_node(node.id, as_of=10**9)


def test_bad_arguments_are_refused_before_sending(server: MemoraProcess) -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    transport = httpx.MockTransport(record)
    with Client(server.url, transport=transport) as client:
        for call in (
            lambda: client.get_node(True),
            lambda: client.insert_node("X", vector=[1, float("nan"), 0, 0]),
            lambda: client.insert_node("X", vector=[[1, 2]]),
            lambda: client.edges_of(1, kinds=["a,b"]),
            lambda: client.query_similar([1, 0, 0, 0], ef=5),
            lambda: client.insert_node("X", properties={"x": float("inf")}),
        ):
            with pytest.raises(ValidationError):
                call()
    assert sent == [] and client.last_sequence == 0


@pytest.mark.parametrize(
    "arguments",
    [{"urls": []}, {"urls": "ftp://x"}, {"urls": ["http://a", "http://a/"]},
     {"urls": ["http://a"] * 65}, {"consistency": "eventual"}, {"client_id": ""},
     {"last_sequence": -1}, {"token": "two\nlines"}],
)  # fmt: skip
def test_client_arguments_are_checked(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Client(**{"urls": "http://127.0.0.1:1", **arguments})


def test_a_closed_client_sends_nothing(client: Client) -> None:
    client.close()
    with pytest.raises(ClientClosedError):
        client.health()


def test_tokens_and_roles_are_typed_errors(server: MemoraProcess) -> None:
    with Client(server.url, namespace=SHARED) as anonymous:
        assert anonymous.health()["role"] == "leader"  # Health needs no token.
        with pytest.raises(UnauthenticatedError) as missing:
            anonymous.list_nodes()
        assert (missing.value.status, missing.value.code) == (401, "unauthenticated")
    stranger = Client(server.url, token="not-a-token", namespace=SHARED)
    with stranger, pytest.raises(UnauthenticatedError):
        stranger.get_node(1)
    with Client(server.url, token=READER, namespace=SHARED) as reader:
        assert reader.list_nodes() == []
        with pytest.raises(ForbiddenError) as forbidden:
            reader.insert_node("X")
        assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    with Client(server.url, token=WRITER, namespace=SHARED) as writer:
        assert writer.insert_node("X").namespace == SHARED
        with pytest.raises(ForbiddenError) as elsewhere:
            writer.insert_node("X", namespace="default")
        assert elsewhere.value.field == "namespace"
        with pytest.raises(ForbiddenError):
            writer.snapshot()


# -- Exactly once, failover, deadlines ------------------------------------------------------------


class LosingTransport(httpx.HTTPTransport):
    """Loses the answer to the first write it carries, after the server handled it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str | None, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path == "/api/v1/nodes":
            session = request.headers.get("X-Memora-Client-Id")
            self.writes.append((session, request.headers.get("X-Memora-Sequence")))
            if len(self.writes) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("the answer was lost", request=request)
        return response


def test_a_write_whose_answer_was_lost_applies_once(server: MemoraProcess, namespace: str) -> None:
    transport = LosingTransport()
    with Client(server.url, token=ROOT, namespace=namespace, transport=transport) as client:
        node = client.insert_node("Once")
        assert client.list_nodes(label="Once") == [node]
        assert transport.writes == [(client.client_id, "1"), (client.client_id, "1")]
        second = client.insert_node("Once")
        assert transport.writes[-1] == (client.client_id, "2") and second.id == node.id + 1
        assert client.last_sequence == 2


def test_a_resumed_session_continues_its_sequence(server: MemoraProcess, namespace: str) -> None:
    with Client(server.url, token=ROOT, namespace=namespace) as first:
        first.insert_node("A")
        session = (first.client_id, first.last_sequence)
    with Client(server.url, token=ROOT, namespace=namespace, client_id=session[0]) as stale:
        # Sequence 1 again: the server answers with the reply it cached for it.
        assert stale.insert_node("B").label == "A"
    resumed = Client(
        server.url, token=ROOT, namespace=namespace, client_id=session[0], last_sequence=1
    )
    with resumed:
        assert resumed.insert_node("C").label == "C" and resumed.last_sequence == 2


def test_a_dead_url_first_fails_over_to_the_live_one(server: MemoraProcess, namespace: str) -> None:
    urls = [dead_url(), server.url]
    with Client(urls, token=ROOT, namespace=namespace) as client:
        node = client.insert_node("Person")
        assert client.leader_url == server.url
        assert client.get_node(node.id) == node
    with Client(urls, token=ROOT, namespace=namespace) as reader:
        assert reader.get_node(node.id) == node  # A read fails over too.


def test_every_url_dead_raises_unavailable_within_the_deadline() -> None:
    policy = RetryPolicy(deadline_s=1.0)
    with Client([dead_url(), dead_url()], policy=policy) as client:
        started = time.monotonic()
        with pytest.raises(UnavailableError) as unavailable:
            client.insert_node("Person")
        elapsed = time.monotonic() - started
    assert elapsed <= policy.deadline_s + 0.5, elapsed
    assert "ConnectError" in unavailable.value.cause and client.last_sequence == 1


def test_retry_after_is_honoured() -> None:
    attempts: list[float] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        attempts.append(time.monotonic())
        body = {"error": {"code": "not_leader", "message": "no leader", "field": None}}
        return httpx.Response(503, json=body, headers={"Retry-After": "1"})

    policy = RetryPolicy(deadline_s=1.5, retry_after_max_s=1.0)
    transport = httpx.MockTransport(unavailable)
    client = Client("http://memora.test", policy=policy, transport=transport)
    with client, pytest.raises(UnavailableError) as error:
        client.get_node(1)
    assert len(attempts) == 2 and attempts[1] - attempts[0] >= 0.99, attempts
    assert "503: no leader" in error.value.cause


def test_a_refusal_is_not_retried() -> None:
    sent: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) == 1:
            return httpx.Response(418, text="<html>teapot</html>")
        body = {"error": {"code": "body_too_large", "message": "too big", "field": None}}
        return httpx.Response(413, json=body)

    with Client("http://memora.test", transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(ClientError) as teapot:
            client.get_node(1)
        assert (teapot.value.code, teapot.value.status) == ("http_418", 418)
        with pytest.raises(ClientError) as too_large:
            client.get_node(1)
        assert (too_large.value.code, too_large.value.status) == ("body_too_large", 413)
    assert len(sent) == 2


@pytest.mark.parametrize("content", [b"<html>", b"[]", b'{"node": {"id": 1}}'])
def test_an_answer_of_another_shape_is_a_typed_error(content: bytes) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=content))
    client = Client("http://memora.test", transport=transport)
    with client, pytest.raises(BadAnswerError) as error:
        client.get_node(1)
    assert (error.value.code, error.value.status) == ("bad_answer", 200)


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.queries: list[dict[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.queries.append(dict(request.url.params))
        return super().handle_request(request)


def test_lease_and_follower_reads_wait_for_the_clients_writes(
    server: MemoraProcess, namespace: str
) -> None:
    transport = RecordingTransport()
    with Client(server.url, token=ROOT, namespace=namespace, transport=transport) as client:
        client.get_node(1, consistency="follower")
        assert "min_commit_index" not in transport.queries[-1]  # No write yet.
        node = client.insert_node("Mine")
        assert client.get_node(node.id, consistency="follower") == node
        assert transport.queries[-1]["min_commit_index"] == str(client.commit_index)
        client.get_node(node.id, consistency="lease", min_commit_index=1)
        assert transport.queries[-1]["min_commit_index"] == str(client.commit_index)
        client.get_node(node.id)
        assert "min_commit_index" not in transport.queries[-1]
        assert transport.queries[-1]["consistency"] == "linearizable"


def test_threads_share_one_session_without_superseding_each_other(client: Client) -> None:
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(10):
                client.insert_node("Threaded")
        except BaseException as error:  # Reported below, with the test's own assertion.
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and client.last_sequence == 40
    assert len(client.list_nodes(label="Threaded")) == 40


# -- The async client, under trio -----------------------------------------------------------------


class LosingAsyncTransport(httpx.AsyncHTTPTransport):
    """The async `LosingTransport`: loses the answer to the first write."""

    def __init__(self) -> None:
        super().__init__()
        self.sequences: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST":
            self.sequences.append(request.headers.get("X-Memora-Sequence"))
            if len(self.sequences) == 1:
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("the answer was lost", request=request)
        return response


@pytest.mark.trio
async def test_the_async_client_under_trio(server: MemoraProcess, namespace: str) -> None:
    transport = LosingAsyncTransport()
    urls = [dead_url(), server.url]
    async with AsyncClient(urls, token=ROOT, namespace=namespace, transport=transport) as client:
        ada = await client.insert_node("Person", vector=[1, 0, 0, 0])
        assert transport.sequences == ["1", "1"]
        assert await client.list_nodes(label="Person") == [ada]
        vector = vector_to_bytes([0, 1, 0, 0])
        commands: list[SimpleCommand] = [InsertNode("Person", vector=vector), InsertEdge(1, 2, "k")]
        bob, edge = await client.batch(commands)
        assert client.leader_url == server.url  # Found again after the lost answer.
        assert await client.get_node(bob.id) == bob and await client.get_edge(edge.id) == edge
        assert await client.query_related(ada.id) == {bob.id: 1}
        hits = await client.query_similar(ada.id, 1)
        assert [node.id for node, _ in hits] == [bob.id]
        assert await client.get_node(99) is None
        with pytest.raises(NotFoundError):
            await client.delete_node(99)
    with pytest.raises(ClientClosedError):
        await client.health()


@pytest.mark.trio
async def test_the_async_client_gives_up_at_its_deadline() -> None:
    policy = RetryPolicy(deadline_s=0.5)
    async with AsyncClient([dead_url()], policy=policy) as client:
        with pytest.raises(UnavailableError):
            await client.get_node(1)


# -- The sans-I/O core, by hand -------------------------------------------------------------------


def call_state(urls: tuple[str, ...], policy: RetryPolicy) -> ClientState:
    return ClientState(
        Session("c", 0), Router(urls), policy, None, "linearizable", (), random.Random(7)
    )


def test_a_call_tries_each_url_then_sleeps_then_gives_up() -> None:
    policy = RetryPolicy(deadline_s=1.0, backoff_initial_s=0.2, backoff_max_s=0.2)
    call = Call(get_node(5), call_state(("http://a", "http://b"), policy), now=0.0)
    first = call.next_action(0.0)
    assert isinstance(first, Send) and first.url == "http://a/api/v1/nodes/5"
    call.failed("refused", 0.0)
    second = call.next_action(0.0)
    assert isinstance(second, Send) and second.url_index == 1  # At once, no sleep.
    call.failed("refused", 0.1)
    sleep = call.next_action(0.1)
    assert isinstance(sleep, Sleep) and 0.1 <= sleep.seconds <= 0.2
    assert isinstance(call.next_action(0.3), Send)
    call.failed("refused", 0.95)
    assert isinstance(call.next_action(0.95), Send)
    call.failed("refused again", 0.96)  # A sleep would end past the deadline: give up now.
    with pytest.raises(UnavailableError) as unavailable:
        call.next_action(0.96)
    assert unavailable.value.cause == "http://b: refused again"


def test_a_call_turns_a_missing_record_into_none() -> None:
    call = Call(get_node(5), call_state(("http://a",), RetryPolicy()), now=0.0)
    assert isinstance(call.next_action(0.0), Send)
    body = b'{"error": {"code": "not_found", "message": "no node 5", "field": "node_id"}}'
    call.answered(404, None, body, 0.0)
    assert call.next_action(0.0) == Done(None)


def test_the_leader_probe_points_writes_at_the_leader() -> None:
    state = call_state(("http://a", "http://b", "http://c"), RetryPolicy())
    probe = LeaderProbe(state, now=0.0)
    assert isinstance(probe.next_action(0.0), Send)
    probe.failed("refused", 0.0)
    asked = probe.next_action(0.0)
    assert isinstance(asked, Send) and asked.url == "http://b/api/v1/health"
    probe.answered(200, None, b'{"role": "leader", "node_id": 2}', 0.0)
    assert probe.next_action(0.0) == Done(None) and state.router.leader_id == 2
    write = Call(insert_node("Person"), state, now=0.0)
    sent = write.next_action(0.0)
    assert isinstance(sent, Send) and sent.url == "http://b/api/v1/nodes"
    assert dict(sent.headers)["X-Memora-Sequence"] == "1"
    write.answered(503, "1", b"not json", 0.1)  # The leader is gone: forget it, try c.
    assert state.router.leader is None and state.router.probe_due
    retried = write.next_action(0.1)
    assert isinstance(retried, Send) and retried.url == "http://c/api/v1/nodes"
    assert dict(retried.headers)["X-Memora-Sequence"] == "1"


def test_the_leader_probe_stops_at_its_time_budget() -> None:
    state = call_state(("http://a", "http://b"), RetryPolicy(probe_timeout_s=1.0))
    probe = LeaderProbe(state, now=0.0)
    first = probe.next_action(0.0)
    assert isinstance(first, Send) and first.timeout_s == 1.0
    probe.failed("timed out", 1.0)
    assert probe.next_action(1.0) == Done(None) and state.router.leader is None
