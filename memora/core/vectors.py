"""The segmented HNSW vector index: one `VectorIndex` per (namespace, record kind).

What lives here: the one definition of distance (`distances`), and an index that maps record ids
(keys) to float32 vectors and answers top-k queries over them, deterministically. Every vector gets
a slot, a sequential number in log order that is never reused. Vectors live in segments, runs of
slots in slot order. The active segment, the last one, takes new vectors: numpy brute force serves
it while it is small, then it gets an hnswlib graph built from its vectors in slot order and grown
one vector at a time. A full active segment is sealed (immutable) and a new one starts. A delete or
a replace only clears the slot's live flag (a tombstone); searches skip dead slots, and
`merge_sealed` (a logged command) rewrites the sealed segments without them.

A single add's graph insert waits (`settle_graphs`): it is the costly part of a write, and its
writer does not need it, so the row is stored at once and joins the active graph when the next
add, a search or a seal needs the graph, or when the caller settles it earlier, once its writer
has its reply (the embedded store does so on a worker thread). At most one row waits, and the
graph is the same whichever of these adds it: rows join in slot order either way.

Determinism: a graph is built single-threaded (`num_threads=1`), seeded from the log index of
its segment's first entry, with vectors added in slot order. hnswlib adds one point at a time, so
how the adds are batched does not change the graph, and neither does a graph's capacity. A snapshot
saves sealed graphs as they are and the active segment as raw vectors; `restore` rebuilds the
active graph from them, because hnswlib does not save its level generator and a reloaded graph
would grow differently from the one on a replica that applied every entry.

What must not happen here: I/O, clocks, randomness other than seeds taken from log indexes, threads,
pickle, and hnswlib's `mark_deleted` (it changes how later points are linked, so a replica that
deleted and one restored from a snapshot would diverge). The limits come from
`memora.core.constants`, read at call time (tests shrink them to make small segments seal).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

import cbor2
import hnswlib
import numpy as np
import numpy.typing as npt

from memora.core import constants
from memora.core.errors import CodecError
from memora.core.types import FloatArray, Metric

SNAPSHOT_FORMAT: Final = 1
SEED_MODULUS: Final = 2**31  # hnswlib takes the seed as a size_t; keep it portable.
# For cosine, a vector whose norm is below this counts as the zero vector, at distance 1.0 from
# everything. hnswlib's own float32 normalization breaks down for tiny norms (its squares
# underflow), so graphs are fed vectors normalized here, and agree with brute force on them too.
NORM_MIN: Final = 1e-30
# Between these squared norms a cosine query goes to hnswlib as it is (its float32 normalization is
# then accurate, and skipping ours keeps queries fast); outside them, we normalize it first.
GRAPH_QUERY_NORM_SQUARED_MIN: Final = 1e-20
GRAPH_QUERY_NORM_SQUARED_MAX: Final = 1e20
# How hnswlib's knn_query says it found fewer than k results (hnswlib 0.8.0, bindings.cpp).
HNSWLIB_SHORT_RESULT: Final = "Cannot return the results in a contiguous 2D array"
# hnswlib add_items calls take at most this many rows, bounding the normalized copy for cosine.
GRAPH_ADD_CHUNK_ROWS: Final = 65_536
# Brute-force l2 works in chunks of rows, so its temporaries stay near 4 MiB for any segment.
DISTANCE_CHUNK_FLOATS: Final = 1 << 20
# Rows checked against `allowed` per step, in distance order, when a brute-force search filters.
ALLOWED_CHUNK_ROWS: Final = 256
# Rough costs for `memory_bytes`: a dict entry with its two ints; hnswlib's per element overhead
# outside its level-0 block (level, link list pointer, lock, visited mark, label lookup entry).
KEY_MAP_ENTRY_BYTES: Final = 100
GRAPH_ELEMENT_OVERHEAD_BYTES: Final = 100

FLOAT32: Final = np.dtype(np.float32)

Hit = tuple[float, int]  # (distance, key): sorting these sorts by distance, then key.
SlotArray = npt.NDArray[np.int64]


# ---------------------------------------------------------------------------------------------
# Distance.


def distances(matrix: FloatArray, query: FloatArray, metric: Metric) -> npt.NDArray[np.float32]:
    """Distance from `query` to every row of `matrix`, as hnswlib defines it.

    cosine: 1 - dot(a / |a|, b / |b|), where a vector with |v| < NORM_MIN (the zero vector, say)
    normalizes to zero, so its distance to anything is 1.0.
    l2: the squared euclidean distance.
    Both are computed in float32, like hnswlib; norms are computed in float64.
    """
    assert matrix.dtype == np.float32 and query.dtype == np.float32, (matrix.dtype, query.dtype)
    assert matrix.ndim == 2 and query.ndim == 1, (matrix.shape, query.shape)
    assert matrix.shape[1] == query.shape[0], (matrix.shape, query.shape)
    assert metric in constants.metrics, metric
    if metric == "cosine":
        return _cosine_distances(matrix, _norms_inverse(matrix), _unit(query))
    return _l2_distances(matrix, query)


def _norms_inverse(matrix: FloatArray) -> npt.NDArray[np.float32]:
    """1 / |row| per row (0 below NORM_MIN), summed in float64: float32 input cannot overflow it."""
    if len(matrix) == 1:
        return np.array([_norm_inverse_of_row(matrix)], dtype=np.float32)
    wide = matrix.astype(np.float64)
    squares = np.einsum("ij,ij->i", wide, wide)
    norms = np.sqrt(squares)
    small = norms < NORM_MIN
    inverse = np.where(small, 0.0, 1.0 / np.where(small, 1.0, norms))
    return inverse.astype(np.float32)


def _norm_inverse_of_row(matrix: FloatArray) -> np.float32:
    """`_norms_inverse` of a one-row matrix: the same float64 sum (the einsum every row gets),
    then scalar arithmetic, whose IEEE square root, division and rounding to float32 give numpy's
    bits in a third of the calls."""
    assert len(matrix) == 1
    wide = matrix.astype(np.float64)
    norm = math.sqrt(float(np.einsum("ij,ij->i", wide, wide)[0]))
    return np.float32(0.0 if norm < NORM_MIN else 1.0 / norm)


def _unit(vector: FloatArray) -> FloatArray:
    """The vector over its norm, or zero when the norm is below NORM_MIN."""
    wide = vector.astype(np.float64)
    norm = float(np.sqrt(wide @ wide))
    unit: FloatArray = (wide / norm if norm >= NORM_MIN else wide * 0.0).astype(np.float32)
    return unit


def _cosine_distances(
    matrix: FloatArray, norms_inverse: npt.NDArray[np.float32], query_unit: FloatArray
) -> npt.NDArray[np.float32]:
    assert len(norms_inverse) == len(matrix)
    result: npt.NDArray[np.float32] = np.float32(1.0) - (matrix @ query_unit) * norms_inverse
    assert result.dtype == np.float32
    return result


def _l2_distances(matrix: FloatArray, query: FloatArray) -> npt.NDArray[np.float32]:
    result = np.empty(len(matrix), dtype=np.float32)
    rows_per_chunk = max(1, DISTANCE_CHUNK_FLOATS // max(1, matrix.shape[1]))
    for start in range(0, len(matrix), rows_per_chunk):
        difference = matrix[start : start + rows_per_chunk] - query
        result[start : start + rows_per_chunk] = np.einsum("ij,ij->i", difference, difference)
    return result


def _top_hits(
    found: npt.NDArray[np.float32],
    keys: SlotArray,
    k: int,
    allowed: Callable[[int], bool] | None,
) -> list[Hit]:
    """The k smallest (distance, key) pairs, skipping keys that `allowed` refuses."""
    assert len(found) == len(keys) and k >= 1
    if allowed is None:
        if len(found) > k:
            # Keep every row tied with the k-th distance, so the key breaks ties as documented.
            kth = np.partition(found, k - 1)[k - 1]
            chosen = np.flatnonzero(found <= kth)
            found, keys = found[chosen], keys[chosen]
        order = np.lexsort((keys, found))[:k]
        return list(zip(found[order].tolist(), keys[order].tolist(), strict=True))
    order = np.lexsort((keys, found))
    hits: list[Hit] = []
    for start in range(0, len(order), ALLOWED_CHUNK_ROWS):
        chunk = order[start : start + ALLOWED_CHUNK_ROWS]
        for distance, key in zip(found[chunk].tolist(), keys[chunk].tolist(), strict=True):
            if allowed(key):
                hits.append((distance, key))
                if len(hits) == k:
                    return hits
    return hits


def _graph_seed(first_log_index: int) -> int:
    assert first_log_index >= 0
    return first_log_index % SEED_MODULUS


def _capacity_for(count: int) -> int:
    """The buffer (and graph) capacity for `count` vectors: the initial one, doubled as needed."""
    assert count >= 0
    capacity = constants.vector_segment_capacity_initial
    assert capacity >= 1
    while capacity < count:
        capacity *= 2
    # Never beyond what an active segment holds (tests shrink that limit below a power of 2).
    return min(capacity, max(count, constants.vector_segment_vectors_max))


# ---------------------------------------------------------------------------------------------
# Segments.


class Segment:
    """A run of vectors in slot order, with its hnswlib graph once it has one.

    Rows [0, count) of `vectors`, `norms_inverse` and `slots` are used; the rest is spare capacity.
    `slots` is strictly increasing; the graph labels each vector with its slot and holds rows
    [0, graph_count): all of them, or all but the last single add's (see `settle_graph`).
    `dead_count` counts rows whose slot is no longer live. A sealed segment never changes, except
    for `dead_count`.
    """

    __slots__ = (
        "count",
        "dead_count",
        "first_log_index",
        "graph",
        "graph_count",
        "graph_ef",
        "metric",
        "norms_inverse",
        "sealed",
        "slots",
        "vectors",
    )

    def __init__(self, dimension: int, metric: Metric, first_log_index: int, capacity: int) -> None:
        assert dimension >= 1 and capacity >= 0 and first_log_index >= 0
        self.metric: Metric = metric
        self.first_log_index = first_log_index  # For a merged segment, the merge's log index.
        self.vectors: FloatArray = np.empty((capacity, dimension), dtype=np.float32)
        self.norms_inverse: npt.NDArray[np.float32] = np.empty(capacity, dtype=np.float32)
        self.slots: SlotArray = np.empty(capacity, dtype=np.int64)
        self.count = 0
        self.dead_count = 0
        self.graph: Any = None  # hnswlib.Index (untyped).
        self.graph_count = 0  # Rows in the graph.
        self.graph_ef = 0  # The ef last given to the graph, to skip redundant set_ef calls.
        self.sealed = False

    @property
    def live_count(self) -> int:
        return self.count - self.dead_count

    def used_slots(self) -> SlotArray:
        return self.slots[: self.count]

    def row_of_slot(self, slot: int) -> int:
        row = int(np.searchsorted(self.used_slots(), slot))
        assert row < self.count and int(self.slots[row]) == slot, (slot, row)
        return row

    def append(self, vectors: FloatArray, slots: SlotArray) -> None:
        """Add vectors with their (new, increasing) slots; build or grow the graph to match."""
        assert not self.sealed
        assert len(vectors) == len(slots) > 0
        assert self.count == 0 or int(slots[0]) > int(self.slots[self.count - 1])
        self.settle_graph()
        start, end = self.count, self.count + len(slots)
        assert end <= constants.vector_segment_vectors_max, end
        self._reserve(end)
        self.vectors[start:end] = vectors
        self.norms_inverse[start:end] = _norms_inverse(vectors)
        self.slots[start:end] = slots
        self.count = end
        if self.graph is not None:
            self._graph_add(start)
        elif self.count >= constants.vector_segment_brute_force_max:
            self.build_graph()

    def append_one(self, vector: FloatArray, slot: int) -> None:
        """`append` of one vector (a single insert): the same rows and norm in fewer numpy calls,
        each of which costs microseconds with the caches cold from the last graph add. The row
        waits for the graph (`settle_graph`); the row that waited before it joins it first."""
        assert not self.sealed
        assert self.count == 0 or slot > int(self.slots[self.count - 1])
        self.settle_graph()
        row, end = self.count, self.count + 1
        assert end <= constants.vector_segment_vectors_max, end
        self._reserve(end)
        self.vectors[row] = vector
        norm_inverse = _norm_inverse_of_row(self.vectors[row:end])
        self.norms_inverse[row] = norm_inverse
        self.slots[row] = slot
        self.count = end
        if self.graph is None and self.count >= constants.vector_segment_brute_force_max:
            self.build_graph()

    def settle_graph(self) -> None:
        """Add the row that waits for the graph, if one does: the last `append_one`'s."""
        if self.graph_count == self.count or self.graph is None:
            return
        row = self.graph_count
        assert row == self.count - 1, (row, self.count)
        # What `graph_rows` gives for this row: the same float32 product, element by element.
        vector = self.vectors[row]
        unit = vector if self.metric == "l2" else vector * self.norms_inverse[row]
        self.graph.add_items(unit, int(self.slots[row]), num_threads=1)
        self.graph_count = self.count
        assert self.graph.get_current_count() == self.count

    def _reserve(self, count: int) -> None:
        if count <= len(self.slots):
            return
        capacity = _capacity_for(count)
        vectors = np.empty((capacity, self.vectors.shape[1]), dtype=np.float32)
        vectors[: self.count] = self.vectors[: self.count]
        norms_inverse = np.empty(capacity, dtype=np.float32)
        norms_inverse[: self.count] = self.norms_inverse[: self.count]
        slots = np.empty(capacity, dtype=np.int64)
        slots[: self.count] = self.slots[: self.count]
        self.vectors, self.norms_inverse, self.slots = vectors, norms_inverse, slots
        if self.graph is not None:
            # The graph's capacity follows the buffers' (it never changes the graph itself), so
            # that adding to it needs no capacity check.
            self.graph.resize_index(capacity)

    def build_graph(self) -> None:
        """Build the graph from all rows, in slot order, on one thread."""
        assert self.graph is None and self.count >= 1
        graph = hnswlib.Index(space=self.metric, dim=self.vectors.shape[1])
        graph.init_index(
            max_elements=len(self.slots),
            M=constants.hnsw_m,
            ef_construction=constants.hnsw_ef_construction,
            random_seed=_graph_seed(self.first_log_index),
        )
        self.graph = graph
        self.graph_count = 0
        self.graph_ef = 0
        self._graph_add(0)

    def _graph_add(self, start: int) -> None:
        """Add rows [start, count) to the graph, in order, as `graph_rows` presents them."""
        assert self.graph is not None and 0 <= start < self.count <= len(self.slots)
        assert self.graph_count == start, (self.graph_count, start)
        for chunk_start in range(start, self.count, GRAPH_ADD_CHUNK_ROWS):
            chunk_end = min(chunk_start + GRAPH_ADD_CHUNK_ROWS, self.count)
            rows = self.graph_rows(chunk_start, chunk_end)
            # One thread, always: with more, the order of insertion (and so the graph) would vary.
            self.graph.add_items(rows, self.slots[chunk_start:chunk_end], num_threads=1)
        self.graph_count = self.count
        assert self.graph.get_current_count() == self.count

    def graph_rows(self, start: int, end: int) -> FloatArray:
        """Rows as the graph takes them: normalized here for cosine (see NORM_MIN), raw for l2."""
        rows = self.vectors[start:end]
        if self.metric == "l2":
            return rows
        unit: FloatArray = rows * self.norms_inverse[start:end, np.newaxis]
        return unit

    def seal(self) -> None:
        """Freeze the segment and trim spare capacity (from the graph too, whose state is saved)."""
        assert not self.sealed
        self.settle_graph()
        self.sealed = True
        self.vectors = self.vectors[: self.count].copy()
        self.norms_inverse = self.norms_inverse[: self.count].copy()
        self.slots = self.slots[: self.count].copy()
        if self.graph is not None:
            self.graph.resize_index(self.count)

    def use_ef(self, ef: int) -> None:
        assert self.graph is not None and ef >= 1
        if self.graph_ef != ef:
            self.graph.set_ef(ef)
            self.graph_ef = ef

    def graph_bytes(self) -> int:
        if self.graph is None:
            return 0
        dimension = int(self.vectors.shape[1])
        level0_bytes = (2 * constants.hnsw_m + 1) * 4 + dimension * 4 + 8
        # A point reaches level 1 and above with probability 1/M, and the expected number of
        # upper levels per point is 1/(M - 1), each a list of M links and a count.
        upper_bytes = (constants.hnsw_m + 1) * 4 // max(1, constants.hnsw_m - 1)
        per_element = level0_bytes + GRAPH_ELEMENT_OVERHEAD_BYTES
        capacity: int = self.graph.get_max_elements()
        return capacity * per_element + self.count * upper_bytes

    def memory_bytes(self) -> int:
        arrays = self.vectors.nbytes + self.norms_inverse.nbytes + self.slots.nbytes
        return arrays + self.graph_bytes()

    def invariants(self) -> None:
        assert 0 <= self.dead_count <= self.count <= len(self.slots)
        assert len(self.vectors) == len(self.slots) == len(self.norms_inverse)
        if self.graph is None:
            assert self.graph_count == 0
        else:
            assert self.count - 1 <= self.graph_count <= self.count, (self.graph_count, self.count)
            assert not self.sealed or self.graph_count == self.count, "a sealed graph is whole"
            assert self.graph.get_current_count() == self.graph_count
            assert self.graph.get_max_elements() == len(self.slots)
        if self.sealed:
            assert self.count == len(self.slots), "a sealed segment has no spare capacity"


