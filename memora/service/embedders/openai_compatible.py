"""An embedder that asks a remote service speaking OpenAI's embeddings API.

What lives here: the request (POST `{base_url}/embeddings` with `{"model", "input"}`), the checks
of the answer, and the translation of every failure into `EmbeddingError`. What must not: a
retry policy (the caller decides whether a write may wait), or the API key in any message.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import httpx
import numpy as np

from memora.core import constants
from memora.core.errors import ValidationError
from memora.service.embedders.base import (
    EmbeddingError,
    FloatMatrix,
    FloatVector,
    checked_text,
    checked_texts,
    chunks,
    unit_rows,
)

# Texts per request; OpenAI accepts up to 2048, smaller requests fail (and time out) sooner.
openai_request_texts_max: Final = 256
# An answer larger than this is refused before it is parsed (256 texts of 4096 floats fit).
openai_response_bytes_max: Final = 64 * 1024 * 1024
# Characters of an error answer's body quoted in the message.
openai_error_body_chars_max: Final = 200
_PROBE_TEXT: Final = "dimension probe"

Fail = Callable[[str], EmbeddingError]


class OpenAICompatibleEmbedder:
    """Embeddings from `{base_url}/embeddings` (OpenAI, or any server with the same API).

    With `dimension=None` the dimension is learnt from the first answer; reading `dimension`
    before any call sends one probe request. Every answer is checked: one finite vector per
    text, all of the same dimension. The client keeps its connections; `close()` ends them.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        dimension: int | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValidationError("base_url must start with http:// or https://", "base_url")
        if not model:
            raise ValidationError("model must not be empty", "model")
        if dimension is not None and not constants.dimension_min <= dimension <= (
            constants.dimension_max
        ):
            message = f"dimension must be in [{constants.dimension_min}, {constants.dimension_max}]"
            raise ValidationError(message, "dimension")
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model = model
        self.name = f"openai:{model}"
        self._api_key = api_key or None
        self._dimension = dimension
        self._dimension_lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=timeout_s)
        self._timeout_s = timeout_s

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            return self.probe()
        return self._dimension

    def probe(self) -> int:
        """The dimension of the service's vectors, asked for with one short text if unknown."""
        if self._dimension is None:
            self._request([_PROBE_TEXT])
        assert self._dimension is not None
        return self._dimension

    def embed(self, text: str) -> FloatVector:
        vector: FloatVector = self._embed_checked([checked_text(text)])[0]
        return vector

    def embed_many(self, texts: Sequence[str]) -> FloatMatrix:
        return self._embed_checked(checked_texts(texts))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAICompatibleEmbedder:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def _embed_checked(self, texts: list[str]) -> FloatMatrix:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        parts = [self._request(list(part)) for part in chunks(texts, openai_request_texts_max)]
        return unit_rows(np.concatenate(parts))

    def _request(self, texts: list[str]) -> FloatMatrix:
        """The vectors of one request, in the order of `texts`, checked."""
        answer = self._post({"model": self.model, "input": texts})
        vectors = _vectors(answer, len(texts), self._fail)
        self._check_dimension(vectors.shape[1])
        return vectors

    def _check_dimension(self, dimension: int) -> None:
        with self._dimension_lock:
            if self._dimension is None:
                if not constants.dimension_min <= dimension <= constants.dimension_max:
                    raise self._fail(f"vectors of dimension {dimension} are out of range")
                self._dimension = dimension
            elif dimension != self._dimension:
                raise self._fail(f"vectors of dimension {dimension}, expected {self._dimension}")

    def _post(self, body: dict[str, Any]) -> Any:
        try:
            with self._client.stream("POST", self.url, json=body) as response:
                content = _read_capped(response, self._fail)
        except httpx.TimeoutException as error:
            raise self._fail(f"no answer within {self._timeout_s} s") from error
        except httpx.ConnectError as error:
            raise self._fail(f"could not connect ({self._redacted(str(error))})") from error
        except httpx.HTTPError as error:
            message = f"request failed: {type(error).__name__} ({self._redacted(str(error))})"
            raise self._fail(message) from error
        if not response.is_success:
            quoted = content[:openai_error_body_chars_max].decode("utf-8", "replace")
            message = f"answered HTTP {response.status_code}: {self._redacted(quoted)!r}"
            raise self._fail(message)
        try:
            return json.loads(content)
        # Deep nesting exhausts the parser's recursion, a hostile or broken answer included.
        except (ValueError, RecursionError) as error:
            raise self._fail(f"answered with malformed JSON ({error})") from error

    def _fail(self, what: str) -> EmbeddingError:
        return EmbeddingError(f"embedding service {self.url}: {what}")

    def _redacted(self, text: str) -> str:
        """`text` without the API key: error answers and messages may quote the request."""
        return text.replace(self._api_key, "***") if self._api_key else text


def _read_capped(response: httpx.Response, fail: Fail) -> bytes:
    content = bytearray()
    for piece in response.iter_bytes():
        content += piece
        if len(content) > openai_response_bytes_max:
            raise fail(f"answer larger than {openai_response_bytes_max} bytes")
    return bytes(content)


def _vectors(answer: Any, count: int, fail: Fail) -> FloatMatrix:
    """The `count` embeddings of an answer `{"data": [{"embedding", "index"}, ...]}` as rows
    ordered by index; `fail(what)` makes the error of anything malformed."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        raise fail("answer has no list of data")
    if len(data) != count:
        raise fail(f"answer has {len(data)} embeddings for {count} texts")
    rows: list[list[float] | None] = [None] * count
    for item in data:
        index, embedding = _index_and_embedding(item, count, fail)
        if rows[index] is not None:
            raise fail(f"answer has index {index} twice")
        rows[index] = embedding
    dimensions = {len(row) for row in rows if row is not None}
    if len(dimensions) != 1 or 0 in dimensions:
        raise fail(f"answer has embeddings of lengths {sorted(dimensions)}")
    try:
        wide = np.array(rows, dtype=np.float64)
    except OverflowError:
        raise fail("answer has an integer too large for a float") from None
    # JSON parsing accepts NaN and Infinity, and a large double overflows float32 to infinity.
    with np.errstate(over="ignore"):
        matrix = wide.astype(np.float32)
    if not np.isfinite(matrix).all():
        raise fail("answer has a number that is not finite in float32")
    return matrix


def _index_and_embedding(item: Any, count: int, fail: Fail) -> tuple[int, list[float]]:
    if not isinstance(item, dict):
        raise fail("answer has a data item that is not an object")
    index, embedding = item.get("index"), item.get("embedding")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise fail(f"answer has index {index!r}, not in [0, {count})")
    if not isinstance(embedding, list) or not all(_is_number(value) for value in embedding):
        raise fail(f"answer's embedding {index} is not a list of numbers")
    return index, embedding


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
