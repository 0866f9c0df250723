"""OpenAICompatibleEmbedder against a real HTTP server on 127.0.0.1: what it sends, how it reads
the answer, and the typed error of every way the service can fail."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import numpy as np
import pytest

from memora.core.errors import LimitError, ValidationError
from memora.service.embedders import openai_compatible
from memora.service.embedding import (
    EmbeddingError,
    OpenAICompatibleEmbedder,
    embed_texts_max,
    embedder_from_spec,
)

API_KEY = "sk-test-secret-0123456789"
SERVICE_DIMENSION = 4


@attrs.frozen
class Received:
    path: str
    headers: dict[str, str]
    body: Any


Answer = Callable[[Received], tuple[int, bytes]]


def raw_vector(text: str, dimension: int = SERVICE_DIMENSION) -> list[float]:
    """What the fake service answers for `text`: not unit length, different per text length."""
    return [float(len(text) + 1)] + [float(index + 2) for index in range(dimension - 1)]


def unit(values: list[float]) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def items(texts: list[str], dimension: int = SERVICE_DIMENSION) -> list[dict[str, Any]]:
    """The data items of a correct answer, listed in reverse so that order comes from index."""
    listed = [
        {"object": "embedding", "index": index, "embedding": raw_vector(text, dimension)}
        for index, text in enumerate(texts)
    ]
    return listed[::-1]


def json_answer(document: Any, status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps(document).encode()


def correct(received: Received) -> tuple[int, bytes]:
    return json_answer({"object": "list", "data": items(received.body["input"])})


class FakeService:
    """An HTTP server in a thread: it records each request and replies with `answer`."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answer: Answer = correct
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received = Received(self.path, dict(self.headers), json.loads(body))
                service.received.append(received)
                status, content = service.answer(received)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                # The timeout test's client has gone by the time a slow answer is written.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(content)

            def log_message(self, *arguments: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def service() -> Iterator[FakeService]:
    fake = FakeService()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def embedder(service: FakeService) -> Iterator[OpenAICompatibleEmbedder]:
    with OpenAICompatibleEmbedder(service.base_url, "test-model", api_key=API_KEY) as remote:
        yield remote


def test_request_and_answer_in_index_order(
    service: FakeService, embedder: OpenAICompatibleEmbedder
) -> None:
    texts = ["a", "bb", "a longer text"]
    rows = embedder.embed_many(texts)
    assert rows.dtype == np.float32 and rows.shape == (3, SERVICE_DIMENSION)
    for row, text in zip(rows, texts, strict=True):
        assert row == pytest.approx(unit(raw_vector(text)), abs=1e-6)
    [received] = service.received
    assert received.path == "/v1/embeddings"
    assert received.body == {"model": "test-model", "input": texts}
    assert received.headers["Authorization"] == f"Bearer {API_KEY}"
    assert received.headers["Content-Type"] == "application/json"
    assert embedder.name == "openai:test-model"
    assert embedder.dimension == SERVICE_DIMENSION and len(service.received) == 1


def test_embed_one_text_and_no_key_no_header(service: FakeService) -> None:
    with OpenAICompatibleEmbedder(service.base_url + "/", "m") as remote:
        vector = remote.embed("hello")
    assert vector.shape == (SERVICE_DIMENSION,) and vector.dtype == np.float32
    assert vector == pytest.approx(unit(raw_vector("hello")), abs=1e-6)
    [received] = service.received
    assert received.path == "/v1/embeddings" and "Authorization" not in received.headers


def test_dimension_probe_asks_once(
    service: FakeService, embedder: OpenAICompatibleEmbedder
) -> None:
    assert embedder.dimension == SERVICE_DIMENSION
    assert embedder.probe() == SERVICE_DIMENSION
    assert [received.body["input"] for received in service.received] == [["dimension probe"]]
    assert embedder.embed_many([]).shape == (0, SERVICE_DIMENSION)
    assert len(service.received) == 1


def test_known_dimension_needs_no_request_for_nothing(service: FakeService) -> None:
    with OpenAICompatibleEmbedder(service.base_url, "m", dimension=4) as remote:
        assert remote.dimension == 4
        assert remote.embed_many([]).shape == (0, 4)
    assert service.received == []


def test_large_calls_are_split_into_requests(
    service: FakeService, embedder: OpenAICompatibleEmbedder
) -> None:
    texts = ["x" * (index % 50) for index in range(300)]
    rows = embedder.embed_many(texts)
    sizes = [len(received.body["input"]) for received in service.received]
    assert sizes == [openai_compatible.openai_request_texts_max, 300 - sizes[0]] == [256, 44]
    expected = np.stack([unit(raw_vector(text)) for text in texts])
    assert np.abs(rows - expected).max() < 1e-6


def status_500_echoing_the_request(received: Received) -> tuple[int, bytes]:
    echoed = f"internal error for {received.headers.get('Authorization')}"
    return 500, echoed.encode()


def dropping_the_last(received: Received) -> tuple[int, bytes]:
    return json_answer({"data": items(received.body["input"])[1:]})


def one_short_vector(received: Received) -> tuple[int, bytes]:
    data = items(received.body["input"])
    data[0]["embedding"] = data[0]["embedding"][:-1]
    return json_answer({"data": data})


def fixed(status: int, content: bytes) -> Answer:
    return lambda received: (status, content)


def with_item(change: Callable[[dict[str, Any]], None]) -> Answer:
    def answer(received: Received) -> tuple[int, bytes]:
        data = items(received.body["input"])
        change(data[-1])  # The item of index 0.
        return json_answer({"data": data})

    return answer


FAILURES: tuple[tuple[str, Answer, str], ...] = (
    ("status 500", status_500_echoing_the_request, "answered HTTP 500"),
    ("status 401", fixed(401, b'{"error": "bad key"}'), "answered HTTP 401"),
    ("redirect", fixed(302, b""), "answered HTTP 302"),
    ("malformed JSON", fixed(200, b"{not json"), "malformed JSON"),
    ("deeply nested JSON", fixed(200, b"[" * 100_000 + b"]" * 100_000), "malformed JSON"),
    ("not UTF-8", fixed(200, b'{"data": "\xff"}'), "malformed JSON"),
    ("not an object", fixed(200, b"[1, 2]"), "no list of data"),
    ("no data", fixed(200, b'{"object": "list"}'), "no list of data"),
    ("wrong count", dropping_the_last, "1 embeddings for 2 texts"),
    ("lengths differ", one_short_vector, "embeddings of lengths [3, 4]"),
    ("NaN", with_item(lambda item: item.update(embedding=[float("nan")] * 4)), "not finite"),
    ("float32 overflow", with_item(lambda item: item.update(embedding=[1e39] * 4)), "not finite"),
    ("huge integer", with_item(lambda item: item.update(embedding=[10**400] * 4)), "too large"),
    ("string value", with_item(lambda item: item.update(embedding=["1"] * 4)), "not a list"),
    ("empty vector", with_item(lambda item: item.update(embedding=[])), "lengths"),
    ("index twice", with_item(lambda item: item.update(index=1)), "index 1 twice"),
    ("index too big", with_item(lambda item: item.update(index=2)), "index 2, not in [0, 2)"),
    ("index is bool", with_item(lambda item: item.update(index=False)), "index False"),
    ("no index", with_item(lambda item: item.pop("index")), "index None"),
    ("item not object", with_item(lambda item: item.clear()), "index None"),
)


@pytest.mark.parametrize(
    ("answer", "fragment"), [case[1:] for case in FAILURES], ids=[case[0] for case in FAILURES]
)
def test_failures_raise_embedding_error(
    service: FakeService, embedder: OpenAICompatibleEmbedder, answer: Answer, fragment: str
) -> None:
    service.answer = answer
    with pytest.raises(EmbeddingError) as caught:
        embedder.embed_many(["first", "second"])
    message = caught.value.message
    assert message.startswith(f"embedding service {service.base_url}/embeddings: ")
    assert fragment in message, message
    assert API_KEY not in message and API_KEY not in repr(caught.value)
    assert caught.value.code == "embedding_failed"


def test_error_body_quoting_hides_the_key(
    service: FakeService, embedder: OpenAICompatibleEmbedder
) -> None:
    service.answer = status_500_echoing_the_request
    with pytest.raises(EmbeddingError, match=r"internal error for Bearer \*\*\*"):
        embedder.embed("text")


def test_dimension_must_stay_the_same(service: FakeService) -> None:
    fixed_dimension = OpenAICompatibleEmbedder(service.base_url, "m", dimension=8)
    with fixed_dimension, pytest.raises(EmbeddingError, match="dimension 4, expected 8"):
        fixed_dimension.embed("text")
    with OpenAICompatibleEmbedder(service.base_url, "m") as remote:
        remote.embed("learns four")
        service.answer = lambda received: json_answer({"data": items(received.body["input"], 5)})
        with pytest.raises(EmbeddingError, match="dimension 5, expected 4"):
            remote.embed("now five")


def test_answer_too_large(
    service: FakeService, embedder: OpenAICompatibleEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_compatible, "openai_response_bytes_max", 100)
    service.answer = fixed(200, b" " * 101)
    with pytest.raises(EmbeddingError, match="answer larger than 100 bytes"):
        embedder.embed("text")


def test_timeout(service: FakeService) -> None:
    def slow(received: Received) -> tuple[int, bytes]:
        time.sleep(1.0)
        return correct(received)

    service.answer = slow
    started = time.monotonic()
    remote = OpenAICompatibleEmbedder(service.base_url, "m", api_key=API_KEY, timeout_s=0.2)
    with remote, pytest.raises(EmbeddingError, match=r"no answer within 0\.2 s") as caught:
        remote.embed("text")
    assert time.monotonic() - started < 0.9
    assert API_KEY not in caught.value.message


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    remote = OpenAICompatibleEmbedder(base_url, "m", api_key=API_KEY)
    with remote, pytest.raises(EmbeddingError) as caught:
        remote.embed("text")
    assert caught.value.message.startswith(f"embedding service {base_url}/embeddings: ")
    assert "could not connect" in caught.value.message
    assert API_KEY not in caught.value.message


@pytest.mark.parametrize(
    ("texts", "error_type", "field"),
    [
        (["fine", 3], ValidationError, "texts[1]"),
        ("not a list", ValidationError, "texts"),
        (["x"] * (embed_texts_max + 1), LimitError, "texts"),
        (["x" * (64 * 1024 + 1)], LimitError, "texts[0]"),
    ],
)
def test_bad_input_is_refused_before_any_request(
    service: FakeService,
    embedder: OpenAICompatibleEmbedder,
    texts: Any,
    error_type: type[Exception],
    field: str,
) -> None:
    with pytest.raises(error_type) as caught:
        embedder.embed_many(texts)
    assert type(caught.value) is error_type and getattr(caught.value, "field", None) == field
    with pytest.raises(ValidationError):
        embedder.embed(None)  # type: ignore[arg-type]
    assert service.received == []


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"base_url": "ftp://host", "model": "m"}, "base_url"),
        ({"base_url": "127.0.0.1:8080", "model": "m"}, "base_url"),
        ({"base_url": "http://host", "model": ""}, "model"),
        ({"base_url": "http://host", "model": "m", "dimension": 0}, "dimension"),
        ({"base_url": "http://host", "model": "m", "dimension": 4097}, "dimension"),
    ],
)
def test_constructor_refuses_bad_arguments(arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        OpenAICompatibleEmbedder(**arguments)
    assert caught.value.field == field


def test_spec_reads_model_and_key_from_the_given_environment(service: FakeService) -> None:
    environ = {"MEMORA_EMBEDDING_MODEL": "other-model", "MEMORA_EMBEDDING_API_KEY": API_KEY}
    configured = embedder_from_spec(f"openai:{service.base_url}", environ=environ)
    assert configured.name == "openai:other-model"
    configured.embed("one")
    defaulted = embedder_from_spec(f"openai:{service.base_url}", environ={})
    assert defaulted.name == "openai:text-embedding-3-small"
    defaulted.embed("two")
    first, second = service.received
    assert first.body["model"] == "other-model"
    assert first.headers["Authorization"] == f"Bearer {API_KEY}"
    assert second.body["model"] == "text-embedding-3-small"
    assert "Authorization" not in second.headers