# ---------------------------------------------------------------------------------------------
# The index.


class VectorIndex:
    """Record id -> vector, searchable by distance; one per (namespace, record kind).

    Invariants: slots [0, slot_count) exist; `_live[slot]` is 1 exactly when `_slot_of_key` maps
    `_slot_keys[slot]` to it; every live slot is a row of exactly one segment; segments partition
    the slots in increasing order; only the last segment may be unsealed (the active one).
    """

    def __init__(self, dimension: int, metric: Metric) -> None:
        assert constants.dimension_min <= dimension <= constants.dimension_max, dimension
        assert metric in constants.metrics, metric
        self.dimension = dimension
        self.metric: Metric = metric
        self._segments: list[Segment] = []
        self._segment_first_slots: list[int] = []  # For bisecting a slot to its segment.
        self._slot_keys: SlotArray = np.zeros(0, dtype=np.int64)  # slot -> key, spare at the end.
        self._slot_count = 0
        # slot -> 1 when live, else 0. A bytearray, because hnswlib's filter calls its
        # __getitem__ directly, the cheapest callback Python offers.
        self._live = bytearray()
        self._slot_of_key: dict[int, int] = {}
        self._log_index_last = 0

    # -- Writes ------------------------------------------------------------------------------

    def add(self, keys: Sequence[int], vectors: FloatArray, log_index: int) -> None:
        """Give each key its vector; a key's previous vector (if any) becomes a tombstone.

        Within one call a repeated key keeps its last vector. `log_index` is the commit index of
        the entry; it never goes backwards.
        """
        assert vectors.dtype is FLOAT32 or vectors.dtype == np.float32, vectors.dtype
        assert vectors.shape == (len(keys), self.dimension), (vectors.shape, len(keys))
        assert log_index >= self._log_index_last, (log_index, self._log_index_last)
        key_list = [int(key) for key in keys]
        if key_list:
            assert constants.record_id_min <= min(key_list), "keys are record ids"
            assert max(key_list) <= constants.record_id_max, "keys are record ids"
        self._log_index_last = log_index
        if not key_list:
            return
        slot_first = self._allocate_slots(key_list)
        self._place(vectors, slot_first, log_index)
        for offset, key in enumerate(key_list):
            previous = self._slot_of_key.get(key)
            if previous is not None:
                self._tombstone(previous)
            self._slot_of_key[key] = slot_first + offset
        self._invariants()

    def add_one(self, key: int, vector: FloatArray, log_index: int) -> None:
        """`add` of one key (a single insert or update): the same state, in fewer steps."""
        assert vector.dtype is FLOAT32 or vector.dtype == np.float32, vector.dtype
        assert vector.shape == (self.dimension,), vector.shape
        assert log_index >= self._log_index_last, (log_index, self._log_index_last)
        assert constants.record_id_min <= key <= constants.record_id_max, "keys are record ids"
        self._log_index_last = log_index
        slot = self._allocate_slots([key])
        segment = self._active_segment(log_index, slot)
        segment.append_one(vector, slot)
        if segment.count == constants.vector_segment_vectors_max:
            segment.seal()
        previous = self._slot_of_key.get(key)
        if previous is not None:
            self._tombstone(previous)
        self._slot_of_key[key] = slot
        self._invariants()

    @property
    def graph_backlog(self) -> int:
        """How many vectors wait for their graph: 0 or 1 (module docstring)."""
        if not self._segments or self._segments[-1].graph is None:
            return 0
        return self._segments[-1].count - self._segments[-1].graph_count

    def settle_graphs(self) -> None:
        """Add the vector that waits for its graph, if one does (module docstring). Searches do
        this themselves; callers may do it sooner, off their writers' path."""
        if self._segments:
            self._segments[-1].settle_graph()  # Sealing settles, so only the active one waits.

    def remove(self, key: int) -> None:
        """Tombstone the key's live vector; a key without one is left alone."""
        slot = self._slot_of_key.pop(key, None)
        if slot is not None:
            self._tombstone(slot)
        assert key not in self._slot_of_key

    def merge_sealed(self, log_index: int) -> None:
        """Rewrite all sealed segments as one, keeping only live vectors, in slot order.

        The new segment's graph is seeded from `log_index`, so every replica that applies the merge
        at the same log index builds the same graph.
        """
        assert log_index >= self._log_index_last, (log_index, self._log_index_last)
        self._log_index_last = log_index
        sealed = [segment for segment in self._segments if segment.sealed]
        if not sealed:
            return
        active = [segment for segment in self._segments if not segment.sealed]
        assert len(active) <= 1 and len(sealed) + len(active) == len(self._segments)
        rows = [self._live_rows(segment) for segment in sealed]
        vectors = np.concatenate([s.vectors[r] for s, r in zip(sealed, rows, strict=True)])
        slots = np.concatenate([s.slots[r] for s, r in zip(sealed, rows, strict=True)])
        merged = _sealed_segment(self.dimension, self.metric, log_index, vectors, slots)
        self._set_segments(([merged] if merged.count else []) + active)
        self._invariants()

    # -- Reads -------------------------------------------------------------------------------

    def vector_of(self, key: int) -> FloatArray | None:
        """A copy of the key's live vector, or None."""
        slot = self._slot_of_key.get(key)
        if slot is None:
            return None
        segment = self._segment_of_slot(slot)
        vector: FloatArray = segment.vectors[segment.row_of_slot(slot)].copy()
        return vector

    def __contains__(self, key: object) -> bool:
        return key in self._slot_of_key

    def __len__(self) -> int:
        return len(self._slot_of_key)

    def segment_count(self) -> int:
        return len(self._segments)

    def memory_bytes(self) -> int:
        """Approximate bytes held: raw vectors, graphs, slot maps."""
        segments = sum(segment.memory_bytes() for segment in self._segments)
        slot_maps = self._slot_keys.nbytes + len(self._live)
        return segments + slot_maps + len(self._slot_of_key) * KEY_MAP_ENTRY_BYTES

    def search(
        self,
        query: FloatArray,
        k: int,
        *,
        ef: int | None = None,
        allowed: Callable[[int], bool] | None = None,
        exact: bool = False,
    ) -> list[tuple[int, float]]:
        """The k nearest live vectors whose key `allowed` accepts, as (key, distance) pairs.

        Sorted by (distance, key). `exact` uses brute force everywhere; otherwise segments with a
        graph are searched approximately with `ef` (at least k). Fewer than k pairs come back only
        when fewer than k live, allowed vectors exist (or, approximately, are reachable).
        """
        # `is` first: comparing a dtype with a type costs microseconds when caches are cold,
        # and they are after a graph search (see `_search_one_graph`).
        assert query.dtype is FLOAT32 or query.dtype == np.float32, query.dtype
        assert query.shape == (self.dimension,), query.shape
        assert 1 <= k <= constants.hnsw_ef_search_max, k
        ef_search = constants.hnsw_ef_search_default if ef is None else ef
        assert 1 <= ef_search <= constants.hnsw_ef_search_max, ef_search
        brute_force_max = constants.vector_segment_brute_force_max
        self.settle_graphs()
        if not exact and allowed is None and len(self._segments) == 1:
            only = self._segments[0]
            if only.graph is not None and only.dead_count == 0 and only.count >= brute_force_max:
                return self._search_one_graph(only, query, k, max(ef_search, k))
        graph_query = self._graph_query(query)
        exact_query: FloatArray | None = None  # Normalized for cosine, on first use.
        hits: list[Hit] = []
        for segment in self._segments:
            if segment.live_count == 0:
                continue
            if exact or segment.graph is None or segment.live_count < brute_force_max:
                if exact_query is None:
                    exact_query = _unit(query) if self.metric == "cosine" else query
                hits += self._search_exact(segment, exact_query, k, allowed)
            else:
                hits += self._search_graph(segment, graph_query, k, max(ef_search, k), allowed)
        hits.sort()
        del hits[k:]
        return [(key, distance) for distance, key in hits]

    # -- Snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole index as CBOR: sealed graphs as they are, the active segment as raw vectors."""
        state = {
            "format": SNAPSHOT_FORMAT,
            "dimension": self.dimension,
            "metric": self.metric,
            "log_index_last": self._log_index_last,
            "slot_keys": self._slot_keys[: self._slot_count].astype("<i8").tobytes(),
            "live": bytes(self._live),
            "segments": [_segment_state(segment) for segment in self._segments],
        }
        return cbor2.dumps(state, canonical=True)

    @classmethod
    def restore(cls, data: bytes) -> VectorIndex:
        """Rebuild an index from `snapshot()` bytes. Raises `CodecError` on malformed input."""
        state = _load_map(data)
        index = cls(*_header(state))
        index._log_index_last = _integer(state, "log_index_last")
        slot_keys, live = _slot_state(state)
        index._slot_keys, index._slot_count, index._live = slot_keys, len(slot_keys), live
        segments_state = _field(state, "segments", list)
        segments: list[Segment] = []
        for position, item in enumerate(segments_state):
            slot_floor = int(segments[-1].slots[segments[-1].count - 1]) + 1 if segments else 0
            last = position == len(segments_state) - 1
            segments.append(index._restore_segment(item, last, slot_floor))
        index._set_segments(segments)
        index._restore_key_map()
        index._invariants()
        return index

    # -- Internals: writes -------------------------------------------------------------------

    def _allocate_slots(self, keys: list[int]) -> int:
        """Append slots for `keys` (live until replaced) and return the first one."""
        first = self._slot_count
        end = first + len(keys)
        if end > len(self._slot_keys):
            grown = np.zeros(max(end, 2 * len(self._slot_keys)), dtype=np.int64)
            grown[:first] = self._slot_keys[:first]
            self._slot_keys = grown
        if len(keys) == 1:
            self._slot_keys[first] = keys[0]  # A single insert: no list to convert.
            self._live.append(1)
        else:
            self._slot_keys[first:end] = keys
            self._live.extend(b"\x01" * len(keys))
        self._slot_count = end
        assert len(self._live) == self._slot_count
        return first

    def _place(self, vectors: FloatArray, slot_first: int, log_index: int) -> None:
        """Put rows into the active segment, sealing it and starting another whenever it fills."""
        vectors_max = constants.vector_segment_vectors_max
        assert 0 < constants.vector_segment_brute_force_max < vectors_max
        placed = 0
        while placed < len(vectors):
            segment = self._active_segment(log_index, slot_first + placed)
            taken = min(vectors_max - segment.count, len(vectors) - placed)
            assert taken > 0
            slots = np.arange(slot_first + placed, slot_first + placed + taken, dtype=np.int64)
            segment.append(vectors[placed : placed + taken], slots)
            placed += taken
            if segment.count == vectors_max:
                segment.seal()
        assert placed == len(vectors)

    def _active_segment(self, log_index: int, slot_next: int) -> Segment:
        """The active segment, started now (seeded by `log_index`) if there is none."""
        if self._segments and not self._segments[-1].sealed:
            return self._segments[-1]
        assert not self._segment_first_slots or self._segment_first_slots[-1] < slot_next
        segment = Segment(self.dimension, self.metric, log_index, _capacity_for(0))
        self._segments.append(segment)
        self._segment_first_slots.append(slot_next)  # Its first row will hold this slot.
        return segment

    def _tombstone(self, slot: int) -> None:
        assert self._live[slot] == 1, slot
        self._live[slot] = 0
        segment = self._segment_of_slot(slot)
        segment.dead_count += 1
        assert segment.dead_count <= segment.count

    def _set_segments(self, segments: list[Segment]) -> None:
        assert all(segment.count >= 1 for segment in segments)
        self._segments = segments
        self._segment_first_slots = [int(segment.slots[0]) for segment in segments]

    # -- Internals: reads --------------------------------------------------------------------

    def _segment_of_slot(self, slot: int) -> Segment:
        assert 0 <= slot < self._slot_count, slot
        position = bisect.bisect_right(self._segment_first_slots, slot) - 1
        assert position >= 0, slot
        return self._segments[position]

    def _graph_query(self, query: FloatArray) -> FloatArray:
        """The query as graphs take it: hnswlib normalizes a cosine query itself, exactly enough
        unless its norm is extreme (float32 squares underflow or overflow); then we do it."""
        if self.metric == "l2":
            return query
        norm_squared = float(np.dot(query, query))
        if GRAPH_QUERY_NORM_SQUARED_MIN <= norm_squared <= GRAPH_QUERY_NORM_SQUARED_MAX:
            return query
        return _unit(query)

    def _live_rows(self, segment: Segment) -> npt.NDArray[np.intp]:
        """Rows of the segment whose slot is live, in order."""
        slots = segment.used_slots()
        low, high = int(slots[0]), int(slots[-1]) + 1
        # Slicing copies, so no numpy view ever pins `_live` (a pinned bytearray cannot grow).
        window = np.frombuffer(self._live[low:high], dtype=np.uint8)
        rows = np.flatnonzero(window[slots - low])
        assert len(rows) == segment.live_count, (len(rows), segment.live_count)
        return rows

    def _search_exact(
        self,
        segment: Segment,
        query: FloatArray,
        k: int,
        allowed: Callable[[int], bool] | None,
        rows: npt.NDArray[np.intp] | None = None,
    ) -> list[Hit]:
        """Brute force over the segment's live rows (or just `rows`, all live).

        `query` is prepared: already normalized for cosine.
        """
        if rows is None and segment.dead_count == 0:
            matrix = segment.vectors[: segment.count]
            norms_inverse = segment.norms_inverse[: segment.count]
            slots = segment.used_slots()
        else:
            rows = self._live_rows(segment) if rows is None else rows
            matrix = segment.vectors[rows]
            norms_inverse = segment.norms_inverse[rows]
            slots = segment.slots[rows]
        if self.metric == "cosine":
            found = _cosine_distances(matrix, norms_inverse, query)
        else:
            found = _l2_distances(matrix, query)
        return _top_hits(found, self._slot_keys[slots], k, allowed)

    def _search_graph(
        self,
        segment: Segment,
        query: FloatArray,
        k: int,
        ef: int,
        allowed: Callable[[int], bool] | None,
    ) -> list[Hit]:
        """Search the segment's graph, filtering dead (and refused) slots inside hnswlib.

        `query` is as `_graph_query` prepared it.
        """
        segment.use_ef(ef)
        accepted: list[int] = []
        try:
            if allowed is None and segment.dead_count == 0:
                # The common case, kept lean: no filter callback at all.
                labels, found = segment.graph.knn_query(query, k=min(k, segment.count))
            else:
                accept: Callable[[int], Any] = self._live.__getitem__
                if allowed is not None:
                    accept = self._accept_allowed(allowed, accepted)
                labels, found = segment.graph.knn_query(
                    query, k=min(k, segment.live_count), filter=accept
                )
        except RuntimeError as error:
            # hnswlib raises when it finds fewer than k, and only after it has visited every
            # node it can reach; so `accepted` then holds every reachable allowed live slot.
            # Anything else (`allowed` itself raising, say) is not ours to swallow.
            if HNSWLIB_SHORT_RESULT not in str(error):
                raise
            return self._search_fallback(segment, query, k, allowed, accepted)
        keys = self._slot_keys.take(labels[0].astype(np.intp))
        return list(zip(found[0].tolist(), keys.tolist(), strict=True))

    def _search_one_graph(
        self, segment: Segment, query: FloatArray, k: int, ef: int
    ) -> list[tuple[int, float]]:
        """The common case of `search`, kept lean: one graph, no tombstones, no filter.

        Each numpy call and each Python object touched here costs far more than it would in a
        loop, because the graph search has just pushed them out of the CPU caches; so results
        are converted with as few calls as possible (no row views, one `take`).
        """
        segment.use_ef(ef)
        labels, found = segment.graph.knn_query(self._graph_query(query), k=min(k, segment.count))
        distances: list[float] = found.tolist()[0]
        keys: list[int] = self._slot_keys.take(labels).tolist()[0]
        if len(set(distances)) == len(distances):
            # hnswlib sorts by distance; with no tie, that is the (distance, key) order already.
            return list(zip(keys, distances, strict=True))
        pairs = sorted(zip(distances, keys, strict=True))
        return [(key, distance) for distance, key in pairs]

    def _accept_allowed(
        self, allowed: Callable[[int], bool], accepted: list[int]
    ) -> Callable[[int], bool]:
        live, slot_keys = self._live, self._slot_keys

        def accept(slot: int) -> bool:
            if live[slot] and allowed(slot_keys.item(slot)):
                accepted.append(slot)
                return True
            return False

        return accept

    def _search_fallback(
        self,
        segment: Segment,
        query: FloatArray,
        k: int,
        allowed: Callable[[int], bool] | None,
        accepted: list[int],
    ) -> list[Hit]:
        """Brute force, when a graph search came back short: over the whole segment, or (with a
        filter, which has then been asked about every reachable slot) over the accepted slots."""
        exact_query = _unit(query) if self.metric == "cosine" else query
        if allowed is None:
            return self._search_exact(segment, exact_query, k, None)
        slots = np.unique(np.asarray(accepted, dtype=np.int64))
        if len(slots) == 0:
            return []
        rows = np.searchsorted(segment.used_slots(), slots)
        return self._search_exact(segment, exact_query, k, None, rows)

    # -- Internals: restore ------------------------------------------------------------------

    def _restore_segment(self, item: Any, last: bool, slot_floor: int) -> Segment:
        if not isinstance(item, dict):
            raise CodecError("a vector segment must be a map", "segments")
        sealed = _field(item, "sealed", bool)
        if not sealed and not last:
            raise CodecError("only the last vector segment may be active", "segments")
        first_log_index = _integer(item, "first_log_index")
        slots = _array(item, "slots", "<i8", 1).astype(np.int64)
        vectors = _array(item, "vectors", "<f4", self.dimension).astype(np.float32)
        self._check_segment_slots(slots, len(vectors), slot_floor)
        if sealed:
            graph_state = item.get("graph")
            graph = None
            if graph_state is not None:
                graph = _graph_from_state(graph_state, self.dimension, self.metric, slots)
            segment = _sealed_segment(
                self.dimension, self.metric, first_log_index, vectors, slots, graph
            )
        elif len(slots) >= constants.vector_segment_vectors_max:
            raise CodecError("an active vector segment over its limit", "segments")
        else:
            capacity = _capacity_for(len(slots))
            segment = Segment(self.dimension, self.metric, first_log_index, capacity)
            segment.append(vectors, slots)  # Rebuilds the graph, as if every add were replayed.
        low = int(slots[0])
        window = np.frombuffer(self._live[low : int(slots[-1]) + 1], dtype=np.uint8)  # A copy.
        segment.dead_count = segment.count - int(np.count_nonzero(window[slots - low]))
        return segment

    def _check_segment_slots(self, slots: SlotArray, vector_count: int, slot_floor: int) -> None:
        """One slot per vector, increasing, from `slot_floor` (past the previous segment) on."""
        if len(slots) == 0 or len(slots) != vector_count:
            raise CodecError("a vector segment needs one slot per vector", "segments")
        if int(slots[0]) < slot_floor or int(slots[-1]) >= self._slot_count:
            raise CodecError("vector segment slots out of range", "segments")
        if len(slots) > 1 and int(np.diff(slots).min()) <= 0:
            raise CodecError("vector segment slots must increase", "segments")

    def _restore_key_map(self) -> None:
        live = np.flatnonzero(np.frombuffer(bytes(self._live), dtype=np.uint8)).astype(np.int64)
        keys = self._slot_keys[live]
        self._slot_of_key = dict(zip(keys.tolist(), live.tolist(), strict=True))
        if len(self._slot_of_key) != len(live):
            raise CodecError("two live vectors share a key", "live")
        if len(live) and int(keys.min()) < constants.record_id_min:
            raise CodecError("a live vector has an invalid key", "slot_keys")
        in_segments = sum(segment.live_count for segment in self._segments)
        if in_segments != len(live):
            raise CodecError("a live vector is in no segment", "segments")

    # -- Invariants --------------------------------------------------------------------------

    def _invariants(self) -> None:
        assert len(self._live) == self._slot_count <= len(self._slot_keys)
        assert len(self._slot_of_key) <= self._slot_count
        assert len(self._segment_first_slots) == len(self._segments)
        # One plain loop: this runs after every add, and generators cost more than the checks.
        live_count = 0
        first_slot_previous = -1
        for position, segment in enumerate(self._segments):
            assert segment.sealed or position == len(self._segments) - 1, "only the last is active"
            first_slot = self._segment_first_slots[position]
            assert first_slot > first_slot_previous, self._segment_first_slots
            first_slot_previous = first_slot
            segment.invariants()
            live_count += segment.live_count
        assert live_count == len(self._slot_of_key), (live_count, len(self._slot_of_key))


