"""The segmented HNSW index: exact answers equal a naive oracle, ANN answers have good recall, and
every replica (one that applied every add, one restored from a snapshot midway) answers alike.

Tests shrink the segment limits (they are read from `memora.core.constants` at call time) so that
graphs get built and segments sealed with a few hundred vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from memora.core import constants
from memora.core.errors import CodecError
from memora.core.types import FloatArray, Metric
from memora.core.vectors import NORM_MIN, VectorIndex, distances

METRICS: tuple[Metric, ...] = ("cosine", "l2")
DISTANCE_TOLERANCE = 1e-4
TIE_TOLERANCE = 1e-5


@contextmanager
def small_segments(brute_force_max: int, vectors_max: int, capacity: int) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "vector_segment_brute_force_max", brute_force_max)
        patch.setattr(constants, "vector_segment_vectors_max", vectors_max)
        patch.setattr(constants, "vector_segment_capacity_initial", capacity)
        yield


# ---------------------------------------------------------------------------------------------
# The oracle: a dict of live vectors and a float64 distance, one vector at a time.


def oracle_distance(vector: FloatArray, query: FloatArray, metric: Metric) -> float:
    a, b = vector.astype(np.float64), query.astype(np.float64)
    if metric == "l2":
        return float(((a - b) ** 2).sum())
    norm_a, norm_b = float(np.sqrt(a @ a)), float(np.sqrt(b @ b))
    if norm_a < NORM_MIN or norm_b < NORM_MIN:
        return 1.0  # The documented rule: (nearly) zero vectors normalize to zero.
    return 1.0 - float((a / norm_a) @ (b / norm_b))


def oracle_search(
    live: dict[int, FloatArray],
    query: FloatArray,
    k: int,
    metric: Metric,
    allowed: Callable[[int], bool] | None = None,
) -> list[tuple[int, float]]:
    scored = [
        (oracle_distance(vector, query, metric), key)
        for key, vector in live.items()
        if allowed is None or allowed(key)
    ]
    scored.sort()
    return [(key, distance) for distance, key in scored[:k]]


def assert_matches_oracle(
    got: list[tuple[int, float]],
    live: dict[int, FloatArray],
    query: FloatArray,
    k: int,
    metric: Metric,
    allowed: Callable[[int], bool] | None = None,
) -> None:
    """Same length, same distances rank by rank, and the same keys up to ties at the boundary."""
    expected = oracle_search(live, query, k, metric, allowed)
    assert len(got) == len(expected), (got, expected)
    assert [pair[1] for pair in got] == sorted(pair[1] for pair in got)
    for (key, distance), (_, expected_distance) in zip(got, expected, strict=True):
        assert key in live and (allowed is None or allowed(key)), key
        assert abs(distance - expected_distance) <= DISTANCE_TOLERANCE, (got, expected)
        true_distance = oracle_distance(live[key], query, metric)
        assert abs(distance - true_distance) <= DISTANCE_TOLERANCE, (key, distance, true_distance)
    if expected:
        boundary = expected[-1][1]
        differing = {pair[0] for pair in got} ^ {pair[0] for pair in expected}
        for key in differing:
            assert abs(oracle_distance(live[key], query, metric) - boundary) <= TIE_TOLERANCE


def assert_valid_answer(
    got: list[tuple[int, float]],
    live: dict[int, FloatArray],
    query: FloatArray,
    k: int,
    metric: Metric,
    allowed: Callable[[int], bool] | None = None,
) -> None:
    """An approximate answer: only live, allowed keys, true distances, sorted, full when it can."""
    candidates = sum(1 for key in live if allowed is None or allowed(key))
    assert len(got) == min(k, candidates), (len(got), k, candidates)
    assert len({key for key, _ in got}) == len(got)
    assert got == sorted(got, key=lambda pair: (pair[1], pair[0]))
    for key, distance in got:
        assert key in live and (allowed is None or allowed(key)), key
        assert abs(distance - oracle_distance(live[key], query, metric)) <= DISTANCE_TOLERANCE


# ---------------------------------------------------------------------------------------------
# Distances.


def test_distances_follow_the_definition() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((50, 7)).astype(np.float32)
    matrix[3] = 0.0
    query = rng.standard_normal(7).astype(np.float32)
    for metric in METRICS:
        found = distances(matrix, query, metric)
        assert found.dtype == np.float32 and found.shape == (50,)
        expected = [oracle_distance(row, query, metric) for row in matrix]
        assert np.allclose(found, expected, atol=1e-5)
    assert distances(matrix, query, "cosine")[3] == 1.0, "a zero vector is at distance 1"
    assert distances(matrix, np.zeros(7, np.float32), "cosine").tolist() == [1.0] * 50
    tiny = np.full((1, 7), 1e-25, dtype=np.float32)  # hnswlib's own float32 norm underflows here.
    assert abs(float(distances(tiny, np.ones(7, np.float32), "cosine")[0])) < 1e-6


# ---------------------------------------------------------------------------------------------
# Exact search equals the oracle, through adds, replaces, removes, filters and sealed segments.

DIMENSION_SMALL = 3
coordinates = st.one_of(
    st.integers(-2, 2).map(float),  # Exact ties and zero vectors.
    st.floats(-10, 10, width=32, allow_subnormal=False),
)
vectors_small = st.lists(coordinates, min_size=DIMENSION_SMALL, max_size=DIMENSION_SMALL)
keys_small = st.integers(1, 40)
add_operation = st.tuples(
    st.just("add"), st.lists(st.tuples(keys_small, vectors_small), min_size=1, max_size=12)
)
operation = st.one_of(  # Mostly adds, so that graphs get built and segments sealed.
    add_operation,
    add_operation,
    add_operation,
    st.tuples(st.just("remove"), keys_small),
    st.tuples(st.just("merge"), st.none()),
)


@settings(max_examples=100, deadline=None)
@given(
    metric=st.sampled_from(METRICS),
    operations=st.lists(operation, min_size=1, max_size=30),
    queries=st.lists(
        st.tuples(vectors_small, st.integers(1, 12), st.integers(1, 3)), min_size=1, max_size=4
    ),
)
def test_exact_search_equals_oracle(
    metric: Metric,
    operations: list[tuple[str, object]],
    queries: list[tuple[list[float], int, int]],
) -> None:
    with small_segments(brute_force_max=4, vectors_max=12, capacity=2):
        index = VectorIndex(DIMENSION_SMALL, metric)
        live: dict[int, FloatArray] = {}
        for log_index, (kind, argument) in enumerate(operations, start=1):
            apply_operation(index, live, kind, argument, log_index)
            assert len(index) == len(live)
        event(f"segments: {index.segment_count()}, live >= 4: {len(live) >= 4}")
        for key in range(1, 41):
            stored = index.vector_of(key)
            assert (key in index) == (key in live) == (stored is not None)
            if stored is not None:
                assert np.array_equal(stored, live[key])
        restored = VectorIndex.restore(index.snapshot())
        assert restored.snapshot() == index.snapshot()
        for values, k, modulus in queries:
            query = np.array(values, dtype=np.float32)
            allowed = None if modulus == 1 else (lambda key, m=modulus: key % m == 0)
            exact = index.search(query, k, allowed=allowed, exact=True)
            assert_matches_oracle(exact, live, query, k, metric, allowed)
            approximate = index.search(query, k, ef=k, allowed=allowed)
            assert_valid_answer(approximate, live, query, k, metric, allowed)
            assert restored.search(query, k, ef=k, allowed=allowed) == approximate
            assert restored.search(query, k, allowed=allowed, exact=True) == exact


def apply_operation(
    index: VectorIndex, live: dict[int, FloatArray], kind: str, argument: object, log_index: int
) -> None:
    if kind == "add":
        assert isinstance(argument, list)
        keys = [key for key, _ in argument]
        vectors = np.array([vector for _, vector in argument], dtype=np.float32)
        index.add(keys, vectors.reshape(len(keys), index.dimension), log_index)
        for key, vector in zip(keys, vectors, strict=True):
            live[key] = vector
    elif kind == "remove":
        assert isinstance(argument, int)
        index.remove(argument)
        live.pop(argument, None)
    else:
        index.merge_sealed(log_index)


# ---------------------------------------------------------------------------------------------
# Approximate search: recall on clustered data that crosses the brute-force threshold.


def clustered(rng: np.random.Generator, count: int, dimension: int, clusters: int) -> FloatArray:
    centres = rng.standard_normal((clusters, dimension)).astype(np.float32) * 3
    noise = rng.standard_normal((count, dimension)).astype(np.float32)
    vectors: FloatArray = (centres[rng.integers(0, clusters, count)] + noise).astype(np.float32)
    return vectors


@pytest.mark.parametrize("metric", METRICS)
def test_ann_recall_at_10(metric: Metric) -> None:
    rng = np.random.default_rng(7)
    data = clustered(rng, 3000, 24, 30)
    index = VectorIndex(24, metric)
    for start in range(0, 3000, 500):
        index.add(list(range(start + 1, start + 501)), data[start : start + 500], start + 1)
    assert index.segment_count() == 1
    queries = clustered(rng, 100, 24, 30)
    found = expected = 0
    for query in queries:
        truth = {key for key, _ in index.search(query, 10, exact=True)}
        found += len(truth & {key for key, _ in index.search(query, 10)})
        expected += len(truth)
    assert found / expected >= 0.95, found / expected


@pytest.mark.parametrize("metric", METRICS)
def test_filtered_search_returns_all_when_fewer_than_k_pass(metric: Metric) -> None:
    rng = np.random.default_rng(3)
    data = clustered(rng, 2000, 8, 10)
    index = VectorIndex(8, metric)
    index.add(list(range(1, 2001)), data, 1)
    for key in range(1, 2001, 3):
        index.remove(key)
    query = data[10]
    rare = {500, 1000, 1400}
    hits = index.search(query, 10, allowed=lambda key: key in rare)
    assert {key for key, _ in hits} == {500, 1400}, "key 1000 = 1 + 3 * 333 is dead"
    live = {key: data[key - 1] for key in range(1, 2001) if key % 3 != 1}
    assert_valid_answer(hits, live, query, 10, metric, lambda key: key in rare)
    assert index.search(query, 10, allowed=lambda key: False) == []

    def broken(key: int) -> bool:
        raise RuntimeError("a predicate that fails")

    with pytest.raises(RuntimeError, match="a predicate that fails"):
        index.search(query, 10, allowed=broken)
    assert_valid_answer(index.search(query, 50), live, query, 50, metric)


# ---------------------------------------------------------------------------------------------
# Determinism: same adds, same answers; a restored replica equals one that saw every add.


def workload(
    rng: np.random.Generator, dimension: int
) -> list[tuple[str, list[int], FloatArray | None]]:
    """Batches of adds (with replaced keys) and removes, about 700 vectors in all."""
    steps: list[tuple[str, list[int], FloatArray | None]] = []
    data = clustered(rng, 700, dimension, 12)
    start = 0
    for size in (5, 20, 30, 1, 60, 90, 7, 150, 120, 17, 200):
        keys = rng.integers(1, 500, size).tolist()
        steps.append(("add", keys, data[start : start + size]))
        steps.append(("remove", rng.integers(1, 500, 3).tolist(), None))
        start += size
    return steps


def run_steps(
    index: VectorIndex,
    steps: list[tuple[str, list[int], FloatArray | None]],
    first_log_index: int,
    probes: FloatArray,
) -> None:
    for log_index, (kind, keys, vectors) in enumerate(steps, start=first_log_index):
        if kind == "add":
            assert vectors is not None
            index.add(keys, vectors, log_index)
        else:
            for key in keys:
                index.remove(key)
        # Queries between writes change the graphs' ef; that must not leak into any state.
        index.search(probes[log_index % len(probes)], 5, ef=10 + log_index)


def answers(index: VectorIndex, probes: FloatArray) -> list[list[tuple[int, float]]]:
    result = []
    for position, probe in enumerate(probes):
        result.append(index.search(probe, 10))
        result.append(index.search(probe, 7, ef=200, allowed=lambda key: key % 2 == 0))
        result.append(index.search(probe, 10, exact=True))
        result.append(index.search(probe, 3, ef=position + 1))
    return result


@pytest.mark.parametrize("metric", METRICS)
def test_same_adds_give_same_answers(metric: Metric) -> None:
    with small_segments(brute_force_max=64, vectors_max=256, capacity=16):
        probes = clustered(np.random.default_rng(11), 20, 16, 12)
        first, second = VectorIndex(16, metric), VectorIndex(16, metric)
        run_steps(first, workload(np.random.default_rng(5), 16), 1, probes)
        run_steps(second, workload(np.random.default_rng(5), 16), 1, probes)
        assert first.segment_count() >= 3
        assert answers(first, probes) == answers(second, probes)
        assert first.snapshot() == second.snapshot()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    "steps_before",
    [1, 4, 9, 13, 21],  # Brute force only; graph; first segment sealed; later; everything.
)
def test_restored_replica_equals_full_replica(metric: Metric, steps_before: int) -> None:
    with small_segments(brute_force_max=64, vectors_max=256, capacity=16):
        steps = workload(np.random.default_rng(5), 16)
        probes = clustered(np.random.default_rng(11), 20, 16, 12)
        full = VectorIndex(16, metric)
        run_steps(full, steps[:steps_before], 1, probes)
        restored = VectorIndex.restore(full.snapshot())
        assert restored.snapshot() == full.snapshot()
        run_steps(full, steps[steps_before:], 1 + steps_before, probes)
        run_steps(restored, steps[steps_before:], 1 + steps_before, probes)
        assert answers(restored, probes) == answers(full, probes)
        assert restored.snapshot() == full.snapshot()
        assert len(restored) == len(full) and restored.segment_count() == full.segment_count()


def test_restore_sealed_segment_keeps_answers_without_rebuilding() -> None:
    with small_segments(brute_force_max=64, vectors_max=256, capacity=16):
        probes = clustered(np.random.default_rng(11), 20, 16, 12)
        index = VectorIndex(16, "cosine")
        run_steps(index, workload(np.random.default_rng(5), 16), 1, probes)
        restored = VectorIndex.restore(index.snapshot())
        assert answers(restored, probes) == answers(index, probes)
        for key in range(1, 500):
            original, copy = index.vector_of(key), restored.vector_of(key)
            assert (original is None) == (copy is None)
            assert original is None or np.array_equal(original, copy)


# ---------------------------------------------------------------------------------------------
# Merging sealed segments.


@pytest.mark.parametrize("metric", METRICS)
def test_merge_sealed_keeps_live_set_and_is_deterministic(metric: Metric) -> None:
    with small_segments(brute_force_max=64, vectors_max=256, capacity=16):
        steps = workload(np.random.default_rng(5), 16)
        probes = clustered(np.random.default_rng(11), 20, 16, 12)
        first, second = VectorIndex(16, metric), VectorIndex(16, metric)
        run_steps(first, steps, 1, probes)
        run_steps(second, steps, 1, probes)
        segments_before = first.segment_count()
        exact_before = [first.search(probe, 10, exact=True) for probe in probes]
        live_before = {key: first.vector_of(key) for key in range(1, 500) if key in first}
        first.merge_sealed(100)
        second.merge_sealed(100)
        assert 2 <= first.segment_count() < segments_before
        assert [first.search(probe, 10, exact=True) for probe in probes] == exact_before
        assert {key for key in range(1, 500) if key in first} == set(live_before)
        assert first.snapshot() == second.snapshot()
        assert answers(first, probes) == answers(second, probes)
        live = {key: vector for key, vector in live_before.items() if vector is not None}
        for probe in probes:
            assert_valid_answer(first.search(probe, 20), live, probe, 20, metric)
        restored = VectorIndex.restore(first.snapshot())
        assert answers(restored, probes) == answers(first, probes)
        first.add([7], probes[0:1], 101)
        restored.add([7], probes[0:1], 101)
        assert restored.snapshot() == first.snapshot()


def test_merge_drops_fully_dead_segments() -> None:
    with small_segments(brute_force_max=4, vectors_max=8, capacity=2):
        index = VectorIndex(2, "l2")
        data = np.arange(40, dtype=np.float32).reshape(20, 2)
        index.add(list(range(1, 21)), data, 1)
        assert index.segment_count() == 3
        for key in range(1, 17):
            index.remove(key)
        index.merge_sealed(2)
        assert index.segment_count() == 1
        assert [key for key, _ in index.search(np.zeros(2, np.float32), 10)] == [17, 18, 19, 20]
        index.merge_sealed(3)  # No sealed segment left: nothing to do.
        assert index.segment_count() == 1


# ---------------------------------------------------------------------------------------------
# Tombstones, replaces and programmer errors.


@pytest.mark.parametrize("exact", [False, True])
def test_removed_and_replaced_vectors_never_come_back(exact: bool) -> None:
    with small_segments(brute_force_max=16, vectors_max=64, capacity=8):
        rng = np.random.default_rng(2)
        index = VectorIndex(4, "l2")
        data = rng.standard_normal((200, 4)).astype(np.float32)
        index.add(list(range(1, 201)), data, 1)
        far = np.full((1, 4), 100.0, dtype=np.float32)
        index.add([5], far, 2)  # Replace key 5 by a far vector: its old vector is dead.
        index.remove(6)
        index.remove(6)  # Twice: still gone, no error.
        index.remove(10_000)  # Never had a vector: no-op.
        assert len(index) == 199 and 6 not in index
        for key in (5, 6):
            hits = index.search(data[key - 1], 5, exact=exact)
            assert hits[0][1] > 0.0 and all(hit[0] != 6 for hit in hits)
        near_far = index.search(far[0], 1, exact=exact)
        assert near_far == [(5, 0.0)]
        all_hits = index.search(data[0], 300, ef=400, exact=exact)
        assert len(all_hits) == 199 and 6 not in {key for key, _ in all_hits}


def test_duplicate_keys_in_one_add_keep_the_last() -> None:
    index = VectorIndex(2, "l2")
    vectors = np.array([[1, 1], [2, 2], [3, 3]], dtype=np.float32)
    index.add([4, 9, 4], vectors, 1)
    assert len(index) == 2
    stored = index.vector_of(4)
    assert stored is not None and stored.tolist() == [3.0, 3.0]
    assert index.search(np.array([1, 1], np.float32), 5) == [(9, 2.0), (4, 8.0)]


def test_unknown_key_remove_changes_nothing() -> None:
    index = VectorIndex(3, "cosine")
    index.add([1, 2], np.eye(2, 3, dtype=np.float32), 1)
    before = index.snapshot()
    index.remove(3)
    assert index.snapshot() == before
    assert index.vector_of(3) is None and 3 not in index


def test_empty_index() -> None:
    index = VectorIndex(3, "l2")
    query = np.ones(3, dtype=np.float32)
    assert index.search(query, 5) == [] and index.search(query, 5, exact=True) == []
    assert len(index) == 0 and index.segment_count() == 0
    index.add([], np.zeros((0, 3), np.float32), 1)
    assert VectorIndex.restore(index.snapshot()).snapshot() == index.snapshot()


def test_programmer_errors_are_assertions() -> None:
    index = VectorIndex(3, "l2")
    index.add([1], np.ones((1, 3), np.float32), 5)
    with pytest.raises(AssertionError):
        index.add([2], np.ones((1, 4), np.float32), 5)  # Wrong dimension.
    with pytest.raises(AssertionError):
        index.add([2, 3], np.ones((1, 3), np.float32), 5)  # One vector for two keys.
    with pytest.raises(AssertionError):
        index.add([2], np.ones((1, 3), np.float64), 5)  # Not float32.
    with pytest.raises(AssertionError):
        index.add([0], np.ones((1, 3), np.float32), 5)  # Not a record id.
    with pytest.raises(AssertionError):
        index.add([2], np.ones((1, 3), np.float32), 4)  # Log index went backwards.
    with pytest.raises(AssertionError):
        index.search(np.ones(4, np.float32), 1)
    with pytest.raises(AssertionError):
        index.search(np.ones(3, np.float32), 0)
    with pytest.raises(AssertionError):
        distances(np.ones((2, 3), np.float32), np.ones(2, np.float32), "l2")
    assert len(index) == 1


# ---------------------------------------------------------------------------------------------
# Snapshots from outside are input: damage is a CodecError, never a crash.


def sealed_snapshot() -> bytes:
    with small_segments(brute_force_max=16, vectors_max=64, capacity=8):
        index = VectorIndex(4, "cosine")
        data = np.random.default_rng(4).standard_normal((100, 4)).astype(np.float32)
        index.add(list(range(1, 101)), data, 1)
        return index.snapshot()


def test_restore_rejects_damaged_snapshots() -> None:
    import cbor2

    good = sealed_snapshot()
    for bad in (b"", b"\xff\x00", good[: len(good) // 2], cbor2.dumps({"format": 99})):
        with pytest.raises(CodecError):
            VectorIndex.restore(bad)
    state = cbor2.loads(good)
    graph = state["segments"][0]["graph"]
    links: npt.NDArray[np.uint32] = np.frombuffer(graph["data_level0"], "<u4").copy()
    links[1] = 1_000_000  # The first element's first neighbour: beyond the segment.
    graph["data_level0"] = links.tobytes()
    with pytest.raises(CodecError, match="link"):
        VectorIndex.restore(cbor2.dumps(state))
    state = cbor2.loads(good)
    state["live"] = b"\x02" + state["live"][1:]
    with pytest.raises(CodecError):
        VectorIndex.restore(cbor2.dumps(state))
    state = cbor2.loads(good)
    state["segments"][1]["slots"] = state["segments"][0]["slots"]
    with pytest.raises(CodecError):
        VectorIndex.restore(cbor2.dumps(state))


def test_memory_bytes_grows_with_vectors() -> None:
    index = VectorIndex(8, "cosine")
    empty = index.memory_bytes()
    index.add(list(range(1, 2001)), np.ones((2000, 8), np.float32), 1)
    assert index.memory_bytes() > empty + 2000 * 8 * 4


@pytest.mark.parametrize("metric", METRICS)
def test_one_vector_per_add_builds_what_one_batch_builds(metric: Metric) -> None:
    # A single add takes a scalar path for its norm (and `add_one` its own way into the segment
    # and the graph); a restore or a batch takes numpy's. They must give the same bits, or
    # replicas that restored would grow a different graph.
    rng = np.random.default_rng(3)
    scales = np.array([1e-38, 1e-20, 1e-6, 1.0, 1e6, 1e12], dtype=np.float32)
    vectors = rng.standard_normal((300, 16)).astype(np.float32) * scales[np.arange(300) % 6, None]
    vectors[7] = 0.0
    keys = [*range(1, 291), *range(11, 21)]  # The last ten replace earlier keys' vectors.
    with small_segments(brute_force_max=64, vectors_max=256, capacity=16):
        singles, one_by_one = VectorIndex(16, metric), VectorIndex(16, metric)
        batched = VectorIndex(16, metric)
        for key, vector in zip(keys, vectors, strict=True):
            singles.add([key], vector[np.newaxis], 1)
            one_by_one.add_one(key, vector, 1)
        batched.add(keys, vectors, 1)
        assert singles.snapshot() == batched.snapshot() == one_by_one.snapshot()
        probes = rng.standard_normal((10, 16)).astype(np.float32)
        expected = answers(batched, probes)
        assert answers(singles, probes) == expected == answers(one_by_one, probes)


@pytest.mark.parametrize("metric", METRICS)
def test_a_single_add_waits_for_its_graph_until_one_is_needed(metric: Metric) -> None:
    # `add_one` stores the row at once and leaves its graph insert to the next add, a search, a
    # seal or `settle_graphs`, whichever comes first. The graphs, and so every answer, must be
    # the same as when each add is settled straight away.
    vectors = clustered(np.random.default_rng(8), 300, 16, 6)
    probes = clustered(np.random.default_rng(9), 12, 16, 6)
    with small_segments(brute_force_max=64, vectors_max=256, capacity=16):
        eager, lazy = VectorIndex(16, metric), VectorIndex(16, metric)
        backlogs = []
        for key, vector in enumerate(vectors, start=1):
            eager.add_one(key, vector, key)
            eager.settle_graphs()
            assert eager.graph_backlog == 0
            lazy.add_one(key, vector, key)
            backlogs.append(lazy.graph_backlog)
        # Brute force below 64 rows; a graph from then on; the 256th row sealed the segment (and
        # settled it); the new active segment is brute force again.
        assert backlogs == [0] * 64 + [1] * 191 + [0] * 45
        lazy.add(list(range(301, 331)), vectors[:30], 301)
        eager.add(list(range(301, 331)), vectors[:30], 301)
        assert lazy.graph_backlog == 0, "a batch settles first, then adds all its rows"
        lazy.add_one(331, vectors[30], 302)
        assert lazy.graph_backlog == 1
        eager.add_one(331, vectors[30], 302)
        assert eager.snapshot() == lazy.snapshot()
        assert answers(lazy, probes) == answers(eager, probes)
        assert lazy.graph_backlog == 0, "a search settles first"


def test_ties_from_one_graph_come_back_by_key() -> None:
    with small_segments(brute_force_max=64, vectors_max=1024, capacity=16):
        index = VectorIndex(8, "l2")
        rng = np.random.default_rng(4)
        index.add(list(range(100, 200)), rng.standard_normal((100, 8)).astype(np.float32), 1)
        twin = np.full((1, 8), 5.0, dtype=np.float32)
        for key in (60, 50, 40):  # Equal vectors, added in descending key order.
            index.add([key], twin, 2)
        hits = index.search(twin[0], 3, ef=100)
        assert [key for key, _ in hits] == [40, 50, 60]
        assert [distance for _, distance in hits] == [0.0, 0.0, 0.0]
