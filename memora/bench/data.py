"""Seeded synthetic data for the benchmarks: clustered vectors, exact neighbours, a power-law graph.

Everything here is a pure function of its arguments and a `numpy.random.Generator`, so one seed
gives the same data on every machine. Nothing here measures time or touches a store.
"""

from __future__ import annotations

import attrs
import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]
IntMatrix = npt.NDArray[np.int64]

cluster_centre_scale = 1.0  # Standard deviation of the cluster centres, per coordinate.
cluster_spread = 0.5  # Standard deviation of a point around its centre, per coordinate.
ground_truth_chunk_rows_max = 256  # Queries scored at once: 256 x 100,000 floats is 100 MB.
recall_k_default = 10


@attrs.frozen
class VectorData:
    """Base vectors, held-out queries from the same distribution, and their exact neighbours."""

    vectors: FloatMatrix  # (count, dimension)
    queries: FloatMatrix  # (query_count, dimension)
    extra: FloatMatrix  # (extra_count, dimension): fresh vectors for single inserts
    neighbours: IntMatrix  # (query_count, k): row numbers in `vectors`, nearest first


@attrs.frozen
class GraphData:
    """A directed graph over nodes 0..node_count-1, as parallel source and target arrays."""

    node_count: int
    sources: IntMatrix
    targets: IntMatrix

    @property
    def edge_count(self) -> int:
        return int(self.sources.shape[0])


def clustered_vectors(
    rng: np.random.Generator, count: int, dimension: int, clusters: int
) -> FloatMatrix:
    """`count` float32 vectors drawn from `clusters` isotropic Gaussian clusters."""
    assert count >= 0 and dimension >= 1 and clusters >= 1
    centres = rng.normal(0.0, cluster_centre_scale, size=(clusters, dimension))
    membership = rng.integers(0, clusters, size=count)
    noise = rng.normal(0.0, cluster_spread, size=(count, dimension))
    vectors = (centres[membership] + noise).astype(np.float32)
    assert vectors.shape == (count, dimension)
    return vectors


def vector_data(
    seed: int,
    count: int,
    dimension: int,
    clusters: int,
    query_count: int,
    extra_count: int,
    metric: str,
    k: int = recall_k_default,
) -> VectorData:
    """Base, query and extra vectors from one distribution (one draw, then split) and the truth."""
    assert count >= k, (count, k)
    rng = np.random.default_rng([seed, 1])
    everything = clustered_vectors(rng, count + query_count + extra_count, dimension, clusters)
    vectors = np.ascontiguousarray(everything[:count])
    queries = np.ascontiguousarray(everything[count : count + query_count])
    extra = np.ascontiguousarray(everything[count + query_count :])
    neighbours = exact_neighbours(vectors, queries, k, metric)
    return VectorData(vectors, queries, extra, neighbours)


def exact_neighbours(vectors: FloatMatrix, queries: FloatMatrix, k: int, metric: str) -> IntMatrix:
    """Brute-force k nearest rows of `vectors` for each query, nearest first (chunked matmul)."""
    assert metric in ("cosine", "l2"), metric
    assert 1 <= k <= vectors.shape[0]
    base = vectors.astype(np.float64)
    if metric == "cosine":
        base /= np.linalg.norm(base, axis=1, keepdims=True)
    squared_norms = np.einsum("ij,ij->i", base, base)
    found = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], ground_truth_chunk_rows_max):
        chunk = queries[start : start + ground_truth_chunk_rows_max].astype(np.float64)
        if metric == "cosine":
            chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
            scores = -(chunk @ base.T)  # Lower is nearer, as for a distance.
        else:
            scores = squared_norms[None, :] - 2.0 * (chunk @ base.T)  # |q|^2 is the same per row.
        nearest = np.argpartition(scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, nearest, axis=1).argsort(axis=1, kind="stable")
        found[start : start + chunk.shape[0]] = np.take_along_axis(nearest, order, axis=1)
    return found


def recall_at_k(found: list[list[int]], truth: IntMatrix) -> float:
    """Mean over queries of |found ∩ truth| / k, where k is the width of `truth`."""
    assert len(found) == truth.shape[0]
    k = int(truth.shape[1])
    if not found:
        return 0.0
    total = sum(
        len(set(row[:k]) & set(expected.tolist()))
        for row, expected in zip(found, truth, strict=True)
    )
    return total / (k * len(found))


def power_law_graph(seed: int, node_count: int, edge_count: int) -> GraphData:
    """A Barabási-Albert-like graph with random edge directions and no duplicate pairs.

    Node i (in order) links to m = edge_count // node_count distinct earlier nodes, each picked
    with probability proportional to its degree (uniform over the list of all edge endpoints so
    far). Each edge then points one way or the other by a coin flip, so both in- and out-degrees
    follow a power law. Each unordered pair occurs at most once and there are no self-loops, so
    no (source, target) pair repeats. The edge count is m * node_count minus a few at the start.
    """
    assert node_count >= 2 and edge_count >= node_count, (node_count, edge_count)
    rng = np.random.default_rng([seed, 2])
    links = edge_count // node_count
    endpoints: list[int] = []  # Both ends of every edge so far: a node appears once per degree.
    sources: list[int] = []
    targets: list[int] = []
    draws = rng.random(size=(node_count, 2 * links)).tolist()
    for node in range(1, node_count):
        chosen = _preferential_targets(rng, node, links, endpoints, draws[node])
        for other in chosen:
            sources.append(node)
            targets.append(other)
            endpoints.append(node)
            endpoints.append(other)
    flip = rng.random(len(sources)) < 0.5
    source_array = np.asarray(sources, dtype=np.int64)
    target_array = np.asarray(targets, dtype=np.int64)
    graph = GraphData(
        node_count,
        np.where(flip, target_array, source_array),
        np.where(flip, source_array, target_array),
    )
    assert not np.any(graph.sources == graph.targets)
    return graph


def _preferential_targets(
    rng: np.random.Generator,
    node: int,
    links: int,
    endpoints: list[int],
    draws: list[float],
) -> list[int]:
    """`links` distinct earlier nodes (all of them while there are too few), degree-weighted."""
    if node <= links:
        return list(range(node))
    chosen: list[int] = []
    position = 0
    while len(chosen) < links:
        draw = draws[position] if position < len(draws) else float(rng.random())
        position += 1
        other = endpoints[int(draw * len(endpoints))]
        if other not in chosen:
            chosen.append(other)
    return chosen