def _sealed_segment(
    dimension: int,
    metric: Metric,
    first_log_index: int,
    vectors: FloatArray,
    slots: SlotArray,
    graph: Any = None,
) -> Segment:
    """A sealed segment holding exactly these rows, with a graph if it is big enough for one.

    Without a `graph` given, one is built from the rows in slot order, seeded by
    `first_log_index`: the same graph that adding them one by one to an active segment builds.
    """
    assert len(vectors) == len(slots)
    assert graph is None or graph.get_current_count() == len(slots)
    segment = Segment(dimension, metric, first_log_index, len(slots))
    segment.vectors[:] = vectors
    segment.norms_inverse[:] = _norms_inverse(vectors)
    segment.slots[:] = slots
    segment.count = len(slots)
    segment.sealed = True
    segment.graph = graph
    segment.graph_count = 0 if graph is None else segment.count
    if graph is None and segment.count >= constants.vector_segment_brute_force_max:
        segment.build_graph()
    return segment


# ---------------------------------------------------------------------------------------------
# Snapshot encoding. The graph of a sealed segment is hnswlib's own state (`__getstate__`), less
# the fields that are derived or that vary with use: the label lookup (labels are the segment's
# slots; hnswlib lists it in hash-table order), ef (set by queries) and the thread count.

GRAPH_ARRAYS: Final = {"element_levels": "<i4", "data_level0": "|i1", "link_lists": "|i1"}
GRAPH_DROPPED: Final = ("label_lookup_external", "label_lookup_internal", "ef", "num_threads")
GRAPH_FLAGS: Final = ("allow_replace_deleted", "ep_added", "has_deletions", "index_inited")
GRAPH_FLAGS_EXPECTED: Final = {
    "allow_replace_deleted": False,
    "ep_added": True,
    "has_deletions": False,
    "index_inited": True,
}
GRAPH_INTEGERS: Final = (
    "M",
    "cur_element_count",
    "dim",
    "ef_construction",
    "enterpoint_node",
    "label_offset",
    "max_M",
    "max_M0",
    "max_elements",
    "max_level",
    "offset_data",
    "offset_level0",
    "seed",
    "ser_version",
    "size_data_per_element",
    "size_links_per_element",
)
GRAPH_OTHERS: Final = ("mult", "normalize", "space")


def _segment_state(segment: Segment) -> dict[str, Any]:
    graph = segment.graph if segment.sealed else None
    return {
        "first_log_index": segment.first_log_index,
        "sealed": segment.sealed,
        "slots": segment.used_slots().astype("<i8").tobytes(),
        "vectors": segment.vectors[: segment.count].astype("<f4").tobytes(),
        "graph": None if graph is None else _graph_state(graph),
    }


def _graph_state(graph: Any) -> dict[str, Any]:
    params: dict[str, Any] = graph.__getstate__()[0]
    expected = {*GRAPH_ARRAYS, *GRAPH_DROPPED, *GRAPH_FLAGS, *GRAPH_INTEGERS, *GRAPH_OTHERS}
    assert set(params) == expected, sorted(set(params) ^ expected)
    state: dict[str, Any] = {}
    for name, value in params.items():
        if name in GRAPH_ARRAYS:
            state[name] = np.asarray(value).astype(GRAPH_ARRAYS[name]).tobytes()
        elif name not in GRAPH_DROPPED:
            state[name] = value
    return state


def _graph_from_state(state: Any, dimension: int, metric: Metric, slots: SlotArray) -> Any:
    """Rebuild a sealed graph after checking every size and link, so bad bytes cannot crash it."""
    if not isinstance(state, dict):
        raise CodecError("a vector graph must be a map", "graph")
    expected = {*GRAPH_ARRAYS, *GRAPH_FLAGS, *GRAPH_INTEGERS, *GRAPH_OTHERS}
    if set(state) != expected:
        raise CodecError(f"vector graph fields differ: {sorted(set(state) ^ expected)}", "graph")
    params: dict[str, Any] = {name: _integer(state, name) for name in GRAPH_INTEGERS}
    params |= {name: _field(state, name, bool) for name in GRAPH_FLAGS}
    params |= {"mult": _field(state, "mult", float), "space": _field(state, "space", str)}
    params["normalize"] = _field(state, "normalize", bool)
    for name, dtype in GRAPH_ARRAYS.items():
        params[name] = _array(state, name, dtype, 1).copy()
    _check_graph(params, dimension, metric, len(slots))
    params["label_lookup_external"] = slots.astype(np.uint64)
    params["label_lookup_internal"] = np.arange(len(slots), dtype=np.uint32)
    params["ef"] = constants.hnsw_ef_search_default
    params["num_threads"] = 1
    _check_graph_links(params, slots)
    try:
        graph = hnswlib.Index(params)
    except (RuntimeError, ValueError, TypeError) as error:
        raise CodecError(f"hnswlib refused a vector graph: {error}", "graph") from error
    if graph.get_current_count() != len(slots):
        raise CodecError("a vector graph has the wrong size", "graph")
    return graph


def _check_graph(params: dict[str, Any], dimension: int, metric: Metric, count: int) -> None:
    """The scalar fields agree with this index and with the sizes of the arrays."""
    wanted = {
        "space": metric,
        "dim": dimension,
        "normalize": metric == "cosine",
        "M": constants.hnsw_m,
        "ef_construction": constants.hnsw_ef_construction,
        "max_M": constants.hnsw_m,
        "max_M0": 2 * constants.hnsw_m,
        "size_links_per_element": (constants.hnsw_m + 1) * 4,
        "offset_level0": 0,
        "offset_data": (2 * constants.hnsw_m + 1) * 4,
        "label_offset": (2 * constants.hnsw_m + 1) * 4 + dimension * 4,
        "size_data_per_element": (2 * constants.hnsw_m + 1) * 4 + dimension * 4 + 8,
        "cur_element_count": count,
        "max_elements": count,
        "ser_version": 1,
        **GRAPH_FLAGS_EXPECTED,
    }
    for name, value in wanted.items():
        if params[name] != value or type(params[name]) is not type(value):
            raise CodecError(f"vector graph field {name} is {params[name]!r}", "graph")
    levels = params["element_levels"].view("<i4")
    if len(levels) != count or (
        count and (levels.min() < 0 or levels.max() != params["max_level"])
    ):
        raise CodecError("vector graph levels are malformed", "graph")
    if not 0 <= params["enterpoint_node"] < count:
        raise CodecError("vector graph entry point out of range", "graph")
    if len(params["data_level0"]) != count * wanted["size_data_per_element"]:
        raise CodecError("vector graph level 0 has the wrong size", "graph")
    upper_bytes = int(levels.astype(np.int64).sum()) * wanted["size_links_per_element"]
    if len(params["link_lists"]) != upper_bytes:
        raise CodecError("vector graph upper levels have the wrong size", "graph")


def _check_graph_links(params: dict[str, Any], slots: SlotArray) -> None:
    """Every link names an existing element, and level 0 labels each element with its slot."""
    count, links_max = len(slots), 2 * constants.hnsw_m
    level0 = params["data_level0"].view(np.uint8).reshape(count, -1)
    lists0 = level0[:, : params["offset_data"]].copy().view("<u4")
    labels = level0[:, params["label_offset"] :].copy().view("<u8")[:, 0]
    upper = params["link_lists"].view("<u4").reshape(-1, constants.hnsw_m + 1)
    for lists, size_max in ((lists0, links_max), (upper, constants.hnsw_m)):
        if len(lists) and (
            int((lists[:, 0] & 0xFFFF).max()) > size_max or int(lists[:, 1:].max()) >= count
        ):
            raise CodecError("a vector graph link is out of range", "graph")
    if not np.array_equal(labels.astype(np.int64), slots):
        raise CodecError("vector graph labels differ from the segment's slots", "graph")


# -- Small decoding helpers: each raises CodecError naming the field. ----------------------------


def _load_map(data: bytes) -> dict[str, Any]:
    try:
        state = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as error:
        raise CodecError(f"undecodable vector index: {error}", "vectors") from error
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
        raise CodecError("not a vector index snapshot", "format")
    return state


def _field(mapping: dict[str, Any], name: str, kind: type) -> Any:
    value = mapping.get(name)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise CodecError(f"vector index field {name} must be a {kind.__name__}", name)
    return value


def _integer(mapping: dict[str, Any], name: str) -> int:
    value: int = _field(mapping, name, int)
    if value < 0:
        raise CodecError(f"vector index field {name} must not be negative", name)
    return value


def _array(mapping: dict[str, Any], name: str, dtype: str, width: int) -> npt.NDArray[Any]:
    data: bytes = _field(mapping, name, bytes)
    item_bytes = np.dtype(dtype).itemsize * width
    if len(data) % item_bytes:
        raise CodecError(f"vector index field {name} has a partial item", name)
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(-1, width) if width > 1 else array


def _header(state: dict[str, Any]) -> tuple[int, Metric]:
    dimension = _integer(state, "dimension")
    metric = _field(state, "metric", str)
    if not constants.dimension_min <= dimension <= constants.dimension_max:
        raise CodecError("vector index dimension out of range", "dimension")
    if metric not in constants.metrics:
        raise CodecError("unknown vector index metric", "metric")
    return dimension, "cosine" if metric == "cosine" else "l2"


def _slot_state(state: dict[str, Any]) -> tuple[SlotArray, bytearray]:
    slot_keys = _array(state, "slot_keys", "<i8", 1).astype(np.int64)
    live = bytearray(_field(state, "live", bytes))
    if len(live) != len(slot_keys) or live.translate(None, b"\x00\x01"):
        raise CodecError("vector index live flags are malformed", "live")
    return slot_keys, live
